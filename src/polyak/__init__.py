"""polyak: Polyak-step optimizers and parabolic line searches for PyTorch.

    from polyak import ALIG
    opt = ALIG(model.parameters(), max_lr=0.1, momentum=0.9, max_norm=100.0)
    loss = criterion(model(x), y); opt.zero_grad(); loss.backward()
    opt.step(loss=loss)

``polyak.available()`` lists the registered optimizers; ``polyak.create(name, params, **kw)``
builds one by name; ``polyak.get_spec(name)`` says what its step needs and what it costs.
"""
from ._base import NonFiniteError
from ._closure import ClosureError
from ._registry import OptimizerSpec, available, create, get_spec, specs
from .alig import ALIG
from .alig_plus import ALIGPlus
from .data import IndexedDataset
from .dfw import DFW, multiclass_hinge_loss
from .l4 import L4
from .labpal import LABPAL
from .pal import PAL
from .sls import SLS
from .sps import SPS

__version__ = "0.1.0"

__all__ = [
    "ALIG", "ALIGPlus", "SPS", "PAL", "LABPAL", "SLS", "L4", "DFW", "multiclass_hinge_loss",
    "IndexedDataset", "NonFiniteError", "ClosureError",
    "OptimizerSpec", "available", "create", "get_spec", "specs",
]

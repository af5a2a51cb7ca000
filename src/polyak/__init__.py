"""polyak: Polyak-step optimizers and parabolic line searches for PyTorch.

    from polyak import ALIG
    opt = ALIG(model.parameters(), max_lr=0.1, momentum=0.9, max_norm=100.0)
    loss = criterion(model(x), y); opt.zero_grad(); loss.backward()
    opt.step(loss=loss)

``polyak.available()`` lists the registered optimizers; ``polyak.create(name, params, **kw)``
builds one by name.
"""
from ._base import NonFiniteError
from ._registry import OptimizerSpec, available, create, get_spec, specs
from .alig import ALIG

__version__ = "0.1.0"

# TEMPORARY during parallel development: modules written by other hands are
# imported when present. Replaced by explicit imports before release.
import importlib as _importlib

_PENDING = {
    "alig_plus": ("ALIGPlus",),
    "data": ("IndexedDataset",),
    "sps": ("SPS",),
    "sls": ("SLS",),
    "l4": ("L4",),
    "dfw": ("DFW", "multiclass_hinge_loss"),
    "pal": ("PAL",),
    "labpal": ("LABPAL",),
}
for _mod, _names in _PENDING.items():
    try:
        _m = _importlib.import_module(f".{_mod}", __name__)
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_mod}":
            raise
        continue
    for _n in _names:
        if hasattr(_m, _n):
            globals()[_n] = getattr(_m, _n)

__all__ = ["ALIG", "NonFiniteError", "OptimizerSpec", "available", "create", "get_spec", "specs"]

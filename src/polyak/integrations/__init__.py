"""Thin adapters for training frameworks that call ``optimizer.step()`` themselves.

Every polyak optimizer reads the loss. Frameworks call ``step()`` with no
arguments (HF Trainer, accelerate, timm, a GradScaler) or with a closure of their
own (Lightning), so each adapter hands the loss of every micro-batch over with
:func:`add_loss` before the framework steps; the step then uses the mean of the
losses handed over since the last step: the mean loss of the accumulation window.

One module per framework, each importing its framework when it is imported
(``import polyak`` and ``import polyak.integrations`` need torch alone):

- :mod:`polyak.integrations.lightning`: ``PolyakCallback`` (automatic and manual
  optimization, accumulation, precision plugins) and ``LineSearchModule``.
- :mod:`polyak.integrations.transformers`: ``PolyakTrainer``.
- :mod:`polyak.integrations.accelerate`: ``add_loss`` on a prepared optimizer.
- :mod:`polyak.integrations.timm`: ``register_timm()`` for ``create_optimizer_v2``.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._base import PolyakBase

__all__ = ["add_loss", "unwrap"]

# Attribute under which each framework's optimizer wrapper keeps the wrapped optimizer:
# accelerate's AcceleratedOptimizer and HF's wrappers use ``optimizer``, Lightning's
# LightningOptimizer ``_optimizer``.
_WRAPPED_ATTRIBUTES = ("optimizer", "_optimizer")


def unwrap(optimizer) -> PolyakBase:
    """The polyak optimizer inside any stack of framework wrappers."""
    seen = optimizer
    for _ in range(8):  # wrappers nest a few levels at most; a cycle must not hang
        # Unwrap before the isinstance test: Lightning's LightningOptimizer subclasses the
        # optimizer's class over a shallow copy of its __dict__, so it passes isinstance
        # while state set on it would not reach the optimizer that steps.
        inner = next((getattr(optimizer, a) for a in _WRAPPED_ATTRIBUTES if getattr(optimizer, a, None) is not None), None)
        if inner is None:
            if isinstance(optimizer, PolyakBase):
                return optimizer
            break
        optimizer = inner
    raise TypeError(
        f"expected a polyak optimizer (or a framework wrapper around one), got {type(seen).__name__}; "
        "the loss hand-over only applies to polyak's optimizers"
    )


def add_loss(optimizer, loss: Tensor, index: Optional[Tensor] = None) -> None:
    """Hand a micro-batch loss to the polyak optimizer behind ``optimizer`` (a polyak
    optimizer itself, or accelerate's / Lightning's / HF's wrapper around one).

    Pass the loss of the micro-batch as computed (its mean, or for ALI-G+ the
    per-sample losses with their dataset ``index``), not a loss divided for
    accumulation and not a GradScaler-scaled loss."""
    target = unwrap(optimizer)
    if index is None:
        target.add_loss(loss)
    else:
        target.add_loss(loss, index=index)

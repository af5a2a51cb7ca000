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

import inspect
from typing import Optional

from torch import Tensor

from .._base import PolyakBase
from .._registry import specs

__all__ = ["add_loss", "unwrap", "step_needs", "takes_group_weight_decay", "without_zero_weight_decay"]

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
    inside = f" inside {type(seen).__name__}" if optimizer is not seen else ""
    raise TypeError(
        f"expected a polyak optimizer (or a framework wrapper around one), got {type(optimizer).__name__}{inside}; "
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


def step_needs(optimizer) -> frozenset:
    """What the step of ``optimizer`` needs from the training loop, from its registry
    records: "loss" (the batch mean loss: ALI-G, SPS, L4, DFW), "per_sample_loss" and
    "index" (ALI-G+), "probe_closure" (the line searches)."""
    cls = type(unwrap(optimizer))
    return frozenset().union(*(spec.needs for spec in specs() if spec.factory is cls))


def takes_group_weight_decay(cls) -> bool:
    """Whether a param group of ``cls`` may carry ``weight_decay`` (the frameworks put it in
    every group they build). The class's declared ``group_keys`` decide; before that
    declaration existed, the constructor's signature."""
    keys = getattr(cls, "group_keys", None)
    if keys is not None:
        return "weight_decay" in keys
    return "weight_decay" in inspect.signature(cls).parameters


def without_zero_weight_decay(groups, owner: str, cls) -> list:
    """Framework-built param groups for an optimizer without weight decay: groups whose
    ``weight_decay`` is 0 lose the key; a non-zero one is refused, never ignored."""
    out = []
    for group in groups:
        group = dict(group)
        decay = group.pop("weight_decay", 0.0)
        if decay:
            raise ValueError(
                f"{owner}: {cls.__name__} has no weight decay but a param group asks for weight_decay={decay}; "
                f"set the framework's weight decay to 0 (ALI-G keeps its parameters in an L2 ball instead: max_norm=)"
            )
        out.append(group)
    return out

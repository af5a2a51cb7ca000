"""timm: polyak's optimizers in timm's optimizer registry, for ``create_optimizer_v2``.

    from polyak.integrations.timm import register_timm
    register_timm()                     # once, before building optimizers
    opt = timm.optim.create_optimizer_v2(model, "alig", max_lr=1.0, weight_decay=0.05)

Every record of polyak's registry becomes a timm optimizer of the same name (its
defaults, e.g. ALI-G's momentum 0.9, come with it; the run's context such as
ALI-G+'s ``num_samples`` and ``epochs`` is passed as keyword arguments).

What timm passes and what becomes of it:

- ``weight_decay``: timm splits the model into a decayed group and a group of
  biases and norm weights without decay. Optimizers whose param groups take
  ``weight_decay`` (all but DFW) get both groups as they are; for DFW the groups
  lose the key where it is 0, and a non-zero decay is refused.
- ``lr``: polyak's ``lr`` is a multiplier on the step (1.0 by default) that timm's
  schedulers drive; a warm-up or decay then scales the Polyak step (or the line
  search's step), so leave it at 1.0 unless that is what you want.
- ``momentum``: timm defaults it to 0.9 for optimizers that take one.
- ``layer_decay`` groups carry timm's ``lr_scale``, which polyak's optimizers refuse
  (with the key's name): layer-wise decay is not supported.

timm's training loop and its NativeScaler call ``optimizer.step()`` with no loss:
hand the loss over first with ``optimizer.add_loss(loss)`` after backward.

This module imports timm only inside :func:`register_timm`, so its logic is
usable (and tested) where timm is not installed.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional

from .._registry import OptimizerSpec, specs
from . import takes_group_weight_decay, without_zero_weight_decay

__all__ = ["register_timm", "timm_records", "timm_factory"]


def timm_factory(spec: OptimizerSpec) -> Callable[..., Any]:
    """A callable(params, **timm_kwargs) that builds ``spec``'s optimizer from what
    timm's ``create_optimizer`` passes (see the module docstring)."""
    cls = spec.factory
    group_decay = takes_group_weight_decay(cls)

    def build(params, **kwargs):
        params = list(params)
        decay = kwargs.pop("weight_decay", 0.0)
        if not group_decay:
            if params and isinstance(params[0], dict):
                params = without_zero_weight_decay(params, f"timm '{spec.name}'", cls)
            if decay:
                without_zero_weight_decay([{"weight_decay": decay}], f"timm '{spec.name}'", cls)  # raises
        elif decay:
            kwargs["weight_decay"] = decay
        return spec.create(params, **kwargs)

    build.__name__ = build.__qualname__ = f"timm_{cls.__name__}"
    return build


def timm_records() -> List[Dict[str, Any]]:
    """The fields of one timm ``OptimInfo`` per polyak registry record."""
    records = []
    for spec in specs():
        accepted = inspect.signature(spec.factory).parameters
        records.append(dict(
            name=spec.name,
            opt_class=timm_factory(spec),
            description=spec.summary,
            has_eps="eps" in accepted,
            has_momentum="momentum" in accepted,
            has_betas="betas" in accepted,
        ))
    return records


def register_timm(registry: Optional[Any] = None, optim_info: Optional[type] = None) -> List[str]:
    """Register every polyak optimizer in timm's registry (default: the one behind
    ``timm.optim.create_optimizer_v2``). Returns the names registered. A name timm
    already uses for another optimizer is an error, not an overwrite."""
    if registry is None or optim_info is None:
        try:
            from timm.optim import _optim_factory
        except ImportError as error:
            raise ImportError(
                "register_timm needs timm (pip install timm, with a torchvision that matches your torch)"
            ) from error
        registry = registry if registry is not None else _optim_factory.default_registry
        optim_info = optim_info if optim_info is not None else _optim_factory.OptimInfo
    existing = set(registry.list_optimizers())
    names = []
    for record in timm_records():
        if record["name"] in existing:
            current = registry.get_optimizer_info(record["name"]).opt_class
            if getattr(current, "__module__", "") != __name__:
                raise ValueError(
                    f"timm already has an optimizer named {record['name']!r} ({current}); polyak does not replace it"
                )
        registry.register(optim_info(**record))
        names.append(record["name"])
    return names

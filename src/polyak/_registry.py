"""One registry of frozen records: it drives ``polyak.create``, ``polyak.available``,
the benchmark harness (what each optimizer must be fed) and the contract tests.

Each module registers its optimizers at import with :func:`register`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

# What a step needs from the training loop.
NEEDS = frozenset({
    "loss",             # step(loss=batch mean loss) after backward, or a torch-style closure
    "per_sample_loss",  # step(loss=per-sample losses, index=dataset indices)
    "index",            # dataset indices of the batch (see polyak.data.IndexedDataset)
    "end_epoch",        # opt.end_epoch() once per epoch
    "probe_closure",    # step(closure) where closure() returns the loss WITHOUT backward (line searches)
    "gradient",         # plain torch optimizer: backward then step()
    "train_eval",       # opt.train() before training steps, opt.eval() before evaluation (Schedule-Free)
})

# Constructor arguments that depend on the training run, filled by a harness from the workload.
CONTEXT = frozenset({"num_samples", "epochs", "n_batches_per_epoch", "total_steps", "batch_size", "dataset_size"})


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build and feed one optimizer.

    name: registry key (lower case, dashes).
    factory: the class (or a callable(params, **kwargs) -> Optimizer).
    needs: what step() needs from the training loop (subset of NEEDS).
    passes: (forward, backward) passes per update, amortised for line searches
        that measure only now and then; the exact count is ``opt.cost``.
    defaults: keyword arguments applied before the caller's.
    context: constructor arguments a harness must fill from the run (subset of CONTEXT).
    step_size_param: the one hyperparameter a sweep tunes over powers of ten (None: none).
    step_size_grid: the papers' grid for it.
    summary: one line for listings.
    """

    name: str
    factory: Callable[..., Any]
    needs: FrozenSet[str]
    passes: Tuple[float, float]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    context: FrozenSet[str] = frozenset()
    step_size_param: Optional[str] = None
    step_size_grid: Tuple[float, ...] = ()
    summary: str = ""

    def __post_init__(self):
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(f"{self.name}: unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}")
        unknown = set(self.context) - CONTEXT
        if unknown:
            raise ValueError(f"{self.name}: unknown context {sorted(unknown)}; known: {sorted(CONTEXT)}")

    def create(self, params, **kwargs):
        return self.factory(params, **{**self.defaults, **kwargs})


_REGISTRY: Dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"optimizer {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> OptimizerSpec:
    key = name.lower()
    if key not in _REGISTRY:
        raise KeyError(f"unknown optimizer {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def available() -> List[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_REGISTRY)


def specs() -> List[OptimizerSpec]:
    return [_REGISTRY[k] for k in available()]


def create(name: str, params, **kwargs):
    """Build a registered optimizer by name: ``create("alig", model.parameters(), max_lr=0.1)``."""
    return get_spec(name).create(params, **kwargs)

"""The workload contract: everything about a task, nothing about an optimizer.

A workload (AlgoPerf's split) owns data, model, loss, metrics and budget. The
runner owns the optimizer and the training loop and reads workloads only through
this contract, so workloads and optimizers never import each other's internals.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple

from torch import Tensor, nn
from torch.utils.data import Dataset

SIZES = ("quick", "lite", "medium", "paper")

#: "medium" keeps the papers' relative budgets on CPU: ALI-G+'s K = 5 sections of at least
#: MEDIUM_SECTION_EPOCHS epochs each (a section of one epoch leaves most ALI-G+ steps at 0).
MEDIUM_SECTION_EPOCHS = 5


def medium_budget(lite: "Budget", paper: "Budget") -> "Budget":
    """A workload's "medium" budget unless it declares one: lite's data and batch, with
    5 x MEDIUM_SECTION_EPOCHS epochs (or lite's, if more), at most the paper's epochs."""
    epochs = min(paper.epochs, max(lite.epochs, 5 * MEDIUM_SECTION_EPOCHS))
    return dataclasses.replace(lite, epochs=epochs)


@dataclass(frozen=True)
class Budget:
    """How much training one size of a workload gets.

    epochs: passes over the (possibly subset) training set.
    batch_size: mini-batch size.
    train_subset: use only this many training samples (None: all).
    test_subset: evaluate on at most this many validation/test samples (None: all).
    """

    epochs: int
    batch_size: int
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    #: drop the last incomplete batch of every epoch (DeepOBS's loaders do)
    drop_last: bool = False


@dataclass
class WorkloadInstance:
    """A built workload: ready-to-train model and data for one size and seed.

    train/val/test: map-style datasets yielding (input, target); the runner wraps
    train in polyak.data.IndexedDataset when an optimizer needs sample indices.
    per_sample_loss(output, target) -> 1-D tensor of per-sample losses (the mean
    of it is the training loss; for sequence models a sample is one sequence).
    evaluate(model, dataset) -> {"loss": float, "accuracy": float?, ...}, in eval
    mode, without gradients; the runner restores train mode afterwards.
    """

    model: nn.Module
    train: Dataset
    val: Dataset
    test: Dataset
    per_sample_loss: Callable[[Tensor, Tensor], Tensor]
    evaluate: Callable[[nn.Module, Dataset], Dict[str, float]]
    budget: Budget
    collate_fn: Optional[Callable] = None


@dataclass(frozen=True)
class Workload:
    """A registered task.

    name: registry key, e.g. "matfac-rank4".
    metric: the reported metric, a key of polyak.bench.records.METRICS: "accuracy" (test
        accuracy), "loss" (final training loss) or "test_loss".
    lower_bound: a lower bound of the training loss (0 for CE, hinge, squared loss),
        given to Polyak-step optimizers.
    interpolating: whether the model can drive the training loss to ~0 (paper's split).
    data: name of the data set in polyak.bench.datasets (None: synthetic or bundled).
    budgets: Budget per size in SIZES; "paper" is the papers' own budget; "medium" may be
        left out (medium_budget() derives it from lite and paper).
    build(size, seed, data_dir) -> WorkloadInstance; raises
        polyak.bench.datasets.DatasetMissing (with the fetch command) when data is absent.
    summary: one line for `polyak bench list`.
    target: the value of the reported metric (raw scale: accuracy as a fraction) that
        counts as solved, for time-to-target (None: the report derives one from the best
        tuned baseline, AlgoPerf's way). source: where the problem's definition comes from.
    """

    name: str
    metric: str
    lower_bound: float
    interpolating: bool
    data: Optional[str]
    budgets: Mapping[str, Budget]
    build: Callable[[str, int, Optional[Path]], WorkloadInstance]
    summary: str = ""
    tags: Tuple[str, ...] = field(default_factory=tuple)
    target: Optional[float] = None
    source: str = ""

    def __post_init__(self):
        from ..records import METRICS

        if self.metric not in METRICS:
            raise ValueError(f"{self.name}: metric must be one of {sorted(METRICS)}, got {self.metric!r}")
        missing = [s for s in SIZES if s not in self.budgets and s != "medium"]
        if missing:
            raise ValueError(f"{self.name}: budgets missing for sizes {missing}")
        if "medium" not in self.budgets:
            derived = medium_budget(self.budgets["lite"], self.budgets["paper"])
            if isinstance(self.budgets, dict):
                # the module's own dict: its build() looks budgets up there by size
                self.budgets["medium"] = derived
            else:
                object.__setattr__(self, "budgets", dict(self.budgets, medium=derived))


_WORKLOADS: Dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    if workload.name in _WORKLOADS:
        raise ValueError(f"workload {workload.name!r} is registered twice")
    _WORKLOADS[workload.name] = workload
    return workload


def get_workload(name: str) -> Workload:
    from . import _load_all  # noqa: F401  (registers every workload module)

    if name not in _WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; available: {', '.join(sorted(_WORKLOADS))}")
    return _WORKLOADS[name]


def all_workloads() -> Dict[str, Workload]:
    from . import _load_all  # noqa: F401

    return dict(sorted(_WORKLOADS.items()))

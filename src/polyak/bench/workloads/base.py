"""The workload contract: everything about a task, nothing about an optimizer.

A workload (AlgoPerf's split) owns data, model, loss, metrics and budget. The
runner owns the optimizer and the training loop and reads workloads only through
this contract, so workloads and optimizers never import each other's internals.
"""
from __future__ import annotations

import dataclasses
import inspect
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
    mode, without gradients; the runner restores train mode afterwards. It must
    hold the key of the workload's metric (checked on the first evaluation).
    budget: the budget the data was built for (None: the harness's, which
    :meth:`Workload.instantiate` fills in; any other value must equal it).
    """

    model: nn.Module
    train: Dataset
    val: Dataset
    test: Dataset
    per_sample_loss: Callable[[Tensor, Tensor], Tensor]
    evaluate: Callable[[nn.Module, Dataset], Dict[str, float]]
    budget: Optional[Budget] = None
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
    build(size, seed, data_dir, budget) -> WorkloadInstance; raises
        polyak.bench.datasets.DatasetMissing (with the fetch command) when data is absent.
        ``budget`` is the harness's budget for this trial (``budgets[size]`` with the
        trial's epochs): build the data (batch size, subsets) from it, the one source
        of truth. A build without a ``budget`` parameter must return
        ``budgets[size]`` in ``WorkloadInstance.budget`` (checked by :meth:`instantiate`).
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

    def instantiate(self, size: str, seed: int, data_dir: Optional[Path] = None,
                    epochs: Optional[int] = None) -> WorkloadInstance:
        """``build`` with the harness's budget (``budgets[size]``, ``epochs`` replacing its
        epochs), returning an instance whose ``budget`` is that budget. A build that
        used another budget is an error naming both (the table would describe a
        different training run than the one that happened)."""
        from ..records import effective_budget

        budget = effective_budget(self.budgets[size], epochs)
        takes_budget = _accepts_budget(self.build)
        instance = (self.build(size, seed, data_dir, budget=budget) if takes_budget
                    else self.build(size, seed, data_dir))
        used = instance.budget
        # a build without the budget parameter cannot know a trial's epochs override
        comparable = used if used is None or takes_budget else dataclasses.replace(used, epochs=budget.epochs)
        if comparable is not None and comparable != budget:
            raise ValueError(
                f"workload {self.name!r}: build() trained with {used} but the harness's budget for size {size!r} "
                f"is {budget} (what `polyak bench list` and the records show); build from the `budget` argument "
                "build(size, seed, data_dir, budget) instead of your own")
        instance.budget = budget
        return instance


def _accepts_budget(build: Callable) -> bool:
    try:
        parameters = inspect.signature(build).parameters
    except (TypeError, ValueError):
        return False
    return "budget" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


_WORKLOADS: Dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    """Add a workload to the harness (built-in modules and plugins call this).

    The name must be lower case (see :func:`polyak.bench.plugins.check_name`); a
    name already registered by another source fails with both sources named.
    Registering the very same object again is a no-op.
    """
    import sys

    from ..plugins import check_name, registration_source, remember_source, source_of

    if not isinstance(workload, Workload):
        raise TypeError(f"register_workload needs a polyak.bench.workloads.Workload, got {type(workload).__name__}")
    check_name("workload", workload.name)
    source = registration_source(sys._getframe(1).f_globals)
    existing = _WORKLOADS.get(workload.name)
    if existing is workload:
        return workload
    if existing is not None:
        raise ValueError(f"workload {workload.name!r} from {source} collides with the workload of that name "
                         f"registered by {source_of('workload', workload.name)}; give yours another name")
    _WORKLOADS[workload.name] = workload
    remember_source("workload", workload.name, source)
    return workload


def get_workload(name: str) -> Workload:
    from . import _load_all  # noqa: F401  (registers every workload module)

    if name not in _WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; available: {', '.join(sorted(_WORKLOADS))}")
    return _WORKLOADS[name]


def all_workloads() -> Dict[str, Workload]:
    from . import _load_all  # noqa: F401

    return dict(sorted(_WORKLOADS.items()))

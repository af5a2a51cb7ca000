"""Named sweeps: ``quick`` (the README demo, minutes on 2 CPU cores), ``lite``
(hours on CPU) and ``paper`` (the papers' budgets, for a GPU).

A suite names what it wants; :func:`resolve_suite` keeps what exists here and
now (registered workloads, optimizers whose package is installed) and says what
it left out and why, so a suite never fails because a peer is missing.
``optimizers=None`` means every optimizer the harness knows (the library's
records, including ones added later, and the peers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Tuple

from .optimizers import all_optimizer_info

__all__ = ["Suite", "SUITES", "get_suite", "resolve_suite", "ResolvedSuite"]


@dataclass(frozen=True)
class Suite:
    """name; size: the workloads' budget size; workloads (None: all registered);
    library_optimizers: include every record of polyak's registry; optimizers:
    further optimizers by name, library or peer (None: every peer); seeds; grid_points: step sizes per optimizer
    nearest its default (None: the full grid); tune_regularisation; epochs:
    per-workload epochs replacing the budget's (ALI-G+ splits training into K=5
    sections, so it needs at least 5 epochs)."""

    name: str
    size: str
    workloads: Optional[Tuple[str, ...]]
    library_optimizers: bool
    optimizers: Optional[Tuple[str, ...]]
    seeds: int
    grid_points: Optional[int]
    tune_regularisation: bool
    summary: str
    epochs: Mapping[str, int] = field(default_factory=dict)
    #: per-workload protocol changes, e.g. {"mnist-resnet8": {"seeds": 1, "grid_points": 2}}:
    #: keys "seeds", "grid_points", "tune_regularisation" replace the suite-wide values.
    overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def protocol(self, workload: str) -> Tuple[int, Optional[int], bool]:
        """(seeds, grid_points, tune_regularisation) for one workload."""
        o = self.overrides.get(workload, {})
        return (int(o.get("seeds", self.seeds)), o.get("grid_points", self.grid_points),
                bool(o.get("tune_regularisation", self.tune_regularisation)))


_LITE_CHEAP = ("matfac-rank1", "matfac-rank4", "matfac-rank10", "matfac-true", "kernel-spam", "kernel-shuttle")
_LITE_DEEP = ("mnist-resnet8", "mnist-resnet8-aug", "fmnist-resnet8-noisy", "austen-charrnn", "dnc-copy")
_USER_DATA = ("cifar10-resnet8", "cifar100-resnet8", "svhn-resnet8", "cifar10-wrn", "imdb-bilstm")
# The papers' methods and baselines, and the learning-rate-free peers.
_LITE_OPTIMIZERS = (
    "alig", "alig-inf", "alig-plus", "galig2-plus", "sps", "dfw", "pal", "labpal-nsgd", "labpal-sgd",
    "labpal-nsgd-reference", "labpal-sgd-reference",
    "sls-armijo", "sls-polyak", "l4-adam",
    "sgd", "sgd-step", "adam", "prodigy", "dadapt-sgd", "schedulefree-sgd", "dog", "momo", "cocob",
)

SUITES = {
    "quick": Suite(
        name="quick", size="quick",
        workloads=("matfac-rank4", "kernel-spam", "mnist-resnet8"),
        # every optimizer of the library (as they land), the classic baselines, one learning-rate-free peer
        library_optimizers=True, optimizers=("sgd", "adam", "prodigy"),
        seeds=1, grid_points=1, tune_regularisation=False,
        summary="3 small workloads, every polyak optimizer + SGD, Adam, Prodigy, one step size each "
                "(<10 min on 2 cores)",
    ),
    # What fits in about an hour and a half on 2 CPU cores (docs/results.md is this suite's
    # report): the cheap convex / shallow workloads with the full protocol (full step-size
    # grids, regularisation grid, 3 seeds), the deep ones with the 2 grid values nearest each
    # default and 1 seed. The workloads on user-provided data join when their data is there.
    "lite": Suite(
        name="lite", size="lite",
        workloads=_LITE_CHEAP + _LITE_DEEP + _USER_DATA,
        library_optimizers=False, optimizers=_LITE_OPTIMIZERS,
        seeds=3, grid_points=None, tune_regularisation=True,
        summary="11 workloads on the real data here (+5 on user data), 23 optimizers; full grids and 3 seeds "
                "on the cheap ones, 2 step sizes and 1 seed on the deep ones (about 1.5 h on 2 cores)",
        overrides={w: {"seeds": 1, "grid_points": 2, "tune_regularisation": False} for w in _LITE_DEEP + _USER_DATA},
    ),
    "paper": Suite(
        name="paper", size="paper", workloads=None, library_optimizers=True, optimizers=None,
        seeds=3, grid_points=None, tune_regularisation=True,
        summary="the papers' budgets, every optimizer, full grids, 3 seeds (for a GPU)",
    ),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; available: {', '.join(SUITES)}")
    return SUITES[name]


@dataclass(frozen=True)
class ResolvedSuite:
    suite: Suite
    workloads: Tuple[str, ...]
    optimizers: Tuple[str, ...]
    left_out: Tuple[str, ...]  # one line per thing left out, with the reason


def resolve_suite(suite: Suite) -> ResolvedSuite:
    from .workloads import all_workloads

    registered = all_workloads()
    left_out: List[str] = []
    if suite.workloads is None:
        workloads = tuple(registered)
    else:
        workloads = tuple(w for w in suite.workloads if w in registered)
        left_out += [f"workload {w}: not registered" for w in suite.workloads if w not in registered]
    infos = all_optimizer_info()
    wanted: List[str] = []
    if suite.library_optimizers:
        wanted += [name for name, info in infos.items() if info.source == "polyak"]
    if suite.optimizers is None:
        wanted += [name for name, info in infos.items() if info.source not in ("polyak", "plugin")]
    else:
        wanted += list(suite.optimizers)
    optimizers = []
    for name in dict.fromkeys(wanted):
        info = infos.get(name)
        if info is None:
            left_out.append(f"optimizer {name}: not registered")
        elif not info.available:
            left_out.append(f"optimizer {name}: not installed ({info.install_hint})")
        else:
            optimizers.append(name)
    return ResolvedSuite(suite, workloads, tuple(optimizers), tuple(left_out))

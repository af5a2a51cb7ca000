"""Named sweeps: ``quick`` (the README demo, minutes on 2 CPU cores), ``lite``
(hours on CPU) and ``paper`` (the papers' budgets, for a GPU).

A suite names what it wants; :func:`resolve_suite` keeps what exists here and
now (registered workloads, optimizers whose package is installed) and says what
it left out and why, so a suite never fails because a peer is missing.
``optimizers=None`` means every optimizer the harness knows (the library's
records, including ones added later, and the peers).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .optimizers import all_optimizer_info
from .records import TrialConfig

__all__ = ["Suite", "SUITES", "get_suite", "register_suite", "resolve_suite", "ResolvedSuite", "Protocol", "TrialPlan",
           "plan_suite", "plan_grid"]


@dataclass(frozen=True)
class Suite:
    """name; size: the workloads' budget size; workloads (None: all registered);
    library_optimizers: include every record of polyak's registry; optimizers:
    further optimizers by name, library or peer (None: every peer); seeds; grid_points: step sizes per optimizer
    nearest its default (None: the full grid); tune_regularisation; epochs:
    per-workload epochs replacing the budget's (ALI-G+ chooses its K sections from the
    epochs: polyak.alig_plus.resolve_sections)."""

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

    #: time per step is reported relative to this optimizer
    time_baseline: str = "sgd"

    #: constructor arguments fixed per optimizer for every workload (see Protocol.fixed)
    fixed: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    #: DeepOBS's protocol: after the sweep, rerun each selected setting until it has this many seeds
    rerun_seeds: Optional[int] = None

    #: the report's selection rule for this suite's records (polyak.bench.protocol.RULES):
    #: "validation" (the ALI-G+ paper) or "final" (DeepOBS)
    selection: str = "validation"

    def __post_init__(self):
        if self.selection not in ("validation", "final"):
            raise ValueError(f"suite {self.name!r}: selection must be 'validation' or 'final' "
                             f"(polyak.bench.protocol.RULES), got {self.selection!r}")

    def protocol(self, workload: str) -> "Protocol":
        """The protocol of one workload: the suite-wide values with its overrides applied."""
        o = self.overrides.get(workload, {})
        return Protocol(seeds=int(o.get("seeds", self.seeds)), grid_points=o.get("grid_points", self.grid_points),
                        tune_regularisation=bool(o.get("tune_regularisation", self.tune_regularisation)),
                        epochs=self.epochs.get(workload), fixed=dict(o.get("fixed", self.fixed)),
                        per_decade=o.get("per_decade"))


@dataclass(frozen=True)
class Protocol:
    """How one workload is swept: seeds 0..seeds-1; the grid_points step sizes nearest each
    optimizer's default (None: its full grid) or explicit step_sizes; whether the
    regularisation grid is swept; epochs replacing the budget's (None: the budget's)."""

    seeds: int
    grid_points: Optional[int] = None
    tune_regularisation: bool = False
    epochs: Optional[int] = None
    step_sizes: Optional[Tuple[float, ...]] = None
    #: per-optimizer step-size grids (``--grid alig=0.01,0.1``) and constructor arguments fixed
    #: per optimizer (documented options, e.g. {"alig-plus": {"K": 2}}, or ``--set alig.momentum=0``;
    #: a fixed regulariser is not swept; a value {"value": v, "per_total_steps": T} scales with
    #: the run: runner.scale_to_run); see polyak.bench.protocol
    grids: Mapping[str, Tuple[float, ...]] = field(default_factory=dict)
    fixed: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    #: step sizes at this many points per decade over each optimizer's grid range (None: its grid)
    per_decade: Optional[int] = None


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

_MEDIUM_DEEP = ("mnist-resnet8", "fmnist-resnet8-noisy")
_MEDIUM_WINDOWS = ("matfac-rank4", "matfac-true", "kernel-spam")
# ALI-G+ against the single-hyperparameter methods; ALI-G against tuned SGD; LABPAL against SGD with a schedule
_MEDIUM_OPTIMIZERS = ("alig", "alig-plus", "sps", "sls-armijo", "labpal-sgd", "labpal-nsgd", "sgd", "sgd-step", "adam")
_LABPAL_SCALED = {"reuse_steps": {"value": 1000, "per_total_steps": 150_000},
                  "untrusted_updates": {"value": 400, "per_total_steps": 150_000}}
_QUICK_OPTIMIZERS = ("alig", "alig-plus", "labpal-sgd", "sgd", "adam", "sps", "prodigy")

SUITES = {
    # The README's main job: minutes on 2 cores, and numbers that mean something. DeepOBS's
    # mnist_mlp on all 50k training images for 3 epochs (the best optimizer passes AlgoPerf's
    # 97% MNIST target), plus two cheap workloads where interpolation fails (matrix
    # factorisation) or roughly holds (spam). The papers' methods (ALI-G, ALI-G+, LABPAL) and
    # the strongest peers (SGD with momentum, Adam, SPS, Prodigy), each at its default step
    # size. ALI-G+ chooses its sections (K="auto": 3 of one epoch on the 3-epoch MNIST run,
    # the paper's 5 on the others).
    "quick": Suite(
        name="quick", size="quick",
        workloads=("mnist-mlp", "matfac-rank4", "kernel-spam"),
        library_optimizers=False, optimizers=_QUICK_OPTIMIZERS,
        seeds=1, grid_points=1, tune_regularisation=False,
        summary="DeepOBS mnist_mlp (3 epochs, full data) + 2 cheap workloads; ALI-G, ALI-G+, LABPAL, SGD, Adam, "
                "SPS, Prodigy at their default step sizes, 1 seed (about 5 min on 2 cores)",
        overrides={"matfac-rank4": {"seeds": 3}, "kernel-spam": {"seeds": 3}},
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
    # Between lite and paper, keeping the papers' relative budgets (docs/results.md judges the
    # papers' three claims on it): every ALI-G+ section lasts >= 5 epochs (workloads.medium_budget:
    # lite's data, >= 25 epochs), LABPAL measures as often relative to the run as in its paper
    # (reuse_steps 1000 and untrusted_updates 400 of 150,000 steps, scaled to each run: documented
    # options). Full grids (3 step sizes per decade on matfac-rank4, matfac-true and spam, for the
    # step-size windows), regularisation and 3 seeds on the cheap workloads; 2 step sizes and 1 seed
    # on the two ResNet8 ones. About 3 h on 2 idle cores.
    "medium": Suite(
        name="medium", size="medium",
        # in the order they run (a sweep cut short has the claims' key workloads first)
        workloads=("matfac-rank1", "matfac-rank4", "kernel-spam", "fmnist-resnet8-noisy", "mnist-resnet8",
                   "matfac-rank10", "matfac-true", "kernel-shuttle"),
        library_optimizers=False, optimizers=_MEDIUM_OPTIMIZERS,
        seeds=3, grid_points=None, tune_regularisation=True,
        summary="8 workloads (matrix factorisation x4, spam, shuttle, ResNet8 on MNIST and on noisy Fashion-MNIST) "
                "at >= 25 epochs, 9 optimizers (papers' methods + SGD with a schedule), LABPAL scaled to the run "
                "(about 3 h on 2 cores)",
        overrides={**{w: {"seeds": 1, "grid_points": 2, "tune_regularisation": False} for w in _MEDIUM_DEEP},
                   # 3 step sizes per decade where the step-size window is measured
                   **{w: {"per_decade": 3} for w in _MEDIUM_WINDOWS}},
        fixed={name: _LABPAL_SCALED for name in ("labpal-sgd", "labpal-nsgd")},
    ),
    # DeepOBS's protocol on its problems at the lite budget (epochs in workloads/deepobs.py):
    # a learning-rate grid (3 per decade on the cheap quadratic and logistic regression, the 2
    # values nearest each default on the networks), selection on final performance (the report's
    # "final" rule, as DeepOBS ranks settings), then the selected
    # setting rerun on 3 seeds; the report puts DeepOBS's own baseline curves beside it.
    "deepobs": Suite(
        name="deepobs", size="lite",
        workloads=("quadratic-deep", "mnist-logreg", "mnist-mlp", "fmnist-mlp", "fmnist-2c2d"),
        library_optimizers=False, optimizers=("alig", "alig-plus", "sgd", "adam", "sps", "prodigy"),
        seeds=1, grid_points=2, tune_regularisation=False, rerun_seeds=3, selection="final",
        summary="DeepOBS quadratic_deep, mnist_logreg, mnist_mlp, fmnist_mlp, fmnist_2c2d at lite epochs; "
                "lr grid, selection, 3-seed reruns; DeepOBS's published baselines beside",
        overrides={w: {"seeds": 1, "grid_points": None, "per_decade": 3} for w in ("quadratic-deep", "mnist-logreg")},
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


def register_suite(suite: Suite) -> Suite:
    """Add a suite (plugins call this); ``--suite NAME`` then runs it. A name
    taken by another suite fails with both sources named."""
    import sys

    from .plugins import check_name, registration_source, remember_source, source_of

    if not isinstance(suite, Suite):
        raise TypeError(f"register_suite needs a polyak.bench.suites.Suite, got {type(suite).__name__}")
    check_name("suite", suite.name)
    source = registration_source(sys._getframe(1).f_globals)
    if SUITES.get(suite.name) is suite:
        return suite
    if suite.name in SUITES:
        raise ValueError(f"suite {suite.name!r} from {source} collides with the suite of that name registered by "
                         f"{source_of('suite', suite.name) or 'polyak.bench.suites'}; give yours another name")
    SUITES[suite.name] = suite
    remember_source("suite", suite.name, source)
    return suite


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


@dataclass(frozen=True)
class TrialPlan:
    """Every trial a run will do, built once (from a suite or from explicit names):
    the CLI, the sweep executors and the report read it, nobody rebuilds it."""

    trials: Tuple[TrialConfig, ...]
    workloads: Tuple[str, ...]
    optimizers: Tuple[str, ...]
    size: str
    protocols: Mapping[str, Protocol]
    left_out: Tuple[str, ...] = ()
    suite: Optional[str] = None
    time_baseline: str = "sgd"
    selection: str = "validation"
    rerun_seeds: Optional[int] = None

    def describe(self) -> str:
        seeds = sorted({p.seeds for p in self.protocols.values()})
        return (f"{len(self.trials)} trials: {len(self.workloads)} workloads x {len(self.optimizers)} optimizers, "
                f"size {self.size}, {'/'.join(map(str, seeds))} seed(s)")


def _trials(workloads: Sequence[str], optimizers: Sequence[str], size: str,
            protocols: Mapping[str, Protocol]) -> Tuple[TrialConfig, ...]:
    from .sweep import grid_trials

    trials = []
    for w in workloads:
        p = protocols[w]
        for optimizer in optimizers:
            step_sizes = p.step_sizes or (fine_grid(optimizer, p.per_decade) if p.per_decade else None)
            trials += grid_trials([w], [optimizer], size, range(p.seeds), epochs=p.epochs, grid_points=p.grid_points,
                                  step_sizes=step_sizes, tune_regularisation=p.tune_regularisation, grids=p.grids,
                                  fixed=p.fixed)
    return tuple(trials)


def _merge_fixed(suite: Mapping[str, Mapping[str, object]],
                 given: Mapping[str, Mapping[str, object]]) -> Dict[str, Dict[str, object]]:
    """The suite's fixed arguments with the caller's (``--set``) applied over them, per optimizer."""
    return {name: {**suite.get(name, {}), **given.get(name, {})} for name in {**suite, **given}}


def fine_grid(optimizer: str, per_decade: int) -> Optional[Tuple[float, ...]]:
    """per_decade log-spaced step sizes from the smallest to the largest value of the
    optimizer's grid (None: it has no step-size hyperparameter)."""
    import math

    from .optimizers import get_bench_spec

    spec = get_bench_spec(optimizer)
    if not spec.step_size_param or not spec.step_size_grid:
        return None
    low, high = min(spec.step_size_grid), max(spec.step_size_grid)
    steps = max(1, int(round(per_decade * math.log10(high / low))))
    return tuple(float(f"{low * (high / low) ** (i / steps):.4g}") for i in range(steps + 1))


def rerun_trials(plan: "TrialPlan", records: Sequence[Mapping[str, object]]) -> Tuple[TrialConfig, ...]:
    """DeepOBS's second stage: each (workload, optimizer)'s selected setting (the report's
    selection) on seeds up to the suite's rerun_seeds."""
    from .report import collect

    if not plan.rerun_seeds:
        return ()
    data = collect([r for r in records if r["config"]["workload"] in plan.workloads])
    extra = []
    for (column, optimizer), cell in data.cells.items():
        if optimizer not in plan.optimizers or not cell.records:
            continue
        first = TrialConfig.from_dict(cell.records[0]["config"])
        extra += [replace(first, seed=seed) for seed in range(plan.rerun_seeds)]
    return tuple(extra)


def plan_suite(suite: Suite, *, size: Optional[str] = None, epochs: Optional[int] = None,
               seeds: Optional[int] = None, grid_points: Optional[int] = None,
               step_sizes: Optional[Sequence[float]] = None, tune_regularisation: Optional[bool] = None,
               grids: Optional[Mapping[str, Sequence[float]]] = None,
               fixed: Optional[Mapping[str, Mapping[str, object]]] = None) -> TrialPlan:
    """The trials of ``suite`` here and now; the keyword arguments replace the suite's values for every workload."""
    resolved = resolve_suite(suite)
    protocols: Dict[str, Protocol] = {}
    for w in resolved.workloads:
        p = suite.protocol(w)
        protocols[w] = replace(p, seeds=seeds or p.seeds, epochs=epochs or p.epochs,
                               grid_points=grid_points if grid_points is not None else p.grid_points,
                               step_sizes=tuple(step_sizes) if step_sizes else None,
                               tune_regularisation=p.tune_regularisation if tune_regularisation is None
                               else tune_regularisation,
                               grids={k: tuple(v) for k, v in (grids or {}).items()},
                               fixed=_merge_fixed(p.fixed, fixed or {}))
    size = size or suite.size
    return TrialPlan(_trials(resolved.workloads, resolved.optimizers, size, protocols), resolved.workloads,
                     resolved.optimizers, size, protocols, resolved.left_out, suite.name, suite.time_baseline,
                     suite.selection, suite.rerun_seeds)


def plan_grid(workloads: Sequence[str], optimizers: Sequence[str], *, size: str = "quick",
              epochs: Optional[int] = None, seeds: int = 1, grid_points: Optional[int] = None,
              step_sizes: Optional[Sequence[float]] = None, tune_regularisation: Optional[bool] = None,
              grids: Optional[Mapping[str, Sequence[float]]] = None,
              fixed: Optional[Mapping[str, Mapping[str, object]]] = None) -> TrialPlan:
    """The trials of explicit workloads and optimizers (names already checked).
    tune_regularisation defaults to True except at size quick."""
    tune = size != "quick" if tune_regularisation is None else tune_regularisation
    protocol = Protocol(seeds=seeds, grid_points=grid_points, tune_regularisation=tune, epochs=epochs,
                        step_sizes=tuple(step_sizes) if step_sizes else None,
                        grids={k: tuple(v) for k, v in (grids or {}).items()}, fixed=dict(fixed or {}))
    workloads, optimizers = tuple(dict.fromkeys(workloads)), tuple(dict.fromkeys(optimizers))
    protocols = {w: protocol for w in workloads}
    return TrialPlan(_trials(workloads, optimizers, size, protocols), workloads, optimizers, size, protocols)

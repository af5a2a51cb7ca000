"""The benchmark's view of every optimizer: polyak's registry plus the peers.

Peers are the papers' baselines and today's learning-rate-free optimizers, taken
from their maintained PyPI packages and described by the same
:class:`polyak.OptimizerSpec` records as the library's own optimizers. They live
here, in the bench layer, never in the library registry: ``polyak.available()``
lists only what polyak implements.

A peer whose package is not installed is still listed, as unavailable, with the
``pip install`` command that provides it; building it raises :class:`PeerMissing`
with that command. Packages are imported only when an optimizer is built.

Which records the harness sees (:func:`bench_specs`): every record of
``polyak.specs()`` at call time (so optimizers that land later appear without
changes here), then the peers, then records registered with
:func:`register_bench_optimizer` (plugins, tests). A peer never shadows a library
record of the same name.

The regularisation hyperparameter a sweep tunes is read from the constructor's
signature (:func:`regularisation_param`): ``max_norm`` (ALI-G's L2-ball
constraint) when the optimizer has it, else ``weight_decay``.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

import polyak
from polyak import OptimizerSpec

__all__ = [
    "OptimizerInfo", "PeerMissing", "StepScheduleSGD", "bench_specs", "get_bench_spec", "optimizer_info",
    "all_optimizer_info", "register_bench_optimizer", "regularisation_param", "accepts",
]


class PeerMissing(ImportError):
    """A peer optimizer's PyPI package is not installed."""


@dataclass(frozen=True)
class OptimizerInfo:
    """A record plus where it comes from.

    source: "polyak", "torch", a PyPI distribution name, or "plugin".
    module: the module imported to build it (None for polyak and plugins).
    """

    spec: OptimizerSpec
    source: str
    module: Optional[str] = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def available(self) -> bool:
        if self.module is None:
            return True
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    @property
    def install_hint(self) -> str:
        return "" if self.source in ("polyak", "torch", "plugin") else f"pip install {self.source}"

    @property
    def version(self) -> Optional[str]:
        """Version of the package that provides the optimizer (None when unknown)."""
        if self.source == "polyak":
            return polyak.__version__
        if self.source == "torch":
            return torch.__version__
        if self.source == "plugin":
            return None
        try:
            return importlib.metadata.version(self.source)
        except importlib.metadata.PackageNotFoundError:
            return None


class _LazyClass:
    """Factory that imports ``module.attr`` on first use, so listing needs no peer installed."""

    def __init__(self, distribution: str, module: str, attr: str, fixed: Optional[Dict[str, Any]] = None):
        self.distribution, self.module, self.attr = distribution, module, attr
        self.fixed = dict(fixed or {})

    def resolve(self) -> Callable[..., Any]:
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as error:
            raise PeerMissing(
                f"{self.module}.{self.attr} needs the PyPI package {self.distribution!r}: "
                f"pip install {self.distribution}"
            ) from error
        return getattr(mod, self.attr)

    def __call__(self, params, **kwargs):
        return self.resolve()(params, **{**self.fixed, **kwargs})

    def __eq__(self, other):
        return isinstance(other, _LazyClass) and (self.module, self.attr, self.fixed) == (other.module, other.attr, other.fixed)

    def __hash__(self):
        return hash((self.module, self.attr))

    def __repr__(self):
        return f"<{self.module}.{self.attr}{' ' + str(self.fixed) if self.fixed else ''}>"


class StepScheduleSGD(torch.optim.SGD):
    """torch.optim.SGD whose learning rate is divided by 10 at 50% and 75% of
    ``total_steps`` (the step schedule of the ALI-G paper's SGD baseline).

    The schedule is applied inside ``step()`` so that the optimizer alone carries
    it: the harness feeds it like any gradient optimizer.
    """

    milestones = (0.5, 0.75)

    def __init__(self, params, lr: float = 0.1, *, total_steps: int, **kwargs):
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int (the number of updates of the run), got {total_steps!r}")
        super().__init__(params, lr=lr, **kwargs)
        self.total_steps = total_steps
        self.steps_taken = 0
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        self.steps_taken += 1
        drops = sum(self.steps_taken >= round(m * self.total_steps) for m in self.milestones)
        for group in self.param_groups:
            group["lr"] = group["initial_lr"] * 0.1 ** drops
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["steps_taken"] = self.steps_taken
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.steps_taken = state_dict.pop("steps_taken", 0)
        super().load_state_dict(state_dict)


# Papers' grids (powers of ten). SGD and the Adam family follow the ALI-G paper's
# baselines; learning-rate-free methods have no grid (their lr is a multiplier
# whose documented default 1 is the method).
_SGD_GRID = (0.001, 0.01, 0.1, 1.0)
_ADAM_GRID = (1e-5, 1e-4, 1e-3, 1e-2)


def _peer(name, distribution, module, attr, *, needs=("gradient",), defaults=None, context=(), grid=(),
          step_size_param="lr", fixed=None, summary=""):
    factory = _LazyClass(distribution, module, attr, fixed)
    spec = OptimizerSpec(
        name=name, factory=factory, needs=frozenset(needs), passes=(1, 1), defaults=dict(defaults or {}),
        context=frozenset(context), step_size_param=step_size_param if grid else None,
        step_size_grid=tuple(grid), summary=summary,
    )
    return OptimizerInfo(spec, distribution, module)


def _torch_peer(name, factory, *, defaults, grid, context=(), summary):
    spec = OptimizerSpec(
        name=name, factory=factory, needs=frozenset({"gradient"}), passes=(1, 1), defaults=defaults,
        context=frozenset(context), step_size_param="lr", step_size_grid=grid, summary=summary,
    )
    return OptimizerInfo(spec, "torch")


PEERS: Tuple[OptimizerInfo, ...] = (
    _torch_peer("sgd", torch.optim.SGD, defaults={"lr": 0.1, "momentum": 0.9}, grid=_SGD_GRID,
                summary="SGD with momentum 0.9, constant learning rate (torch.optim)"),
    _torch_peer("sgd-step", StepScheduleSGD, defaults={"lr": 0.1, "momentum": 0.9}, grid=_SGD_GRID,
                context=("total_steps",),
                summary="SGD with momentum 0.9, learning rate /10 at 50% and 75% of training"),
    _torch_peer("adam", torch.optim.Adam, defaults={"lr": 1e-3}, grid=_ADAM_GRID, summary="Adam (torch.optim)"),
    _torch_peer("adamw", torch.optim.AdamW, defaults={"lr": 1e-3}, grid=_ADAM_GRID,
                summary="AdamW, decoupled weight decay (torch.optim)"),
    _torch_peer("amsgrad", torch.optim.Adam, defaults={"lr": 1e-3, "amsgrad": True}, grid=_ADAM_GRID,
                summary="AMSGrad: Adam with the max of second moments (torch.optim)"),
    _peer("adamp", "pytorch-optimizer", "pytorch_optimizer", "AdamP", defaults={"lr": 1e-3}, grid=_ADAM_GRID,
          summary="AdamP (Heo et al., ICLR 2021)"),
    _peer("adabound", "pytorch-optimizer", "pytorch_optimizer", "AdaBound", defaults={"lr": 1e-3},
          grid=_ADAM_GRID, summary="AdaBound (Luo et al., ICLR 2019), final_lr 0.1"),
    _peer("yogi", "pytorch-optimizer", "pytorch_optimizer", "Yogi", defaults={"lr": 1e-2},
          grid=(1e-4, 1e-3, 1e-2, 1e-1), summary="Yogi (Zaheer et al., NeurIPS 2018)"),
    _peer("cocob", "parameterfree", "parameterfree", "COCOB",
          summary="COCOB-Backprop coin betting (Orabona & Tommasi, 2017): learning-rate free"),
    _peer("prodigy", "prodigyopt", "prodigyopt", "Prodigy", defaults={"lr": 1.0},
          summary="Prodigy (Mishchenko & Defazio, 2023): learning-rate free Adam"),
    _peer("dadapt-sgd", "dadaptation", "dadaptation", "DAdaptSGD", defaults={"lr": 1.0, "momentum": 0.9},
          summary="D-Adaptation SGD (Defazio & Mishchenko, ICML 2023): learning-rate free"),
    _peer("dadapt-adam", "dadaptation", "dadaptation", "DAdaptAdam", defaults={"lr": 1.0},
          summary="D-Adaptation Adam (Defazio & Mishchenko, ICML 2023): learning-rate free"),
    _peer("schedulefree-sgd", "schedulefree", "schedulefree", "SGDScheduleFree", needs=("gradient", "train_eval"),
          defaults={"lr": 1.0}, grid=(0.1, 1.0, 10.0),
          summary="Schedule-Free SGD (Defazio et al., 2024); train/eval switch"),
    _peer("schedulefree-adamw", "schedulefree", "schedulefree", "AdamWScheduleFree",
          needs=("gradient", "train_eval"), defaults={"lr": 2.5e-3}, grid=(1e-4, 1e-3, 1e-2),
          summary="Schedule-Free AdamW (Defazio et al., 2024); train/eval switch"),
    _peer("dog", "dog-optimizer", "dog", "DoG",
          summary="DoG, distance over gradients (Ivgi et al., ICML 2023): learning-rate free"),
    _peer("momo", "momo-opt", "momo", "Momo", needs=("loss",), defaults={"lr": 1.0}, grid=(0.1, 1.0, 10.0),
          summary="MoMo: model-based momentum with a Polyak-type step (Schaipp et al., ICML 2024)"),
)

_PLUGINS: Dict[str, OptimizerInfo] = {}


def register_bench_optimizer(spec: OptimizerSpec, *, source: str = "plugin", module: Optional[str] = None) -> OptimizerSpec:
    """Add an optimizer to the harness only (not to ``polyak.available()``):
    plugins loaded with ``--plugin``/``POLYAK_BENCH_PLUGINS`` and tests use it.

    The name must be lower case (polyak.bench.plugins.check_name); a name of a
    built-in (polyak's registry, a peer) or of another source's optimizer fails
    with both sources named. Registering an equal record again is a no-op."""
    import sys

    from .plugins import check_name, registration_source, remember_source, source_of

    if not isinstance(spec, OptimizerSpec):
        raise TypeError(f"register_bench_optimizer needs a polyak.OptimizerSpec, got {type(spec).__name__}")
    check_name("optimizer", spec.name)
    where = registration_source(sys._getframe(1).f_globals)
    builtin = {s.name: "polyak's registry (polyak.specs())" for s in polyak.specs()}
    builtin.update({info.name: f"the peers of polyak.bench.optimizers ({info.source})" for info in PEERS})
    if spec.name in builtin:
        raise ValueError(f"optimizer {spec.name!r} from {where} collides with the built-in {spec.name!r} of "
                         f"{builtin[spec.name]}; give yours another name (e.g. {spec.name + '-mine'!r})")
    existing = _PLUGINS.get(spec.name)
    if existing is not None and existing.spec != spec:
        raise ValueError(f"optimizer {spec.name!r} from {where} collides with the optimizer of that name "
                         f"registered by {source_of('optimizer', spec.name)}; give yours another name")
    _PLUGINS[spec.name] = OptimizerInfo(spec, source, module)
    if existing is None:
        remember_source("optimizer", spec.name, where)
    return spec


def all_optimizer_info() -> Dict[str, OptimizerInfo]:
    """Every optimizer the harness knows, available or not, by name (sorted)."""
    out: Dict[str, OptimizerInfo] = {s.name: OptimizerInfo(s, "polyak") for s in polyak.specs()}
    for info in PEERS + tuple(_PLUGINS.values()):
        out.setdefault(info.name, info)
    return dict(sorted(out.items()))


def bench_specs() -> List[OptimizerSpec]:
    return [info.spec for info in all_optimizer_info().values()]


def optimizer_info(name: str) -> OptimizerInfo:
    infos = all_optimizer_info()
    key = name.lower()
    if key not in infos:
        raise KeyError(f"unknown optimizer {name!r}; known: {', '.join(infos)} (see `polyak bench list`)")
    return infos[key]


def get_bench_spec(name: str) -> OptimizerSpec:
    return optimizer_info(name).spec


def _constructor(spec: OptimizerSpec) -> Optional[Callable[..., Any]]:
    factory = spec.factory
    if isinstance(factory, _LazyClass):
        try:
            factory = factory.resolve()
        except PeerMissing:
            return None
    return factory


def accepts(spec: OptimizerSpec, argument: str) -> bool:
    """Whether the optimizer's constructor takes ``argument`` by name."""
    factory = _constructor(spec)
    if factory is None:
        return False
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return argument in parameters


def regularisation_param(spec: OptimizerSpec) -> Optional[str]:
    """The regularisation hyperparameter a sweep tunes: ``max_norm`` (a constraint,
    ALI-G's regulariser) when the constructor has it, else ``weight_decay``, else None."""
    for name in ("max_norm", "weight_decay"):
        if accepts(spec, name):
            return name
    return None

"""What every optimizer of the package shares: the hyperparameter policy, the step
opening (loss, closure, hand-over channel, pass counting), the one collective of a
distributed step, the non-finite guard, optimizer-wide state and cost counters.

Hyperparameter policy (torch.optim's conventions):

- Every hyperparameter that changes the trajectory lives in ``defaults``, hence in
  every param group and in ``state_dict()``; ``load_state_dict`` restores all of them
  from the checkpoint, as torch does, and refuses the state of another optimizer,
  mode (``mode_keys``) or shape with an error that names what differs.
- ``group_keys`` (per class) are the hyperparameters a param group may override.
  The others are one value per optimizer (e.g. the loss's lower bound): a group that
  sets a different value is refused, and so is an unknown key. ``add_param_group``
  runs the constructor's checks (``_check_group``).
- Every group has ``"lr"`` (default 1.0): a multiplier on the final step, applied
  AFTER any clip (as Prodigy and D-Adaptation do), so torch/timm/HF schedulers and
  LearningRateMonitor work. A decaying schedule re-introduces the step-size
  schedule that a Polyak step is meant to remove; warm-up is its common use.
  ``group["step_size"]`` is the effective step of the last step (lr included).
  Schedulers that write other keys change other hyperparameters: torch's
  ``OneCycleLR`` overwrites ``group["max_lr"]`` (ALIG's and ALIGPlus's clip) and
  ``CyclicLR(cycle_momentum=True)`` cycles ``group["momentum"]``; use schedulers that
  write ``lr`` only (LambdaLR, LinearLR, CosineAnnealingLR, SequentialLR), or
  ``cycle_momentum=False``.

Losses (one opening for every loss-driven step): ``step(loss=...)`` after backward;
``step(closure)`` with a torch-style closure (forward, backward, returns the loss, or
``(per_sample_losses, index)`` for ALIGPlus); ``step(closure, loss=...)`` (the
closure runs for its side effects, ``loss=`` is used); or :meth:`add_loss` once per
micro-batch, then ``step()`` with no arguments: the step uses the MEAN of the k
losses handed over, the rule of gradient accumulation (back-propagate loss / k per
micro-batch, or the mean). Per-sample losses (ALIGPlus) and their indices concatenate.

An empty batch (no loss at all: a 0-element loss, e.g. ``loss=torch.zeros(0)``, or
per-sample losses with ``index=torch.arange(0)``) is a counted skip:
parameters and state stay bit-identical and ``skipped_steps`` grows by one, as for a
non-finite loss (under ``nonfinite="raise"`` it raises instead). It is not an error
because under DDP one rank's batch may be empty while the others' are not; the step
then uses the others' losses.

Distributed (see :mod:`polyak._distributed`): every loss-derived scalar is the mean
over the ranks (weighted by their sample counts), sharded gradient norms are summed
over the shards, in one collective per step (ALIGPlus adds a second: the all-gather of
its (index, loss) pairs; the line searches reduce each probe loss); ``process_group=`` chooses the group,
``loss_is_global=True`` says the loss handed over is already global.

Mixed precision: with a GradScaler call ``scaler.step(opt, loss=loss)`` with the
UNSCALED loss. ALIG, SPS and ALIGPlus declare torch's ``_step_supports_amp_scaling``:
GradScaler then leaves the gradients scaled and the step folds 1/scale into its norm
and update (one pass fewer, benchmarks/results/amp_unscale_pass.md) and skips on
``found_inf``. Handing over the scaled loss (``scaler.scale(loss)``) multiplies the
Polyak step by the scale; nothing can tell it from a large loss, so it is not detected.

Optimizer-wide state (counters, ALI-G+ tables, line-search state machines) lives
in ``self.state[GLOBAL_STATE]``: torch's ``state_dict()`` keeps non-parameter keys
of ``self.state`` as they are, so it round-trips with everything else.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _distributed as D
from . import functional as F
from ._fused import check_fused_supported
from .functional import global_sq_norm

GLOBAL_STATE = "global"

NONFINITE_POLICIES = ("skip", "raise", "unchecked")

LossLike = Union[Tensor, float, int]

#: what a step reads from the loss: one scalar (ALIG, SPS, DFW, L4), per-sample losses
#: (ALIGPlus per-sample AOVs), or either (the global ALI-G+ variants)
LOSS_KINDS = ("scalar", "per_sample", "either")

#: keys that torch or the step itself writes into param groups: never hyperparameters
_STAT_KEYS = ("step_size", "unclipped_step_size", "clipped", "update_step")   # update_step: PAL's
_FOREIGN_KEYS = frozenset({"initial_lr", "param_names"})  # LR schedulers, named parameters


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN or infinite and the optimizer was told to raise."""


#: default of an argument that has no safe default (ALIG's max_lr, DFW's eta): see :func:`require`
MISSING = object()


def require(owner: str, name: str, value: Any, expected: str) -> None:
    """Raise a TypeError that says what to pass when a required argument was left out."""
    if value is MISSING:
        raise TypeError(f"{owner} needs {name}: {expected}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False, fix: str = "") -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite positive number."""
    if value is None and allow_none:
        return
    ok = _is_number(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a finite number {bound}{none}, got {value!r}. {fix}".rstrip())


def check_in_range(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = False) -> None:
    ok = _is_number(value) and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        right = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{right}, got {value!r}")


def check_finite(name: str, value: Any, fix: str = "") -> None:
    if not _is_number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}. {fix}".rstrip())


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_int(name: str, value: Any, minimum: int, fix: str = "") -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}. {fix}".rstrip())


def check_choice(name: str, value: Any, choices: Tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    return type(a) is type(b) and a == b or (_is_number(a) and _is_number(b) and float(a) == float(b))


@dataclass
class LossBatch:
    """The loss of one step as handed over: ``values`` holds the per-sample losses
    (``per_sample``, 1-D), one scalar loss (0-dim), or the k scalar losses of k
    hand-overs (1-D); the step reads their mean. ``index``: the dataset indices of
    per-sample losses, or None."""

    values: Tensor
    index: Optional[Tensor]
    per_sample: bool
    passes: int = 0   # forward+backward passes to count when the step takes it (hand-overs count at add_loss)

    def result(self) -> Tensor:
        """What step() returns: the per-sample losses, or the (mean) scalar loss."""
        if self.per_sample or self.values.dim() == 0:
            return self.values
        return self.values.mean()


@dataclass
class StepScalars:
    """What a Polyak step reads, made global: floats on the host path (CPU, eager),
    0-dim tensors otherwise. ``finite``: the loss and every gradient are finite on
    every rank and at least one sample was seen (a bool or a 0-dim bool tensor)."""

    loss_mean: Any
    loss_sum: Any
    grad_sq_norm: Any
    finite: Any
    count: Any
    below_bound: Any
    on_host: bool
    rank_counts: Optional[List[int]] = None
    #: 1 / GradScaler's scale while the gradients are still scaled (see _amp_scale), else None
    grad_factor: Any = None


class PolyakBase(torch.optim.Optimizer):
    """Base of all optimizers here. Subclasses implement ``step``.

    Args shared by all (keyword-only): ``lr`` (1.0): the multiplier on the final
    step, for LR schedulers (see the module docstring). ``nonfinite`` = "skip"
    (default: a NaN/inf loss or gradient, or an empty batch, leaves parameters and
    state bit-identical and counts the skip), "raise" (raise
    :class:`NonFiniteError`), or "unchecked" (no check, NaNs propagate as in
    torch.optim.SGD). ``foreach``: multi-tensor kernels (default True) or the
    readable per-tensor loop. ``process_group`` (None: the default group) and
    ``loss_is_global`` (False): see :mod:`polyak._distributed`.
    """

    #: hyperparameters a param group may override (besides "params" and "lr")
    group_keys: FrozenSet[str] = frozenset()
    #: hyperparameters whose checkpointed value must equal the constructor's (a
    #: different mode means a different state layout): load_state_dict refuses otherwise
    mode_keys: FrozenSet[str] = frozenset()
    #: what step() reads from the loss; see LOSS_KINDS
    loss_kind: str = "scalar"
    #: torch's GradScaler protocol: True where step() folds 1/scale in (see _amp_scale)
    _step_supports_amp_scaling: bool = False

    def __init__(
        self, params, defaults: Dict[str, Any], *, lr: float = 1.0, nonfinite: str = "skip", foreach: bool = True,
        process_group: Any = None, loss_is_global: bool = False,
    ):
        check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        check_bool("foreach", foreach)
        check_bool("loss_is_global", loss_is_global)
        _check_lr("lr", lr)
        self._process_group = process_group
        self._pending: List[LossBatch] = []
        self._fingerprint_pending = True
        defaults = dict(defaults, lr=lr, nonfinite=nonfinite, foreach=foreach, loss_is_global=loss_is_global)
        super().__init__(params, defaults)
        self.state[GLOBAL_STATE] = {
            "optimizer": type(self).__name__, "step": 0, "skipped_steps": 0, "cost": {"forward": 0, "backward": 0},
        }

    # ------------------------------------------------------------ the policy
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """torch's add_param_group, plus the constructor's checks: an unknown key, a
        per-group value of an optimizer-wide hyperparameter and an invalid value are refused."""
        if isinstance(param_group, dict):
            self._check_group_keys(param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
        except Exception:
            self.param_groups.pop()   # leave the optimizer as it was
            raise
        group.setdefault("step_size", 0.0)
        group.setdefault("unclipped_step_size", 0.0)
        group.setdefault("clipped", False)

    def _check_group_keys(self, group: Dict[str, Any]) -> None:
        name = type(self).__name__
        per_group = sorted({"lr"} | set(self.group_keys))
        for key, value in group.items():
            if key in ("params", "lr") or key in self.group_keys or key in _FOREIGN_KEYS or key in _STAT_KEYS:
                continue
            if key in self.defaults:
                if not _same(value, self.defaults[key]):
                    raise ValueError(
                        f"{name}: {key} cannot be set per group: it is one value for the whole optimizer "
                        f"(a group sets {value!r}, the optimizer has {self.defaults[key]!r}); pass it to the "
                        f"constructor. A param group may set: {', '.join(per_group)}"
                    )
                continue
            one_step = f"{name} takes one step for all parameters: " if not self.group_keys else f"{name}: "
            raise ValueError(
                f"{one_step}{key} cannot be set per group (unknown param group key {key!r}); "
                f"a param group may set: {', '.join(per_group)}. Pass hyperparameters to the constructor {name}(...) instead"
            )

    def _check_group(self, group: Dict[str, Any]) -> None:
        """Validate one param group (constructor and add_param_group); subclasses extend it."""
        _check_lr("lr (param group)", group["lr"])
        if "weight_decay" in self.group_keys:   # one rule wherever a group may set it
            check_positive("weight_decay (param group)", group["weight_decay"], allow_zero=True)
        if group.get("fused"):   # ALIG, ALIGPlus, SPS: refused here, as torch refuses fused=True it cannot honour
            check_fused_supported(type(self).__name__, group["params"])

    def _setting(self, key: str) -> Any:
        """An optimizer-wide hyperparameter (the same in every group)."""
        return self.param_groups[0][key]

    @property
    def foreach(self) -> bool:
        return self._setting("foreach")

    @property
    def nonfinite(self) -> str:
        return self._setting("nonfinite")

    @property
    def process_group(self) -> Any:
        return self._process_group

    def _record_step(self, group: Dict[str, Any], step_size, unclipped_step_size, clipped) -> None:
        """The one writer of per-group step statistics: ``step_size`` is the effective step
        (lr included), ``unclipped_step_size`` the step before any clip (lr included).
        Floats on the host path, 0-dim tensors otherwise (logging never forces a host read)."""
        group["step_size"] = step_size
        group["unclipped_step_size"] = unclipped_step_size
        group["clipped"] = clipped

    # ----------------------------------------------------- state and copies
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """torch's load_state_dict (hyperparameters come from the checkpoint), after
        checking that the state is one of this optimizer's class, mode and shape."""
        name = type(self).__name__
        saved_global = state_dict.get("state", {}).get(GLOBAL_STATE)
        if not isinstance(saved_global, dict):
            raise ValueError(
                f"{name}.load_state_dict: this is not the state of a polyak optimizer (it has no "
                f"'{GLOBAL_STATE}' entry); load a state saved by {name}.state_dict()"
            )
        saved_name = saved_global.get("optimizer", name)
        if saved_name != name:
            raise ValueError(f"{name}.load_state_dict: this state was saved by {saved_name}, not {name}; build a {saved_name} to load it")
        ignored = {"params"} | set(_STAT_KEYS) | _FOREIGN_KEYS
        expected = set(self.param_groups[0]) - ignored
        for i, saved in enumerate(state_dict["param_groups"]):
            keys = set(saved) - ignored
            if keys != expected:
                missing, extra = sorted(expected - keys), sorted(keys - expected)
                raise ValueError(
                    f"{name}.load_state_dict: param group {i} of this state does not fit {name}: "
                    f"missing {missing}, unexpected {extra}; load a state saved by {name} of this version"
                )
            for key in sorted(self.mode_keys):
                if not _same(saved[key], self.defaults[key]):
                    raise ValueError(
                        f"{name}.load_state_dict: this state was saved with {key}={saved[key]!r}, but this "
                        f"optimizer has {key}={self.defaults[key]!r}; build it with {key}={saved[key]!r} to load it"
                    )
        self._check_loaded_state(state_dict)
        super().load_state_dict(state_dict)
        # torch copies non-parameter state by reference: the checkpoint must not change as we train
        self.state[GLOBAL_STATE] = copy.deepcopy(self.state[GLOBAL_STATE])
        for group in self.param_groups:
            self._check_group(group)
        first = self.param_groups[0]
        for key in self.defaults:
            if key in first and key != "lr" and key not in self.group_keys:
                self.defaults[key] = first[key]   # groups added later get the restored value
        self._pending.clear()
        self._fingerprint_pending = True

    def _check_loaded_state(self, state_dict: Dict[str, Any]) -> None:
        """Subclasses refuse a state whose shapes cannot fit (e.g. another num_samples)."""

    def __getstate__(self) -> Dict[str, Any]:
        # torch keeps only defaults, state and param_groups; attributes that are not
        # settings (scratch buffers, a projection callable, pending losses) travel too.
        # A process group is a live handle: pickle does not carry it (deepcopy shares it).
        state = super().__getstate__()
        for key, value in self.__dict__.items():
            if key not in state and not key.startswith("_optimizer_") and key != "_process_group":
                state[key] = value
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_process_group", None)
        self.__dict__.setdefault("_pending", [])
        self.__dict__.setdefault("_fingerprint_pending", True)

    def __deepcopy__(self, memo):
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        clone._process_group = self._process_group   # the same communicator, not a copy
        return clone

    # ------------------------------------------------------------------ state
    @property
    def global_state(self) -> Dict[str, Any]:
        return self.state[GLOBAL_STATE]

    @property
    def cost(self) -> Dict[str, int]:
        """Cumulative forward and backward passes consumed by the steps so far."""
        return {k: int(v) for k, v in self.global_state["cost"].items()}

    @property
    def skipped_steps(self) -> int:
        """Steps skipped (non-finite loss or gradient, empty batch). On an accelerator the
        count is a device tensor; reading this property is the one host read."""
        return int(self.global_state["skipped_steps"])

    def _count_passes(self, forward: int, backward: int) -> None:
        cost = self.global_state["cost"]
        add_to_counter(cost, "forward", forward)
        add_to_counter(cost, "backward", backward)

    # ------------------------------------------------------------ parameters
    def _params_with_grad(self) -> List[List[Tensor]]:
        """Per group, the parameters that have a gradient; rejects sparse gradients."""
        out = []
        for group in self.param_groups:
            ps = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients: use a dense "
                        "embedding (nn.Embedding(sparse=False)) or torch.optim.SparseAdam for that parameter"
                    )
                ps.append(p)
            out.append(ps)
        return out

    def _all_params(self) -> List[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _momentum_buffers(self, params: List[Tensor]) -> List[Tensor]:
        """The momentum buffer of each parameter, created (zeros) on first use."""
        buffers = []
        for p in params:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(buf)
        return buffers

    # ------------------------------------------------------------------ loss
    def add_loss(self, loss: LossLike, index: Any = None) -> None:
        """Hand over the loss of one (micro-)batch whose backward has run; a later
        ``step()`` with no arguments uses the MEAN of the losses handed over since the
        last step (per-sample losses and their ``index`` concatenate), the rule of
        gradient accumulation. Frameworks that call ``optimizer.step()`` without
        arguments use this channel (see polyak.integrations)."""
        batch = self._parse_loss(loss, index)
        if self._pending and self._pending[0].per_sample != batch.per_sample:
            raise ValueError(
                f"{type(self).__name__}.add_loss: per-sample losses and a scalar loss were handed over for the same "
                "step; hand over the same kind every time"
            )
        self._pending.append(batch)
        self._count_passes(1, 1)

    def _parse_loss(self, loss: Any, index: Any) -> LossBatch:
        """Check one loss handed over and make it a 1-D detached floating tensor."""
        name = type(self).__name__
        if isinstance(loss, bool) or not isinstance(loss, (Tensor, float, int)):
            raise TypeError(f"{name}: loss must be a tensor or a number, got {type(loss).__name__}")
        if not isinstance(loss, Tensor):
            loss = torch.tensor(float(loss), dtype=torch.float64)
        if loss.requires_grad:
            loss = loss.detach()
        if not loss.is_floating_point():
            loss = loss.to(torch.float32)
        kind = self.loss_kind
        per_sample = kind == "per_sample" or (kind == "either" and loss.dim() == 1)
        if kind == "per_sample" and loss.dim() != 1:
            raise ValueError(
                f"{name}: loss must be the 1-D per-sample losses of the batch (reduction='none'), "
                f"got shape {tuple(loss.shape)}"
            )
        if not per_sample:
            # A 0-element loss is an empty batch (count 0): the mean of no sample does not
            # exist, and under DDP this rank must still enter the step's collective.
            if loss.numel() == 0:
                return LossBatch(loss.reshape(0), self._check_index(index, loss, per_sample), per_sample)
            if loss.numel() != 1:
                raise ValueError(
                    f"{name}: loss must be a scalar (the batch mean), got shape {tuple(loss.shape)}; "
                    "reduce it with .mean() first"
                    + (" (per-sample losses need index=)" if kind == "either" and loss.dim() == 1 else "")
                )
            if loss.dim() != 0:
                loss = loss.reshape(())
        index = self._check_index(index, loss, per_sample)
        return LossBatch(loss, index, per_sample)

    def _check_index(self, index: Any, losses: Tensor, per_sample: bool) -> Optional[Tensor]:
        """Optimizers that read dataset indices (ALIGPlus) check them here."""
        if index is not None:
            raise TypeError(f"{type(self).__name__}.step takes no index=")
        return None

    def _take_loss(self, closure: Optional[Callable], loss: Any, index: Any) -> LossBatch:
        """The loss of this step, from ``loss=``, a torch-style closure, or the hand-overs;
        counts the forward and backward passes the caller ran."""
        name = type(self).__name__
        if closure is not None:
            if not callable(closure):
                raise TypeError(f"{name}.step: closure must be callable, got {type(closure).__name__}")
            handed_over = len(self._pending)
            with torch.enable_grad():
                returned = closure()
            # A closure that hands its loss over itself (Lightning's runs training_step and
            # backward, where polyak.integrations.lightning hands the loss over) ran for its
            # side effects: the hand-overs are this step's loss, its return value is not.
            if loss is None and len(self._pending) == handed_over:
                if returned is None:
                    raise ValueError(f"{name}.step: the closure returned None; it must return the loss it backpropagated")
                if isinstance(returned, tuple):
                    if len(returned) != 2 or index is not None:
                        raise ValueError(
                            f"{name}.step: a closure may return the loss, or (per_sample_losses, index) with no "
                            f"index= given; it returned a tuple of {len(returned)}"
                        )
                    returned, index = returned
                loss = returned
        if loss is not None:
            if self._pending:
                raise ValueError(
                    f"{name}.step: losses were handed over with add_loss() and step() was given a loss too; "
                    "use one channel per step"
                )
            batch = self._parse_loss(loss, index)
            batch.passes = 1
            return batch
        if not self._pending:
            raise ValueError(
                f"{name}.step needs the loss of this batch: call opt.step(loss=loss) after loss.backward(), "
                "opt.step(closure) with a closure that computes the loss, calls backward and returns it, "
                "or opt.add_loss(loss) after each backward and then opt.step()"
            )
        if index is not None:
            raise ValueError(f"{name}.step: index= given without a loss; hand it over with add_loss(loss, index)")
        pending, self._pending = self._pending, []
        if len(pending) == 1:
            return pending[0]
        join = torch.cat if pending[0].per_sample else torch.stack   # scalar hand-overs are 0-dim
        values = join([b.values.to(pending[0].values.device) for b in pending])
        index = None if pending[0].index is None else torch.cat([b.index.to(pending[0].index.device) for b in pending])
        return LossBatch(values, index, pending[0].per_sample)

    def _open_step(self, closure, loss, index=None) -> Tuple[LossBatch, List[List[Tensor]], List[Tensor]]:
        """The opening of every step that is given the loss: ``(loss batch, parameters
        with a gradient per group, their gradients)``."""
        batch = self._take_loss(closure, loss, index)
        # The gradients are read before self.state is touched: a compiled step then sees
        # them through param_groups (guarded by shape), not through the state's keys
        # (guarded by identity: a recompile for every new gradient tensor).
        groups = self._params_with_grad()
        if not any(groups) and D.active_group(self._process_group, False) is not None:
            # fully_shard replaces every parameter: an optimizer built before it holds
            # tensors that never get a gradient and would silently never step
            raise ValueError(
                f"{type(self).__name__}.step: a loss was given but no parameter of this optimizer has a gradient "
                "(under torch.distributed); with FSDP2, build the optimizer AFTER fully_shard(model) "
                "(fully_shard replaces the parameters), from model.parameters()"
            )
        self._count_passes(batch.passes, batch.passes)
        return batch, groups, [p.grad for ps in groups for p in ps]

    def _begin_loss_step(self, closure, loss) -> Tuple[Tensor, List[List[Tensor]], List[Tensor]]:
        """For L4: ``(mean loss as a 0-dim tensor, params per group, grads)``."""
        batch, groups, grads = self._open_step(closure, loss)
        return batch.result(), groups, grads

    # ------------------------------------------------- the step's one exchange
    def _on_host(self, device: torch.device) -> bool:
        """The one float-or-tensor decision: on CPU in eager mode a host read is free and
        Python floats save the step a dozen tiny kernels (measured: see
        benchmarks/results/host_float_path.md); accelerators and compiled steps keep
        every scalar a 0-dim tensor, so the step never waits on the host."""
        return device.type == "cpu" and not torch.compiler.is_compiling()

    def _step_scalars(
        self, batch: LossBatch, grads: List[Tensor], *, lower_bound: Optional[float] = None,
        rank_counts: bool = False,
    ) -> StepScalars:
        """The loss mean, the global ||g||^2 and the finite flag of this step. Under
        torch.distributed they are made global in ONE all-reduce of a packed tensor
        ``[loss sum, count, sharded ||g||^2 share, non-finite flag, samples below
        lower_bound, fingerprint, fingerprint^2, (per-rank counts)]``; the fingerprint
        of the hyperparameters is packed on the first step only (zeros later).
        ``rank_counts``: also exchange every rank's sample count (ALIGPlus gathers its
        per-sample losses with them)."""
        loss_is_global = self._setting("loss_is_global")
        group = D.active_group(self._process_group, False)
        if group is None:   # no DTensor without torch.distributed: skip the sharding checks
            plain, sharded = global_sq_norm(grads, foreach=self.foreach), None
        else:
            plain, sharded = D.sharded_sq_norm_partial(grads, group, foreach=self.foreach)
            if loss_is_global and sharded is None:
                group = None   # a global loss and replicated gradients: nothing to reduce
        values = batch.values
        count = float(values.numel())
        device = (plain if plain is not None else sharded).device
        inv_scale, found_inf = self._amp_scale()
        if inv_scale is not None:   # GradScaler's gradients are scale * g: ||g||^2 = ||scale g||^2 / scale^2
            factor = (inv_scale * inv_scale).to(device)
            plain = None if plain is None else plain * factor.to(plain.dtype)
            sharded = None if sharded is None else sharded * factor.to(sharded.dtype)
        if group is None:
            if self._on_host(device):
                if count == 1:
                    loss_sum = low = values.item()
                elif count:  # per-sample losses or k hand-overs: both ends for the guard, one read
                    ends = torch.aminmax(values)
                    low, high, loss_sum = torch.stack([ends.min, ends.max, values.sum()]).tolist()
                    loss_sum = loss_sum if math.isfinite(high) else high   # NaN/inf anywhere: not finite
                else:
                    loss_sum = low = 0.0
                gsq = plain.item()
                finite = count > 0 and math.isfinite(loss_sum) and math.isfinite(low) and math.isfinite(gsq)
                finite = finite and (found_inf is None or found_inf.item() == 0)
                below = finite and lower_bound is not None and low < _rounded(lower_bound, values.dtype)
                return StepScalars(loss_sum / count if count else math.nan, loss_sum, gsq, finite, count, below, True,
                                   grad_factor=None if inv_scale is None else inv_scale.item())
            loss_sum = values.sum()
            finite = torch.isfinite(loss_sum) & torch.isfinite(plain) & (count > 0)
            if found_inf is not None:
                finite = finite & (found_inf.to(device) == 0).reshape(())
            below = (values < lower_bound).any() if lower_bound is not None else torch.zeros((), dtype=torch.bool, device=device)
            return StepScalars(loss_sum / max(count, 1.0) if count else loss_sum * math.nan, loss_sum, plain, finite, count,
                               below, False, grad_factor=None if inv_scale is None else inv_scale.to(device).reshape(()))

        world = D.group_size(group)
        dtype = torch.float32 if device.type == "mps" else torch.float64
        zero = torch.zeros((), dtype=dtype, device=device)
        # loss_is_global: every rank holds the global loss already; rank 0 alone contributes it
        contributes = not loss_is_global or D.group_rank(group) == 0
        fp = D.fingerprint(self._fingerprint_settings()) if self._fingerprint_pending else 0.0
        self._fingerprint_pending = False
        head = torch.tensor([count if contributes else 0.0, fp, fp * fp], dtype=dtype).to(device)
        slots = [
            values.sum(dtype=dtype).to(device) if contributes else zero,
            head[0],
            zero if sharded is None else sharded.to(device, dtype),
            (zero if plain is None else (~torch.isfinite(plain)).to(dtype))
            + (0.0 if found_inf is None else found_inf.to(device, dtype).reshape(())),
            (values < lower_bound).sum().to(device, dtype) if lower_bound is not None and contributes else zero,
            head[1], head[2],
        ]
        if rank_counts:
            own = torch.zeros(world, dtype=dtype, device=device)
            own[D.group_rank(group)] = values.numel()
            slots.extend(own.unbind())
        packed = D.all_reduce_sum_(torch.stack(slots), group)
        plain = zero if plain is None else plain
        if self._on_host(device):
            reduced = packed.tolist()
            loss_sum, count, sharded_sum, flag, below = reduced[:5]
            D.check_fingerprints(reduced[5], reduced[6], world, type(self).__name__)
            counts = [int(c) for c in reduced[7:]] if rank_counts else None
            gsq = plain.item() + sharded_sum
            finite = count > 0 and flag == 0 and math.isfinite(loss_sum) and math.isfinite(gsq)
            return StepScalars(loss_sum / count if count else math.nan, loss_sum, gsq, finite, count, below > 0, True, counts,
                               None if inv_scale is None else inv_scale.item())
        if fp:  # the first step reads the fingerprints back: once per run
            D.check_fingerprints(*packed[5:7].tolist(), world, type(self).__name__)
        counts = [int(c) for c in packed[7:].tolist()] if rank_counts else None
        loss_sum, count, sharded_sum, flag, below = packed[:5].unbind()
        gsq = plain.to(dtype) + sharded_sum
        finite = (count > 0) & (flag == 0) & torch.isfinite(loss_sum) & torch.isfinite(gsq)
        return StepScalars(loss_sum / count, loss_sum, gsq, finite, count, below > 0, False, counts,
                           None if inv_scale is None else inv_scale.to(device).reshape(()))

    def _amp_scale(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """``(1 / scale, found_inf)`` while GradScaler.step runs this step under torch's
        ``_step_supports_amp_scaling`` protocol (it sets ``grad_scale`` and ``found_inf``
        on the optimizer): the gradients are still scaled, and the step folds 1/scale
        into its norm and its update instead of a separate unscale pass. ``grad_scale``
        is None after a user's ``scaler.unscale_(opt)`` (gradients already unscaled)."""
        scale = self.__dict__.get("grad_scale")
        found_inf = self.__dict__.get("found_inf")
        return (None if scale is None else scale.double().reciprocal()), found_inf

    def _global_sq_norm(self, tensors: List[Tensor]) -> Tensor:
        """||x||^2 over ``tensors`` (parameters: ALI-G's ball), summed over the shards of
        sharded ones (one all-reduce, only when some are sharded)."""
        group = D.active_group(self._process_group, False)
        plain, sharded = D.sharded_sq_norm_partial(tensors, group, foreach=self.foreach)
        if sharded is None:
            return plain
        sharded = D.all_reduce_sum_(sharded.reshape(1).to(torch.float64).clone(), group)[0]
        return sharded if plain is None else plain.to(sharded.device, sharded.dtype) + sharded

    def _polyak_update(
        self, groups: List[List[Tensor]], gap, grad_sq_norm, delta: float, keep: Optional[Tensor], *,
        max_lr: Callable[[Dict[str, Any]], Optional[float]], adjusted: bool = False, grad_factor=None,
    ) -> None:
        """The update of the ALI-G family, group by group: the clipped Polyak step with
        the group's ``max_lr``, times the group's ``lr`` (after the clip), through
        :func:`polyak.functional.alig_update_` (weight decay and momentum per group)."""
        for group, params in zip(self.param_groups, groups):
            step, unclipped, clipped = F.polyak_step_size(gap, grad_sq_norm, delta, max_lr(group))
            step, unclipped = times_lr(step, group["lr"]), times_lr(unclipped, group["lr"])
            self._record_step(group, step, unclipped, clipped)
            if not params:
                continue
            momentum = group.get("momentum", 0.0)
            buffers = self._momentum_buffers(params) if momentum > 0 else None
            F.alig_update_(
                params, [p.grad for p in params], buffers, step, momentum, group.get("weight_decay", 0.0),
                adjusted=adjusted, foreach=self.foreach, keep=keep, grad_factor=grad_factor,
                fused=group.get("fused", False),
            )

    def _fingerprint_settings(self) -> Any:
        """What must agree across ranks: every hyperparameter of every group."""
        return [
            sorted((k, repr(v)) for k, v in g.items() if k not in ("params", "param_names") and k not in _STAT_KEYS)
            for g in self.param_groups
        ]

    def _skip_step(self, scalars: StepScalars) -> bool:
        """True: this step must change nothing (it was counted as skipped, or it raised).

        Host path: a non-finite loss or gradient, or an empty batch, is skipped and
        counted (or raises under nonfinite='raise'); a loss below lower_bound raises.
        An empty batch is skipped even under 'unchecked' (there is no loss to use).
        Tensor path: the decision is left to the branch-free update (see
        :meth:`_keep_mask`), except under nonfinite='raise' (one host read); the
        lower-bound check needs a host read, so it is not made there (a loss below
        the bound gives a step of 0 through the clamp)."""
        policy = self.nonfinite
        if scalars.on_host or not isinstance(scalars.count, Tensor):
            if scalars.count == 0 and policy != "raise":
                add_to_counter(self.global_state, "skipped_steps")
                return True
        if scalars.on_host:
            if policy != "unchecked" and not scalars.finite:
                self._nonfinite_step()
                return True
            if policy != "unchecked" and scalars.below_bound:
                self._below_bound_error()
            return False
        if policy == "raise":
            finite, below = torch.stack([torch.as_tensor(scalars.finite), torch.as_tensor(scalars.below_bound)]).tolist()
            if not finite:
                self._nonfinite_step()
            if below:
                self._below_bound_error()
        return False

    def _keep_mask(self, scalars: StepScalars) -> Optional[Tensor]:
        """The branch-free skip of the tensor path under nonfinite='skip': a 0-dim bool
        tensor, True where the step applies (None: nothing to mask). The skip counter
        grows on the device; nothing is read back."""
        if scalars.on_host or self.nonfinite != "skip":
            return None
        ok = scalars.finite
        add_to_counter(self.global_state, "skipped_steps", (~ok).to(torch.int64))
        return ok

    def _nonfinite_step(self) -> None:
        if self.nonfinite == "raise":
            raise NonFiniteError(
                f"{type(self).__name__}.step: the loss or a gradient is NaN or infinite, or the batch is empty; "
                "the step was not applied (nonfinite='skip' skips such steps instead)"
            )
        add_to_counter(self.global_state, "skipped_steps")

    def _below_bound_error(self) -> None:
        raise ValueError(
            f"{type(self).__name__}.step: a loss is below lower_bound={self._setting('lower_bound'):.6g}; "
            "set lower_bound to a true lower bound of the loss (0 for cross-entropy, hinge and squared losses)"
        )

    # ----------------------------------------------------------------- guard
    def _guard(self, loss, grad_sq_norm, lower_bound: Optional[Union[float, Tensor]]) -> bool:
        """The line searches' and L4's guard (one host read of two flags for tensors).
        True means: skip this step. A loss below the lower bound raises."""
        if self.nonfinite == "unchecked":
            return False
        if isinstance(loss, Tensor) or isinstance(grad_sq_norm, Tensor):
            device = grad_sq_norm.device if isinstance(grad_sq_norm, Tensor) else loss.device
            loss_t = torch.as_tensor(loss, device=device)
            finite = torch.isfinite(loss_t).all() & torch.isfinite(torch.as_tensor(grad_sq_norm, device=device))
            below = (loss_t < lower_bound).any() & finite if lower_bound is not None else torch.zeros((), dtype=torch.bool, device=device)
            finite_ok, below_bound = torch.stack([finite, below]).tolist()
        else:
            finite_ok = math.isfinite(loss) and math.isfinite(grad_sq_norm)
            below_bound = finite_ok and lower_bound is not None and loss < lower_bound
        if not finite_ok:
            self._nonfinite_step()
            return True
        if below_bound:
            lowest = float(torch.as_tensor(loss).min())
            bound = float(torch.as_tensor(lower_bound).min())
            raise ValueError(
                f"{type(self).__name__}.step: loss {lowest:.6g} is below lower_bound={bound:.6g}; "
                "set lower_bound to a true lower bound of the loss (0 for cross-entropy, hinge and squared losses)"
            )
        return False


def add_to_counter(container: Dict[str, Any], key: str, amount: Any = 1) -> None:
    """``container[key] += amount`` for a counter of the optimizer state. Inside a
    compiled step a Python int would be baked into the graph (a recompile per step), so
    there the counter becomes a 0-dim tensor; it stays one afterwards. Read counters
    with ``int(...)`` (the properties ``cost`` and ``skipped_steps`` do)."""
    value = container[key]
    if isinstance(value, Tensor) or isinstance(amount, Tensor) or torch.compiler.is_compiling():
        container[key] = torch.as_tensor(value) + amount
    else:
        container[key] = value + amount


@functools.lru_cache(maxsize=64)
def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``: comparing a loss read back from that dtype with it
    gives the answer of the tensor comparison ``losses < value`` (made in the losses' dtype)."""
    return float(torch.tensor(value, dtype=dtype))


def lr_is_one(lr: Any) -> bool:
    """The group's ``lr`` is the number 1: the step is left as it is (bit-identical)."""
    return isinstance(lr, (int, float)) and lr == 1.0


def times_lr(value: Any, lr: Any) -> Any:
    """``value * lr``: the group's ``lr`` applied to a step (after any clip), unchanged when lr is 1."""
    return value if lr_is_one(lr) else value * lr


def _check_lr(name: str, value: Any) -> None:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        return
    if not _is_number(value) or value < 0:
        raise ValueError(
            f"{name} must be a finite number >= 0, got {value!r}: it multiplies the step (1.0 leaves it unchanged)"
        )


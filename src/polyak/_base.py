"""What every optimizer of the package shares: input checks, the non-finite guard,
optimizer-wide state and cost counters.

Optimizer-wide state (counters, ALI-G+ tables, line-search state machines) lives
in ``self.state[GLOBAL_STATE]``: torch's ``state_dict()`` keeps non-parameter keys
of ``self.state`` as they are, so it round-trips with everything else.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor


GLOBAL_STATE = "global"

NONFINITE_POLICIES = ("skip", "raise", "unchecked")

LossLike = Union[Tensor, float, int]


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN or infinite and the optimizer was told to raise."""


#: default of an argument that has no safe default (ALIG's max_lr, DFW's eta): see :func:`require`
MISSING = object()


def require(owner: str, name: str, value: Any, expected: str) -> None:
    """Raise a TypeError that says what to pass when a required argument was left out."""
    if value is MISSING:
        raise TypeError(f"{owner} needs {name}: {expected}")


def check_positive(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False, fix: str = "") -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite positive number."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a finite number {bound}{none}, got {value!r}. {fix}".rstrip())


def check_in_range(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        right = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{right}, got {value!r}")


def check_int(name: str, value: Any, minimum: int, fix: str = "") -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}. {fix}".rstrip())


def check_choice(name: str, value: Any, choices: Tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class PolyakBase(torch.optim.Optimizer):
    """Base of all optimizers here. Subclasses implement ``step``.

    Args shared by all: ``nonfinite`` = "skip" (default: a NaN/inf loss or
    gradient leaves parameters and state bit-identical and counts the skip),
    "raise" (raise :class:`NonFiniteError`), or "unchecked" (no check and no
    device-to-host read at all: the fastest accelerator step, NaNs propagate as
    in torch.optim.SGD). ``foreach``: multi-tensor kernels (default True) or the
    readable per-tensor loop.
    """

    #: forward and backward passes one step consumes (including the ones the
    #: user runs to provide loss and gradients); line searches override.
    passes_per_step: Tuple[int, int] = (1, 1)

    def __init__(self, params, defaults: Dict[str, Any], *, nonfinite: str = "skip", foreach: bool = True):
        check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        if not isinstance(foreach, bool):
            raise TypeError(f"foreach must be True or False, got {foreach!r}")
        defaults = dict(defaults, step_size=0.0)
        super().__init__(params, defaults)
        self.nonfinite = nonfinite
        self.foreach = foreach
        self.state[GLOBAL_STATE] = {"step": 0, "skipped_steps": 0, "cost": {"forward": 0, "backward": 0}}

    # ------------------------------------------------------------------ state
    @property
    def global_state(self) -> Dict[str, Any]:
        return self.state[GLOBAL_STATE]

    @property
    def cost(self) -> Dict[str, int]:
        """Cumulative forward and backward passes consumed by the steps so far."""
        return dict(self.global_state["cost"])

    @property
    def skipped_steps(self) -> int:
        return self.global_state["skipped_steps"]

    def _count_passes(self, forward: int, backward: int) -> None:
        cost = self.global_state["cost"]
        cost["forward"] += forward
        cost["backward"] += backward

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

    # ------------------------------------------------------------------ loss
    def _loss_tensor(self, loss: Optional[LossLike], closure: Optional[Callable], *, per_sample: bool = False) -> Tensor:
        """The loss of this step as a tensor, from ``loss=`` or a torch-style closure.

        The closure follows torch's convention: it runs forward AND backward and
        returns the loss. Never reads a tensor loss back to the host.
        """
        name = type(self).__name__
        if closure is not None and loss is not None:
            raise ValueError(f"{name}.step: pass either a closure or loss=, not both")
        if closure is not None:
            if not callable(closure):
                raise TypeError(f"{name}.step: closure must be callable, got {type(closure).__name__}")
            with torch.enable_grad():
                loss = closure()
            if loss is None:
                raise ValueError(f"{name}.step: the closure returned None; it must return the loss it backpropagated")
        if loss is None:
            raise ValueError(
                f"{name}.step needs the loss of this batch: call opt.step(loss=loss) after loss.backward(), "
                "or opt.step(closure) with a closure that computes the loss, calls backward and returns the loss"
            )
        if isinstance(loss, bool) or not isinstance(loss, (Tensor, float, int)):
            raise TypeError(f"{name}.step: loss must be a tensor or a number, got {type(loss).__name__}")
        if not isinstance(loss, Tensor):
            loss = torch.tensor(float(loss), dtype=torch.float64)
        if loss.requires_grad:
            loss = loss.detach()
        if per_sample:
            if loss.dim() != 1:
                raise ValueError(
                    f"{name}.step: loss must be the 1-D per-sample losses of the batch (reduction='none'), "
                    f"got shape {tuple(loss.shape)}"
                )
        elif loss.numel() != 1:
            raise ValueError(
                f"{name}.step: loss must be a scalar (the batch mean), got shape {tuple(loss.shape)}; "
                "reduce it with .mean() first"
            )
        elif loss.dim() != 0:
            loss = loss.reshape(())
        if not loss.is_floating_point():
            loss = loss.to(torch.float32)
        return loss

    # ----------------------------------------------------------------- guard
    def _guard(self, loss, grad_sq_norm, lower_bound: Optional[Union[float, Tensor]]) -> bool:
        """Check loss and gradients before anything changes. True means: skip this step.

        Floats (the CPU path) are checked directly; tensors cost one
        device-to-host read of two flags; nonfinite="unchecked" reads nothing.
        A loss below the lower bound is a user error (wrong ``lower_bound``, or
        a loss that can go negative) and raises.
        """
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
            if self.nonfinite == "raise":
                raise NonFiniteError(
                    f"{type(self).__name__}.step: the loss or a gradient is NaN or infinite; "
                    "the step was not applied (nonfinite='skip' skips such steps instead)"
                )
            self.global_state["skipped_steps"] += 1
            return True
        if below_bound:
            lowest = float(torch.as_tensor(loss).min())
            bound = float(torch.as_tensor(lower_bound).min())
            raise ValueError(
                f"{type(self).__name__}.step: loss {lowest:.6g} is below lower_bound={bound:.6g}; "
                "set lower_bound to a true lower bound of the loss (0 for cross-entropy, hinge and squared losses)"
            )
        return False

    def _begin_loss_step(self, closure, loss) -> Tuple[Tensor, List[List[Tensor]], List[Tensor]]:
        """The opening of every step that is given the loss (ALI-G, SPS, L4): the
        loss from ``loss=`` or a torch-style closure, the passes the caller ran,
        and the gradients. Returns ``(loss, params_per_group, grads)``; ``grads``
        is empty when no parameter has a gradient (then nothing moves)."""
        loss = self._loss_tensor(loss, closure)
        self._count_passes(1, 1)
        groups = self._params_with_grad()
        return loss, groups, [p.grad for ps in groups for p in ps]

    def _set_step_stats(self, group: Dict[str, Any], step, unclipped, clipped) -> None:
        """Observability: what the last step did, per group (floats on the CPU path,
        0-dim tensors on accelerators so that logging never forces a host read)."""
        group["step_size"] = step
        group["unclipped_step_size"] = unclipped
        group["clipped"] = clipped


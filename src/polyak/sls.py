r"""SLS: stochastic line search (SGD with Armijo or Goldstein backtracking).

Vaswani, Mishkin, Laradji, Schmidt, Gidel, Lacoste-Julien. "Painless Stochastic
Gradient: Interpolation, Line-Search, and Convergence Rates", NeurIPS 2019.

Each step searches the step size on THIS batch, along :math:`-g` with
:math:`\|g\|^2` ONE squared norm over all parameters of all groups:

.. math::
    \eta \leftarrow \min(\mathrm{reset}(\eta), \eta_{max}), \qquad
    \text{Armijo:}\ \ \ell(w - \eta g) \le \ell(w) - c\,\eta\,\|g\|^2

Armijo: try :math:`\eta`, shrink :math:`\eta \leftarrow \beta\eta` until the
condition holds (at most ``max_tries`` trial forwards), then
:math:`w \leftarrow w - \eta g`; :math:`\eta` carries over to the next step.

Goldstein adds the upper condition
:math:`\ell(w - \eta g) \ge \ell(w) - (1-c)\,\eta\,\|g\|^2`: when only Armijo holds the
step was too short and :math:`\eta \leftarrow \min(\eta \cdot \text{grow}, \eta_{max})`; when
only the upper one holds it was too long and :math:`\eta \leftarrow \max(\beta\eta, 10^{-8})`;
both: accept.

``reset`` (the authors' code numbering; ``gamma`` the growth factor, :math:`n_b` =
``n_batches_per_epoch``): 0 keeps :math:`\eta`; 1 (default, the paper's heuristic)
:math:`\eta \leftarrow \eta\,\gamma^{1/n_b}`; 2 restarts from ``init_step_size`` every
step. (An undocumented option 3, :math:`\eta\gamma^{0.05}`, lived briefly in the code
and is not offered.)

Momentum ("SLS Polyak" of the ALI-G+ tables, the authors' ``SlsAcc`` with
``acceleration_method="polyak"``): the line search runs on the plain gradient step
as above, then heavy-ball momentum is added,
:math:`w_{t+1} = w_t - \eta g + \mu (w_t - w_{t-1})`; the buffer holds the last
displacement :math:`w_t - w_{t-1}` (zero at the first step).

Reference behaviour kept: no search (and no move, momentum aside) when
:math:`\|g\| < 10^{-8}`; an Armijo search that fails ``max_tries`` times moves by
:math:`10^{-6}` along :math:`-g` and keeps the shrunk :math:`\eta`; a Goldstein
search that never meets both conditions stays at its last trial point.

Deviations, all deliberate:

* ONE search over all param groups with the global :math:`\|g\|^2` (the authors'
  ``Sls`` searches each group separately with that group's norm but the whole
  model's loss, sharing one step size);
* the growth of ``reset=1`` is capped at ``eta_max`` for both conditions, as in the
  authors' first release and the paper's :math:`\eta_{max}`; their later code caps
  only Goldstein: ``eta_max=None`` reproduces its Armijo;
* trial points are :math:`w_0 - \eta g` from a saved copy of :math:`w_0` (no drift
  across trials), and parameters come back bit-identical on a skipped step;
* Goldstein treats a NaN trial loss as "too long" and shrinks (the reference raises
  a bare ``ValueError``); Armijo backtracks from it, as the reference does;
* Goldstein stops as soon as the step size can no longer change (at ``eta_max`` or
  the 1e-8 floor): the reference repeats the identical trial until ``max_tries``,
  same result, more forwards.

Closure contract (shared by all line searches, see :mod:`polyak._closure`):
``opt.step(closure)``, ``closure()`` returns this batch's mean loss WITHOUT calling
backward; every trial forward replays the same randomness and leaves BatchNorm
running statistics untouched. Cost: 1 backward and 1 + (number of trials)
forwards per step, all counted in ``opt.cost``.

``param_groups[i]["step_size"]`` is the step size applied this step,
``global_state["search_step_size"]`` the one carried to the next search and
``global_state["trials"]`` the trial forwards of the last step.

torch.optim conventions, not in the paper (the defaults leave its update
unchanged): the search runs on the plain step; the update then applied is
:math:`w \leftarrow w_0 - \mathrm{lr}\,\eta\,(g + \lambda w_0)` (then the momentum
term), with ``lr`` the group's ``"lr"`` (1.0) and ``weight_decay``
:math:`\lambda` (0, per group: timm's no-decay groups) on the start weights, seen
by neither the search nor the loss. Under torch.distributed every trial loss
is the mean over the ranks and :math:`\|g\|^2` sums the shards of sharded (FSDP2)
gradients, so every rank accepts the same step size after the same trials.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor

from . import functional as F
from ._base import PolyakBase, check_choice, check_in_range, check_int, check_positive
from ._line_search import (
    Rollback, StartPoint, begin_line_search, compute_view, global_loss, groups_of, plain_update,
    update_,
)
from ._registry import OptimizerSpec, register

CONDITIONS = ("armijo", "goldstein")
RESET_OPTIONS = (0, 1, 2)

# Reference constants: below this gradient norm no search runs; a failed Armijo
# search moves by the fallback step; Goldstein never shrinks below the floor.
_MIN_GRAD_NORM = 1e-8
_FALLBACK_STEP_SIZE = 1e-6
_GOLDSTEIN_MIN_STEP_SIZE = 1e-8


def reset_step_size(step_size: float, reset: int, gamma: float, n_batches_per_epoch: int,
                    init_step_size: float, eta_max) -> float:
    """The step size a search starts from (see the module docstring)."""
    if reset == 1:
        step_size = step_size * gamma ** (1.0 / n_batches_per_epoch)
    elif reset == 2:
        step_size = init_step_size
    return step_size if eta_max is None else min(step_size, eta_max)


def armijo_holds(trial_loss: float, loss: float, step_size: float, grad_sq_norm: float, c: float) -> bool:
    """Sufficient decrease; False for a NaN trial loss."""
    return trial_loss <= loss - c * step_size * grad_sq_norm


def goldstein_upper_holds(trial_loss: float, loss: float, step_size: float, grad_sq_norm: float, c: float) -> bool:
    """The step is not too short; False for a NaN trial loss."""
    return trial_loss >= loss - (1.0 - c) * step_size * grad_sq_norm


class SLS(PolyakBase):
    """SGD with a stochastic Armijo or Goldstein line search (Vaswani et al., 2019).

    Args:
        params: parameters or param groups; ONE search runs over all groups, so the
            hyperparameters below are optimizer-wide (not per group).
        condition: "armijo" (default) or "goldstein".
        init_step_size: the first step size tried (reference: 1).
        c: the sufficient-decrease constant, in (0, 1) for Armijo, (0, 0.5) for
            Goldstein (reference: 0.1).
        beta: the backtracking factor, in (0, 1) (reference: 0.9).
        gamma: the growth factor of ``reset=1``, >= 1 (reference: 2).
        reset: 0, 1 or 2, how a search starts from the last step size (see above).
        eta_max: cap on the step size a search starts from and on Goldstein's growth
            (reference: 10); None for no cap.
        n_batches_per_epoch: n_b of ``reset=1`` (the number of steps per epoch).
        momentum: heavy-ball momentum added after the search (0 = plain SLS; the
            authors' "SLS Polyak" uses 0.6).
        grow_factor: Goldstein's growth when only Armijo holds (reference: 2).
        max_tries: the most trial forwards of one search (reference: 100).
        weight_decay: decoupled, per group: the update is
            ``w <- w0 - lr * eta * (g + weight_decay * w0)`` with eta the accepted step
            size (the search itself measures the loss without it).
        lr: multiplier on the final step, per group (the search itself uses lr 1), for LR schedulers.
        nonfinite, foreach: see :class:`polyak._base.PolyakBase`; checked on the loss
            and gradient at the start point (a NaN trial loss just fails its trial).
        process_group, loss_is_global: under torch.distributed every trial loss is
            averaged over the ranks of ``process_group`` (default: all), so every rank
            accepts the same step size after the same number of trials;
            ``loss_is_global=True`` if the closure already returns the global loss.

    Complex parameters are searched as their real views (torch.optim's convention).
    A closure that raises leaves parameters and state exactly as before the step
    (see :class:`polyak._line_search.Rollback`).

    Example::

        opt = SLS(model.parameters(), n_batches_per_epoch=len(loader))
        opt.step(lambda: criterion(model(x), y))     # no backward in the closure
    """

    mode_keys = frozenset({"condition"})
    group_keys = frozenset({"weight_decay"})  # the only setting that can differ per group (besides lr)

    def __init__(
        self,
        params,
        condition: str = "armijo",
        init_step_size: float = 1.0,
        c: float = 0.1,
        beta: float = 0.9,
        gamma: float = 2.0,
        reset: int = 1,
        eta_max: float = 10.0,
        n_batches_per_epoch: int = 500,
        momentum: float = 0.0,
        grow_factor: float = 2.0,
        max_tries: int = 100,
        weight_decay: float = 0.0,
        *,
        lr: float = 1.0,
        nonfinite: str = "skip",
        foreach: bool = True,
        process_group=None,
        loss_is_global: bool = False,
    ):
        check_choice("condition", condition, CONDITIONS)
        check_positive("init_step_size", init_step_size, fix="It is the first step size tried (reference: 1).")
        if condition == "goldstein":
            if not (isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c < 0.5):
                raise ValueError(
                    f"c must be in (0, 0.5) for the Goldstein condition, got {c!r}: with c >= 0.5 no step size "
                    "meets both conditions (reference: 0.1)"
                )
        else:
            check_in_range("c", c, 0.0, 1.0)
            if c == 0:
                raise ValueError("c must be in (0, 1), got 0: c = 0 accepts any step that does not increase the loss (reference: 0.1)")
        check_in_range("beta", beta, 0.0, 1.0)
        if beta == 0:
            raise ValueError("beta must be in (0, 1), got 0: it is the backtracking factor (reference: 0.9)")
        if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and math.isfinite(gamma) and gamma >= 1):
            raise ValueError(f"gamma must be a finite number >= 1 (the growth factor of reset=1, reference: 2), got {gamma!r}")
        if reset not in RESET_OPTIONS or isinstance(reset, bool):
            raise ValueError(f"reset must be one of {RESET_OPTIONS} (0 keep, 1 grow by gamma^(1/n_batches_per_epoch), 2 restart from init_step_size), got {reset!r}")
        check_positive("eta_max", eta_max, allow_none=True, fix="It caps the step size (reference: 10).")
        check_int("n_batches_per_epoch", n_batches_per_epoch, 1, "It is the number of steps per epoch, e.g. len(train_loader).")
        check_in_range("momentum", momentum, 0.0, 1.0)
        if not (isinstance(grow_factor, (int, float)) and not isinstance(grow_factor, bool) and math.isfinite(grow_factor) and grow_factor > 1):
            raise ValueError(f"grow_factor must be a finite number > 1 (Goldstein's growth, reference: 2), got {grow_factor!r}")
        check_int("max_tries", max_tries, 1, "It is the most trial forwards per search (reference: 100).")
        check_positive("weight_decay", weight_decay, allow_zero=True)
        defaults = dict(
            condition=condition, init_step_size=float(init_step_size), c=float(c), beta=float(beta), gamma=float(gamma),
            reset=int(reset), eta_max=None if eta_max is None else float(eta_max),
            n_batches_per_epoch=int(n_batches_per_epoch), momentum=float(momentum), grow_factor=float(grow_factor),
            max_tries=int(max_tries), weight_decay=weight_decay,
        )
        super().__init__(params, defaults, lr=lr, nonfinite=nonfinite, foreach=foreach,
                         process_group=process_group, loss_is_global=loss_is_global)
        self.global_state["search_step_size"] = self.init_step_size
        self.global_state["trials"] = 0
        self._start_point = StartPoint(foreach)

    # ONE search over all groups: every search constant is optimizer-wide
    condition = property(lambda self: self._setting("condition"))
    init_step_size = property(lambda self: self._setting("init_step_size"))
    c = property(lambda self: self._setting("c"))
    beta = property(lambda self: self._setting("beta"))
    gamma = property(lambda self: self._setting("gamma"))
    reset = property(lambda self: self._setting("reset"))
    eta_max = property(lambda self: self._setting("eta_max"))
    n_batches_per_epoch = property(lambda self: self._setting("n_batches_per_epoch"))
    momentum = property(lambda self: self._setting("momentum"))
    grow_factor = property(lambda self: self._setting("grow_factor"))
    max_tries = property(lambda self: self._setting("max_tries"))

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        """One SLS step. ``closure()`` returns this batch's mean loss without backward.
        Returns the loss at the start point (the mean over ranks under torch.distributed)."""
        with Rollback(self) as rollback:
            return self._search(closure, loss, rollback)

    def _search(self, closure, loss, rollback: Rollback):
        probe, loss_0, params, grads, grad_sq_norm_t = begin_line_search(self, closure, loss, "at trial points")
        if not params:
            return loss_0

        step_size = reset_step_size(
            self.global_state["search_step_size"], self.reset, self.gamma, self.n_batches_per_epoch,
            self.init_step_size, self.eta_max,
        )
        # The search branches on every trial loss: the host reads are inherent to it.
        loss_value, grad_sq_norm = float(loss_0), float(grad_sq_norm_t)
        start_points = self._start_point.save(params)
        rollback.moving(params, start_points)
        applied, trials = 0.0, 0
        if math.sqrt(grad_sq_norm) >= _MIN_GRAD_NORM:
            search = self._armijo if self.condition == "armijo" else self._goldstein
            step_size, applied, trials = search(probe, params, grads, start_points, loss_value, grad_sq_norm, step_size)
            groups = groups_of(self)
            if not plain_update(groups):  # lr and weight decay change the final update, not the search
                F.copy_all_(params, start_points, self.foreach)
                update_(self, params, grads, applied, groups)
        if self.momentum > 0:  # after the last trial: the buffers change in place (see Rollback)
            originals = [p for ps in self._params_with_grad() for p in ps]
            self._add_momentum(originals, params, start_points)

        self.global_state["search_step_size"] = step_size
        self.global_state["trials"] = trials
        for group in self.param_groups:
            self._record_step(group, group["lr"] * applied, group["lr"] * applied, False)
        self.global_state["step"] += 1
        return loss_0

    # ------------------------------------------------------------------ searches
    def _try(self, probe, params, grads, start_points, step_size: float) -> float:
        F.copy_all_(params, start_points, self.foreach)
        F.sgd_step_(params, grads, step_size, foreach=self.foreach)
        return float(global_loss(self, probe.loss()))

    def _armijo(self, probe, params, grads, start_points, loss, grad_sq_norm, step_size):
        """Returns (step size carried on, step size applied, trials)."""
        for trial in range(1, self.max_tries + 1):
            trial_loss = self._try(probe, params, grads, start_points, step_size)
            if armijo_holds(trial_loss, loss, step_size, grad_sq_norm, self.c):
                return step_size, step_size, trial
            step_size *= self.beta
        # Reference fallback: a tiny step, while the shrunk step size carries on.
        F.copy_all_(params, start_points, self.foreach)
        F.sgd_step_(params, grads, _FALLBACK_STEP_SIZE, foreach=self.foreach)
        return step_size, _FALLBACK_STEP_SIZE, self.max_tries

    def _goldstein(self, probe, params, grads, start_points, loss, grad_sq_norm, step_size):
        """Returns (step size carried on, step size applied, trials)."""
        for trial in range(1, self.max_tries + 1):
            tried = step_size
            trial_loss = self._try(probe, params, grads, start_points, tried)
            sufficient = armijo_holds(trial_loss, loss, tried, grad_sq_norm, self.c)
            long_enough = goldstein_upper_holds(trial_loss, loss, tried, grad_sq_norm, self.c)
            if sufficient and long_enough:
                return tried, tried, trial
            if sufficient:  # decreased by more than (1-c)*eta*||g||^2: too short
                step_size = tried * self.grow_factor
                if self.eta_max is not None:
                    step_size = min(step_size, self.eta_max)
            else:  # too long, or a NaN trial loss
                step_size = max(tried * self.beta, _GOLDSTEIN_MIN_STEP_SIZE)
            if step_size == tried:
                # At eta_max or the floor: the next trial would repeat this one exactly.
                return tried, tried, trial
        # Reference: the parameters stay at the last trial point.
        return step_size, tried, self.max_tries

    def _add_momentum(self, originals: List[Tensor], params: List[Tensor], start_points: List[Tensor]) -> None:
        """w <- w + mu * (w_t - w_{t-1}); the buffer becomes this step's displacement.
        ``params`` are the views the search computes with, ``originals`` the
        parameters the buffers belong to."""
        buffers = []
        for o, p in zip(originals, params):
            state = self.state[o]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(o, memory_format=torch.preserve_format)
            buffers.append(compute_view(state["momentum_buffer"]))
        if self.foreach:
            torch._foreach_add_(params, buffers, alpha=self.momentum)
            torch._foreach_copy_(buffers, params)
            torch._foreach_sub_(buffers, start_points)
        else:
            for p, b, s in zip(params, buffers, start_points):
                p.add_(b, alpha=self.momentum)
                b.copy_(p).sub_(s)


_SLS_NOTE = "1 backward and 1 + (trials) forwards per step, counted in opt.cost"

register(OptimizerSpec(
    name="sls-armijo",
    factory=SLS,
    needs=frozenset({"probe_closure"}),
    passes=(2, 1),
    defaults={"condition": "armijo"},
    context=frozenset({"n_batches_per_epoch"}),
    summary=f"SLS: SGD with a stochastic Armijo line search (Vaswani et al., NeurIPS 2019); {_SLS_NOTE}",
))
register(OptimizerSpec(
    name="sls-goldstein",
    factory=SLS,
    needs=frozenset({"probe_closure"}),
    passes=(2, 1),
    # The authors' experiments run Goldstein with reset option 0: it grows by itself.
    defaults={"condition": "goldstein", "reset": 0},
    context=frozenset({"n_batches_per_epoch"}),
    summary=f"SLS with the Goldstein conditions (grows and shrinks), reset 0 as in the authors' runs; {_SLS_NOTE}",
))
register(OptimizerSpec(
    name="sls-polyak",
    factory=SLS,
    needs=frozenset({"probe_closure"}),
    passes=(2, 1),
    # The authors' SlsAcc(acceleration_method="polyak") defaults: momentum 0.6, reset option 0.
    defaults={"condition": "armijo", "momentum": 0.6, "reset": 0},
    context=frozenset({"n_batches_per_epoch"}),
    summary=f"SLS Polyak: Armijo SLS plus heavy-ball momentum 0.6 (the ALI-G+ tables' baseline); {_SLS_NOTE}",
))

r"""SPS: the stochastic Polyak step size.

Loizou, Vaswani, Laradji, Lacoste-Julien. "Stochastic Polyak Step-size for SGD:
An Adaptive Learning Rate for Fast Convergence", AISTATS 2021. A baseline of the
ALI-G and ALI-G+ papers.

With mini-batch loss :math:`\ell`, its optimal value :math:`f^*` (``fstar``, 0 for
non-negative losses under interpolation) and :math:`\|g\|^2` ONE squared norm
over all parameters of all groups, the Polyak part of the step is

.. math::
    \hat\gamma_t = \frac{\max(\ell - f^*, 0)}{c\,\|g\|^2 + \epsilon}

and the step ``w <- w - lr gamma_t (g + lambda w)`` uses

- ``mode="constant"`` (SPS_max of the paper): :math:`\gamma_t = \min(\hat\gamma_t, \eta_{max})`
  (no clip with ``eta_max=None``);
- ``mode="smooth_iter"`` (the authors' code default):
  :math:`\gamma_t = \min(\hat\gamma_t, \tau^{1/n_b}\,\gamma_{t-1})`, :math:`\gamma_0` =
  ``init_step_size``, :math:`\tau` = ``gamma`` (2), :math:`n_b` = ``n_batches_per_epoch``:
  the step may grow by at most a factor tau per epoch.

Deviations from the authors' code, each deliberate:

- Zero-gradient stall. The reference sets the step to 0 whenever ||g|| < 1e-8 and
  stores that 0 as gamma_{t-1}, so in smooth_iter mode every later step is
  min(..., tau^(1/n_b) * 0) = 0: training stops for good. Here there is no special
  case: eps > 0 keeps the formula finite, a zero gradient gives hat-gamma = l/eps,
  so the step is the cap tau^(1/n_b) gamma_{t-1} (the parameters do not move since
  g = 0) and the bound carries forward grown by tau^(1/n_b), exactly as for any
  capped step. A step of size 0 (a loss at or below f*, e.g. an exact
  interpolating point) carries no information about the step scale, so it leaves
  the bound at gamma_{t-1} instead of storing 0. Neither case can stall.
- A loss below ``fstar`` gives step 0 (the paper's rule, ``max(l - f*, 0)``), in
  both modes; it is not an error, because f* of a mini-batch is only an estimate.
  The reference ignores f* in smooth_iter mode and would take an ascent step on
  a negative loss; with the default fstar=0 and non-negative losses both agree.
- ``eps`` must be > 0 (the reference's experiments ran with eps = 0, which only
  works together with its zero-gradient special case).
- Grad centralisation options of the reference are not provided.
- torch.optim conventions, not in the paper (the defaults leave its update
  unchanged): ``lr`` (the group's ``"lr"``, 1.0) multiplies the step after the
  bound, and smooth_iter carries the step before ``lr``; ``weight_decay``
  (lambda, 0, per group) enters only the update, on the pre-step weights, not
  :math:`\|g\|^2` and not the loss.

Under torch.distributed (world size > 1) the loss is the mean over the ranks
(weighted by their sample counts) and :math:`\|g\|^2` the sum over the shards of
sharded (FSDP2) gradients, in one collective per step, so every rank takes the
same step (:mod:`polyak._base`; ``loss_is_global=True`` when the loss handed over
is already global).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import functional as F
from .functional import Scalar
from ._base import (
    GLOBAL_STATE, PolyakBase, add_to_counter, check_bool, check_choice, check_finite, check_int, check_positive, times_lr,
)
from ._registry import OptimizerSpec, register

SPS_MODES = ("constant", "smooth_iter")


def sps_smooth_bound(previous_step: Scalar, growth: float, n_batches_per_epoch: int) -> Scalar:
    """The smooth_iter cap tau^(1/n_b) * gamma_{t-1}: at most a factor tau per epoch.
    A float or a 0-dim tensor, like ``previous_step``."""
    return previous_step * growth ** (1.0 / n_batches_per_epoch)


def sps_carried_step(step: Scalar, previous_step: Scalar) -> Scalar:
    """What smooth_iter remembers as gamma_{t-1}: the step, unless it is 0 (no scale information).
    Floats in, float out (the CPU path); tensors stay on their device."""
    if isinstance(step, Tensor) or isinstance(previous_step, Tensor):
        return torch.where(torch.as_tensor(step) > 0, step, previous_step)
    return step if step > 0 else previous_step


class SPS(PolyakBase):
    """Stochastic Polyak step size (SPS_max and the reference's smooth_iter variant).

    Args:
        params: parameters or param groups. The step is one scalar for all groups
            (groups may set only ``weight_decay`` and ``lr``).
        c: scale of ||g||^2 in the denominator (paper theory: 0.5; the authors'
            experiments: 0.2).
        eta_max: upper bound of the step in ``mode="constant"`` (None: no bound).
            Not allowed with ``mode="smooth_iter"``, whose bound is the previous step.
        fstar: optimal value f* of the mini-batch loss (0 for cross-entropy, hinge,
            squared losses under interpolation); a loss below it gives step 0.
        mode: "constant" (SPS_max) or "smooth_iter" (the reference default).
        gamma: tau, the largest growth of the step per epoch in smooth_iter (2, the
            reference's name and value); must be >= 1.
        n_batches_per_epoch: n_b of smooth_iter (the run's batches per epoch).
        init_step_size: gamma_0 of smooth_iter.
        eps: added to c ||g||^2 (1e-8); keeps a zero gradient finite.
        weight_decay: lambda of ``w <- w - gamma (g + lambda w)`` per group (not in the paper;
            gamma is computed from the loss and the raw gradient, as ALI-G+ does). Default 0.
        lr, nonfinite, foreach, process_group, loss_is_global: see :class:`polyak._base.PolyakBase`.
        fused: True: the parameter update as one compiled loop per tensor (see
            :mod:`polyak._fused`; torch.compile must work here, else RuntimeError);
            ``foreach`` still chooses how ||g||^2 is summed. Worth it on large models only
            (about 0.1 ms of compile bookkeeping a call). None (default) or False: unfused.

    Example::

        opt = SPS(model.parameters(), c=0.2, n_batches_per_epoch=len(loader))
        loss = criterion(model(x), y); opt.zero_grad(); loss.backward()
        opt.step(loss=loss)
    """

    group_keys = frozenset({"weight_decay"})
    mode_keys = frozenset({"mode"})
    _step_supports_amp_scaling = True   # see PolyakBase._amp_scale

    def __init__(
        self,
        params,
        c: float = 0.5,
        eta_max: Optional[float] = None,
        fstar: float = 0.0,
        mode: str = "smooth_iter",
        gamma: float = 2.0,
        n_batches_per_epoch: int = 500,
        init_step_size: float = 1.0,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        lr: float = 1.0,
        nonfinite: str = "skip",
        foreach: bool = True,
        fused: Optional[bool] = None,
        process_group=None,
        loss_is_global: bool = False,
    ):
        check_choice("mode", mode, SPS_MODES)
        check_positive("c", c, fix="The paper uses 0.5 in theory and 0.2 for deep networks.")
        check_positive("eta_max", eta_max, allow_none=True, fix="Use None for no bound.")
        if eta_max is not None and mode == "smooth_iter":
            raise ValueError(
                "eta_max applies to mode='constant' only; mode='smooth_iter' bounds each step by the "
                "previous one (see gamma and n_batches_per_epoch). Pass mode='constant' to use eta_max."
            )
        check_finite("fstar", fstar, "(0 for non-negative losses)")
        if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not (math.isfinite(gamma) and gamma >= 1):
            raise ValueError(
                f"gamma must be a finite number >= 1 (the largest growth of the step per epoch; the reference "
                f"uses 2), got {gamma!r}; a value below 1 would shrink the step every iteration whatever the loss"
            )
        check_int("n_batches_per_epoch", n_batches_per_epoch, 1, "It is the number of step() calls per epoch.")
        check_positive("init_step_size", init_step_size, fix="It is the step size gamma_0 of smooth_iter (1 in the reference).")
        check_positive("eps", eps, fix="It keeps the step finite when the gradient vanishes (1e-8).")
        check_positive("weight_decay", weight_decay, allow_zero=True)
        # Loss-level constants: one loss and one step for all groups (only weight_decay and lr per group).
        defaults = dict(
            c=float(c), eta_max=None if eta_max is None else float(eta_max), fstar=float(fstar), mode=mode,
            gamma=float(gamma), n_batches_per_epoch=n_batches_per_epoch, init_step_size=float(init_step_size),
            eps=float(eps), weight_decay=weight_decay,
        )
        if fused is not None:
            check_bool("fused", fused)
        defaults["fused"] = bool(fused)
        super().__init__(params, defaults, lr=lr, nonfinite=nonfinite, foreach=foreach,
                         process_group=process_group, loss_is_global=loss_is_global)

    c = property(lambda self: self._setting("c"))
    eta_max = property(lambda self: self._setting("eta_max"))
    fstar = property(lambda self: self._setting("fstar"))
    mode = property(lambda self: self._setting("mode"))
    gamma = property(lambda self: self._setting("gamma"))
    n_batches_per_epoch = property(lambda self: self._setting("n_batches_per_epoch"))
    init_step_size = property(lambda self: self._setting("init_step_size"))
    eps = property(lambda self: self._setting("eps"))

    def _previous_step(self, like: Scalar) -> Scalar:
        """gamma_{t-1} of smooth_iter: a float on the CPU path (``like`` a float), else a
        0-dim tensor on ``like``'s device and dtype. The state always holds a 0-dim
        tensor, so a checkpoint saved on either path loads on the other."""
        state = self.state[GLOBAL_STATE]
        if "previous_step" not in state:
            if not isinstance(like, Tensor):
                return self.init_step_size
            state["previous_step"] = torch.tensor(self.init_step_size, dtype=like.dtype, device=like.device)
        previous = state["previous_step"]
        if not isinstance(like, Tensor):
            return previous.item()
        return previous.to(like.device, like.dtype)

    def _store_previous_step(self, carried: Scalar) -> None:
        if not isinstance(carried, Tensor):
            # float64 keeps the float of the CPU path exactly.
            carried = torch.scalar_tensor(carried, dtype=torch.float64)
        self.state[GLOBAL_STATE]["previous_step"] = carried

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        """One SPS step. Give the batch loss (``loss=``) after ``backward()``, a
        torch-style closure that computes the loss, calls backward and returns it, or
        nothing after :meth:`add_loss` (the mean of the losses handed over). Each
        group's ``lr`` multiplies the step after the bound; smooth_iter's bound
        carries the step before ``lr``."""
        batch, groups, grads = self._open_step(closure, loss)
        if not grads:
            return batch.result()
        # f* > loss is the paper's "step 0", not a user error: no lower bound check.
        scalars = self._step_scalars(batch, grads)
        if self._skip_step(scalars):
            return batch.result()
        keep = self._keep_mask(scalars)
        grad_sq_norm = scalars.grad_sq_norm
        if scalars.on_host:
            gap = max(scalars.loss_mean - self.fstar, 0.0)
        else:
            gap = torch.clamp(scalars.loss_mean.to(grad_sq_norm.dtype) - self.fstar, min=0.0)
        if self.mode == "constant":
            upper = self.eta_max
        else:
            previous = self._previous_step(grad_sq_norm)
            upper = sps_smooth_bound(previous, self.gamma, self.n_batches_per_epoch)
        step, unclipped, clipped = F.polyak_step_size(gap, self.c * grad_sq_norm, self.eps, upper)
        if self.mode == "smooth_iter":
            carried = sps_carried_step(step, previous)
            self._store_previous_step(carried if keep is None else torch.where(keep, carried, previous))
        for group, params in zip(self.param_groups, groups):
            group_step = times_lr(step, group["lr"])
            self._record_step(group, group_step, times_lr(unclipped, group["lr"]), clipped)
            F.alig_update_(params, [p.grad for p in params], None, group_step, weight_decay=group["weight_decay"],
                           foreach=self.foreach, keep=keep, grad_factor=scalars.grad_factor,
                           fused=group["fused"])
        add_to_counter(self.global_state, "step")
        return batch.result()


register(OptimizerSpec(
    name="sps",
    factory=SPS,
    needs=frozenset({"loss"}),
    passes=(1, 1),
    # smooth_iter is the reference default (ALGORITHMS.md); c = 0.2 is the value of every
    # experiment group in the authors' exp_configs (the class keeps the paper's 0.5).
    defaults={"mode": "smooth_iter", "c": 0.2},
    context=frozenset({"n_batches_per_epoch"}),
    # c is the knob the SPS authors set per experiment; smooth_iter has no eta_max to tune.
    # No published grid: powers of ten around their 0.2.
    step_size_param="c",
    step_size_grid=(0.02, 0.2, 2.0),
    summary="SPS: stochastic Polyak step, smooth_iter bound (Loizou et al., AISTATS 2021)",
))

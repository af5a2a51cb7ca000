r"""PAL: Parabolic Approximation Line search.

Mutschler, Zell. "Parabolic Approximation Line Search for DNNs", NeurIPS 2020.

Each step fits a parabola to the loss of THIS batch along one direction over
all parameters of all groups and jumps to (a multiple of) its minimum:

.. math::
    d = g \ \text{or}\ d \leftarrow \beta d + g, \qquad
    b = -\frac{g \cdot d}{\|d\|}, \qquad
    a = \frac{\ell(w_0 - \mu \hat d) - \ell(w_0) - b\mu}{\mu^2}, \qquad
    \hat d = d / \|d\|

    s = \begin{cases} -\frac{b}{2a}\,\alpha & a > 0,\ b < 0 \\
                       \mu & a \le 0,\ b < 0 \\
                       0 & b \ge 0 \end{cases}, \qquad
    s \leftarrow \min(s, s_{max}), \qquad w \leftarrow w_0 - s\,\hat d

with measuring step :math:`\mu` (``measuring_step``), update step adaptation
:math:`\alpha` (``update_factor``, 1/0.6), direction adaptation :math:`\beta`
(``momentum``, 0.4) and :math:`s_{max}` (``max_step``, 3.16), clipped AFTER the
factor as in the paper. A non-finite :math:`a` or :math:`b` makes no step.
Cost: 2 forwards and 1 backward per step.

Closure contract (shared by all line searches, see :mod:`polyak._closure`):
``opt.step(closure)`` where ``closure()`` computes the mean loss of this step's
batch and returns it WITHOUT calling backward. The optimizer runs the backward
itself and re-evaluates the closure at the measuring point with the same
randomness (dropout) and without touching BatchNorm running statistics.

Deviations from the authors' code (PyTorch ``PalOptimizer``), all deliberate:

* one direction, one norm and one parabola over every param group (the
  reference returns after the first group, leaving the others untouched);
* the final position is computed from a saved copy of the start point,
  :math:`w = w_0 - (s/\|d\|)\,d`, one rounding per entry whatever
  :math:`\mu`; the reference moves on by :math:`s - \mu` from the measuring
  point, which adds the probe's rounding and, for :math:`s = 0`, cannot come
  back to :math:`w_0` bit-exactly. The cost is one parameter-sized buffer;
* a non-finite parabola restores the start point exactly and leaves the
  direction buffer unchanged (the reference returns from the measuring point);
* ``p.grad`` keeps the gradient (the reference overwrites it with the direction);
* a zero direction gives :math:`b = 0` hence no move, through a tiny floor on
  :math:`\|d\|` (the reference's ``epsilon``), not a skipped step.

``param_groups[i]["step_size"]`` is the learning rate the step applied to
:math:`d` (:math:`s/\|d\|`, what the reference returns), ``"update_step"`` the
distance :math:`s` moved along the unit direction; ``global_state["parabola"]``
holds the last :math:`\ell_0, \ell_\mu, a, b, \|d\|`.

torch.optim conventions, not in the paper (the defaults leave its update
unchanged): the search runs on the plain step; the update then applied is
:math:`w \leftarrow w_0 - \mathrm{lr}\,(s/\|d\|)\,(d + \lambda w_0)`, with ``lr`` the group's ``"lr"`` (1.0) and ``weight_decay``
:math:`\lambda` (0, per group: timm's no-decay groups) on the start weights, seen
by neither the search nor the loss. Under torch.distributed both probe losses
are the means over the ranks and the inner products sum the shards of sharded
(FSDP2) tensors, so every rank fits the same parabola and moves the same way.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from . import functional as F
from ._base import NonFiniteError, PolyakBase, check_in_range, check_positive
from ._line_search import (
    Rollback, StartPoint, begin_line_search, compute_view, global_dot, global_loss, global_sq_norm,
    groups_of, state_form, update_,
)
from ._registry import OptimizerSpec, register
from .parabola import parabolic_update_step

__all__ = ["PAL", "parabolic_update_step"]

# Floor of ||d||: keeps b = -(g.d)/||d|| finite (= 0) for a zero direction.
_DIRECTION_NORM_FLOOR = 1e-30


class PAL(PolyakBase):
    """PAL line search (2 forwards + 1 backward per step).

    Args:
        params: parameters or param groups; ONE line search runs over all groups,
            so the hyperparameters below are optimizer-wide (not per group).
        measuring_step: mu, the distance of the second loss measurement along the
            unit direction (paper: 1; good values 0.1 to 1).
        update_factor: alpha, multiplies the parabola's minimum (paper: 1/0.6).
        max_step: s_max, the largest distance moved along the unit direction, applied
            after ``update_factor`` (paper: 3.16); None disables it.
        momentum: beta, direction adaptation d <- beta*d + g (paper: 0.4; 0 uses d = g).
        weight_decay: decoupled, per group: the final update is
            ``w <- w0 - lr * (s/||d||) * (d + weight_decay * w0)`` (the search itself
            measures the loss without it).
        lr: multiplier on the final step (after the clip), per group, for LR schedulers.
        nonfinite, foreach: see :class:`polyak._base.PolyakBase`; a non-finite loss,
            gradient, slope or curvature is such a case.
        process_group, loss_is_global: under torch.distributed both probe losses are
            averaged over the ranks of ``process_group`` (default: all), so every rank
            fits the same parabola; ``loss_is_global=True`` if the closure already
            returns the global loss.

    Complex parameters are searched as their real views (torch.optim's convention):
    the same steps as on the real problem in twice the dimensions. A closure that
    raises leaves parameters and state exactly as before the step (see
    :class:`polyak._line_search.Rollback`).

    Example::

        opt = PAL(model.parameters())
        def closure():                      # no backward here
            return criterion(model(x), y)
        opt.step(closure)
    """

    group_keys = frozenset({"weight_decay"})  # the only setting that can differ per group (besides lr)

    def __init__(
        self,
        params,
        measuring_step: float = 1.0,
        update_factor: float = 1 / 0.6,
        max_step: float = 3.16,
        momentum: float = 0.4,
        weight_decay: float = 0.0,
        *,
        lr: float = 1.0,
        nonfinite: str = "skip",
        foreach: bool = True,
        process_group=None,
        loss_is_global: bool = False,
    ):
        check_positive("measuring_step", measuring_step, fix="It is the distance of the second loss measurement (paper: 1).")
        check_positive("update_factor", update_factor, fix="It multiplies the parabola's minimum (paper: 1/0.6).")
        check_positive("max_step", max_step, allow_none=True, fix="It caps the distance moved per step (paper: 3.16).")
        check_in_range("momentum", momentum, 0.0, 1.0)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        defaults = dict(
            measuring_step=float(measuring_step), update_factor=float(update_factor),
            max_step=None if max_step is None else float(max_step), momentum=float(momentum),
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults, lr=lr, nonfinite=nonfinite, foreach=foreach,
                         process_group=process_group, loss_is_global=loss_is_global)
        self._start_point = StartPoint(foreach)

    # ONE line search over all groups: every search constant is optimizer-wide
    measuring_step = property(lambda self: self._setting("measuring_step"))
    update_factor = property(lambda self: self._setting("update_factor"))
    max_step = property(lambda self: self._setting("max_step"))
    momentum = property(lambda self: self._setting("momentum"))

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        """One PAL step. ``closure()`` returns this batch's mean loss without backward.
        Returns the loss at the start point (the mean over ranks under torch.distributed)."""
        with Rollback(self) as rollback:
            return self._search(closure, loss, rollback)

    def _search(self, closure, loss, rollback: Rollback):
        probe, loss_0, params, grads, grad_sq_norm = begin_line_search(self, closure, loss, "at a second point")
        if not params:
            return loss_0
        originals = [p for ps in self._params_with_grad() for p in ps]

        if self.momentum > 0:
            directions = self._adapted_directions(originals, grads)
            direction_sq_norm = global_sq_norm(self, directions, originals)
            grad_dot_direction = global_dot(self, grads, directions, originals)
        else:
            directions = grads
            direction_sq_norm = grad_sq_norm
            grad_dot_direction = grad_sq_norm
        scalar_dtype = torch.promote_types(direction_sq_norm.dtype, loss_0.dtype)
        direction_norm = direction_sq_norm.to(scalar_dtype).sqrt().clamp(min=_DIRECTION_NORM_FLOOR)
        slope = -grad_dot_direction.to(scalar_dtype) / direction_norm
        loss_0 = loss_0.to(direction_norm.device)

        start_points = self._start_point.save(params)
        rollback.moving(params, start_points)
        F.sgd_step_(params, directions, F.as_scalar(self.measuring_step / direction_norm), foreach=self.foreach)
        loss_mu = global_loss(self, probe.loss()).to(direction_norm.device)

        update_step, unclipped, curvature, finite = parabolic_update_step(
            loss_0.to(scalar_dtype), loss_mu.to(scalar_dtype), slope,
            self.measuring_step, self.update_factor, self.max_step,
        )
        if self.nonfinite != "unchecked" and not bool(finite):
            F.copy_all_(params, start_points, self.foreach)
            if self.nonfinite == "raise":
                raise NonFiniteError(
                    "PAL.step: the loss at the measuring point made the parabola NaN or infinite; the parameters "
                    "were restored (nonfinite='skip' skips such steps instead)"
                )
            self.global_state["skipped_steps"] += 1
            return loss_0

        learning_rate = update_step / direction_norm
        # From the saved start point: one rounding per entry (see the module docstring).
        F.copy_all_(params, start_points, self.foreach)
        update_(self, params, directions, learning_rate, groups_of(self))

        if self.momentum > 0:
            for p, d in zip(originals, directions):
                self.state[p]["direction"] = state_form(p, d)
        clipped = unclipped > self.max_step if self.max_step is not None else torch.zeros_like(unclipped, dtype=torch.bool)
        for group in self.param_groups:
            self._record_step(group, group["lr"] * learning_rate, group["lr"] * unclipped / direction_norm, clipped)
            group["update_step"] = group["lr"] * update_step
        self.global_state["parabola"] = {
            "loss": loss_0, "loss_at_measuring_step": loss_mu, "slope": slope,
            "curvature": curvature, "direction_norm": direction_norm,
        }
        self.global_state["step"] += 1
        return loss_0

    def _adapted_directions(self, params: List[Tensor], grads: List[Tensor]) -> List[Tensor]:
        """d = beta*d_prev + g into NEW tensors: the stored direction changes only
        once the step succeeds, so a skipped step leaves the state bit-identical.
        Without a previous direction d = g exactly (beta*0 + g). The buffer is kept
        shaped like the parameter (see :func:`polyak._line_search.state_form`)."""
        previous = [self.state[p].get("direction") for p in params]
        previous = [None if d is None else compute_view(d) for d in previous]
        if self.foreach and all(d is not None for d in previous):
            directions = torch._foreach_mul(previous, self.momentum)
            torch._foreach_add_(directions, grads)
            return list(directions)
        return [g.clone() if d is None else d * self.momentum + g for d, g in zip(previous, grads)]


register(OptimizerSpec(
    name="pal",
    factory=PAL,
    needs=frozenset({"probe_closure"}),
    passes=(2, 1),
    summary="PAL: parabolic approximation line search, 2 forwards + 1 backward (Mutschler & Zell, NeurIPS 2020)",
))

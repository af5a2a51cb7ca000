r"""L4: practical loss-based step size adaptation (L4Adam and L4Mom).

Rolinek, Martius. "L4: Practical loss-based stepsize adaptation for deep
learning", NeurIPS 2018. A baseline of the ALI-G paper.

L4 turns a base direction :math:`v_t` (Adam's or momentum's) into a step that
aims, on the linearised loss, at a fraction :math:`\alpha` of the way to a
target loss :math:`\gamma L_{min}`:

.. math::
    \eta_t = \alpha\,\frac{\ell_t - \gamma\,L_{min}}{v_t \cdot \hat g_t + \epsilon},
    \qquad w \leftarrow w - \eta_t v_t

with, in this order every step (as the authors' TensorFlow code does it):

1. :math:`L_{min} \leftarrow 0.75\,\ell_0` on the first step (``init_factor``),
   else :math:`L_{min} \leftarrow \min(L_{min}, \ell_t)`;
2. update the EMAs and form :math:`v_t` and :math:`\hat g_t`;
3. step with :math:`\eta_t` (using this :math:`L_{min}`);
4. :math:`L_{min} \leftarrow (1 + 1/\tau) L_{min}` (:math:`\tau` =
   ``min_loss_forget_time`` = 1000): the minimum is slowly forgotten.

:math:`\hat g_t` is the bias-corrected EMA of the gradient with decay 0.9,
:math:`m_t/(1 - 0.9^t)`. Directions:

- ``base="adam"`` (L4Adam): :math:`v_t = \hat m_t / (\sqrt{\hat s_t} + \epsilon_{Adam})`,
  Adam's bias-corrected moments with betas (0.9, 0.999) and
  :math:`\epsilon_{Adam}` = 1e-4 (the authors' value, not Adam's usual 1e-8).
- ``base="momentum"`` (L4Mom): :math:`v_t = \hat g_t`, so the denominator is
  :math:`\|\hat g_t\|^2`. The step :math:`\eta_t v_t` does not depend on the
  scale of :math:`v_t`, so torch.optim.SGD-style momentum (a sum, not an average)
  would give the same update.

:math:`\alpha` = ``fraction`` (0.15), :math:`\gamma` = ``gamma`` (0.9, the
fraction of the minimum loss taken as reachable), :math:`\epsilon` = 1e-12.
Inner products are ONE sum over all parameters of all groups; each group may
set its own ``fraction``, ``betas`` and ``adam_eps``.

Deviations from the authors' code: the reference keeps two identical EMAs of
the gradient in L4Adam (Adam's first moment and :math:`\hat g`, both decay 0.9);
here they are one buffer with decay ``betas[0]``, identical at the default
betas. L4 needs a non-negative loss (then :math:`\ell - \gamma L_{min} \ge
(1-\gamma)\ell \ge 0`); a negative loss raises instead of silently stepping
uphill (checked with the non-finite guard, so not with ``nonfinite="unchecked"``).

torch.optim conventions, not in the paper (the defaults leave its update
unchanged): the update is :math:`w \leftarrow w - \mathrm{lr}\,\eta_t\,(v_t + \lambda w)`, with
``lr`` the group's ``"lr"`` (1.0) and ``weight_decay`` :math:`\lambda` (0, per group) on the
pre-step weights, seen by neither :math:`\eta_t` nor the moments. Under
torch.distributed the loss is the mean over the ranks and the inner products sum the
shards of sharded (FSDP2) tensors, so every rank takes the same step.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from . import functional as F
from ._base import GLOBAL_STATE, PolyakBase, check_choice, check_in_range, check_positive
from ._line_search import compute_views, global_dot, global_loss, global_sq_norm
from ._registry import OptimizerSpec, register

L4_BASES = ("adam", "momentum")


def l4_update_moments_(grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor], beta1: float, beta2: float,
                       foreach: bool = True) -> None:
    """m <- beta1 m + (1 - beta1) g; s <- beta2 s + (1 - beta2) g^2 (s only for Adam: pass [])."""
    if not foreach:
        for g, m in zip(grads, exp_avgs):
            m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        for g, s in zip(grads, exp_avg_sqs):
            s.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        return
    for _, (gs, ms) in F.group_by_device_and_dtype(grads, exp_avgs).items():
        torch._foreach_mul_(ms, beta1)
        torch._foreach_add_(ms, gs, alpha=1.0 - beta1)
    if exp_avg_sqs:
        for _, (gs, ss) in F.group_by_device_and_dtype(grads, exp_avg_sqs).items():
            torch._foreach_mul_(ss, beta2)
            torch._foreach_addcmul_(ss, gs, gs, value=1.0 - beta2)


def l4_directions(exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor], step: int, beta1: float, beta2: float, adam_eps: float,
                  foreach: bool = True) -> Tuple[List[Tensor], List[Tensor]]:
    """(v, g_hat): the bias-corrected gradient EMA g_hat, and v = Adam's direction or g_hat."""
    correction1 = 1.0 - beta1 ** step
    correction2 = 1.0 - beta2 ** step
    if not foreach:
        grad_estimates = [m / correction1 for m in exp_avgs]
        if not exp_avg_sqs:
            return grad_estimates, grad_estimates
        directions = [g_hat / ((s / correction2).sqrt_().add_(adam_eps)) for g_hat, s in zip(grad_estimates, exp_avg_sqs)]
        return directions, grad_estimates
    grad_estimates = list(torch._foreach_div(exp_avgs, correction1)) if exp_avgs else []
    if not exp_avg_sqs:
        return grad_estimates, grad_estimates
    denominators = torch._foreach_div(exp_avg_sqs, correction2)
    torch._foreach_sqrt_(denominators)
    torch._foreach_add_(denominators, adam_eps)
    return list(torch._foreach_div(grad_estimates, denominators)), grad_estimates


def l4_step_size(loss: Tensor, min_loss: Tensor, inner_product: Tensor, fraction: float, gamma: float, eps: float) -> Tensor:
    """eta = fraction * (l - gamma L_min) / (v . g_hat + eps)."""
    return fraction * (loss - gamma * min_loss) / (inner_product + eps)


class L4(PolyakBase):
    """L4Adam (``base="adam"``) and L4Mom (``base="momentum"``).

    Args:
        params: parameters or param groups (groups may override ``fraction``, ``betas``, ``adam_eps``).
        base: "adam" (L4Adam) or "momentum" (L4Mom): the direction v.
        fraction: alpha, the fraction of the linearised way to the target loss (0.15;
            the paper recommends 0.1 to 0.3).
        gamma: the fraction of the minimum loss seen taken as reachable (0.9), in [0, 1).
        init_factor: L_min on the first step is init_factor times that loss (0.75), in [0, 1].
        min_loss_forget_time: tau; L_min grows by the factor 1 + 1/tau each step (1000).
        betas: EMA decays of the gradient (also g_hat's) and, for Adam, of its square.
        adam_eps: added to sqrt(s_hat) in Adam's direction (1e-4 as in the authors' code).
        eps: added to v . g_hat (1e-12).
        weight_decay: decoupled, per group: ``w <- w - lr * eta * (v + weight_decay * w)``
            (AdamW's form with L4's step eta; 0 by default, not in the paper).
        lr: multiplier on the step, per group, for LR schedulers.
        nonfinite, foreach: see :class:`polyak._base.PolyakBase`. A NaN/inf loss or
            gradient skips the step and leaves parameters and every buffer bit-identical.
        process_group, loss_is_global: under torch.distributed the loss is averaged
            over the ranks of ``process_group`` (default: all) and inner products of
            sharded (FSDP2) gradients are summed over the shards, so every rank takes
            the same step; ``loss_is_global=True`` if the loss passed is already global.

    Complex parameters are handled as their real views (torch.optim's convention):
    Adam's second moment is per real coordinate, ``v . g_hat`` the real inner product.

    Example::

        opt = L4(model.parameters(), base="adam")
        loss = criterion(model(x), y); opt.zero_grad(); loss.backward()
        opt.step(loss=loss)
    """

    group_keys = frozenset({"fraction", "betas", "adam_eps", "weight_decay"})
    mode_keys = frozenset({"base"})  # Adam's second moment exists only for base="adam"

    def __init__(
        self,
        params,
        base: str = "adam",
        fraction: float = 0.15,
        gamma: float = 0.9,
        init_factor: float = 0.75,
        min_loss_forget_time: float = 1000.0,
        betas: Tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-4,
        eps: float = 1e-12,
        weight_decay: float = 0.0,
        *,
        lr: float = 1.0,
        nonfinite: str = "skip",
        foreach: bool = True,
        process_group=None,
        loss_is_global: bool = False,
    ):
        check_choice("base", base, L4_BASES)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        check_in_range("gamma", gamma, 0.0, 1.0)
        check_in_range("init_factor", init_factor, 0.0, 1.0, high_inclusive=True)
        check_positive("min_loss_forget_time", min_loss_forget_time, fix="The authors use 1000 (steps).")
        check_positive("eps", eps, fix="It keeps the step finite when v . g_hat vanishes (1e-12).")
        defaults = dict(fraction=fraction, betas=betas, adam_eps=adam_eps, weight_decay=weight_decay)
        _check_group(defaults)
        # Loss-level constants: one loss, one L_min for all groups.
        defaults.update(base=base, gamma=float(gamma), init_factor=float(init_factor),
                        min_loss_forget_time=float(min_loss_forget_time), eps=float(eps))
        super().__init__(params, defaults, lr=lr, nonfinite=nonfinite, foreach=foreach,
                         process_group=process_group, loss_is_global=loss_is_global)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        _check_group(group, " (param group)")

    base = property(lambda self: self._setting("base"))
    gamma = property(lambda self: self._setting("gamma"))
    init_factor = property(lambda self: self._setting("init_factor"))
    min_loss_forget_time = property(lambda self: self._setting("min_loss_forget_time"))
    eps = property(lambda self: self._setting("eps"))

    def _moment_buffers(self, p: Tensor) -> Tuple[Tensor, ...]:
        """The moments, shaped like the parameter in the state, as the views the step computes with."""
        state = self.state[p]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.base == "adam":
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        exp_avg, exp_avg_sq = compute_views([state["exp_avg"], state.get("exp_avg_sq", state["exp_avg"])])
        return exp_avg, exp_avg_sq if "exp_avg_sq" in state else None

    def _check_loss(self, loss: Tensor, grads: List[Tensor]) -> bool:
        """True means: skip this step (non-finite input). Raises on a negative loss."""
        if self.nonfinite == "unchecked":
            return False
        grad_sq_norm = global_sq_norm(self, compute_views(grads), grads)
        try:
            return self._guard(loss, grad_sq_norm, 0.0)
        except ValueError:
            raise ValueError(
                f"L4.step: loss {float(loss):.6g} is negative; L4 needs a non-negative loss (its target "
                "gamma * L_min assumes the loss is bounded below by 0). Shift the loss by its lower bound."
            ) from None

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        """One L4 step. Give the batch loss (``loss=``) after ``backward()``, or a
        torch-style closure that computes the loss, calls backward and returns it."""
        loss, groups, all_grads = self._begin_loss_step(closure, loss)
        loss = global_loss(self, loss)
        if not all_grads:
            return loss
        if self._check_loss(loss, all_grads):
            return loss
        state = self.state[GLOBAL_STATE]
        step = state["step"] + 1
        work_dtype = torch.promote_types(loss.dtype, torch.float32)
        loss = loss.to(all_grads[0].device, work_dtype)
        if "min_loss" not in state:
            min_loss = self.init_factor * loss
        else:
            min_loss = torch.minimum(state["min_loss"].to(loss.device, work_dtype), loss)

        directions, grad_estimates = [], []
        for group, params in zip(self.param_groups, groups):
            if not params:
                directions.append([])
                continue
            beta1, beta2 = group["betas"]
            buffers = [self._moment_buffers(p) for p in params]
            exp_avgs = [b[0] for b in buffers]
            exp_avg_sqs = [b[1] for b in buffers] if self.base == "adam" else []
            l4_update_moments_(compute_views([p.grad for p in params]), exp_avgs, exp_avg_sqs, beta1, beta2, self.foreach)
            v, g_hat = l4_directions(exp_avgs, exp_avg_sqs, step, beta1, beta2, group["adam_eps"], self.foreach)
            directions.append(v)
            grad_estimates.extend(g_hat)
        flat_directions = [d for ds in directions for d in ds]
        originals = [p for ps in groups for p in ps]
        inner_product = global_dot(self, flat_directions, grad_estimates, originals).to(loss.device, work_dtype)

        for group, params, v in zip(self.param_groups, groups, directions):
            eta = group["lr"] * l4_step_size(loss, min_loss, inner_product, group["fraction"], self.gamma, self.eps)
            self._record_step(group, eta, eta, torch.zeros((), dtype=torch.bool, device=eta.device))
            if params:
                views = compute_views(params)
                F.decoupled_weight_decay_(views, F.as_scalar(eta), group["weight_decay"], foreach=self.foreach)
                F.sgd_step_(views, v, F.as_scalar(eta), foreach=self.foreach)
        state["min_loss"] = min_loss * (1.0 + 1.0 / self.min_loss_forget_time)
        state["step"] = step
        return loss


def _check_group(group, where: str = "") -> None:
    check_positive(f"fraction{where}", group["fraction"], fix="The paper recommends 0.1 to 0.3 (default 0.15).")
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas{where} must be a pair (beta1, beta2) like (0.9, 0.999), got {betas!r}")
    check_in_range(f"betas[0]{where}", betas[0], 0.0, 1.0)
    check_in_range(f"betas[1]{where}", betas[1], 0.0, 1.0)
    check_positive(f"adam_eps{where}", group["adam_eps"], fix="The authors use 1e-4.")


# The L4 paper's claim is that alpha = 0.15 needs no tuning; a sweep still gets the fraction,
# at and below the default only: above 1 the step overshoots the linearised target.
register(OptimizerSpec(
    name="l4-adam",
    factory=L4,
    needs=frozenset({"loss"}),
    passes=(1, 1),
    defaults={"base": "adam"},
    step_size_param="fraction",
    step_size_grid=(0.015, 0.15),
    summary="L4Adam: loss-based step size on Adam's direction (Rolinek & Martius, NeurIPS 2018)",
))
register(OptimizerSpec(
    name="l4-mom",
    factory=L4,
    needs=frozenset({"loss"}),
    passes=(1, 1),
    defaults={"base": "momentum"},
    step_size_param="fraction",
    step_size_grid=(0.015, 0.15),
    summary="L4Mom: loss-based step size on the momentum direction (Rolinek & Martius, NeurIPS 2018)",
))

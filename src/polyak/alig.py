r"""ALI-G: Adaptive Learning-rates for Interpolation with Gradients.

Berrada, Zisserman, Kumar. "Training Neural Networks for and by Interpolation",
ICML 2020; momentum as in the authors' 2021 note and reference code.

With mini-batch loss :math:`\ell`, known lower bound :math:`B` of the loss and
:math:`\|g\|^2` ONE squared norm over all parameters of all groups:

.. math::
    \gamma = \mathrm{clamp}\Big(\frac{\ell - B}{\|g\|^2 + \delta}, 0, \eta_{max}\Big)

    w \leftarrow \Pi_\Omega(w - \gamma g)

``max_lr=None`` drops the clip (ALI-G infinity: no step-size hyperparameter).
Each param group clips with its own ``max_lr``. :math:`\Pi_\Omega` projects onto
ONE global L2 ball of radius ``max_norm`` (the paper's regulariser is this
constraint, not weight decay), at construction and after every step, then applies
an optional user ``projection(params)``.

Momentum follows the reference code, not torch.optim.SGD:
``w <- w - gamma g; b <- mu b - gamma g; w <- w + mu b``.
``adjusted_momentum=True``: ``b <- mu b - g; w <- w - gamma g + gamma mu b``
(TensorFlow's Nesterov form).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from . import functional as F
from ._base import MISSING, PolyakBase, check_in_range, check_positive, require
from ._registry import OptimizerSpec, register



class ALIG(PolyakBase):
    """ALI-G optimizer.

    Args:
        params: parameters or param groups (groups may override ``max_lr`` and ``momentum``).
        max_lr: largest step size (paper: 0.1, 1 or 10), or None for ALI-G infinity. Required.
        momentum: mu of the reference momentum (paper experiments: 0.9); 0 disables it.
        max_norm: radius of the global L2 ball the parameters are kept in (paper: 50 to 400), or None.
        projection: optional callable(list_of_params) applied in place after every step.
        lower_bound: a known lower bound B of the loss (0 for cross-entropy, hinge, squared loss).
        delta: small constant added to ||g||^2 (1e-5 as in the reference code).
        adjusted_momentum: use the TF-Nesterov momentum form instead of the reference one.
        nonfinite, foreach: see :class:`polyak._base.PolyakBase`.

    Example::

        opt = ALIG(model.parameters(), max_lr=0.1, momentum=0.9, max_norm=100.0)
        loss = criterion(model(x), y); opt.zero_grad(); loss.backward()
        opt.step(loss=loss)
    """

    def __init__(
        self,
        params,
        max_lr=MISSING,
        momentum: float = 0.0,
        max_norm: Optional[float] = None,
        projection: Optional[Callable] = None,
        lower_bound: float = 0.0,
        delta: float = 1e-5,
        adjusted_momentum: bool = False,
        *,
        nonfinite: str = "skip",
        foreach: bool = True,
    ):
        require("ALIG", "max_lr", max_lr,
                "a positive float (the papers use 0.1, 1 or 10) or max_lr=None for ALI-G infinity (no clip)")
        check_positive("max_lr", max_lr, allow_none=True, fix="Use None for ALI-G infinity.")
        check_in_range("momentum", momentum, 0.0, 1.0)
        check_positive("max_norm", max_norm, allow_none=True)
        check_positive("delta", delta, fix="It keeps the step finite when the gradient vanishes.")
        if not isinstance(lower_bound, (int, float)) or isinstance(lower_bound, bool) or not math.isfinite(lower_bound):
            raise ValueError(f"lower_bound must be a finite number, got {lower_bound!r}")
        if projection is not None and not callable(projection):
            raise TypeError(f"projection must be a callable(list_of_params) or None, got {type(projection).__name__}")
        if not isinstance(adjusted_momentum, bool):
            raise TypeError(f"adjusted_momentum must be True or False, got {adjusted_momentum!r}")
        defaults = dict(max_lr=max_lr, momentum=momentum)
        super().__init__(params, defaults, nonfinite=nonfinite, foreach=foreach)
        for group in self.param_groups:
            check_positive("max_lr (param group)", group["max_lr"], allow_none=True)
            check_in_range("momentum (param group)", group["momentum"], 0.0, 1.0)
        # Loss-level constants: one loss, so one value for all groups.
        self.lower_bound = float(lower_bound)
        self.delta = float(delta)
        self.max_norm = max_norm
        self.projection = projection
        self.adjusted_momentum = adjusted_momentum
        F.apply_projection_(self._all_params(), max_norm, projection, foreach=foreach)

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        """One ALI-G step. Give the batch loss (``loss=``) after ``backward()``, or a
        torch-style closure that computes the loss, calls backward and returns it."""
        loss, groups, grads = self._begin_loss_step(closure, loss)
        if not grads:
            return loss
        grad_sq_norm = F.as_scalar(F.global_sq_norm(grads, foreach=self.foreach))
        loss_value = F.as_scalar(loss)
        if self._guard(loss_value, grad_sq_norm, self.lower_bound):
            return loss
        if isinstance(grad_sq_norm, torch.Tensor):
            loss_value = torch.as_tensor(loss_value, device=grad_sq_norm.device, dtype=grad_sq_norm.dtype)
        gap = loss_value - self.lower_bound
        for group, params in zip(self.param_groups, groups):
            step, unclipped, clipped = F.polyak_step_size(gap, grad_sq_norm, self.delta, group["max_lr"])
            self._set_step_stats(group, step, unclipped, clipped)
            if not params:
                continue
            group_grads = [p.grad for p in params]
            scalar_step = F.as_scalar(step)
            if group["momentum"] > 0:
                buffers = [self._momentum_buffer(p) for p in params]
                F.alig_momentum_step_(
                    params, group_grads, buffers, scalar_step, group["momentum"],
                    adjusted=self.adjusted_momentum, foreach=self.foreach,
                )
            else:
                F.sgd_step_(params, group_grads, scalar_step, foreach=self.foreach)
        F.apply_projection_(self._all_params(), self.max_norm, self.projection, foreach=self.foreach)
        self.global_state["step"] += 1
        return loss

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]


register(OptimizerSpec(
    name="alig",
    factory=ALIG,
    needs=frozenset({"loss"}),
    passes=(1, 1),
    # the papers' experiments: momentum 0.9 (the class keeps 0, the plain method)
    defaults={"max_lr": 0.1, "momentum": 0.9},
    step_size_param="max_lr",
    step_size_grid=(0.01, 0.1, 1.0, 10.0),
    summary="ALI-G: clipped Polyak step with a global L2-ball constraint (Berrada et al., ICML 2020)",
))
register(OptimizerSpec(
    name="alig-inf",
    factory=ALIG,
    needs=frozenset({"loss"}),
    passes=(1, 1),
    defaults={"max_lr": None},
    summary="ALI-G infinity: unclipped Polyak step, no step-size hyperparameter",
))

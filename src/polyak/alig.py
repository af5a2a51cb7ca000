r"""ALI-G: Adaptive Learning-rates for Interpolation with Gradients.

Berrada, Zisserman, Kumar. "Training Neural Networks for and by Interpolation",
ICML 2020; momentum as in the authors' 2021 note and reference code.

With mini-batch loss :math:`\ell`, known lower bound :math:`B` of the loss and
:math:`\|g\|^2` ONE squared norm over all parameters of all groups:

.. math::
    \gamma = \mathrm{clamp}\Big(\frac{\ell - B}{\|g\|^2 + \delta}, 0, \eta_{max}\Big)

    w \leftarrow \Pi_\Omega\big(w - \mathrm{lr}\,\gamma\,(g + \lambda w)\big)

``max_lr=None`` drops the clip (ALI-G infinity: no step-size hyperparameter).
Each param group clips with its own ``max_lr``. :math:`\Pi_\Omega` projects onto
ONE global L2 ball of radius ``max_norm`` (the paper's regulariser is this
constraint, not weight decay), at construction and after every step, then applies
an optional user ``projection(params)``.

Momentum follows the reference code, not torch.optim.SGD:
``w <- w - gamma g; b <- mu b - gamma g; w <- w + mu b``.
``adjusted_momentum=True``: ``b <- mu b - g; w <- w - gamma g + gamma mu b``
(TensorFlow's Nesterov form).

Deviations from the paper, each a torch.optim convention (the defaults leave the
paper's update unchanged): ``lr`` (the group's ``"lr"``, 1.0) multiplies the step
after the ``max_lr`` clip, so LR schedulers work; with momentum the ``gamma`` above
becomes ``lr * gamma``. ``weight_decay`` :math:`\lambda` (0) enters only the
update, on the pre-step weights, not :math:`\|g\|^2` and not the loss (the
momentum buffer takes the raw gradient).

Under torch.distributed (world size > 1) the loss is the mean over the ranks
(weighted by their sample counts) and :math:`\|g\|^2` the sum over the shards of
sharded (FSDP2) gradients, in one collective per step, so every rank takes the
same step (:mod:`polyak._base`; ``loss_is_global=True`` when the loss handed over
is already global).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from . import functional as F
from ._base import MISSING, PolyakBase, add_to_counter, check_bool, check_finite, check_in_range, check_positive, require
from ._registry import OptimizerSpec, register


class ALIG(PolyakBase):
    """ALI-G optimizer.

    Args:
        params: parameters or param groups (groups may override ``max_lr``, ``momentum``,
            ``weight_decay`` and ``lr``).
        max_lr: largest step size (paper: 0.1, 1 or 10), or None for ALI-G infinity. Required.
        momentum: mu of the reference momentum (paper experiments: 0.9); 0 disables it.
        max_norm: radius of the global L2 ball the parameters are kept in (paper: 50 to 400), or None.
        projection: optional callable(list_of_params) applied in place after every step
            (not part of ``state_dict``: pass it again when resuming).
        lower_bound: a known lower bound B of the loss (0 for cross-entropy, hinge, squared loss).
        delta: small constant added to ||g||^2 (1e-5 as in the reference code).
        adjusted_momentum: use the TF-Nesterov momentum form instead of the reference one.
        weight_decay: lambda of ``w <- w - gamma (g + lambda w)`` (not in the paper, whose
            regulariser is the ``max_norm`` ball; gamma is computed from the loss and the raw
            gradient, as ALI-G+ does). Default 0.
        lr, nonfinite, foreach, process_group, loss_is_global: see :class:`polyak._base.PolyakBase`.
            ``lr`` multiplies the step after the ``max_lr`` clip.
        fused: True: the parameter update as one compiled loop per tensor (see
            :mod:`polyak._fused`; torch.compile must work here, else RuntimeError);
            ``foreach`` still chooses how ||g||^2 is summed. Worth it on large models only
            (about 0.1 ms of compile bookkeeping a call). None (default) or False: unfused.

    Example::

        opt = ALIG(model.parameters(), max_lr=0.1, momentum=0.9, max_norm=100.0)
        loss = criterion(model(x), y); opt.zero_grad(); loss.backward()
        opt.step(loss=loss)
    """

    group_keys = frozenset({"max_lr", "momentum", "weight_decay"})
    mode_keys = frozenset({"adjusted_momentum"})

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
        weight_decay: float = 0.0,
        *,
        lr: float = 1.0,
        nonfinite: str = "skip",
        foreach: bool = True,
        fused: Optional[bool] = None,
        process_group=None,
        loss_is_global: bool = False,
    ):
        require(type(self).__name__, "max_lr", max_lr,
                "a positive float (the papers use 0.1, 1 or 10) or max_lr=None for ALI-G infinity (no clip)")
        check_positive("max_lr", max_lr, allow_none=True, fix="Use None for ALI-G infinity.")
        check_in_range("momentum", momentum, 0.0, 1.0)
        check_positive("max_norm", max_norm, allow_none=True)
        check_positive("delta", delta, fix="It keeps the step finite when the gradient vanishes.")
        check_finite("lower_bound", lower_bound)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        if projection is not None and not callable(projection):
            raise TypeError(f"projection must be a callable(list_of_params) or None, got {type(projection).__name__}")
        check_bool("adjusted_momentum", adjusted_momentum)
        self.projection = projection
        defaults = dict(
            max_lr=max_lr, momentum=momentum, weight_decay=weight_decay, max_norm=max_norm,
            lower_bound=float(lower_bound), delta=float(delta), adjusted_momentum=adjusted_momentum,
        )
        if fused is not None:
            check_bool("fused", fused)
        defaults["fused"] = bool(fused)
        super().__init__(params, defaults, lr=lr, nonfinite=nonfinite, foreach=foreach,
                         process_group=process_group, loss_is_global=loss_is_global)
        self._project()

    def _check_group(self, group):
        super()._check_group(group)
        check_positive("max_lr (param group)", group["max_lr"], allow_none=True)
        check_in_range("momentum (param group)", group["momentum"], 0.0, 1.0)

    # the loss-level constants: one loss, so one value for all groups
    lower_bound = property(lambda self: self._setting("lower_bound"), doc="B, the lower bound of the loss")
    delta = property(lambda self: self._setting("delta"), doc="the constant added to ||g||^2")
    max_norm = property(lambda self: self._setting("max_norm"), doc="radius of the L2 ball, or None")
    adjusted_momentum = property(lambda self: self._setting("adjusted_momentum"))

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # GradScaler folds its unscale into the step, except for the adjusted momentum,
        # whose buffer holds raw gradients (then GradScaler unscales them first)
        return not self.adjusted_momentum

    def _project(self) -> None:
        if self.max_norm is None and self.projection is None:
            return
        params = self._all_params()
        F.apply_projection_(params, self.max_norm, self.projection, foreach=self.foreach,
                            sq_norm=lambda: self._global_sq_norm(params))

    @torch.no_grad()
    def step(self, closure=None, *, loss=None):
        """One ALI-G step. Give the batch loss (``loss=``) after ``backward()``, a
        torch-style closure that computes the loss, calls backward and returns it, or
        nothing after :meth:`add_loss` (the mean of the losses handed over)."""
        batch, groups, grads = self._open_step(closure, loss)
        if not grads:
            return batch.result()
        lower_bound = self.lower_bound
        scalars = self._step_scalars(batch, grads, lower_bound=lower_bound)
        if self._skip_step(scalars):
            return batch.result()
        keep = self._keep_mask(scalars)
        self._polyak_update(
            groups, scalars.loss_mean - lower_bound, scalars.grad_sq_norm, self.delta, keep,
            max_lr=lambda group: group["max_lr"], adjusted=self.adjusted_momentum, grad_factor=scalars.grad_factor,
        )
        self._project()
        add_to_counter(self.global_state, "step")
        return batch.result()


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

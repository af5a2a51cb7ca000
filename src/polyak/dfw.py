r"""DFW: Deep Frank-Wolfe, and the multi-class hinge loss it is designed for.

Berrada, Zisserman, Kumar. "Deep Frank-Wolfe For Neural Network Optimization",
ICLR 2019. A baseline of the ALI-G paper (same authors).

The loss is the multi-class SVM (Crammer & Singer) hinge on scores :math:`s`
with label :math:`y` and margin :math:`\Delta` (1):

.. math::
    \ell(s, y) = \max_j \big(s_j + \Delta\,[j \ne y]\big) - s_y \;\ge 0 .

Its gradient is the one-hot difference at the maximising class (the subgradient
the authors' code takes: the index returned by ``max``).

DFW solves, at each step, the proximal problem of the linearised loss with a
single Frank-Wolfe step whose line search has a closed form. Without
regularisation (the authors' ``weight_decay=0``) one DFW step with proximal
coefficient :math:`\eta` and ONE global :math:`\|g\|^2` is

.. math::
    \gamma_{FW} = \mathrm{clamp}\Big(\frac{\ell}{\eta\|g\|^2 + \epsilon}, 0, 1\Big),
    \qquad w \leftarrow w - \eta\,\gamma_{FW}\,g ,

and :math:`\eta\gamma_{FW} = \mathrm{clamp}\big(\ell / (\|g\|^2 + \epsilon/\eta), 0, \eta\big)`:
exactly ALI-G's step with ``max_lr = eta``, ``delta = eps / eta`` and lower bound 0.
Momentum is the same too: the authors' DFW does
``w <- w - eta gamma g; z <- mu z - eta gamma g; w <- w + mu z``, which is ALI-G's
reference momentum (not torch.optim.SGD's, and not ALI-G's ``adjusted_momentum``).
So :class:`DFW` is a named :class:`polyak.ALIG` with DFW's arguments; it is
procedurally ALI-G on the hinge loss, and ALI-G was presented by the same
authors as DFW's successor with convergence guarantees.

What is not here: DFW's regulariser. The authors' ``weight_decay`` enters the
Frank-Wolfe line search and the step (``w <- w - eta (lambda w + gamma g)``);
with it DFW is no longer ALI-G, and ALI-G regularises with a constraint
instead (``ALIG(max_norm=...)``). Per-group ``eta`` is refused: in the authors'
code it changes the shared line search (the denominator becomes
sum_groups eta_k ||g_k||^2), which is not a per-group clip.

The authors' published CIFAR runs used a "smoothed" SVM
(``multiclass_hinge_loss(..., smooth=True)``), see that function.

As an ALIG, DFW takes the group's ``"lr"`` (1.0, a torch.optim convention: it
multiplies :math:`\eta\gamma_{FW}`, so LR schedulers work) and ALIG's distributed
behaviour: under torch.distributed the loss is the mean over the ranks and
:math:`\|g\|^2` sums the shards of sharded gradients, in one collective per step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import Tensor

from ._base import MISSING, check_choice, check_in_range, check_positive, require
from ._registry import OptimizerSpec, register
from .alig import ALIG

HINGE_REDUCTIONS = ("mean", "none", "sum")


def multiclass_hinge_loss(
    scores: Tensor, targets: Tensor, margin: float = 1.0, reduction: str = "mean", smooth: bool = False
) -> Tensor:
    r"""Multi-class SVM loss :math:`\max_j (s_j + \Delta [j \ne y]) - s_y` per sample.

    Args:
        scores: (N, C) class scores (logits), floating point.
        targets: (N,) class indices in [0, C).
        margin: :math:`\Delta` >= 0 (1 in DFW).
        reduction: "mean" (DFW's, the batch mean), "sum" or "none" (the (N,) losses).
        smooth: the authors' smoothing of the published DFW runs: for each sample
            whose softmax-weighted augmented score sum_j p_j (s_j + Delta[j!=y] - s_y)
            is >= 0 (p = softmax(s), held constant: no gradient through it), that
            weighted sum replaces the max. It is <= the hinge and still >= 0, so the
            lower bound 0 of DFW/ALI-G holds. (The reference applies it with margin 1.)

    Example::

        loss = multiclass_hinge_loss(model(x), y)     # lower bound 0
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(
            "scores must be a floating-point (N, C) tensor of class scores, got "
            + (f"shape {tuple(scores.shape)} dtype {scores.dtype}" if isinstance(scores, Tensor) else type(scores).__name__)
        )
    if not isinstance(targets, Tensor) or targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"targets must be a 1-D tensor of {scores.shape[0]} class indices (one per row of scores), got "
            + (f"shape {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets).__name__)
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"targets must hold integer class indices, got dtype {targets.dtype}; use targets.long()")
    # An out-of-range index only surfaces as a device assert on accelerators: check where it is free.
    if targets.device.type == "cpu" and targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= scores.shape[1]):
        raise ValueError(
            f"targets must be class indices in [0, {scores.shape[1]}), got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0 (DFW uses 1), got {margin!r}")
    check_choice("reduction", reduction, HINGE_REDUCTIONS)
    if not isinstance(smooth, bool):
        raise TypeError(f"smooth must be True or False, got {smooth!r}")

    targets = targets.long()
    margins = margin * (1.0 - nnf.one_hot(targets, scores.shape[1]).to(scores.dtype))
    augmented = scores + margins - scores.gather(1, targets[:, None])
    losses = augmented.max(dim=1).values
    if smooth:
        with torch.no_grad():
            weights = torch.softmax(scores, dim=1)
        smoothed = (weights * augmented).sum(dim=1)
        losses = torch.where(smoothed.detach() >= 0, smoothed, losses)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


class DFW(ALIG):
    """Deep Frank-Wolfe without regularisation, i.e. ALI-G with DFW's arguments.

    ``DFW(params, eta, momentum, eps)`` is ``ALIG(params, max_lr=eta,
    momentum=momentum, delta=eps/eta, lower_bound=0)``; see the module docstring
    for the derivation. Use it on a loss whose lower bound is 0 and that is
    piecewise linear, as DFW requires: :func:`multiclass_hinge_loss`.

    Args:
        params: parameters or param groups (groups may set ``momentum``, not ``eta``).
        eta: DFW's proximal coefficient = the largest step (the authors' runs: 0.1 or 1). Required.
        momentum: mu of the authors' momentum (their runs: 0.9); 0 disables it.
        eps: DFW's constant in the line-search denominator (1e-5).
        weight_decay: must be 0 (refused otherwise: see the module docstring).
        lr, nonfinite, foreach, process_group, loss_is_global: see :class:`polyak._base.PolyakBase`.

    The authors' ``optimizer.step(lambda: float(loss))`` (a closure that returns the
    loss whose backward already ran) works unchanged, as does ``step(loss=loss)``.

    Example::

        opt = DFW(model.parameters(), eta=0.1, momentum=0.9)
        loss = multiclass_hinge_loss(model(x), y); opt.zero_grad(); loss.backward()
        opt.step(loss=loss)
    """

    group_keys = frozenset({"momentum"})

    def __init__(
        self,
        params,
        eta=MISSING,
        momentum: float = 0.0,
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        *,
        lr: float = 1.0,
        nonfinite: str = "skip",
        foreach: bool = True,
        process_group=None,
        loss_is_global: bool = False,
    ):
        require("DFW", "eta", eta, "a positive float (the authors use 0.1 or 1), the largest step size")
        check_positive("eta", eta, fix="It is DFW's proximal coefficient, the largest step (0.1 or 1 in the paper).")
        check_in_range("momentum", momentum, 0.0, 1.0)
        check_positive("eps", eps, fix="It keeps the line search finite when the gradient vanishes (1e-5).")
        if weight_decay != 0:
            raise ValueError(
                f"DFW cannot honour weight_decay={weight_decay!r}: DFW's regulariser changes its line search, and "
                "with it DFW is no longer ALI-G (see the module docstring); use polyak.ALIG(weight_decay=...) or "
                "ALIG(max_norm=...), ALI-G's constraint"
            )
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors or param-group dicts, got a single Tensor; wrap it: [tensor]")
        params = list(params)
        for group in params:
            if isinstance(group, dict) and ("eta" in group or "max_lr" in group):
                raise ValueError(
                    "DFW takes one eta for all parameters: a per-group eta changes DFW's shared line search; "
                    "remove 'eta'/'max_lr' from the param groups, or use polyak.ALIG for per-group max_lr"
                )
        super().__init__(
            params, max_lr=float(eta), momentum=momentum, lower_bound=0.0, delta=float(eps) / float(eta),
            lr=lr, nonfinite=nonfinite, foreach=foreach, process_group=process_group, loss_is_global=loss_is_global,
        )

    @property
    def eta(self) -> float:
        """DFW's proximal coefficient (ALI-G's max_lr)."""
        return self._setting("max_lr")

    @property
    def eps(self) -> float:
        """DFW's line-search constant (ALI-G's delta times eta)."""
        return self._setting("delta") * self._setting("max_lr")


register(OptimizerSpec(
    name="dfw",
    factory=DFW,
    needs=frozenset({"loss"}),
    passes=(1, 1),
    # the authors' command-line defaults; their CIFAR runs used eta 0.1 (DenseNet) and 1 (WRN)
    defaults={"eta": 0.1, "momentum": 0.9},
    # eta plays ALI-G's max_lr, so it gets ALI-G's grid
    step_size_param="eta",
    step_size_grid=(0.01, 0.1, 1.0, 10.0),
    summary="Deep Frank-Wolfe (Berrada et al., ICLR 2019) without regularisation = ALI-G on the multi-class hinge loss",
))

r"""The parabola fits of the parabolic line searches, in one place.

PAL (:mod:`polyak.pal`) fits :math:`\ell(x) \approx a x^2 + b x + \ell_0` along
the unit direction from the loss at 0, its slope there and ONE more loss, and
jumps to (a multiple of) the minimum. LABPAL (:mod:`polyak.labpal`) fits the same
model through the mean losses at THREE points, either exactly or as the published
code computes it. Both return the coefficients as tensors; the optimizers decide
what a concave or non-finite fit means.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["parabolic_update_step", "parabola_exact", "parabola_reference"]


def parabolic_update_step(
    loss_0: Tensor, loss_mu: Tensor, slope: Tensor, measuring_step: float, update_factor: float,
    max_step: Optional[float],
):
    """PAL's jump distance s along the unit direction from a 2-point + slope parabola.

    Returns ``(s, s_before_clip, curvature, finite)`` as 0-dim tensors, branch-free
    (no host read). ``finite`` is false when the curvature or slope is NaN/inf; ``s``
    is then 0.
    """
    curvature = (loss_mu - loss_0 - slope * measuring_step) / (measuring_step * measuring_step)
    descent = slope < 0
    # -b/(2a) is evaluated for every a; where() keeps it only where a > 0.
    parabola_min = -slope / (2 * curvature) * update_factor
    unclipped = torch.where(
        descent & (curvature > 0), parabola_min,
        torch.where(descent, torch.full_like(slope, measuring_step), torch.zeros_like(slope)),
    )
    finite = torch.isfinite(curvature) & torch.isfinite(slope)
    unclipped = torch.where(finite, unclipped, torch.zeros_like(unclipped))
    step = unclipped if max_step is None else torch.clamp(unclipped, max=max_step)
    return step, unclipped, curvature, finite


def parabola_exact(points: Sequence[float], losses: Tensor) -> Tuple[Tensor, Tensor]:
    """(a, b) of the parabola a x^2 + b x + c through (points[i], losses[i]), points[0] == 0."""
    _, x1, x2 = points
    f = losses.to(torch.float64)
    slope_1 = (f[1] - f[0]) / x1
    slope_2 = (f[2] - f[0]) / x2
    a = (slope_2 - slope_1) / (x2 - x1)
    return a, slope_1 - a * x1


def parabola_reference(points: Sequence[float], losses: Tensor) -> Tuple[Tensor, Tensor]:
    """(a, b) as the published LABPAL code computes them: numpy.gradient (edge
    order 1) applied twice on the non-uniform points, b = first derivative at the
    first point, a = second derivative there / 2."""
    x0, x1, x2 = points
    h1, h2 = x1 - x0, x2 - x1
    f = losses.to(torch.float64)
    first_at_0 = (f[1] - f[0]) / h1  # one-sided, first order
    # second-order interior formula on non-uniform spacing (exact on parabolas)
    first_at_1 = (-h2 / (h1 * (h1 + h2))) * f[0] + ((h2 - h1) / (h1 * h2)) * f[1] + (h1 / (h2 * (h1 + h2))) * f[2]
    second_at_0 = (first_at_1 - first_at_0) / h1
    return second_at_0 / 2, first_at_0

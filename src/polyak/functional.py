"""Shared math of the Polyak-step optimizers.

Every optimizer of the package builds its update from these functions, so each
formula is written once. Each function works on lists of tensors and has two
paths: a multi-tensor (``foreach``) path grouped by device and dtype, and a
readable per-tensor loop that is the ground truth (tests check they agree in
float64).

Step sizes may be a Python float or a 0-dim tensor. A tensor step size is never
read back to the host here; callers convert it to a float only where that read
is free (CPU tensors), so an accelerator never waits on the host.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Scalar = Union[float, Tensor]

__all__ = [
    "group_by_device_and_dtype",
    "global_sq_norm",
    "global_dot",
    "polyak_step_size",
    "sgd_step_",
    "alig_momentum_step_",
    "alig_update_",
    "project_l2_ball_",
    "copy_all_",
    "decoupled_weight_decay_",
    "as_scalar",
    "real_views",
]


def group_by_device_and_dtype(*tensor_lists: Sequence[Tensor]) -> Dict[Tuple[torch.device, torch.dtype], List[List[Tensor]]]:
    """Split parallel tensor lists into buckets that one foreach kernel can take.

    Bucketed on the first list's tensors; the i-th tensor of every list goes to
    the same bucket, so the lists stay aligned inside each bucket.
    """
    first = tensor_lists[0]
    keys = [(t.device, t.dtype) for t in first]
    if all(k == keys[0] for k in keys):
        # The common case (one device, one dtype): no per-tensor regrouping.
        return {keys[0]: [list(ts) for ts in tensor_lists]} if keys else {}
    buckets: Dict[Tuple[torch.device, torch.dtype], List[List[Tensor]]] = defaultdict(
        lambda: [[] for _ in tensor_lists]
    )
    for i, key in enumerate(keys):
        for bucket_list, tensors in zip(buckets[key], tensor_lists):
            bucket_list.append(tensors[i])
    return dict(buckets)


# Sums of squares per tensor in one kernel; absent from older torch releases.
_FOREACH_POWSUM = getattr(torch, "_foreach_powsum", None)


# Large float32/float64 CPU tensors: torch.vdot (the BLAS dot), whose blocked partial sums
# round far less than _foreach_powsum's CPU kernel (relative error 2.4e-6 against 5.9e-5 of a
# float64 sum at 12M float32 entries) at the same speed once the gradients are out of cache
# (the read is memory bound; faster when they are warm): benchmarks/results/step_overhead.md.
# Below the threshold one foreach call over all the small tensors costs less than a call
# per tensor. GPUs keep the single foreach kernel.
_BLAS_DOT_DTYPES = (torch.float32, torch.float64)
_BLAS_DOT_MIN_NUMEL = 1 << 17


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision squares lose most of their digits when summed: add in float32 at least.
    return torch.promote_types(dtype, torch.float32)


def global_sq_norm(tensors: Sequence[Tensor], foreach: bool = True) -> Tensor:
    """Sum of squares of all entries of all tensors, as one 0-dim tensor.

    The result lives on the device of the first tensor, in the widest
    accumulation dtype met (at least float32).
    """
    if len(tensors) == 0:
        raise ValueError("global_sq_norm needs at least one tensor")
    home = tensors[0].device
    partials: List[Tensor] = []
    if foreach:
        for (device, dtype), (bucket,) in group_by_device_and_dtype(tensors).items():
            acc = _accumulation_dtype(dtype)
            if acc != dtype:
                bucket = [t.to(acc) for t in bucket]
            compiling = torch.compiler.is_compiling()
            if device.type == "cpu" and dtype in _BLAS_DOT_DTYPES and not compiling:
                dots, small = [], []
                for t in bucket:
                    if t.numel() >= _BLAS_DOT_MIN_NUMEL and t.is_contiguous():
                        flat = t.view(-1)
                        dots.append(torch.vdot(flat, flat))
                    else:
                        small.append(t)
                if dots:
                    partials.append(torch.stack(dots).sum())
                bucket = small
                if not bucket:
                    continue
            # sums of squares per tensor, then one sum: no sqrt-then-square round trip
            # (dynamo cannot trace _foreach_powsum: compiled steps take the norms)
            if _FOREACH_POWSUM is not None and not compiling:
                partials.append(torch.stack(_FOREACH_POWSUM(bucket, 2)).sum())
            else:  # torch releases before _foreach_powsum, and compiled steps
                partials.append(torch.stack(torch._foreach_norm(bucket, 2)).square().sum())
    else:
        for t in tensors:
            partials.append(t.to(_accumulation_dtype(t.dtype)).square().sum())
    return _sum_partials(partials, home)


def _sum_partials(partials: List[Tensor], home: torch.device) -> Tensor:
    """Sum of 0-dim partial sums, in order, on ``home`` in the widest dtype met."""
    if len(partials) == 1:
        return partials[0]
    out_dtype = partials[0].dtype
    for p in partials[1:]:
        out_dtype = torch.promote_types(out_dtype, p.dtype)
    total = partials[0].to(home, out_dtype)
    for p in partials[1:]:
        total = total + p.to(home, out_dtype)
    return total


def global_dot(xs: Sequence[Tensor], ys: Sequence[Tensor], foreach: bool = True) -> Tensor:
    """sum_i <x_i, y_i> over all tensor pairs, as one 0-dim tensor.

    Like :func:`global_sq_norm`: on the device of the first tensor, accumulated
    in the widest dtype met and at least float32.
    """
    if len(xs) == 0:
        raise ValueError("global_dot needs at least one tensor")
    if len(xs) != len(ys):
        raise ValueError(f"global_dot needs two lists of equal length, got {len(xs)} and {len(ys)} tensors")
    home = xs[0].device
    partials: List[Tensor] = []
    # Products then sums (not torch.dot): L4's float32 trajectory test matches its
    # reference loop to 1e-10 only with this rounding, so the order is kept as L4 had it.
    if foreach:
        for (device, dtype), (bucket_x, bucket_y) in group_by_device_and_dtype(xs, ys).items():
            acc = _accumulation_dtype(dtype)
            for y in bucket_y:
                acc = torch.promote_types(acc, y.dtype)
            bucket_x = [x.to(device, acc) for x in bucket_x]
            bucket_y = [y.to(device, acc) for y in bucket_y]
            products = torch._foreach_mul(bucket_x, bucket_y)
            partials.append(torch.stack([p.sum() for p in products]).sum())
    else:
        for x, y in zip(xs, ys):
            acc = torch.promote_types(_accumulation_dtype(x.dtype), y.dtype)
            partials.append((x.to(acc) * y.to(x.device, acc)).sum())
    return _sum_partials(partials, home)


def polyak_step_size(
    loss_gap: Scalar, grad_sq_norm: Scalar, delta: float, max_lr: Optional[float]
) -> Tuple[Scalar, Scalar, Union[bool, Tensor]]:
    """Clipped Polyak step gamma = clamp(gap / (||g||^2 + delta), 0, max_lr).

    ``loss_gap`` is the loss minus its lower bound (or minus the AOVs for
    ALI-G+). Returns ``(step, unclipped, clipped)``: the step to take, the
    step before the ``max_lr`` clip (after the clamp at 0), and whether
    ``max_lr`` was the active bound. ``max_lr=None`` means no upper clip
    (ALI-G infinity). Floats in, floats out (the CPU path, no kernel launches);
    any tensor in, 0-dim tensors out (no host read).
    """
    if not isinstance(loss_gap, Tensor) and not isinstance(grad_sq_norm, Tensor):
        ratio = loss_gap / (grad_sq_norm + delta)
        # a NaN passes through as in the tensor path (Python's max would drop it)
        unclipped = ratio if math.isnan(ratio) else max(0.0, ratio)
        if max_lr is None:
            return unclipped, unclipped, False
        return min(unclipped, max_lr), unclipped, unclipped > max_lr
    unclipped = torch.clamp(loss_gap / (grad_sq_norm + delta), min=0.0)
    if max_lr is None:
        return unclipped, unclipped, torch.zeros((), dtype=torch.bool, device=unclipped.device)
    step = torch.clamp(unclipped, max=max_lr)
    return step, unclipped, unclipped > max_lr


def as_scalar(value: Scalar) -> Scalar:
    """A float when reading the value is free (a 0-dim CPU tensor), else unchanged.

    On CPU a host read costs nothing, and Python floats then save a handful of
    tiny kernel launches per step; on accelerators the tensor stays on device.
    """
    if isinstance(value, Tensor) and value.device.type == "cpu" and value.dim() == 0 and not torch.compiler.is_compiling():
        return value.item()
    return value


def _scaled(tensors: List[Tensor], step: Scalar) -> List[Tensor]:
    return torch._foreach_mul(tensors, step)


def sgd_step_(params: List[Tensor], directions: List[Tensor], step: Scalar, foreach: bool = True) -> None:
    """p <- p - step * d for every pair; ``step`` a float or a 0-dim tensor."""
    if not params:
        return
    if not foreach:
        for p, d in zip(params, directions):
            if isinstance(step, Tensor):
                p.sub_(d * step.to(p.device))
            else:
                p.add_(d, alpha=-step)
        return
    for (device, _), (ps, ds) in group_by_device_and_dtype(params, directions).items():
        if isinstance(step, Tensor):
            torch._foreach_sub_(ps, _scaled(ds, step.to(device)))
        else:
            torch._foreach_add_(ps, ds, alpha=-step)


def alig_momentum_step_(
    params: List[Tensor],
    grads: List[Tensor],
    buffers: List[Tensor],
    step: Scalar,
    momentum: float,
    adjusted: bool = False,
    foreach: bool = True,
) -> None:
    """The ALI-G reference momentum update (not torch.optim.SGD's momentum).

    default:   p <- p - step*g;  b <- mu*b - step*g;  p <- p + mu*b
    adjusted:  b <- mu*b - g;    p <- p - step*g + step*mu*b   (TF Nesterov form)
    """
    _momentum_step_(params, grads, buffers, step, momentum, momentum, adjusted, foreach)


def _on(value: Scalar, device: torch.device) -> Scalar:
    return value.to(device) if isinstance(value, Tensor) else value


def _foreach_sub_scaled_(destinations: List[Tensor], sources: List[Tensor], scale: Scalar) -> None:
    # d <- d - scale*s: a float scale as the kernel's alpha (no step*s tensor materialised)
    if isinstance(scale, Tensor):
        torch._foreach_sub_(destinations, _scaled(sources, scale))
    else:
        torch._foreach_add_(destinations, sources, alpha=-scale)


def _foreach_add_scaled_(destinations: List[Tensor], sources: List[Tensor], scale: Scalar) -> None:
    # d <- d + scale*s
    if isinstance(scale, Tensor):
        torch._foreach_add_(destinations, _scaled(sources, scale))
    else:
        torch._foreach_add_(destinations, sources, alpha=scale)


def _momentum_step_(params, grads, buffers, step: Scalar, buffer_decay: Scalar, param_momentum: Scalar,
                    adjusted: bool, foreach: bool) -> None:
    """:func:`alig_momentum_step_` with the buffer's decay and the parameters' momentum
    factor apart (both ``momentum`` there; 1 and 0 in the masked skip of
    :func:`_masked_alig_update_`), each a float or a 0-dim tensor."""
    if not params:
        return
    if not foreach:
        for p, g, b in zip(params, grads, buffers):
            s, decay, mu = _on(step, p.device), _on(buffer_decay, p.device), _on(param_momentum, p.device)
            if adjusted:
                b.mul_(decay).sub_(g)
                p.sub_(g * s)
                p.add_(b * (s * mu))
            else:
                update = g * s
                p.sub_(update)
                b.mul_(decay).sub_(update)
                if isinstance(mu, Tensor):
                    p.add_(b * mu)
                else:
                    p.add_(b, alpha=mu)
        return
    for (device, _), (ps, gs, bs) in group_by_device_and_dtype(params, grads, buffers).items():
        s, decay, mu = _on(step, device), _on(buffer_decay, device), _on(param_momentum, device)
        if adjusted:
            torch._foreach_mul_(bs, decay)
            torch._foreach_sub_(bs, gs)
            _foreach_sub_scaled_(ps, gs, s)
            _foreach_add_scaled_(ps, bs, s * mu)
        else:
            if isinstance(s, Tensor):
                update = _scaled(gs, s)
                torch._foreach_sub_(ps, update)
                torch._foreach_mul_(bs, decay)
                torch._foreach_sub_(bs, update)
            else:
                # Same arithmetic without materialising step*g: b <- mu*b - s*g.
                torch._foreach_add_(ps, gs, alpha=-s)
                torch._foreach_mul_(bs, decay)
                torch._foreach_add_(bs, gs, alpha=-s)
            _foreach_add_scaled_(ps, bs, mu)


def alig_update_(
    params: List[Tensor],
    grads: List[Tensor],
    buffers: Optional[List[Tensor]],
    step: Scalar,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    adjusted: bool = False,
    foreach: bool = True,
    keep: Optional[Tensor] = None,
    grad_factor: Optional[Scalar] = None,
    fused: bool = False,
) -> None:
    """The ALI-G update, shared by ALIG, ALIGPlus, DFW and SPS (momentum 0):
    ``p <- p - step*(g + weight_decay*p)`` (the decay uses the pre-step weights), then
    the reference momentum of :func:`alig_momentum_step_` when ``buffers`` are given.

    ``grad_factor``: the gradients are ``g / grad_factor`` (GradScaler's scaled
    gradients): every gradient term takes ``step * grad_factor`` (not with
    ``adjusted``, whose buffer accumulates raw gradients).

    ``keep``: a 0-dim bool tensor (the branch-free skip of the tensor path): where it
    is False the parameters and buffers keep their old values exactly, even when the
    gradients or the step are NaN (see :func:`_masked_alig_update_`).

    ``fused``: the same update as one compiled loop per tensor (:mod:`polyak._fused`).
    """
    if not params:
        return
    if adjusted and grad_factor is not None and buffers is not None and momentum > 0:
        raise ValueError("adjusted momentum accumulates raw gradients: it cannot take scaled ones")
    grad_step = step if grad_factor is None else step * grad_factor
    if fused:
        from ._fused import fused_update_   # here, not on top: _fused builds on this module
        fused_update_(params, grads, buffers, step, grad_step, momentum, weight_decay, adjusted, keep)
        return
    if keep is not None:
        _masked_alig_update_(params, grads, buffers, step, grad_step, momentum, weight_decay, adjusted, foreach, keep)
        return
    decoupled_weight_decay_(params, step, weight_decay, foreach=foreach)
    if buffers is not None and momentum > 0:
        alig_momentum_step_(params, grads, buffers, grad_step, momentum, adjusted=adjusted, foreach=foreach)
    else:
        sgd_step_(params, grads, grad_step, foreach=foreach)


def _masked_alig_update_(params, grads, buffers, step, grad_step, momentum, weight_decay, adjusted, foreach, keep) -> None:
    """:func:`alig_update_` that changes nothing where ``keep`` is False, without a copy of
    the state: the step is 0, the gradients are read as 0 (so a NaN gradient cannot leak
    through 0 * NaN), the buffers decay by 1 and the momentum term on the parameters is
    0, so every parameter and buffer keeps its value exactly. One extra pass (the masked
    gradients) over the unmasked tensor path; torch.compile fuses it into the update."""
    zero = torch.zeros((), dtype=torch.as_tensor(step).dtype, device=keep.device)
    step = torch.where(keep, torch.as_tensor(step, device=keep.device), zero)
    grad_step = torch.where(keep, torch.as_tensor(grad_step, device=keep.device), zero)
    grads = [torch.where(keep.to(g.device), g, torch.zeros((), dtype=g.dtype, device=g.device)) for g in grads]
    decoupled_weight_decay_(params, step, weight_decay, foreach=foreach)   # factor 1 - 0 * lambda = 1
    if buffers is None or momentum == 0:
        sgd_step_(params, grads, grad_step, foreach=foreach)
        return
    buffer_decay = torch.where(keep, torch.full_like(zero, momentum), torch.ones_like(zero))
    param_momentum = torch.where(keep, torch.full_like(zero, momentum), zero)
    _momentum_step_(params, grads, buffers, grad_step, buffer_decay, param_momentum, adjusted, foreach)


def project_l2_ball_(
    params: List[Tensor], max_norm: float, foreach: bool = True, sq_norm: Optional[Scalar] = None
) -> None:
    """Project all tensors together onto ONE L2 ball of radius ``max_norm``.

    If the joint norm exceeds ``max_norm`` every tensor is scaled by
    max_norm / norm; otherwise nothing changes (the scale factor is exactly 1).
    No host read: the factor stays a tensor on accelerators. ``sq_norm``: the
    joint squared norm when the caller computed it (sharded parameters).
    """
    if not params:
        return
    with torch.no_grad():
        total = torch.as_tensor(global_sq_norm(params, foreach=foreach) if sq_norm is None else sq_norm).sqrt()
        # min(1, r / ||w||): exactly 1.0 inside the ball, so inside points stay bit-identical.
        factor = torch.clamp(max_norm / total, max=1.0)
        factor = as_scalar(factor)
        if isinstance(factor, float) and factor == 1.0:
            return
        _scale_all_(params, factor, foreach)


def _scale_all_(params: List[Tensor], factor: Scalar, foreach: bool) -> None:
    """p <- factor * p for every tensor; a tensor factor is cast to each tensor's device and dtype."""
    if not foreach:
        for p in params:
            p.mul_(factor.to(p.device, p.dtype) if isinstance(factor, Tensor) else factor)
        return
    for (device, dtype), (ps,) in group_by_device_and_dtype(params).items():
        torch._foreach_mul_(ps, factor.to(device, dtype) if isinstance(factor, Tensor) else factor)


def apply_projection_(
    params: List[Tensor], max_norm: Optional[float], projection: Optional[Callable], foreach: bool = True,
    sq_norm: Optional[Callable[[], Scalar]] = None,
) -> None:
    """The ALI-G constraint set: the global L2 ball, then a user projection if given.
    ``sq_norm()``: the joint squared norm of ``params`` (for sharded parameters)."""
    if max_norm is not None:
        project_l2_ball_(params, max_norm, foreach=foreach, sq_norm=None if sq_norm is None else sq_norm())
    if projection is not None:
        with torch.no_grad():
            projection(params)


def copy_all_(destinations: List[Tensor], sources: List[Tensor], foreach: bool = True) -> None:
    """d.copy_(s) for every pair, one multi-tensor kernel when ``foreach``."""
    if foreach:
        torch._foreach_copy_(destinations, sources)
    else:
        for d, s in zip(destinations, sources):
            d.copy_(s)


def decoupled_weight_decay_(params: List[Tensor], step: Scalar, weight_decay: float, foreach: bool = True) -> None:
    """p <- p - step * weight_decay * p, i.e. the lambda*p part of p - step*(g + lambda*p).

    ``step`` a float or a 0-dim tensor (never read back to the host).
    """
    if not params or weight_decay == 0.0:
        return
    factor: Scalar = 1.0 - step * weight_decay
    if not isinstance(factor, Tensor) and factor == 1.0:
        return
    _scale_all_(params, factor, foreach)


def real_views(tensors: Sequence[Tensor]) -> List[Tensor]:
    """Complex tensors as real views (``torch.view_as_real``: the last dimension holds
    the real and imaginary parts), others unchanged, as torch.optim does it: on the
    views, squared norms are sum |z|^2, inner products Re <x, y>, and element-wise
    moments treat the two parts as separate coordinates, which is what the real
    problem in twice the dimensions would compute. In-place updates of a view
    update the complex tensor."""
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]

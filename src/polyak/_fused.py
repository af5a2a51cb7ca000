"""Fused parameter updates: each tensor read and written once per step.

The unfused multi-tensor path (:mod:`polyak.functional`) builds ALI-G's reference
momentum update ``w <- w - gamma g; b <- mu b - gamma g; w <- w + mu b`` from four
foreach kernels: seven tensor reads and four writes per parameter, where torch's
fused SGD makes three reads and two writes. The functions here write the whole
update of one step (weight decay, step, momentum) as one expression per tensor and
let ``torch.compile`` (inductor: C++ on CPU, Triton on GPU) turn it into one loop
that reads p, g, b once and writes p, b once.

The step size enters as a 0-dim tensor, so a new step size each step reuses the
compiled code (no recompilation); ``momentum`` and ``weight_decay`` are constants
of the compiled code. Each update repeats the rounding order of its foreach twin
operation by operation, so the two paths agree to a few ulps (exactly where no
multiply-add is contracted); tests/test_fused.py checks it in float64 and float32.

Where no compiler works, :func:`fused_unsupported_reason` says why, and the
optimizers refuse ``fused=True`` with that reason, as torch.optim does for a device
its fused kernels do not cover. Past torch._dynamo's recompile limit (one compiled
version per list of parameter shapes and dtypes), dynamo runs these same functions
uncompiled: the result is unchanged, only slower, and dynamo warns.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional

import torch
from torch import Tensor

from .functional import Scalar, group_by_device_and_dtype

__all__ = ["fused_unsupported_reason", "fused_sgd_step_", "fused_alig_momentum_step_"]


# ----------------------------------------------------------------- the updates
# Plain Python on lists: torch.compile unrolls the loop into one graph per list.
def _sgd_update(params: List[Tensor], grads: List[Tensor], step: Tensor, weight_decay: float) -> None:
    # p <- p (1 - step wd) - step g; as functional.decoupled_weight_decay_ then sgd_step_.
    neg_step = -step
    for p, g in zip(params, grads):
        start = p * (1.0 - step * weight_decay) if weight_decay != 0.0 else p
        p.copy_(start + g * neg_step)


def _momentum_update(
    params: List[Tensor], grads: List[Tensor], buffers: List[Tensor], step: Tensor, momentum: float, weight_decay: float
) -> None:
    # w <- w - step g; b <- mu b - step g; w <- w + mu b (after the decoupled decay of ALI-G+).
    neg_step = -step
    for p, g, b in zip(params, grads, buffers):
        start = p * (1.0 - step * weight_decay) if weight_decay != 0.0 else p
        new_b = b * momentum + g * neg_step
        p.copy_((start + g * neg_step) + new_b * momentum)
        b.copy_(new_b)


def _adjusted_momentum_update(
    params: List[Tensor], grads: List[Tensor], buffers: List[Tensor], step: Tensor, momentum: float, weight_decay: float
) -> None:
    # b <- mu b - g; w <- w - step g + step mu b (TensorFlow's Nesterov form).
    neg_step = -step
    buffer_scale = step * momentum
    for p, g, b in zip(params, grads, buffers):
        start = p * (1.0 - step * weight_decay) if weight_decay != 0.0 else p
        new_b = b * momentum - g
        p.copy_((start + g * neg_step) + new_b * buffer_scale)
        b.copy_(new_b)


@functools.lru_cache(maxsize=None)
def _compiled(update: Callable) -> Callable:
    # fullgraph: a graph break would leave the update in pieces, i.e. unfused.
    # dynamic=False: loops over known sizes; the size-generic code that dynamo
    # switches to on a second shape list measured 14% slower at 12M parameters
    # (one more compilation per model is the price). Built on first use, so
    # importing polyak never touches the compiler. size_asserts off: dynamo's guards
    # already check every size and stride; inductor's second check of each tensor
    # cost more than the whole update at 82K parameters (188 against 73 us a call).
    return torch.compile(update, fullgraph=True, dynamic=False, options={"size_asserts": False})


# ----------------------------------------------------------------- support
def fused_unsupported_reason(device: torch.device) -> Optional[str]:
    """None when a fused update can be compiled for ``device``, else why not."""
    device = torch.device(device)
    try:
        if device.type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()  # raises when no C++ compiler is found
            return None
        if device.type == "cuda":
            from torch.utils._triton import has_triton

            return None if has_triton() else "torch.compile needs Triton for CUDA tensors and it is not installed"
        return f"fused updates are compiled for CPU and CUDA tensors only, not {device.type}"
    except Exception as error:  # the compiler search raises its own error types, or imports fail
        return f"torch.compile (inductor) has no working compiler for {device.type} tensors: {error}"


# ----------------------------------------------------------------- entry points
def _as_step_tensor(step: Scalar, device: torch.device) -> Tensor:
    # A Python float becomes float64, the precision in which the foreach path scales by it.
    if isinstance(step, Tensor):
        return step.to(device)
    return torch.tensor(step, dtype=torch.float64, device=device)


def fused_sgd_step_(params: List[Tensor], grads: List[Tensor], step: Scalar, weight_decay: float = 0.0) -> None:
    """p <- p (1 - step*weight_decay) - step*g, one pass per tensor.

    The fused form of ``decoupled_weight_decay_`` followed by ``sgd_step_``.
    ``step``: a float or a 0-dim tensor (never read back to the host).
    """
    if not params:
        return
    update = _compiled(_sgd_update)
    with torch.no_grad():  # an update is never part of a graph, even when called outside step()
        for (device, _), (ps, gs) in group_by_device_and_dtype(params, grads).items():
            update(ps, gs, _as_step_tensor(step, device), float(weight_decay))


def fused_alig_momentum_step_(
    params: List[Tensor],
    grads: List[Tensor],
    buffers: List[Tensor],
    step: Scalar,
    momentum: float,
    adjusted: bool = False,
    weight_decay: float = 0.0,
) -> None:
    """The fused form of ``decoupled_weight_decay_`` followed by ``alig_momentum_step_``.

    default:   p <- p (1 - step*wd);  p <- p - step*g;  b <- mu*b - step*g;  p <- p + mu*b
    adjusted:  p <- p (1 - step*wd);  b <- mu*b - g;    p <- p - step*g + step*mu*b
    """
    if not params:
        return
    update = _compiled(_adjusted_momentum_update if adjusted else _momentum_update)
    with torch.no_grad():
        for (device, _), (ps, gs, bs) in group_by_device_and_dtype(params, grads, buffers).items():
            update(ps, gs, bs, _as_step_tensor(step, device), float(momentum), float(weight_decay))

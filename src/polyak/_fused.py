"""Fused parameter updates: each tensor read and written once per step.

The unfused multi-tensor path (:mod:`polyak.functional`) builds ALI-G's reference
momentum update ``w <- w - gamma g; b <- mu b - gamma g; w <- w + mu b`` from four
foreach kernels: seven tensor reads and four writes per parameter, where torch's
fused SGD makes three reads and two writes. The functions here write the whole
update of one step (weight decay, step, momentum) as one expression per tensor and
let ``torch.compile`` (inductor: C++ on CPU, Triton on GPU) turn it into one loop
that reads p, g, b once and writes p, b once.

The step size enters as a 0-dim tensor, so a new step size each step reuses the
compiled code (no recompilation); a new momentum or weight decay compiles once
more. Each update follows the order of operations of its foreach twin; the one
difference is that torch's CPU kernels compute ``p + alpha*g`` as a fused
multiply-add (one rounding) where inductor's CPU code rounds the product, so the
two paths agree to a few ulps (tests/test_fused.py: float64 to 1e-12 over several
steps, float32 to 4 ulps of each tensor's largest entry).

Where no compiler works, :func:`fused_unsupported_reason` says why, and the
optimizers refuse ``fused=True`` with that reason, as torch.optim does for a device
its fused kernels do not cover. Each list of parameter shapes and dtypes (a param
group of a model) compiles once, in seconds; past 64 such lists in one process
dynamo runs these same functions uncompiled: the result is unchanged, only slower,
and dynamo warns. Each call costs 0.1-0.2 ms of torch.compile's own bookkeeping
(guards, wrappers) on the project's CPU, so fusing pays off on large models only:
at 12M parameters a fused ALI-G momentum step is 0.49 x the eager one, at 82K it
is 1.1 x (benchmarks/results/step_overhead.md).
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .functional import Scalar, group_by_device_and_dtype

__all__ = ["fused_unsupported_reason", "check_fused_supported", "fused_update_"]


# ----------------------------------------------------------------- the updates
# Plain Python on lists: torch.compile unrolls the loop into one graph per list.
# ``keep`` (a 0-dim bool tensor or None): the branch-free skip; where it is False every
# tensor keeps its old value exactly, even when the step or the gradients are NaN.
def _decayed(p: Tensor, step: Tensor, weight_decay: float) -> Tensor:
    # p (1 - step wd): the lambda p part of p - step (g + lambda p), on the pre-step weights
    return p * (1.0 - step * weight_decay) if weight_decay != 0.0 else p


def _kept(keep: Optional[Tensor], new: Tensor, old: Tensor) -> Tensor:
    return new if keep is None else torch.where(keep, new, old)


def _plain_update(
    params: List[Tensor], grads: List[Tensor], step: Tensor, grad_step: Optional[Tensor], weight_decay: float,
    keep: Optional[Tensor],
) -> None:
    # p <- p (1 - step wd) - grad_step g
    neg_step = -(step if grad_step is None else grad_step)
    for p, g in zip(params, grads):
        p.copy_(_kept(keep, _decayed(p, step, weight_decay) + g * neg_step, p))


def _momentum_update(
    params: List[Tensor], grads: List[Tensor], buffers: List[Tensor], step: Tensor, grad_step: Optional[Tensor],
    momentum: float, weight_decay: float, keep: Optional[Tensor],
) -> None:
    # w <- w - grad_step g; b <- mu b - grad_step g; w <- w + mu b (after the decay)
    neg_step = -(step if grad_step is None else grad_step)
    for p, g, b in zip(params, grads, buffers):
        new_b = b * momentum + g * neg_step
        new_p = (_decayed(p, step, weight_decay) + g * neg_step) + new_b * momentum
        p.copy_(_kept(keep, new_p, p))
        b.copy_(_kept(keep, new_b, b))


def _adjusted_momentum_update(
    params: List[Tensor], grads: List[Tensor], buffers: List[Tensor], step: Tensor, grad_step: Optional[Tensor],
    momentum: float, weight_decay: float, keep: Optional[Tensor],
) -> None:
    # b <- mu b - g; w <- w - step g + step mu b (TensorFlow's Nesterov form, after the decay);
    # raw gradients only (grad_step is None: functional.alig_update_ refuses a grad_factor here)
    neg_step = -step
    buffer_scale = step * momentum
    for p, g, b in zip(params, grads, buffers):
        new_b = b * momentum - g
        new_p = (_decayed(p, step, weight_decay) + g * neg_step) + new_b * buffer_scale
        p.copy_(_kept(keep, new_p, p))
        b.copy_(_kept(keep, new_b, b))


@functools.lru_cache(maxsize=None)
def _compiled(update: Callable) -> Callable:
    # One compiled version per list of parameter shapes and dtypes (a param group, a
    # model), up to recompile_limit; past it dynamo runs the function uncompiled (same
    # result, slower, with a warning). Not fullgraph=True, which turns that limit into
    # an error; the updates have no graph break (tests/test_fused.py checks).
    # dynamic=False: loops over known sizes; the size-generic code that dynamo
    # switches to on a second shape list measured 14% slower at 12M parameters
    # (one more compilation per model is the price). size_asserts off: dynamo's guards
    # already check every size and stride; inductor's second check of each tensor
    # cost more than the whole update at 82K parameters (188 against 73 us a call).
    # Built on first use, so importing polyak never touches the compiler.
    return torch.compile(update, dynamic=False, recompile_limit=64, options={"size_asserts": False})


def _runnable(update: Callable) -> Callable:
    # Inside torch.compile(opt.step) the plain function is traced into that graph,
    # which fuses it (dynamo would only inline a compiled function called there).
    return update if torch.compiler.is_compiling() else _compiled(update)


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
        return f"torch.compile (inductor) has no working compiler for {device.type} tensors: {error!r}"


def check_fused_supported(owner: str, params) -> None:
    """Raise a RuntimeError naming the fix unless every parameter can take the fused
    update: floating point (as torch.optim's fused kernels require) on a device with a
    working compiler. Run where torch checks ``fused=True``: at construction."""
    devices = set()
    for p in params:
        if not p.is_floating_point():
            raise RuntimeError(
                f"{owner}: fused=True needs floating-point parameters, got one of dtype {p.dtype}; "
                "pass fused=False (the default)"
            )
        devices.add(p.device)
    for device in sorted(devices, key=str):
        reason = fused_unsupported_reason(device)
        if reason is not None:
            raise RuntimeError(
                f"{owner}: fused=True is not available here: {reason}. Pass fused=False (the default: "
                "the same update in unfused multi-tensor kernels), or install what is missing"
            )


# ----------------------------------------------------------------- entry point
def _as_step_tensor(step: Scalar, device: torch.device) -> Tensor:
    # A Python float becomes float64, the precision in which the foreach path scales by it.
    if isinstance(step, Tensor):
        return step.to(device)
    return torch.tensor(step, dtype=torch.float64, device=device)


def _step_tensors(step: Scalar, grad_step: Scalar, device: torch.device) -> Tuple[Tensor, Optional[Tensor]]:
    # The decay's step and the gradients' step, None when they are the same number: one
    # tensor passed twice makes dynamo guard on the aliasing, and its recompilation report
    # then fails (IndexError) on a later call with shorter lists.
    return _as_step_tensor(step, device), None if grad_step is step else _as_step_tensor(grad_step, device)


def fused_update_(
    params: List[Tensor], grads: List[Tensor], buffers: Optional[List[Tensor]], step: Scalar, grad_step: Scalar,
    momentum: float, weight_decay: float, adjusted: bool, keep: Optional[Tensor],
) -> None:
    """The body of :func:`polyak.functional.alig_update_` with ``fused=True`` (its one
    entry point, which checks the arguments): ``p <- p - step*weight_decay*p - grad_step*g``,
    then the reference momentum (or its adjusted form) when ``buffers`` are given and
    ``momentum > 0``, in one pass per tensor.

    ``step``, ``grad_step`` (``step * grad_factor``, or ``step`` itself): floats or 0-dim
    tensors (never read back to the host). ``keep``: the branch-free skip, a 0-dim bool
    tensor; False leaves every tensor as it was.
    """
    with torch.no_grad():  # an update is never part of a graph, even when called outside step()
        if buffers is not None and momentum > 0:
            update = _runnable(_adjusted_momentum_update if adjusted else _momentum_update)
            for (device, _), (ps, gs, bs) in group_by_device_and_dtype(params, grads, buffers).items():
                update(ps, gs, bs, *_step_tensors(step, grad_step, device), float(momentum), float(weight_decay),
                       None if keep is None else keep.to(device))
        else:
            update = _runnable(_plain_update)
            for (device, _), (ps, gs) in group_by_device_and_dtype(params, grads).items():
                update(ps, gs, *_step_tensors(step, grad_step, device), float(weight_decay),
                       None if keep is None else keep.to(device))

"""What the line searches (PAL, SLS, LABPAL) share and the other optimizers do not:
the start-point copy, the opening of a one-batch search, the rollback of a step
whose closure raises, and the probe losses made global over ranks.

A line search calls the user's closure several times per step and moves the
parameters between the calls. A closure that raises on its second call (a data
error, an out-of-memory, a KeyboardInterrupt) must not leave the parameters at a
probe point nor half of the optimizer's state updated: :class:`Rollback` puts
both back bit-identically and lets the exception through.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _distributed as dist
from ._base import GLOBAL_STATE, PolyakBase
from ._closure import ClosureError, ProbeClosure
from .functional import copy_all_, real_views


class StartPoint:
    """Scratch copy of the parameters at the start of a line search, reused between
    steps and never checkpointed (it means nothing between steps). Restoring is a
    copy, so the parameters come back bit-identical."""

    def __init__(self, foreach: bool = True):
        self.foreach = foreach
        self._buffers: Dict[int, Tensor] = {}

    def save(self, params: List[Tensor]) -> List[Tensor]:
        buffers = []
        for p in params:
            buf = self._buffers.get(id(p))
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                buf = torch.empty_like(p, memory_format=torch.preserve_format)
                self._buffers[id(p)] = buf
            buffers.append(buf)
        copy_all_(buffers, params, self.foreach)
        return buffers


class Rollback:
    """Context manager around one line-search step: if anything inside raises, the
    parameters and the whole optimizer state come back exactly as they were when
    the step began, and the exception propagates.

    What it snapshots is cheap: the optimizer-wide state (small: counters, the last
    parabola, a state machine of scalars) is deep-copied, each parameter's state
    dict is copied shallowly (its tensors are shared, not cloned). That is enough
    because the optimizers here follow one rule: per-parameter tensors are only
    REPLACED, or changed in place after the step's last closure call, never changed
    in place before it. The parameters are put back from the start-point copy the
    step registers with :meth:`moving` before it moves them.
    """

    def __init__(self, optimizer: PolyakBase):
        self.optimizer = optimizer
        self._moved: Optional[Tuple[List[Tensor], List[Tensor]]] = None

    def moving(self, params: List[Tensor], start_points: List[Tensor]) -> None:
        """The parameters are about to leave the point saved in ``start_points``."""
        self._moved = (params, start_points)

    def __enter__(self) -> "Rollback":
        state = self.optimizer.state
        self._global = copy.deepcopy(state[GLOBAL_STATE])
        self._per_param = {key: dict(value) for key, value in state.items() if key is not GLOBAL_STATE and key != GLOBAL_STATE}
        self._stats = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            return False
        with torch.no_grad():
            if self._moved is not None:
                params, start_points = self._moved
                copy_all_(params, start_points, self.optimizer.foreach)
        state = self.optimizer.state
        for key in [k for k in state if k is not GLOBAL_STATE and k != GLOBAL_STATE and k not in self._per_param]:
            del state[key]
        for key, value in self._per_param.items():
            state[key] = value
        state[GLOBAL_STATE] = self._global
        for group, saved in zip(self.optimizer.param_groups, self._stats):
            for k in [k for k in group if k != "params" and k not in saved]:
                del group[k]
            group.update(saved)
        return False


def compute_views(tensors: List[Tensor]) -> List[Tensor]:
    """What a step computes with: the local shard of a DTensor, the real view of a
    complex tensor. Both share storage with the tensor, so updates land in it."""
    return real_views(dist.local_shards(tensors))


def global_loss(optimizer: PolyakBase, loss: Tensor) -> Tensor:
    """A probe loss as every rank sees it: the mean over the ranks of the
    optimizer's process group (unchanged in a single process or with
    ``loss_is_global=True``), so that every rank takes the same decisions and
    calls its closure the same number of times."""
    group = dist.active_group(optimizer.process_group, optimizer.loss_is_global)
    return loss if group is None else dist.all_reduce_mean(loss, group)


def begin_line_search(optimizer: PolyakBase, closure, loss, evaluates: str):
    """The opening of every one-batch line search (PAL, SLS): the loss and
    gradient at the start point through a probe closure, then the guard.

    Returns ``(probe, loss_0, params, grads, grad_sq_norm)``; ``params`` is empty
    when the step must not move (no gradient, or a non-finite loss or gradient
    under nonfinite="skip"). ``params`` and ``grads`` are what the search computes
    with: real views of complex tensors, the local shards of DTensors (see
    :func:`compute_views`). ``loss_0`` is the mean over ranks
    and ``grad_sq_norm`` the global squared norm, so the guard decides the same on
    every rank. ``evaluates`` ends the error message that says where the closure
    is re-evaluated.
    """
    name = type(optimizer).__name__
    if loss is not None or closure is None:
        raise ClosureError(
            f"{name}.step needs step(closure) where closure() computes this batch's mean loss and returns it "
            f"WITHOUT calling backward: {name} runs backward itself and re-evaluates the loss {evaluates}"
        )
    probe = ProbeClosure(closure, name, optimizer._all_params(), on_pass=optimizer._count_passes)
    with torch.enable_grad():  # step() runs under no_grad; the backward needs the graph
        loss_0 = global_loss(optimizer, probe.loss_and_grad())
    with_grad = [p for ps in optimizer._params_with_grad() for p in ps]
    if not with_grad:
        return probe, loss_0, [], [], None
    params = compute_views(with_grad)
    grads = compute_views([p.grad for p in with_grad])
    grad_sq_norm = dist.global_sq_norm(grads, with_grad, foreach=optimizer.foreach)
    if optimizer._guard(loss_0, grad_sq_norm, None):
        return probe, loss_0, [], [], grad_sq_norm
    return probe, loss_0, params, grads, grad_sq_norm


def reject_per_group_hyperparameters(optimizer: PolyakBase, names) -> None:
    """A single global line search has one value of each hyperparameter; a group that
    sets one would silently be ignored, so it is an error."""
    for index, group in enumerate(optimizer.param_groups):
        overridden = sorted(set(group) & set(names))
        if overridden:
            raise ValueError(
                f"{type(optimizer).__name__} runs ONE line search over all param groups, so {', '.join(overridden)} "
                f"cannot be set per group (param group {index}); pass it to the constructor instead"
            )


def check_distributed_arguments(owner: str, loss_is_global) -> None:
    if not isinstance(loss_is_global, bool):
        raise TypeError(f"{owner}: loss_is_global must be True or False, got {loss_is_global!r}")

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

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _distributed as D
from . import functional as F
from ._base import GLOBAL_STATE, PolyakBase, lr_is_one, times_lr
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

    What it snapshots is cheap: the containers of the optimizer-wide state (dicts,
    lists, dataclasses: counters, the last parabola, a state machine of scalars) are
    copied, each parameter's state dict is copied shallowly; tensors are shared, not
    cloned. That is enough because the optimizers here follow one rule: tensors in
    the state are only REPLACED, or changed in place after the step's last closure
    call, never changed in place before it. The parameters are put back from the
    start-point copy the step registers with :meth:`moving` before it moves them.
    """

    def __init__(self, optimizer: PolyakBase):
        self.optimizer = optimizer
        self._moved: Optional[Tuple[List[Tensor], List[Tensor]]] = None

    def moving(self, params: List[Tensor], start_points: List[Tensor]) -> None:
        """The parameters are about to leave the point saved in ``start_points``."""
        self._moved = (params, start_points)

    def __enter__(self) -> "Rollback":
        state = self.optimizer.state
        self._global = _containers_copied(state[GLOBAL_STATE])
        self._per_param = {key: dict(value) for key, value in state.items() if isinstance(key, Tensor)}
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
        for key in [k for k in state if isinstance(k, Tensor) and k not in self._per_param]:
            del state[key]
        for key, value in self._per_param.items():
            state[key] = value
        state[GLOBAL_STATE] = self._global
        for group, saved in zip(self.optimizer.param_groups, self._stats):
            for k in [k for k in group if k != "params" and k not in saved]:
                del group[k]
            group.update(saved)
        return False


def _containers_copied(value: Any) -> Any:
    """``value`` with every dict, list, tuple and dataclass copied, tensors and other
    leaves shared: a deepcopy clones every tensor (PAL on the benchmark CNN, loaded machine:
    0.35 ms per step for the deepcopy, 0.04 ms for this)."""
    if isinstance(value, dict):
        return {k: _containers_copied(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_containers_copied(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        clone = object.__new__(type(value))
        clone.__dict__.update({k: _containers_copied(v) for k, v in value.__dict__.items()})
        return clone
    return value


def compute_views(tensors: List[Tensor]) -> List[Tensor]:
    """What a step computes with: the local shard of a DTensor, the real view of a
    complex tensor. Both share storage with the tensor, so updates land in it."""
    return real_views([D.local_part(t) for t in tensors])


def compute_view(tensor: Tensor) -> Tensor:
    return compute_views([tensor])[0]


def state_form(param: Tensor, value: Tensor) -> Tensor:
    """A tensor computed on :func:`compute_view` of ``param``, shaped like ``param`` for
    the optimizer state (complex for a complex parameter, a DTensor with the
    parameter's placements for a sharded one), as torch.optim keeps its state, so that
    checkpoints (torch.distributed.checkpoint included) see what they expect."""
    if param.is_complex():
        value = torch.view_as_complex(value)
    if D.is_sharded(param):
        from torch.distributed.tensor import DTensor

        value = DTensor.from_local(value, param.device_mesh, param.placements, run_check=False,
                                   shape=param.shape, stride=param.stride())
    return value


def global_loss(optimizer: PolyakBase, loss: Tensor) -> Tensor:
    """A probe loss as every rank sees it: the mean over the ranks of the
    optimizer's process group (unchanged in a single process or with
    ``loss_is_global=True``), so that every rank takes the same decisions and
    calls its closure the same number of times."""
    group = D.active_group(optimizer.process_group, optimizer._setting("loss_is_global"))
    return loss if group is None else D.all_reduce_mean(loss, group)


def _global_sum(optimizer: PolyakBase, partial, originals: Sequence[Tensor]) -> Tensor:
    """``partial(indices)`` (a sum over the views of those tensors) over all tensors,
    made global: the shares of sharded (DTensor) tensors are summed over the ranks
    in one all-reduce, plain tensors count once (see :mod:`polyak._distributed`)."""
    sharded = [i for i, t in enumerate(originals) if D.is_sharded(t)]
    if not sharded:
        return partial(range(len(originals)))
    group = D.active_group(optimizer.process_group, False)
    world = D.group_size(group)
    by_factor: Dict[int, List[int]] = {}
    for i in sharded:  # ranks holding the same shard (HSDP replicas) share its sum
        by_factor.setdefault(D.replication_factor(originals[i], world), []).append(i)
    share = sum(partial(indices).to(torch.float64) / factor for factor, indices in by_factor.items())
    total = D.all_reduce_sum_(share.reshape(1).clone(), group)[0]
    plain = [i for i, t in enumerate(originals) if not D.is_sharded(t)]
    return total if not plain else total + partial(plain).to(total.device, torch.float64)


def global_sq_norm(optimizer: PolyakBase, views: Sequence[Tensor], originals: Sequence[Tensor]) -> Tensor:
    """||x||^2 over ``views`` (from :func:`compute_views` of ``originals``), global over shards."""
    return _global_sum(optimizer, lambda idx: F.global_sq_norm([views[i] for i in idx], foreach=optimizer.foreach), originals)


def global_dot(optimizer: PolyakBase, xs: Sequence[Tensor], ys: Sequence[Tensor], originals: Sequence[Tensor]) -> Tensor:
    """sum_i <x_i, y_i> over views of ``originals``, global over shards."""
    return _global_sum(
        optimizer, lambda idx: F.global_dot([xs[i] for i in idx], [ys[i] for i in idx], foreach=optimizer.foreach), originals,
    )


def groups_of(optimizer: PolyakBase, params: Optional[Sequence[Tensor]] = None) -> List[Dict[str, Any]]:
    """The param group of each parameter: of ``params``, or of every parameter that has
    a gradient in the order of ``_params_with_grad`` flattened."""
    if params is None:
        return [group for group, ps in zip(optimizer.param_groups, optimizer._params_with_grad()) for _ in ps]
    owner = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    return [owner[id(p)] for p in params]


def plain_update(groups: Sequence[Dict[str, Any]]) -> bool:
    """True when every group has lr 1 and no weight decay: the update is the search's own point."""
    return all(lr_is_one(g["lr"]) and g.get("weight_decay", 0.0) == 0.0 for g in groups)


def update_(optimizer: PolyakBase, params: List[Tensor], directions: List[Tensor], step, groups: Sequence[Dict[str, Any]]) -> None:
    """The final update of a line search, group by group:
    ``p <- p - lr * step * (d + weight_decay * p)`` (decoupled weight decay on the
    pre-update weights, as torch's SGD/AdamW apply it; ``lr`` the multiplier on the
    final step). One multi-tensor update when every group is plain."""
    foreach = optimizer.foreach
    if plain_update(groups):
        F.sgd_step_(params, directions, F.as_scalar(step), foreach=foreach)
        return
    for group in {id(g): g for g in groups}.values():
        chosen = [i for i, other in enumerate(groups) if other is group]
        ps, ds = [params[i] for i in chosen], [directions[i] for i in chosen]
        scaled = F.as_scalar(times_lr(step, group["lr"]))
        F.decoupled_weight_decay_(ps, scaled, group.get("weight_decay", 0.0), foreach=foreach)
        F.sgd_step_(ps, ds, scaled, foreach=foreach)


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
    grad_sq_norm = global_sq_norm(optimizer, grads, with_grad)
    if optimizer._guard(loss_0, grad_sq_norm, None):
        return probe, loss_0, [], [], grad_sq_norm
    return probe, loss_0, params, grads, grad_sq_norm

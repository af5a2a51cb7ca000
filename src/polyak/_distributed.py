"""Every torch.distributed call of the package.

Under DDP the gradients are already averaged over the ranks, but a loss is
rank-local: a step computed from it differs between ranks and the replicas drift
apart. Under FSDP2 the gradients are DTensors sharded over the ranks: a norm or an
inner product of the local shards is only a partial sum. These helpers make both
global, so that every rank computes the same step:

- :func:`active_group`: the group to reduce over, or None (not initialised, one
  rank, or ``loss_is_global=True``: the user already reduced the loss);
- :func:`all_reduce_mean`: a loss (or a few packed loss values) averaged over ranks;
- :func:`all_reduce_sum_`: one collective on a packed 1-D tensor of scalars;
- :func:`local_shards`, :func:`sharded_partial`, :func:`global_sq_norm`,
  :func:`global_dot`: compute on the local shards, then sum the partial results
  over the SHARDED mesh dimensions only (a replicated dimension, as in HSDP's
  outer one, holds copies that must not be added up).

Nothing here communicates when torch.distributed is not initialised.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import functional as F

try:  # DTensor (FSDP2) exists in every torch this package supports, but stay importable without it
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = ()  # type: ignore[assignment]


def active_group(process_group=None, loss_is_global: bool = False):
    """The process group loss values are averaged over, or None when nothing is to be reduced."""
    if loss_is_global or not dist.is_available() or not dist.is_initialized():
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def all_reduce_sum_(packed: Tensor, group) -> Tensor:
    """Sum ``packed`` (a 1-D tensor of scalars) over the ranks of ``group``, in place: one collective."""
    if group is not None:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return packed


def all_reduce_mean(value: Tensor, group) -> Tensor:
    """The mean over the ranks of ``group`` of a loss value (any shape: pack several
    values to reduce them in one collective). Returns a new tensor in the dtype of
    ``value``, accumulated in at least float32 (gloo and NCCL sum half precision
    poorly)."""
    if group is None:
        return value
    work = value.detach().to(torch.promote_types(value.dtype, torch.float32)).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM, group=group)
    return (work / dist.get_world_size(group)).to(value.dtype)


# ------------------------------------------------------------------ sharded tensors
def local_shards(tensors: Sequence[Tensor]) -> List[Tensor]:
    """The local shard of every DTensor (it shares the DTensor's storage, so an
    in-place update of it updates the DTensor), other tensors unchanged."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def _shard_groups(t: Tensor) -> Tuple:
    """The process groups over which a partial sum of ``t``'s local shard must be summed."""
    if not isinstance(t, DTensor):
        return ()
    mesh = t.device_mesh
    return tuple(mesh.get_group(dim) for dim, placement in enumerate(t.placements) if placement.is_shard())


def sharded_partial(partial: Tensor, groups: Tuple) -> Tensor:
    """A sum computed on local shards, summed over each sharded mesh dimension."""
    for group in groups:
        partial = partial.clone()
        dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=group)
    return partial


def _by_sharding(originals: Sequence[Tensor]) -> List[Tuple[Tuple, List[int]]]:
    """Indices of the tensors grouped by the mesh dimensions their partials are summed over."""
    buckets: List[Tuple[Tuple, List[int]]] = []
    for i, t in enumerate(originals):
        key = _shard_groups(t)
        for existing, indices in buckets:
            if existing == key:
                indices.append(i)
                break
        else:
            buckets.append((key, [i]))
    return buckets


def global_sq_norm(tensors: Sequence[Tensor], originals: Optional[Sequence[Tensor]] = None, foreach: bool = True) -> Tensor:
    """:func:`polyak.functional.global_sq_norm` of ``tensors`` (local shards, real
    views) made global: the partial of the shards of each DTensor in ``originals``
    (the tensors ``tensors`` were taken from; default ``tensors`` itself) is summed
    over its sharded mesh dimensions, plain tensors count once."""
    buckets = _by_sharding(tensors if originals is None else originals)
    if len(buckets) == 1 and not buckets[0][0]:
        return F.global_sq_norm(tensors, foreach=foreach)
    parts = [sharded_partial(F.global_sq_norm([tensors[i] for i in idx], foreach=foreach), key) for key, idx in buckets]
    return _add(parts)


def global_dot(xs: Sequence[Tensor], ys: Sequence[Tensor], originals: Optional[Sequence[Tensor]] = None, foreach: bool = True) -> Tensor:
    """:func:`polyak.functional.global_dot` made global like :func:`global_sq_norm`."""
    buckets = _by_sharding(xs if originals is None else originals)
    if len(buckets) == 1 and not buckets[0][0]:
        return F.global_dot(xs, ys, foreach=foreach)
    parts = [
        sharded_partial(F.global_dot([xs[i] for i in idx], [ys[i] for i in idx], foreach=foreach), key)
        for key, idx in buckets
    ]
    return _add(parts)


def _add(parts: List[Tensor]) -> Tensor:
    total = parts[0]
    for part in parts[1:]:
        total = total + part.to(total.device, torch.promote_types(total.dtype, part.dtype))
    return total

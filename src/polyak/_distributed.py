"""Every torch.distributed call of the package.

Rules the optimizers follow (see the README's "Training stacks"):

- Replicated gradients (DDP, or no wrapper at all) are complete on every rank and are
  never reduced again; what a step reads from the loss is rank-local and is made the
  mean over the ranks, weighted by the per-rank sample counts where they are known.
- Sharded gradients (FSDP2 ``fully_shard``, any DTensor with ``Shard`` placements):
  a squared norm or an inner product is a sum over the shards. Each rank computes
  the sum over its local shard divided by the number of ranks that hold the same
  shard (the product of the mesh sizes of the ``Replicate`` dimensions, HSDP's
  replica groups); summed over every rank of the group, that is the sum over the
  sharded mesh dimension only. So one all-reduce on the optimizer's process group
  makes it global, packed with the loss scalars.
- A step packs everything it needs into ONE tensor and reduces it with ONE
  collective; every rank enters it, also the rank whose loss is NaN (the skip is
  decided on the reduced values, so every rank decides the same).

Nothing here runs when torch.distributed is not initialised or the group has one rank.
"""
from __future__ import annotations

import zlib
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "active_group", "group_size", "group_rank", "all_reduce_sum_", "all_reduce_mean", "all_gather_rows",
    "is_sharded", "local_part", "replication_factor", "sharded_sq_norm_partial",
    "sharded_dot_partial", "fingerprint", "check_fingerprints",
]


def _dist():
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    return torch.distributed


def active_group(process_group: Any = None, loss_is_global: bool = False) -> Any:
    """The group whose ranks must agree on a loss-derived scalar, or None when nothing
    needs reducing: torch.distributed not initialised, a group of one rank, or
    ``loss_is_global=True`` (the user reduced the loss already). Returns
    ``torch.distributed.group.WORLD`` for the default group."""
    dist = _dist()
    if dist is None or loss_is_global:
        return None
    group = dist.group.WORLD if process_group is None else process_group
    return group if dist.get_world_size(group) > 1 else None


def group_size(group: Any) -> int:
    return 1 if group is None else torch.distributed.get_world_size(group)


def group_rank(group: Any) -> int:
    return 0 if group is None else torch.distributed.get_rank(group)


def all_reduce_sum_(packed: Tensor, group: Any) -> Tensor:
    """ONE all-reduce (sum) of a 1-D tensor of packed scalars, in place; returns it."""
    if group is not None:
        torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.SUM, group=group)
    return packed


def all_reduce_mean(value: Tensor, group: Any) -> Tensor:
    """A 0-dim (probe) loss averaged over the ranks of ``group`` (returned as is for None).
    A NaN on one rank makes the mean NaN on every rank, so every rank rejects the probe."""
    if group is None:
        return value
    out = value.detach().to(torch.float64 if value.device.type != "mps" else torch.float32).reshape(1).clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM, group=group)
    return (out[0] / group_size(group)).to(value.dtype)


def all_gather_rows(rows: Tensor, counts: Sequence[int], group: Any) -> Tensor:
    """Concatenate, in rank order, the ``(k, n_r)`` tensors of every rank of ``group``;
    ``counts[r]`` is rank r's n_r (every rank knows them all, e.g. from the packed
    all-reduce). Pads to the largest count, so ranks may differ in size."""
    if group is None:
        return rows
    width = max(counts)
    padded = rows.new_zeros((rows.shape[0], width))
    padded[:, : rows.shape[1]] = rows
    gathered = [torch.empty_like(padded) for _ in counts]
    torch.distributed.all_gather(gathered, padded, group=group)
    return torch.cat([g[:, :n] for g, n in zip(gathered, counts)], dim=1)


# ---------------------------------------------------------------- sharded tensors
def _dtensor_type():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


_DTENSOR = _dtensor_type()


def is_sharded(t: Tensor) -> bool:
    """True for a DTensor with at least one Shard placement (FSDP2's parameters and grads).
    An isinstance test, not getattr: dynamo guards on an attribute probe by the object's
    identity, so a compiled step would recompile for every new gradient tensor."""
    return _DTENSOR is not None and isinstance(t, _DTENSOR) and any(p.is_shard() for p in t.placements)


def local_part(t: Tensor) -> Tensor:
    """The rank-local data of a DTensor (its shard), the tensor itself otherwise."""
    return t.to_local() if _DTENSOR is not None and isinstance(t, _DTENSOR) else t


def replication_factor(t: Tensor, world_size: int) -> int:
    """How many of the ``world_size`` ranks of the optimizer's group hold the same shard
    of the DTensor ``t``: the product of its mesh sizes over ``Replicate`` dimensions
    (HSDP's replica dimension; 1 under FSDP2). Refuses partial placements (a gradient
    that still waits for its reduction) and a mesh that is not the group."""
    mesh = t.device_mesh
    factor = 1
    for dim, placement in enumerate(t.placements):
        if placement.is_partial():
            raise ValueError(
                "a DTensor gradient with a Partial placement reached the optimizer: its reduction has not "
                "happened yet; call the optimizer after backward has finished (FSDP2 reduce-scatters on backward)"
            )
        if placement.is_replicate():
            factor *= mesh.size(dim)
    if mesh.size() != world_size:
        raise ValueError(
            f"the DTensor mesh has {mesh.size()} ranks but the optimizer's process group has {world_size}; "
            "pass process_group= the group that spans the whole mesh"
        )
    return factor


def _split(tensors: Sequence[Tensor]) -> Tuple[List[int], List[int]]:
    sharded = [i for i, t in enumerate(tensors) if is_sharded(t)]
    plain = [i for i, t in enumerate(tensors) if not is_sharded(t)]
    return plain, sharded


def sharded_sq_norm_partial(tensors: Sequence[Tensor], group: Any, foreach: bool = True) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``(plain, sharded)``: the sum of squares over the plain (replicated) tensors, complete
    on every rank, and this rank's share of the sum of squares over the sharded ones
    (None where there are none). Global ||x||^2 = plain + all-reduce-sum(sharded)."""
    from .functional import global_sq_norm

    plain_ids, sharded_ids = _split(tensors)
    plain = global_sq_norm([tensors[i] for i in plain_ids], foreach=foreach) if plain_ids else None
    sharded = None
    if sharded_ids:
        if group is None:
            raise ValueError(
                "sharded (DTensor) tensors reached the optimizer but torch.distributed is not initialised "
                "with more than one rank in its process group"
            )
        # ranks holding the same shard are grouped so that one division per factor suffices
        by_factor = {}
        for i in sharded_ids:
            by_factor.setdefault(replication_factor(tensors[i], group_size(group)), []).append(local_part(tensors[i]))
        for factor, locals_ in by_factor.items():
            part = global_sq_norm(locals_, foreach=foreach) / factor
            sharded = part if sharded is None else sharded + part
    return plain, sharded


def sharded_dot_partial(xs: Sequence[Tensor], ys: Sequence[Tensor], group: Any, foreach: bool = True) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Like :func:`sharded_sq_norm_partial` for sum_i <x_i, y_i> (x_i and y_i alike
    sharded or alike plain, as a gradient and its parameter are)."""
    from .functional import global_dot

    plain_ids, sharded_ids = _split(xs)
    if sharded_ids and group is None:
        raise ValueError("sharded (DTensor) tensors need torch.distributed initialised with more than one rank")
    plain = global_dot([xs[i] for i in plain_ids], [ys[i] for i in plain_ids], foreach=foreach) if plain_ids else None
    sharded = None
    for i in sharded_ids:
        part = global_dot([local_part(xs[i])], [local_part(ys[i])], foreach=foreach) / replication_factor(xs[i], group_size(group))
        sharded = part if sharded is None else sharded + part
    return plain, sharded


# ---------------------------------------------------------------- hyperparameters
#: fingerprints are small integers so that their sums and squares are exact in float64
_FINGERPRINT_BITS = 20


def fingerprint(settings: Any) -> float:
    """A number in [1, 2^20] that differs, with probability 1 - 1e-6, between two
    different ``repr(settings)``; packed in the first collective of a run."""
    return float((zlib.crc32(repr(settings).encode()) & ((1 << _FINGERPRINT_BITS) - 1)) + 1)


def check_fingerprints(total: float, total_sq: float, world: int, owner: str) -> None:
    """Raise on EVERY rank when the ranks' fingerprints differ (their variance is not 0).
    ``total`` and ``total_sq`` are the all-reduced sums of the fingerprint and its square;
    0 means that no rank packed one."""
    if total == 0.0:
        return
    if world * total_sq != total * total:
        raise ValueError(
            f"{owner}: the ranks were built with different hyperparameters (their param groups differ); "
            "build the optimizer with the same arguments on every rank"
        )

"""Shared pieces of the integration tests: a tiny problem and the plain PyTorch loop
every framework's trajectory is compared with."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from polyak.data import IndexedDataset


def tiny_data(n: int = 64, features: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def tiny_model(features: int = 6, classes: int = 3, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, classes))


def batches(dataset, batch_size: int, indexed: bool = False) -> List:
    """The batches a DataLoader(shuffle=False) gives, as a list (same collation)."""
    data = IndexedDataset(dataset) if indexed else dataset
    return list(torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False))


def plain_accumulation_loop(
    model: nn.Module,
    optimizer,
    micro_batches: Iterable,
    window: int,
    *,
    autocast_dtype: Optional[torch.dtype] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    per_sample: bool = False,
    after_step: Callable[[], None] = lambda: None,
) -> None:
    """The README's accumulation rule written out: every micro-batch backpropagates
    loss / window and hands its loss over; one step per window uses their mean."""
    autocast = (torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    optimizer.zero_grad()
    for count, batch in enumerate(micro_batches, start=1):
        if per_sample:
            index, (x, y) = batch
        else:
            x, y = batch
        with autocast:
            # the same reduction as the frameworks' loss (F.cross_entropy's own mean rounds differently)
            losses = F.cross_entropy(model(x), y, reduction="none") if per_sample else None
            loss = losses.mean() if per_sample else F.cross_entropy(model(x), y)
        backward_loss = loss / window
        (scaler.scale(backward_loss) if scaler is not None else backward_loss).backward()
        if per_sample:
            optimizer.add_loss(losses.detach(), index=index)
        else:
            optimizer.add_loss(loss.detach())
        if count % window == 0:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad()
            after_step()


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))

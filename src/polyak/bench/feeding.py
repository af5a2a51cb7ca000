"""Feeding an optimizer: how each record's ``needs`` turn into ``step()`` calls, moving
batches to the device, the index-carrying collate, and reading the step size and the
passes an optimizer reports (the runner's loop and the contract tests share these)."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

__all__ = ["STEP_NEEDS", "Stepper", "to_device", "indexed_collate", "read_step_size", "passes_so_far"]

STEP_NEEDS = ("probe_closure", "per_sample_loss", "loss", "gradient")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple):
        return tuple(to_device(b, device) for b in batch)
    if isinstance(batch, list):
        return [to_device(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def indexed_collate(collate_fn: Optional[Callable]) -> Callable:
    """Collate (index, sample) pairs with the workload's own collate for the samples."""
    from torch.utils.data import default_collate

    inner = collate_fn or default_collate

    def collate(pairs):
        indices = torch.tensor([index for index, _ in pairs], dtype=torch.long)
        return indices, inner([sample for _, sample in pairs])

    return collate


def read_step_size(optimizer: torch.optim.Optimizer) -> Optional[float]:
    """The effective step size of the first param group: ``step_size`` (polyak's
    optimizers), else ``lr * d`` (D-Adaptation and Prodigy keep their estimate in
    ``d``), else ``lr``."""
    group = optimizer.param_groups[0]
    if "step_size" in group:
        value = group["step_size"]
    elif "d" in group and "lr" in group:
        value = float(group["lr"]) * float(group["d"])
    elif "lr" in group:
        value = group["lr"]
    else:
        return None
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return value if math.isfinite(value) else None


def passes_so_far(optimizer) -> Optional[Dict[str, float]]:
    cost = getattr(optimizer, "cost", None)
    if isinstance(cost, Mapping) and "forward" in cost and "backward" in cost:
        return {"forward": float(cost["forward"]), "backward": float(cost["backward"])}
    return None


# ----------------------------------------------------------------- stepping
class Stepper:
    """Feeds one optimizer what its record's ``needs`` say. Returns the batch mean loss (detached)."""

    def __init__(self, needs, optimizer, model, per_sample_loss):
        self.needs = frozenset(needs)
        kinds = [k for k in STEP_NEEDS if k in self.needs]
        if not kinds:
            raise ValueError(
                f"optimizer record needs {sorted(self.needs)}: none of {list(STEP_NEEDS)} says how to call step(); "
                "add one to the record's needs"
            )
        self.kind = kinds[0]  # a line search's closure subsumes loss/gradient feeding
        self.optimizer, self.model, self.per_sample_loss = optimizer, model, per_sample_loss

    def step(self, index, inputs, targets) -> torch.Tensor:
        opt = self.optimizer
        extra = {"index": index} if "index" in self.needs else {}
        if self.kind == "probe_closure":
            first_loss: List[torch.Tensor] = []

            def closure():
                loss = self.per_sample_loss(self.model(inputs), targets).mean()
                if not first_loss:
                    first_loss.append(loss.detach())
                return loss

            opt.zero_grad()
            returned = opt.step(closure, **extra)
            if first_loss:
                return first_loss[0]
            if isinstance(returned, torch.Tensor):
                return returned.detach()
            raise RuntimeError("a probe_closure optimizer neither evaluated the closure nor returned the loss")
        losses = self.per_sample_loss(self.model(inputs), targets)
        loss = losses.mean()
        opt.zero_grad()
        loss.backward()
        if self.kind == "per_sample_loss":
            opt.step(loss=losses.detach(), **extra)
        elif self.kind == "loss":
            opt.step(loss=loss.detach(), **extra)
        else:
            opt.step(**extra)
        return loss.detach()

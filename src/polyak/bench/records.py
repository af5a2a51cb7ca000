"""What a trial is and what its record looks like: the layer every other part of
the harness sits on (the store, the runner, the sweep and the report import it;
it imports none of them).

- :class:`TrialConfig`: what identifies a trial, and its stable id.
- :class:`Metric`: a workload's reported metric, its name and its direction.
- :func:`json_safe`: the plain-JSON form every record is written in.
- :func:`effective_budget`: the one place a trial's epochs override meets the
  workload's budget.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

__all__ = ["RECORD_SCHEMA_VERSION", "TrialConfig", "Metric", "METRICS", "get_metric", "json_safe", "divergence",
           "is_diverged", "DIVERGENCE_FACTOR",
           "effective_budget"]

RECORD_SCHEMA_VERSION = 1


def json_safe(value: Any) -> Any:
    """Plain-JSON form: non-finite floats become None, tuples lists, tensors numbers."""
    if hasattr(value, "numel") and hasattr(value, "tolist"):  # a torch tensor (torch is not imported here)
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_safe(value.item())
    return repr(value)


@dataclass(frozen=True)
class Metric:
    """A reported metric: its name, whether higher is better, how tables head its
    column (``label``), the key of ``evaluate()``'s dict it reads (``key``; selection
    reads it on validation) and what the tables report: ``reported="test"`` the test
    value at the selected epoch, ``"train"`` the final training loss (the papers' metric
    for matrix factorisation). ``scale`` turns the raw value into the table's unit."""

    name: str
    higher_is_better: bool
    label: str
    key: str
    reported: str
    scale: float = 1.0

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def sort_key(self, value: float) -> float:
        """A sort key where larger is better (for max())."""
        return value if self.higher_is_better else -value


METRICS: Dict[str, Metric] = {
    "accuracy": Metric("accuracy", True, "test acc. (%)", key="accuracy", reported="test", scale=100.0),
    "loss": Metric("loss", False, "final train loss", key="loss", reported="train"),
    "test_loss": Metric("test_loss", False, "test loss", key="loss", reported="test"),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {name!r}")
    return METRICS[name]


@dataclass(frozen=True)
class TrialConfig:
    """What identifies a trial. ``hyperparameters`` are the sweep's choices (step
    size, regularisation), applied over the record's defaults; ``epochs`` overrides
    the workload budget for this size when given."""

    workload: str
    size: str
    optimizer: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    epochs: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "workload": self.workload, "size": self.size, "optimizer": self.optimizer,
            "hyperparameters": dict(sorted(self.hyperparameters.items())), "seed": self.seed, "epochs": self.epochs,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialConfig":
        return cls(data["workload"], data["size"], data["optimizer"], dict(data.get("hyperparameters") or {}),
                   int(data.get("seed", 0)), data.get("epochs"))

    @property
    def trial_id(self) -> str:
        """Stable id: the same config always maps to the same record (how resume finds done trials)."""
        canonical = json.dumps(json_safe(self.to_dict()), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha1(canonical.encode()).hexdigest()[:12]
        return f"{self.workload}.{self.optimizer}.s{self.seed}.{digest}"


def effective_budget(budget, epochs: Optional[int]):
    """The workload's ``Budget`` with a trial's epochs override applied (None: the budget's own)."""
    if epochs is None:
        return budget
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return dataclasses.replace(budget, epochs=int(epochs))


#: a trial whose training or validation loss exceeds this many times its initial
#: validation loss has diverged (the loss of 1.4e30 that a finite check alone lets through)
DIVERGENCE_FACTOR = 100.0


def divergence(epochs, initial_loss: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """Where a trial's per-epoch history diverged, or None: the first epoch >= 1 whose
    training loss or validation loss is non-finite (null in JSON) or above
    ``DIVERGENCE_FACTOR`` x the initial validation loss (``initial_loss``, default: epoch 0's)."""
    if initial_loss is None:
        start = next((e for e in epochs if e.get("epoch") == 0), None)
        value = ((start or {}).get("val") or {}).get("loss")
        initial_loss = value if isinstance(value, (int, float)) and math.isfinite(value) else None
    for entry in epochs:
        if entry.get("epoch", 0) < 1:
            continue
        val = entry.get("val") or {}
        present = [("training loss", entry["train_loss"])] if "train_loss" in entry else []
        present += [("validation loss", val["loss"])] if "loss" in val else []
        for where, value in present:  # a key present with null held a non-finite float
            if value is None or not math.isfinite(value):
                return {"epoch": entry["epoch"], "reason": f"non-finite {where}"}
            if initial_loss is not None and initial_loss > 0 and value > DIVERGENCE_FACTOR * initial_loss:
                return {"epoch": entry["epoch"],
                        "reason": f"{where} {value:.3g} > {DIVERGENCE_FACTOR:g} x the initial {initial_loss:.3g}"}
    return None


def is_diverged(record: Mapping[str, Any]) -> bool:
    """A record's trial diverged: marked so when it ran, or (records written before the
    loss threshold existed) its history crosses it now."""
    return bool(record.get("diverged")) or record.get("status") == "diverged" or (
        record.get("status") == "ok" and divergence(record.get("epochs") or []) is not None)

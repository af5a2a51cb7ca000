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

__all__ = ["RECORD_SCHEMA_VERSION", "TrialConfig", "Metric", "METRICS", "get_metric", "json_safe",
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
    """A reported metric: its name (the key in ``evaluate()``'s dict) and whether
    higher is better. ``label`` is how tables head its column."""

    name: str
    higher_is_better: bool
    label: str

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def key(self, value: float) -> float:
        """A sort key where larger is better (for max())."""
        return value if self.higher_is_better else -value


METRICS: Dict[str, Metric] = {
    "accuracy": Metric("accuracy", True, "test acc. (%)"),
    "loss": Metric("loss", False, "final train loss"),
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

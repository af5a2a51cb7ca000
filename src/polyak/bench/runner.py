"""One trial: (workload, size, optimizer, hyperparameters, seed) -> one record.

The runner owns the training loop and reads the workload only through its
contract (``polyak.bench.workloads.base``) and the optimizer only through its
record (``OptimizerSpec``): what ``step()`` is fed comes from ``spec.needs`` and
the run-dependent constructor arguments from ``spec.context``; there is no
per-optimizer code here.

How each need is fed (one step, one batch):

- ``gradient``: ``loss.backward(); opt.step()``.
- ``loss``: ``loss.backward(); opt.step(loss=loss)`` with the batch mean loss.
- ``per_sample_loss``: ``losses.mean().backward(); opt.step(loss=losses, ...)`` with
  the 1-D per-sample losses; ``index`` adds ``index=`` (the training set is wrapped
  in :class:`polyak.data.IndexedDataset`).
- ``probe_closure``: ``opt.step(closure)`` where ``closure()`` returns the batch
  mean loss WITHOUT backward (see ``polyak._closure``); the optimizer runs backward.
- ``end_epoch``: ``opt.end_epoch()`` after the last step of every epoch.
- ``train_eval``: ``opt.train()`` before training steps, ``opt.eval()`` before
  every evaluation.

A record holds the config, seed, the loaded plugins (path, sha256), the
provenance of its workload and optimizer (:func:`polyak.bench.plugins.provenance`),
versions, git SHA, device, per-epoch metrics (epoch 0 is the initial model), a
sampled step-size trace (with the ``clipped`` flag of Polyak-type steps), the
counts of steps clipped at ``max_lr`` and of steps exactly 0 (every step), the
median time per step (forward + backward + step, no data loading, no
evaluation), forward and backward passes per step and whether the run diverged
(a non-finite training loss or evaluation metric, or a training or validation
loss above ``records.DIVERGENCE_FACTOR`` times the initial validation loss, ends
the trial). Records are plain JSON: non-finite floats are stored as null.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import random
import statistics
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch.utils.data import DataLoader

import polyak

from .optimizers import accepts, optimizer_info
from .plugins import PLUGINS_ENV, load_plugins, loaded_plugins, provenance
from .records import RECORD_SCHEMA_VERSION, TrialConfig, divergence, effective_budget, get_metric, json_safe

__all__ = ["RECORD_SCHEMA_VERSION", "PLUGINS_ENV", "TrialConfig", "run_trial", "load_plugins", "json_safe",
           "check_device", "DeviceUnavailable"]

TRACE_POINTS = 200  # step-size trace samples per trial, enough for a log-scale plot

_STEP_NEEDS = ("probe_closure", "per_sample_loss", "loss", "gradient")




# ----------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


_GIT_SHA: Dict[str, Optional[str]] = {}


def git_sha() -> Optional[str]:
    """SHA of the checkout polyak is imported from (None outside a git checkout)."""
    if "sha" not in _GIT_SHA:
        source_dir = Path(polyak.__file__).resolve().parent
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source_dir, capture_output=True, text=True, timeout=10)
            _GIT_SHA["sha"] = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            _GIT_SHA["sha"] = None
    return _GIT_SHA["sha"]


class DeviceUnavailable(ValueError):
    """The requested torch device cannot be used in this process."""


def check_device(device: Optional[str]) -> None:
    """Raise DeviceUnavailable unless ``device`` (None: the default) can hold a tensor here;
    sweeps call it before their first trial, so a wrong --device fails at once."""
    if device is None:
        return
    try:
        torch.empty(1, device=torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as error:
        cuda = "" if torch.cuda.is_available() else f"; this torch {torch.__version__} sees no CUDA device"
        raise DeviceUnavailable(f"device {device!r} is not usable here ({str(error).splitlines()[0]}){cuda}. "
                                "Pass --device cpu, or omit --device to use CUDA when available, else the CPU") from None


def describe_device(device: torch.device) -> Dict[str, Any]:
    info: Dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple):
        return tuple(_to_device(b, device) for b in batch)
    if isinstance(batch, list):
        return [_to_device(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _indexed_collate(collate_fn: Optional[Callable]) -> Callable:
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


def _passes_so_far(optimizer) -> Optional[Dict[str, float]]:
    cost = getattr(optimizer, "cost", None)
    if isinstance(cost, Mapping) and "forward" in cost and "backward" in cost:
        return {"forward": float(cost["forward"]), "backward": float(cost["backward"])}
    return None


def _package_versions(source: str, version: Optional[str]) -> Dict[str, Optional[str]]:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "polyak": polyak.__version__}
    if source not in ("polyak", "torch"):
        versions[source] = version
    return versions


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class StepCounts:
    """How often a Polyak-type step (an optimizer whose param groups say ``clipped``:
    ALI-G, ALI-G+, SPS, DFW, L4) was clipped at its ``max_lr`` and how often it was
    exactly 0 (loss at or below its lower bound / AOV), counted on every step of
    the first param group. 0-dim tensors (accelerators) are summed on the device
    and read once at the end."""

    def __init__(self):
        self.steps = 0
        self.clipped: Any = 0
        self.zero: Any = 0
        self.last_clipped: Optional[bool] = None

    def add(self, group: Mapping[str, Any]) -> None:
        if "clipped" not in group or "step_size" not in group:
            return
        clipped, step_size = group["clipped"], group["step_size"]
        self.steps += 1
        self.clipped = self.clipped + clipped
        self.zero = self.zero + (step_size == 0)
        self.last_clipped = bool(clipped) if not isinstance(clipped, torch.Tensor) or clipped.device.type == "cpu" else None

    def to_dict(self) -> Optional[Dict[str, int]]:
        """None for optimizers without the ``clipped`` statistic."""
        if not self.steps:
            return None
        return {"steps": self.steps, "clipped_at_max_lr": int(self.clipped), "zero": int(self.zero)}


# ----------------------------------------------------------------- stepping
class _Stepper:
    """Feeds one optimizer what its record's ``needs`` say. Returns the batch mean loss (detached)."""

    def __init__(self, needs, optimizer, model, per_sample_loss):
        self.needs = frozenset(needs)
        kinds = [k for k in _STEP_NEEDS if k in self.needs]
        if not kinds:
            raise ValueError(
                f"optimizer record needs {sorted(self.needs)}: none of {list(_STEP_NEEDS)} says how to call step(); "
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


# ----------------------------------------------------------------- the trial
def scale_to_run(hyperparameters: Mapping[str, Any], total_steps: int) -> Dict[str, Any]:
    """Resolve run-length-scaled arguments: a value {"value": v, "per_total_steps": T} becomes
    max(1, round(v * total_steps / T)), e.g. LABPAL's reuse_steps=1000 of the paper's 150,000
    steps on a run of 3,000 steps is 20. Suites use it to keep an optimizer's documented
    options in proportion to a shorter run; the record keeps both the rule (config) and the
    value passed (optimizer.arguments)."""
    out = {}
    for name, value in hyperparameters.items():
        if isinstance(value, Mapping) and set(value) == {"value", "per_total_steps"}:
            value = max(1, int(round(float(value["value"]) * total_steps / float(value["per_total_steps"]))))
        out[name] = value
    return out



def _finite_metrics(metrics: Mapping[str, Any]) -> bool:
    return all(not isinstance(v, float) or math.isfinite(v) for v in metrics.values())


def check_metric_key(workload, entry: Mapping[str, Any]) -> None:
    """The first evaluation must report the workload's metric, or every epoch of
    the trial would score as missing (and the report call it diverged), and the loss."""
    key = get_metric(workload.metric).key
    for split in ("val", "test"):
        keys = sorted((entry.get(split) or {}).keys())
        if key not in keys:
            raise ValueError(
                f"workload {workload.name!r}: evaluate() returned {keys} on the {split} set, without the key "
                f"{key!r} of the workload's metric {workload.metric!r}; return {{{key!r}: ...}} (e.g. with "
                "polyak.bench.workloads.helpers.classifier_evaluate) or declare the metric evaluate() reports")
        if "loss" not in keys:  # ties on validation and the divergence threshold read it
            raise ValueError(f"workload {workload.name!r}: evaluate() returned {keys} on the {split} set, "
                             "without 'loss'; return the mean per-sample loss as 'loss'")


def summarise(epochs: List[Dict[str, Any]], metric: str, diverged: bool) -> Dict[str, Any]:
    """Best epoch on validation (epoch >= 1; ties: lower validation loss, then the
    later epoch, see polyak.bench.protocol), the test metrics there, final training loss."""
    from .protocol import run_score

    best = run_score({"epochs": epochs}, get_metric(metric), "validation")
    entry = next((e for e in epochs if e["epoch"] == best.epoch), None)
    trained = [e for e in epochs if e["epoch"] >= 1 and e.get("train_loss") is not None]
    return {
        "metric": metric,
        "best_epoch": best.epoch,
        "val_score": None if diverged else best.score,
        "test_at_best": None if entry is None else entry.get("test"),
        "final_train_loss": None if diverged or not trained else trained[-1]["train_loss"],
    }


def run_trial(
    config: TrialConfig,
    *,
    data_dir: Optional[Path] = None,
    device: Optional[str] = None,
    progress: bool = False,
    trace_points: int = TRACE_POINTS,
) -> Dict[str, Any]:
    """Run one trial and return its record (never raises for a failing trial:
    the record's ``status`` is "ok", "diverged" or "error")."""
    from .workloads import get_workload

    load_plugins()
    started = time.perf_counter()
    record: Dict[str, Any] = {
        "schema_version": RECORD_SCHEMA_VERSION,
        "trial_id": config.trial_id,
        "config": config.to_dict(),
        "seed": config.seed,
        "git_sha": git_sha(),
        "started_at": _utcnow(),
        "status": "error",
        "diverged": False,
        "diverged_at": None,
        "error": None,
        "plugins": loaded_plugins(),  # path and sha256 of every plugin loaded in this process
    }
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    record["device"] = describe_device(torch_device)
    try:
        info = optimizer_info(config.optimizer)
        record["versions"] = _package_versions(info.source, info.version)
        workload = get_workload(config.workload)
        seed_everything(config.seed)
        record["provenance"] = provenance(config.workload, config.optimizer)
        instance = workload.instantiate(config.size, config.seed, data_dir, config.epochs)
        _train(config, record, workload, instance, info, torch_device, progress, trace_points)
    except Exception as error:  # a failing trial is a result, not a crash of the sweep
        record["status"] = "error"
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = traceback.format_exc(limit=8)
        record.setdefault("versions", _package_versions("polyak", None))
    record["finished_at"] = _utcnow()
    record["wall_time_s"] = time.perf_counter() - started
    return json_safe(record)


def _train(config, record, workload, instance, info, device, progress, trace_points):
    spec = info.spec
    needs = spec.needs
    budget = effective_budget(instance.budget, config.epochs)
    epochs = budget.epochs
    model = instance.model.to(device)
    model.train()

    train_set = instance.train
    collate = instance.collate_fn
    if "index" in needs:
        from polyak.data import IndexedDataset

        train_set = IndexedDataset(instance.train)
        collate = _indexed_collate(instance.collate_fn)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=budget.batch_size, shuffle=True, generator=generator,
                        collate_fn=collate, drop_last=budget.drop_last)
    n_batches = len(loader)
    context_values = {
        "num_samples": len(instance.train), "dataset_size": len(instance.train), "epochs": epochs,
        "n_batches_per_epoch": n_batches, "total_steps": epochs * n_batches, "batch_size": budget.batch_size,
    }
    kwargs = {name: context_values[name] for name in spec.context}
    kwargs.update(scale_to_run(config.hyperparameters, epochs * n_batches))
    if "lower_bound" not in kwargs and "lower_bound" not in spec.defaults and accepts(spec, "lower_bound"):
        kwargs["lower_bound"] = workload.lower_bound
    optimizer = spec.create(model.parameters(), **kwargs)
    stepper = _Stepper(needs, optimizer, model, instance.per_sample_loss)
    train_eval = "train_eval" in needs

    record["optimizer"] = {
        "name": spec.name, "source": info.source, "package_version": info.version, "needs": sorted(needs),
        "arguments": {**spec.defaults, **kwargs}, "context": {k: context_values[k] for k in sorted(spec.context)},
        "step_size_param": spec.step_size_param,
    }
    record["workload"] = {
        "name": workload.name, "size": config.size, "metric": workload.metric, "lower_bound": workload.lower_bound,
        "interpolating": workload.interpolating, "epochs": epochs, "batch_size": budget.batch_size,
        "target": workload.target, "drop_last": budget.drop_last,
        "train_size": len(instance.train), "val_size": len(instance.val), "test_size": len(instance.test),
        "n_batches_per_epoch": n_batches,
    }

    def evaluate() -> Dict[str, Dict[str, float]]:
        if train_eval:
            optimizer.eval()
        out = {"val": dict(instance.evaluate(model, instance.val)), "test": dict(instance.evaluate(model, instance.test))}
        model.train()
        if train_eval:
            optimizer.train()
        return out

    total_steps = epochs * n_batches
    trace_every = max(1, total_steps // max(1, trace_points))
    trace_steps: List[int] = []
    trace_values: List[Optional[float]] = []
    trace_clipped: List[Optional[bool]] = []
    counts = StepCounts()
    step_times: List[float] = []
    history: List[Dict[str, Any]] = [{"epoch": 0, "train_loss": None, **evaluate(), "elapsed_s": 0.0}]
    check_metric_key(workload, history[0])
    initial_loss = history[0]["val"].get("loss")  # the divergence threshold's reference
    diverged_at = None
    step = 0
    training_time = 0.0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=f"{config.optimizer} on {config.workload}", unit="step", leave=False,
                   disable=None)
    if train_eval:
        optimizer.train()
    try:
        for epoch in range(1, epochs + 1):
            epoch_loss_sum, epoch_batches = 0.0, 0
            for batch in loader:
                if "index" in needs:
                    index, (inputs, targets) = batch
                    index = index.to(device)
                else:
                    index, (inputs, targets) = None, batch
                inputs, targets = _to_device(inputs, device), _to_device(targets, device)
                tick = time.perf_counter()
                loss = float(stepper.step(index, inputs, targets))
                elapsed = time.perf_counter() - tick
                step_times.append(elapsed)
                training_time += elapsed
                step += 1
                if bar is not None:
                    bar.update(1)
                if not math.isfinite(loss):
                    diverged_at = {"epoch": epoch, "step": step, "reason": "non-finite training loss"}
                    break
                epoch_loss_sum += loss
                epoch_batches += 1
                counts.add(optimizer.param_groups[0])
                if step % trace_every == 0 or step == 1:
                    trace_steps.append(step)
                    trace_values.append(read_step_size(optimizer))
                    trace_clipped.append(counts.last_clipped)
            if diverged_at is not None:
                break
            if "end_epoch" in needs:
                optimizer.end_epoch()
            metrics = evaluate()
            history.append({"epoch": epoch, "train_loss": epoch_loss_sum / max(1, epoch_batches), **metrics,
                            "elapsed_s": training_time})
            crossed = divergence(history[-1:], initial_loss)
            if crossed is not None or not (_finite_metrics(metrics["val"]) and _finite_metrics(metrics["test"])):
                diverged_at = {"epoch": epoch, "step": step,
                               "reason": crossed["reason"] if crossed else "non-finite evaluation metric"}
                break
    finally:
        if bar is not None:
            bar.close()

    passes = _passes_so_far(optimizer)
    if passes is not None and step > 0:
        passes_per_step = {"forward": passes["forward"] / step, "backward": passes["backward"] / step, "source": "opt.cost"}
    else:
        passes_per_step = {"forward": float(spec.passes[0]), "backward": float(spec.passes[1]), "source": "record"}
    # the first step pays lazy state allocation and warm-up; the median ignores it
    timed = step_times[1:] if len(step_times) > 1 else step_times
    record.update(
        status="diverged" if diverged_at else "ok",
        diverged=diverged_at is not None,
        diverged_at=diverged_at,
        epochs=history,
        steps=step,
        step_size_trace={"steps": trace_steps, "values": trace_values, "clipped": trace_clipped},
        step_counts=counts.to_dict(),
        time_per_step_s=statistics.median(timed) if timed else None,
        mean_time_per_step_s=(sum(timed) / len(timed)) if timed else None,
        passes_per_step=passes_per_step,
        summary=summarise(history, workload.metric, diverged_at is not None),
    )

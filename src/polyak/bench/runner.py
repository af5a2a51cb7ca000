"""One trial: (workload, size, optimizer, hyperparameters, seed) -> one record.

This module is the loop; by concern the rest lives beside it: ``feeding`` (how an
optimizer is fed, shared with the contract tests), ``provenance`` (seeds, git SHA,
device, versions), ``records`` (the record's schema and JSON form) and the selection
the report makes (``report``).

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
provenance of its workload and optimizer (:func:`polyak.bench.plugins.trial_provenance`),
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

import math
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch.utils.data import DataLoader

from .feeding import Stepper, indexed_collate, passes_so_far, read_step_size, to_device
from .optimizers import accepts, optimizer_info
from .plugins import PLUGINS_ENV, load_plugins, loaded_plugins, trial_provenance
from .provenance import DeviceUnavailable, check_device, describe_device, git_sha, package_versions, seed_everything, utcnow
from .records import RECORD_SCHEMA_VERSION, TrialConfig, divergence, effective_budget, get_metric, json_safe

__all__ = ["RECORD_SCHEMA_VERSION", "PLUGINS_ENV", "TrialConfig", "run_trial", "load_plugins", "json_safe",
           "check_device", "DeviceUnavailable"]

TRACE_POINTS = 200  # step-size trace samples per trial, enough for a log-scale plot


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
        "started_at": utcnow(),
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
        record["versions"] = package_versions(info.source, info.version)
        workload = get_workload(config.workload)
        seed_everything(config.seed)
        record["provenance"] = trial_provenance(config.workload, config.optimizer)
        instance = workload.instantiate(config.size, config.seed, data_dir, config.epochs)
        _train(config, record, workload, instance, info, torch_device, progress, trace_points)
    except Exception as error:  # a failing trial is a result, not a crash of the sweep
        record["status"] = "error"
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = traceback.format_exc(limit=8)
        record.setdefault("versions", package_versions("polyak", None))
    record["finished_at"] = utcnow()
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
        collate = indexed_collate(instance.collate_fn)
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
    stepper = Stepper(needs, optimizer, model, instance.per_sample_loss)
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
                inputs, targets = to_device(inputs, device), to_device(targets, device)
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

    passes = passes_so_far(optimizer)
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

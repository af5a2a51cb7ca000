"""The grid protocol: which trials a sweep runs, running them, resuming.

Grid (the papers' protocol): for every workload and optimizer, the optimizer's
step-size hyperparameter over its grid (powers of ten; learning-rate-free
optimizers have none), times the regularisation grid (``max_norm`` for
optimizers that constrain the weights like ALI-G, ``weight_decay`` otherwise;
:func:`polyak.bench.optimizers.regularisation_param`), times the seeds.
Selection happens on validation and the test metric is reported
(:mod:`polyak.bench.report`).

Resume: every trial has a stable id (:attr:`TrialConfig.trial_id`) and writes its
record atomically when it ends; a restarted sweep skips the trials whose record
says "ok" or "diverged". Killing a sweep at any moment loses at most the trials
that were running and never leaves a partial record.

Missing data: once a trial of a workload fails with ``DatasetMissing``, the
sweep starts no further trial of that workload (they would fail the same way)
and reports the message, which names the fetch command; rerunning after
fetching runs them.

Parallel: ``jobs > 1`` runs trials in that many spawned processes, each limited to
its share of the CPU threads so that jobs do not oversubscribe the cores.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .optimizers import get_bench_spec, regularisation_param
from .plugins import changes_since
from .records import get_metric
from .runner import PLUGINS_ENV, TrialConfig, check_device, load_plugins, run_trial
from .store import Store

__all__ = ["REGULARISATION_GRIDS", "RecordsOutdated", "outdated_trials", "SweepResult", "grid_trials",
           "step_size_values", "regularisation_values", "run_sweep", "execute_trial"]

#: Regularisation grids per size. "quick" does not tune it (the record's default
#: applies). max_norm: the ALI-G paper's radii; weight decay: the usual CIFAR values.
REGULARISATION_GRIDS: Dict[str, Dict[str, Tuple[Any, ...]]] = {
    "max_norm": {"quick": (), "lite": (None, 100.0), "medium": (None, 100.0), "paper": (None, 50.0, 100.0, 200.0, 400.0)},
    "weight_decay": {"quick": (), "lite": (0.0, 1e-4), "medium": (0.0, 1e-4), "paper": (0.0, 1e-4, 5e-4)},
}


def step_size_values(spec, points: Optional[int] = None) -> Tuple[Optional[float], ...]:
    """The step sizes a sweep tries: the record's grid, or the ``points`` grid
    values closest (in log scale) to the record's default. ``(None,)``: no step-size
    hyperparameter, the record's default applies."""
    grid = tuple(spec.step_size_grid)
    if not spec.step_size_param or not grid:
        return (None,)
    if points is None or points >= len(grid):
        return grid
    default = spec.defaults.get(spec.step_size_param)
    if not isinstance(default, (int, float)) or default <= 0:
        default = grid[len(grid) // 2]
    nearest = sorted(grid, key=lambda v: (abs(math.log10(v) - math.log10(default)), v))[:points]
    return tuple(sorted(nearest))


def regularisation_values(spec, size: str) -> Tuple[str, Tuple[Any, ...]]:
    param = regularisation_param(spec)
    if param is None:
        return "", ()
    return param, REGULARISATION_GRIDS[param].get(size, ())


def grid_trials(
    workloads: Sequence[str],
    optimizers: Sequence[str],
    size: str,
    seeds: Sequence[int],
    *,
    epochs: Optional[int] = None,
    grid_points: Optional[int] = None,
    step_sizes: Optional[Sequence[float]] = None,
    tune_regularisation: bool = True,
    grids: Optional[Mapping[str, Sequence[float]]] = None,
    fixed: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> List[TrialConfig]:
    """Every trial of the grid, workload-major (so partial sweeps cover workloads in order).

    step_sizes overrides every record's grid (for optimizers that have a step-size
    hyperparameter); grids[optimizer] overrides it for one optimizer (``--grid``);
    grid_points shortens the records' grids around their defaults. fixed[optimizer]
    are hyperparameters set in every trial of that optimizer (``--set``): part of
    the config, so they change the trial id.
    """
    grids, fixed = grids or {}, fixed or {}
    bad = [v for v in step_sizes or () if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]
    if bad:  # nan would be recorded as lr=None (JSON has no nan) and run with the default instead
        raise ValueError(f"step_sizes must be positive finite numbers, got {bad}")
    trials = []
    for workload in workloads:
        for name in optimizers:
            spec = get_bench_spec(name)
            if spec.name in grids:
                lrs: Tuple[Optional[float], ...] = tuple(grids[spec.name])
            elif step_sizes is not None and spec.step_size_param:
                lrs = tuple(step_sizes)
            else:
                lrs = step_size_values(spec, grid_points)
            reg_param, regs = regularisation_values(spec, size) if tune_regularisation else ("", ())
            if reg_param in fixed.get(spec.name, {}):
                reg_param, regs = "", ()  # fixed by the user: not swept
            for lr in lrs:
                for reg in regs or (None,):
                    hyper: Dict[str, Any] = dict(fixed.get(spec.name, {}))
                    if lr is not None:
                        hyper[spec.step_size_param] = float(lr)
                    if regs:
                        hyper[reg_param] = reg
                    for seed in seeds:
                        trials.append(TrialConfig(workload, size, spec.name, hyper, int(seed), epochs))
    return trials


class RecordsOutdated(RuntimeError):
    """Finished records whose plugin or optimizer defaults changed since they were made."""

    def __init__(self, changes: Dict[str, List[str]]):
        self.changes = changes
        first = "; ".join(f"{trial}: {', '.join(lines)}" for trial, lines in list(changes.items())[:3])
        more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
        super().__init__(
            f"{len(changes)} finished trial(s) were made with another version of what they depend on: {first}{more}. "
            "Rerun them with --rerun-changed (rerun_changed=True; their records are replaced), "
            "or write to another --results directory")


def outdated_trials(store: Store, trials: Sequence[TrialConfig]) -> Dict[str, List[str]]:
    """trial id -> changes (polyak.bench.plugins.changes_since) for the finished ``trials`` that changed."""
    out = {}
    for trial in trials:
        try:
            record = json.loads(store.record_path(trial.trial_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable: the store's sync warned about it
        changes = changes_since(record)
        if changes:
            out[trial.trial_id] = changes
    return out
def progress_line(record: Dict[str, Any]) -> str:
    """One line about a finished trial: what ran, how it ended, its reported number, its time."""
    config = record["config"]
    hyper = ", ".join(f"{k}={v}" for k, v in sorted((config.get("hyperparameters") or {}).items()))
    what = f"{config['optimizer']} on {config['workload']} ({hyper + ', ' if hyper else ''}seed {config['seed']})"
    summary = record.get("summary") or {}
    result = ""
    if record.get("status") == "ok":
        metric = get_metric(summary.get("metric") or "loss")
        value = (summary.get("test_at_best") or {}).get(metric.key) if metric.reported == "test" \
            else summary.get("final_train_loss")
        if isinstance(value, (int, float)):
            result = f", {metric.label} {metric.scale * value:.4g}"
    elif record.get("status") == "diverged":
        result = f" at epoch {(record.get('diverged_at') or {}).get('epoch')}"
    elif record.get("error"):
        result = f": {str(record['error']).splitlines()[0][:120]}"
    wall = record.get("wall_time_s")
    return f"{what}: {record.get('status')}{result}" + (f" in {wall:.0f} s" if isinstance(wall, (int, float)) else "")


#: status counted for trials not started because their workload's data is missing
DATA_MISSING = "skipped (data missing)"


def _data_missing(record: Dict[str, Any]) -> bool:
    return record.get("status") == "error" and str(record.get("error") or "").startswith(("DatasetMissing",
                                                                                         "DatasetCorrupted"))


@dataclass
class SweepResult:
    planned: int
    skipped: int      # already done before this run (resume)
    ran: int
    statuses: Dict[str, int]
    missing_data: Dict[str, str] = field(default_factory=dict)  # workload -> how to get its data


def execute_trial(config: TrialConfig, results_dir: str, data_dir: Optional[str], device: Optional[str],
                  progress: bool, jobs: int = 1, sweep_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run one trial and write its JSON record (atomically); returns the record.
    Runs in worker processes: the parent only indexes the record."""
    record = run_trial(config, data_dir=Path(data_dir) if data_dir else None, device=device, progress=progress)
    # jobs: trials sharing the machine make time per step noisy; the rest (suite, time baseline) is the plan's
    record["sweep"] = {**(sweep_info or {}), "jobs": jobs}
    from .store import atomic_write_json

    atomic_write_json(Path(results_dir) / "trials" / f"{record['trial_id']}.json", record)
    return record


def _exit_when_orphaned(parent: int) -> None:
    # A sweep killed with SIGKILL cannot stop its workers; they notice the new parent and
    # leave, so a killed sweep stops within a second (a record being written stays whole).
    # ``parent`` is the sweep's pid as the sweep itself saw it: a worker whose parent died
    # while it was still starting (importing torch) is already orphaned when this runs, and
    # reading os.getppid() here would watch its new parent (init) forever.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _worker_init(threads: int, plugins: str, parent: int) -> None:
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    os.environ[PLUGINS_ENV] = plugins
    load_plugins(plugins)


def run_sweep(
    trials: Sequence[TrialConfig],
    results_dir: os.PathLike = "runs",
    *,
    jobs: int = 1,
    data_dir: Optional[os.PathLike] = None,
    device: Optional[str] = None,
    progress: bool = True,
    threads: Optional[int] = None,
    on_record: Optional[Callable[[Dict[str, Any]], None]] = None,
    sweep_info: Optional[Dict[str, Any]] = None,
    rerun_changed: bool = False,
    executor: str = "local",
    address: Optional[str] = None,
) -> SweepResult:
    """Run the trials that have no finished record in ``results_dir``.

    threads: torch threads per trial process (default: the cores divided by
    ``jobs``; 1 is fastest for tiny models on a busy machine). sweep_info: stored
    in every record's ``sweep`` field (the suite's name and time baseline).

    A finished record made with another version of a plugin, or with other record
    defaults of its optimizer, is not reused: the sweep raises :class:`RecordsOutdated`
    naming the changes, or with ``rerun_changed`` reruns those trials (their records
    are replaced).


    executor: "local" (this machine: in-process for jobs=1, else a pool of spawned
    processes) or "ray": every trial is a Ray task on the cluster at ``address`` (None:
    a local Ray started here); tasks return their records and this process writes them
    (the workers need no shared filesystem), so resume works the same. ``jobs`` bounds
    the tasks in flight."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if address is not None and executor != "ray":
        raise ValueError("address is the Ray cluster's: pass executor='ray' with it")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1 (parallel trial processes), got {jobs!r}")
    check_device(device)  # a wrong device fails here, not as one error record per trial
    unique: Dict[str, TrialConfig] = {}
    for trial in trials:
        unique.setdefault(trial.trial_id, trial)
    store = Store(results_dir)
    try:
        store.sync()
        done = store.completed_ids()
        outdated = outdated_trials(store, [t for t in unique.values() if t.trial_id in done])
        if outdated and not rerun_changed:
            raise RecordsOutdated(outdated)
        done -= set(outdated)
        todo = [t for t in unique.values() if t.trial_id not in done]
        statuses: Dict[str, int] = {}

        bar = None
        # A terminal gets a progress bar; redirected output (a log file, CI) one line per finished trial.
        lines = progress and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
        if progress and not lines:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(unique), initial=len(unique) - len(todo), desc="sweep", unit="trial", disable=None)
        counter = {"done": len(unique) - len(todo)}

        missing_data: Dict[str, str] = {}  # workload -> the DatasetMissing message

        def wanted(trial: TrialConfig) -> bool:
            if trial.workload not in missing_data:
                return True
            statuses[DATA_MISSING] = statuses.get(DATA_MISSING, 0) + 1
            if bar is not None:
                bar.update(1)
            return False

        def finished(record: Dict[str, Any]) -> None:
            store.index_record(record)
            if _data_missing(record):
                missing_data.setdefault(record["config"]["workload"], record["error"])
            statuses[record["status"]] = statuses.get(record["status"], 0) + 1
            counter["done"] += 1
            if lines:
                print(f"[{counter['done']}/{len(unique)}] {progress_line(record)}", file=sys.stderr, flush=True)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{record['config']['optimizer']} on {record['config']['workload']}: {record['status']}")
            if on_record is not None:
                on_record(record)

        root, data = str(results_dir), (str(data_dir) if data_dir else None)
        try:
            if executor == "ray":
                _run_ray(todo, jobs, threads, root, data, device, finished, wanted, sweep_info, address)
            elif jobs == 1 or len(todo) <= 1:
                if threads is not None:
                    torch.set_num_threads(threads)
                for trial in todo:
                    if wanted(trial):
                        finished(execute_trial(trial, root, data, device, progress, 1, sweep_info))
            else:
                _run_parallel(todo, jobs, threads, root, data, device, finished, wanted, sweep_info)
        finally:
            if bar is not None:
                bar.close()
        ran = len(todo) - statuses.get(DATA_MISSING, 0)
        return SweepResult(planned=len(unique), skipped=len(unique) - len(todo), ran=ran, statuses=statuses,
                           missing_data=missing_data)
    finally:
        store.close()


#: where trials run: this machine, or Ray tasks (the optional extra ``polyak[ray]``)
EXECUTORS = ("local", "ray")


def _ray_trial(config: Dict[str, Any], data: Optional[str], device: Optional[str], threads: int, plugins: str,
               jobs: int, sweep_info: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """One trial inside a Ray worker: the record comes back to the driver, nothing is written here."""
    torch.set_num_threads(threads)
    os.environ[PLUGINS_ENV] = plugins
    load_plugins(plugins)
    record = run_trial(TrialConfig.from_dict(config), data_dir=Path(data) if data else None, device=device)
    record["sweep"] = {**(sweep_info or {}), "jobs": jobs, "executor": "ray"}
    return record


def _run_ray(todo, jobs, threads, root, data, device, finished, wanted, sweep_info, address) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs Ray: pip install 'polyak[ray]' (or pip install ray)") from None
    from .store import atomic_write_json

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote = ray.remote(num_cpus=threads or 1)(_ray_trial)
        plugins = os.environ.get(PLUGINS_ENV, "")
        queue, pending = list(todo), {}
        while queue or pending:
            while queue and len(pending) < max(1, jobs):
                trial = queue.pop(0)
                if wanted(trial):
                    ref = remote.remote(trial.to_dict(), data, device, threads or 1, plugins, jobs, sweep_info)
                    pending[ref] = trial
            if not pending:
                continue
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                record = ray.get(ref)
                atomic_write_json(Path(root) / "trials" / f"{record['trial_id']}.json", record)
                finished(record)
    finally:
        if started_here:
            ray.shutdown()


def _run_parallel(todo, jobs, threads, root, data, device, finished, wanted, sweep_info) -> None:
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    plugins = os.environ.get(PLUGINS_ENV, "")
    # spawn, not fork: forking a process whose torch thread pool is running can deadlock
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(threads, plugins, os.getpid())) as pool:
        # submit a few at a time so that trials of a workload whose data is missing are not started
        queue = list(todo)
        pending = set()
        try:
            while queue or pending:
                while queue and len(pending) < 2 * jobs:
                    trial = queue.pop(0)
                    if wanted(trial):
                        pending.add(pool.submit(execute_trial, trial, root, data, device, False, jobs, sweep_info))
                if not pending:
                    continue
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise

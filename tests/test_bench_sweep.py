"""Grid protocol, resume, and a sweep killed with SIGKILL then restarted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyak.bench.optimizers import get_bench_spec
from polyak.bench.store import Store
from polyak.bench.sweep import grid_trials, run_sweep, step_size_values

import test_bench_tiny as tiny

TINY_PLUGIN = str(Path(tiny.__file__).resolve())


def test_grid_is_step_sizes_times_regularisation_times_seeds():
    trials = grid_trials([tiny.WORKLOAD], ["sgd"], "lite", seeds=[0, 1, 2])
    spec = get_bench_spec("sgd")
    assert len(trials) == len(spec.step_size_grid) * 2 * 3  # lite weight-decay grid (0, 1e-4)
    assert {t.hyperparameters["lr"] for t in trials} == set(spec.step_size_grid)
    assert {t.hyperparameters["weight_decay"] for t in trials} == {0.0, 1e-4}
    assert len({t.trial_id for t in trials}) == len(trials)


def test_alig_is_regularised_by_max_norm_and_quick_does_not_tune_it():
    trials = grid_trials([tiny.WORKLOAD], ["alig"], "paper", seeds=[0])
    assert {t.hyperparameters["max_norm"] for t in trials} == {None, 50.0, 100.0, 200.0, 400.0}
    quick = grid_trials([tiny.WORKLOAD], ["alig"], "quick", seeds=[0])
    assert all(set(t.hyperparameters) == {"max_lr"} for t in quick)


def test_learning_rate_free_optimizer_has_one_setting():
    trials = grid_trials([tiny.WORKLOAD], ["prodigy"], "quick", seeds=[0, 1])
    assert [t.hyperparameters for t in trials] == [{}, {}]


def test_short_grid_takes_the_values_nearest_the_default():
    spec = get_bench_spec("sgd")  # default lr 0.1, grid 1e-3 .. 1
    assert step_size_values(spec, 1) == (0.1,)
    assert step_size_values(spec, 2) in ((0.01, 0.1), (0.1, 1.0))
    assert step_size_values(spec, None) == spec.step_size_grid


def test_resume_skips_finished_trials_and_reruns_errors(tmp_path):
    trials = grid_trials([tiny.WORKLOAD], ["fake-gradient"], "quick", seeds=[0, 1], step_sizes=[0.1])
    first = run_sweep(trials, tmp_path, progress=False)
    assert (first.ran, first.skipped, first.statuses) == (2, 0, {"ok": 2})
    again = run_sweep(trials, tmp_path, progress=False)
    assert (again.ran, again.skipped) == (0, 2)
    # an error record is not final: fixing the cause and rerunning retries it
    record_path = Store(tmp_path).record_path(trials[0].trial_id)
    record = json.loads(record_path.read_text())
    record["status"] = "error"
    record_path.write_text(json.dumps(record))
    with Store(tmp_path) as store:
        store.sync()
    assert run_sweep(trials, tmp_path, progress=False).ran == 1


def test_a_workload_with_missing_data_is_tried_once_and_the_rest_skipped(tmp_path):
    trials = grid_trials([tiny.MISSING_WORKLOAD, tiny.WORKLOAD], ["fake-gradient", "fake-per-sample"], "quick", seeds=[0, 1],
                         step_sizes=[0.1])
    result = run_sweep(trials, tmp_path, progress=False)
    assert result.statuses == {"error": 1, "skipped (data missing)": 3, "ok": 4}
    assert "polyak data fetch tiny" in result.missing_data[tiny.MISSING_WORKLOAD]
    assert len(list((tmp_path / "trials").glob("*.json"))) == 5


@pytest.mark.slow  # spawns two workers that each import torch: tens of seconds on a busy machine
def test_parallel_jobs_give_the_same_records_as_one_job(tmp_path):
    trials = grid_trials([tiny.WORKLOAD], ["fake-gradient"], "quick", seeds=[0, 1], step_sizes=[0.1])
    os.environ["POLYAK_BENCH_PLUGINS"] = TINY_PLUGIN
    try:
        result = run_sweep(trials, tmp_path / "two", jobs=2, progress=False, threads=1)
    finally:
        del os.environ["POLYAK_BENCH_PLUGINS"]
    assert result.statuses == {"ok": 2}
    run_sweep(trials, tmp_path / "one", progress=False)
    for trial in trials:
        a = json.loads((tmp_path / "one" / "trials" / f"{trial.trial_id}.json").read_text())
        b = json.loads((tmp_path / "two" / "trials" / f"{trial.trial_id}.json").read_text())
        assert a["epochs"][-1]["val"] == b["epochs"][-1]["val"]


def test_a_worker_whose_sweep_died_while_it_started_exits(tmp_path):
    # The sweep (pid `parent`) is killed while its worker still imports torch: when the
    # worker's initializer runs, its parent is already init (or a subreaper). It must leave.
    script = ("import os, time; from polyak.bench.sweep import _worker_init; "
              "_worker_init(1, '', parent=os.getppid() + 10**7); time.sleep(60)")
    started = time.time()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr == "", done.stderr[-2000:]  # its own exit, not a crash
    assert time.time() - started < 30  # it left at once, not after the 60 s sleep


def _children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # spawns workers that import torch
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc to find the workers")
def test_workers_exit_when_the_sweep_is_killed_while_they_start(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(_sweep_command(tmp_path / "runs", 2), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    workers = []
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2:  # the two pool workers (plus the resource tracker)
        workers = [c for c in _children(process.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # while the workers still import torch
    process.wait()
    assert workers, "no worker started"
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "orphaned workers kept running"


def _sweep_command(results, jobs):
    return [sys.executable, "-m", "polyak.bench", "run", "--workload", tiny.WORKLOAD, "--optimizer", "fake-gradient",
            "--step-sizes", "0.01,0.1,1", "--seeds", "2", "--epochs", "40",
            "--results", str(results), "--no-report", "--threads", "1", "--plugin", TINY_PLUGIN, "--jobs", str(jobs)]


@pytest.mark.parametrize("jobs", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: spawned workers, ~20 s
def test_sweep_killed_mid_trial_resumes_without_duplicates_or_corrupt_records(tmp_path, jobs):
    results = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(_sweep_command(results, jobs), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    trials_dir = results / "trials"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if trials_dir.is_dir() and any(trials_dir.glob("*.json")):
            break
        time.sleep(0.005)
    assert process.poll() is None, f"the sweep ended before it could be killed: {process.communicate()[1][-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    if jobs > 1:
        time.sleep(2)  # its orphaned workers notice within 0.5 s and exit
    done_before = {p.name: p.read_text() for p in trials_dir.glob("*.json")}
    assert 1 <= len(done_before) < 6, "the kill must land while trials remain"

    restarted = subprocess.run(_sweep_command(results, jobs), env=env, capture_output=True, text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert f"({len(done_before)} already done)" in restarted.stderr
    records = sorted(trials_dir.glob("*.json"))
    assert len(records) == 6 and not list(trials_dir.glob(".*"))  # no temp file left behind
    ids = [json.loads(p.read_text())["trial_id"] for p in records]  # every record parses
    assert len(set(ids)) == 6
    for name, text in done_before.items():  # finished trials were not run again
        assert (trials_dir / name).read_text() == text
    with Store(results) as store:
        assert store.count() == 6 and store.completed_ids() == set(ids)

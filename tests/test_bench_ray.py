"""--executor ray: trials as Ray tasks on a local ray.init(); records come back to the
driver's store, the numbers equal a local run's, and resume skips what is done."""
import json
import os
from pathlib import Path

import pytest

from polyak.bench.store import Store
from polyak.bench.sweep import grid_trials, run_sweep

import test_bench_tiny as tiny

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'polyak[ray]'): the Ray executor is untested")

TINY_PLUGIN = str(Path(tiny.__file__).resolve())


@pytest.fixture
def local_ray(monkeypatch):
    monkeypatch.setenv("POLYAK_BENCH_PLUGINS", TINY_PLUGIN)  # the workers register the tiny workload from it
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_a_tiny_sweep_on_ray_returns_records_to_the_driver_and_resumes(tmp_path, local_ray):
    trials = grid_trials([tiny.WORKLOAD], ["fake-gradient", "sgd"], "quick", seeds=[0], step_sizes=[0.1])
    result = run_sweep(trials, tmp_path / "ray", executor="ray", jobs=2, threads=1, progress=False,
                       sweep_info={"suite": "test"})
    assert result.statuses == {"ok": 2} and result.ran == 2
    with Store(tmp_path / "ray") as store:
        assert store.completed_ids() == {t.trial_id for t in trials}
    again = run_sweep(trials, tmp_path / "ray", executor="ray", jobs=2, progress=False)
    assert again.ran == 0 and again.skipped == 2

    run_sweep(trials, tmp_path / "local", progress=False)
    for trial in trials:
        by_ray = json.loads((tmp_path / "ray" / "trials" / f"{trial.trial_id}.json").read_text())
        local = json.loads((tmp_path / "local" / "trials" / f"{trial.trial_id}.json").read_text())
        assert by_ray["sweep"]["executor"] == "ray" and by_ray["sweep"]["suite"] == "test"
        assert by_ray["epochs"][-1]["val"] == local["epochs"][-1]["val"]  # same seed, same numbers


def test_address_needs_the_ray_executor(tmp_path):
    with pytest.raises(ValueError, match="executor='ray'"):
        run_sweep([], tmp_path, address="ray://nowhere:10001")
    with pytest.raises(ValueError, match="executor must be one of"):
        run_sweep([], tmp_path, executor="dask")

"""Faults of a results directory, of arguments and of the device: each refused or
repaired with a message that names the file (or the argument) and what to do."""
import json
import os
import tempfile
import time

import pytest

from polyak.bench.cli import main
from polyak.bench.records import RECORD_SCHEMA_VERSION, TrialConfig
from polyak.bench import store as store_module
from polyak.bench.report import write_report
from polyak.bench.store import Store, atomic_write_json
from polyak.bench.sweep import grid_trials, run_sweep

import test_bench_tiny as tiny


def _record(seed=0):
    config = TrialConfig(tiny.WORKLOAD, "quick", "sgd", {"lr": 0.1}, seed)
    return {"schema_version": RECORD_SCHEMA_VERSION, "trial_id": config.trial_id, "config": config.to_dict(),
            "status": "ok", "diverged": False, "workload": {"metric": "accuracy"},
            "summary": {"metric": "accuracy", "val_score": 0.5, "best_epoch": 1,
                        "test_at_best": {"accuracy": 0.5}, "final_train_loss": 0.1},
            "epochs": [{"epoch": 0, "train_loss": None, "val": {"loss": 1.0, "accuracy": 0.1}, "test": {}},
                       {"epoch": 1, "train_loss": 0.1, "val": {"loss": 0.5, "accuracy": 0.5}, "test": {}}]}


def test_a_garbage_index_is_set_aside_and_rebuilt_from_the_records(tmp_path, capsys):
    with Store(tmp_path) as store:
        store.write_record(_record())
    (tmp_path / "results.sqlite").write_bytes(b"this is not an sqlite file" * 100)
    with pytest.warns(UserWarning, match=r"results.sqlite is not a readable index.*moved it to results.damaged"):
        with Store(tmp_path) as store:
            assert store.count() == 1
    assert len(list(tmp_path.glob("results.damaged.*.sqlite"))) == 1
    assert main(["bench", "report", "--results", str(tmp_path), "--no-plots"]) == 0


@pytest.mark.parametrize("content,problem", [
    ("[1, 2]", "a JSON list, not an object"),
    ('{"schema_version": 1, "trial_id": "stray"}', "missing or malformed: status, config"),
    ("{not json", "unreadable record"),
    (b"\xff\xfe\x00binary", "unreadable record"),
])
def test_a_stray_file_in_trials_is_skipped_with_a_warning_naming_it(tmp_path, capsys, content, problem):
    with Store(tmp_path) as store:
        store.write_record(_record())
    stray = tmp_path / "trials" / "stray.json"
    stray.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.warns(UserWarning, match="stray.json") as caught:
        with Store(tmp_path) as store:
            assert store.sync() == 0 and store.count() == 1
    assert problem in str(caught[0].message) and "Move it out of" in str(caught[0].message)
    capsys.readouterr()
    assert main(["bench", "report", "--results", str(tmp_path), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipping " in err and str(stray) in err and "Traceback" not in err


def test_report_leaves_a_running_sweeps_temporary_records_alone(tmp_path):
    with Store(tmp_path) as store:
        store.write_record(_record())
    in_flight = tmp_path / "trials" / f".{_record(1)['trial_id']}.json.abc.tmp"
    in_flight.write_text('{"being": "written"')
    write_report(tmp_path, plots=False)
    assert in_flight.exists()
    with Store(tmp_path) as store:  # a sweep starting now leaves it too: it is fresh
        store.sync()
    assert in_flight.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_non_finite_or_non_positive_step_sizes_are_refused(value):
    with pytest.raises(ValueError, match="step_sizes must be positive finite numbers"):
        grid_trials([tiny.WORKLOAD], ["sgd"], "quick", seeds=[0], step_sizes=[0.1, value])


@pytest.mark.parametrize("text", ["nan", "0.1,inf", "0.1,-inf"])
def test_cli_refuses_non_finite_step_sizes(text, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "run", "--workload", tiny.WORKLOAD, "--step-sizes", text])
    assert "positive finite numbers" in capsys.readouterr().err


def test_an_unavailable_device_is_refused_before_any_trial(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    trials = grid_trials([tiny.WORKLOAD], ["sgd"], "quick", seeds=[0], step_sizes=[0.1])
    with pytest.raises(ValueError, match=r"device 'cuda' is not usable here.*--device cpu"):
        run_sweep(trials, tmp_path / "runs", device="cuda", progress=False)
    assert not (tmp_path / "runs").exists()
    code = main(["bench", "run", "--workload", tiny.WORKLOAD, "--optimizer", "sgd", "--step-sizes", "0.1",
                 "--device", "cuda", "--results", str(tmp_path / "cli"), "--jobs", "1"])
    assert code == 2 and "error: device 'cuda' is not usable here" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "trials").exists()


@pytest.fixture
def read_only(monkeypatch):
    """Make directories read-only: chmod where that binds, else (root ignores permission
    bits) refuse new files in them the way a read-only mount does."""
    made = []

    def make(directory):
        made.append(directory)
        os.chmod(directory, 0o555)
        for sub in directory.iterdir():
            if sub.is_dir():
                os.chmod(sub, 0o555)

    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and any(str(dir).startswith(str(d)) for d in made):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(store_module.tempfile, "mkstemp", mkstemp)
    yield make
    for directory in made:
        os.chmod(directory, 0o755)
        for sub in directory.iterdir():
            if sub.is_dir():
                os.chmod(sub, 0o755)


def test_a_read_only_results_directory_is_reported_clearly(tmp_path, capsys, read_only):
    results = tmp_path / "runs"
    with Store(results) as store:
        store.write_record(_record())
    read_only(results)
    assert main(["bench", "report", "--results", str(results), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"results directory {results} is not writable" in err and "--out DIR" in err and "Traceback" not in err
    # --out writes the report elsewhere, reading the records without writing the results directory
    assert main(["bench", "report", "--results", str(results), "--no-plots", "--out", str(tmp_path / "out")]) == 0
    assert "| sgd |" in capsys.readouterr().out and (tmp_path / "out" / "report.md").exists()
    code = main(["bench", "run", "--workload", tiny.WORKLOAD, "--optimizer", "sgd", "--step-sizes", "0.2",
                 "--results", str(results), "--jobs", "1", "--no-report"])
    assert code == 2 and "is not writable" in capsys.readouterr().err

"""`polyak bench list/run/report` end to end on the tiny workload (registered through --plugin)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polyak.bench.cli import main

import test_bench_tiny as tiny

TINY_PLUGIN = str(Path(tiny.__file__).resolve())


def test_list_shows_workloads_optimizers_with_availability_and_suites(capsys):
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert tiny.WORKLOAD in out and "fake-probe" in out
    assert "Suites:" in out and "quick" in out and "paper" in out
    assert "alig " in out and " sgd " in out and "available" in out


def test_run_then_report_end_to_end(tmp_path, capsys):
    results = tmp_path / "runs"
    code = main(["bench", "run", "--workload", tiny.WORKLOAD, "--optimizer", "sgd", "--optimizer", "fake-probe",
                 "--size", "lite", "--seeds", "2", "--step-sizes", "0.1,1", "--results", str(results), "--jobs", "1"])
    assert code == 0
    captured = capsys.readouterr()
    assert "| sgd |" in captured.out and "| fake-probe |" in captured.out
    records = [json.loads(p.read_text()) for p in (results / "trials").glob("*.json")]
    # lite tunes weight decay for sgd (2 values); the fake has no regulariser
    assert len(records) == 2 * 2 * 2 + 2 * 2 and all(r["status"] == "ok" for r in records)
    assert (results / "report.md").exists() and (results / "performance_profile.png").exists()
    assert main(["bench", "report", "--results", str(results), "--no-plots"]) == 0
    assert "| sgd |" in capsys.readouterr().out


def test_unknown_names_fail_with_the_list_of_known_ones(tmp_path, capsys):
    assert main(["bench", "run", "--workload", "no-such", "--results", str(tmp_path)]) == 2
    assert "unknown workload 'no-such'" in capsys.readouterr().err
    assert main(["bench", "run", "--workload", tiny.WORKLOAD, "--optimizer", "nope", "--results", str(tmp_path)]) == 2
    assert "unknown optimizer 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["bench", "run", "--workload", "x", "--jobs", "0"], "must be an integer >= 1"),
    (["bench", "run", "--workload", "x", "--step-sizes", "a,b"], "comma-separated numbers"),
    (["bench", "run", "--workload", "x", "--step-sizes", "-1"], "positive finite numbers"),
    (["bench", "run"], "one of the arguments --suite --workload is required"),
])
def test_bad_arguments_are_rejected_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_report_without_results_says_so(tmp_path, capsys):
    assert main(["bench", "report", "--results", str(tmp_path / "none")]) == 2
    assert "polyak bench run" in capsys.readouterr().err


def test_unknown_command_and_help():
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


def test_python_dash_m_and_plugin_env_work_in_a_fresh_process(tmp_path):
    env = dict(os.environ, POLYAK_BENCH_PLUGINS=TINY_PLUGIN, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "polyak.bench", "list"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert tiny.WORKLOAD in out.stdout and "fake-per-sample" in out.stdout

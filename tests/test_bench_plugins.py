"""Plugins: provenance in records, changed plugins and defaults on resume, collisions,
names, the harness's budget, the metric key, one-line import errors, plugin suites."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from polyak import OptimizerSpec
from polyak.bench import optimizers as bench_optimizers
from polyak.bench.cli import main
from polyak.bench.plugins import PLUGINS_ENV, PluginError, check_name, load_plugins
from polyak.bench.records import TrialConfig
from polyak.bench.report import collect
from polyak.bench.runner import run_trial
from polyak.bench.sweep import RecordsOutdated, grid_trials, run_sweep
from polyak.bench.workloads import Budget, Workload, get_workload, register_workload

import test_bench_tiny as tiny

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _plugin(path: Path, body: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return str(path)


# A plugin workload over the tiny test data, built from the budget the harness gives it.
TINY_PLUGIN_WORKLOAD = """
    import torch
    from torch import nn
    from polyak.bench.workloads import Budget, Workload, WorkloadInstance, helpers, register_workload

    X = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
    Y = (X[:, 0] > 0).long()

    def build(size, seed, data_dir, budget):
        with helpers.seeded(seed):
            model = nn.Linear(4, 2)
        data = helpers.ArrayDataset(X, Y)
        return WorkloadInstance(model=model, train=data, val=data, test=data,
                                per_sample_loss=helpers.cross_entropy_per_sample,
                                evaluate=helpers.classifier_evaluate(), budget=budget)

    register_workload(Workload(name="{name}", metric="accuracy", lower_bound=0.0, interpolating=True, data=None,
                               budgets={{s: Budget(epochs=2, batch_size=8) for s in ("quick", "lite", "paper")}},
                               build=build))
"""


def _cli(args, cwd, env_plugins=None):
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    env.pop(PLUGINS_ENV, None)
    if env_plugins:
        env[PLUGINS_ENV] = env_plugins
    return subprocess.run([sys.executable, "-m", "polyak.bench.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_changed_plugin_is_never_reused_on_resume(tmp_path):
    plugin = _plugin(tmp_path / "mine.py", TINY_PLUGIN_WORKLOAD.format(name="mine-tiny"))
    run = ["run", "--plugin", plugin, "--workload", "mine-tiny", "--optimizer", "sgd", "--grid", "sgd=0.1",
           "--results", str(tmp_path / "runs"), "--jobs", "1", "--no-report"]
    first = _cli(run, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (record_path,) = (tmp_path / "runs" / "trials").glob("*.json")
    record = json.loads(record_path.read_text())
    sha = record["provenance"]["workload"]["sha256"]
    assert record["plugins"] == [{"entry": plugin, "path": plugin, "sha256": sha}]
    assert record["provenance"]["workload"]["source"] == plugin

    Path(plugin).write_text(Path(plugin).read_text() + "\n# changed\n")
    refused = _cli(run, tmp_path)
    assert refused.returncode == 2
    assert "workload 'mine-tiny' now comes from" in refused.stderr and "--rerun-changed" in refused.stderr
    assert json.loads(record_path.read_text())["provenance"]["workload"]["sha256"] == sha  # untouched

    rerun = _cli(run + ["--rerun-changed"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "ran 1 trials (0 already done)" in rerun.stderr
    assert json.loads(record_path.read_text())["provenance"]["workload"]["sha256"] != sha
    assert _cli(run, tmp_path).returncode == 0  # now up to date: reused


def test_a_changed_default_of_a_builtin_optimizer_is_not_reused(tmp_path, monkeypatch):
    trials = grid_trials([tiny.WORKLOAD], ["sgd"], "quick", [0], step_sizes=[0.1])
    assert run_sweep(trials, tmp_path, progress=False).ran == 1
    peers = tuple(
        bench_optimizers.OptimizerInfo(info.spec.__class__(**{**info.spec.__dict__,
                                                              "defaults": {"lr": 0.1, "momentum": 0.5}}), "torch")
        if info.name == "sgd" else info for info in bench_optimizers.PEERS)
    monkeypatch.setattr(bench_optimizers, "PEERS", peers)
    with pytest.raises(RecordsOutdated, match=r"optimizer 'sgd' default momentum=0.5, the record used 0.9"):
        run_sweep(trials, tmp_path, progress=False)
    result = run_sweep(trials, tmp_path, progress=False, rerun_changed=True)
    assert result.ran == 1
    (path,) = (tmp_path / "trials").glob("*.json")
    assert json.loads(path.read_text())["optimizer"]["arguments"]["momentum"] == 0.5


def test_workload_collisions_name_both_sources(tmp_path):
    plugin = _plugin(tmp_path / "clash.py", TINY_PLUGIN_WORKLOAD.format(name="mnist-resnet8"))
    with pytest.raises(PluginError) as error:
        load_plugins([plugin])
    message = str(error.value)
    assert "\n" not in message and plugin in message and "polyak.bench.workloads.mnist" in message
    assert "workload 'mnist-resnet8'" in message
    assert f"of {plugin})" in message  # the plugin's own line that registered it, not polyak's
    get_workload("mnist-resnet8")  # the built-in is still the one registered


def test_optimizer_collisions_name_both_sources(tmp_path):
    plugin = _plugin(tmp_path / "mysgd.py", """
        import torch
        from polyak import OptimizerSpec
        from polyak.bench.optimizers import register_bench_optimizer
        register_bench_optimizer(OptimizerSpec(name="sgd", factory=torch.optim.SGD, needs=frozenset({"gradient"}),
                                               passes=(1, 1), defaults={"lr": 0.1}))
    """)
    with pytest.raises(PluginError) as error:
        load_plugins([plugin])
    message = str(error.value)
    assert plugin in message and "collides with the built-in 'sgd'" in message and "torch" in message
    assert bench_optimizers.optimizer_info("sgd").source == "torch"


def test_two_plugin_files_with_the_same_name_are_refused(tmp_path):
    first = _plugin(tmp_path / "a" / "same.py", "X = 1\n")
    second = _plugin(tmp_path / "b" / "same.py", "X = 2\n")
    load_plugins([first])
    with pytest.raises(PluginError) as error:
        load_plugins([second])
    assert str(Path(first).resolve()) in str(error.value) and str(Path(second).resolve()) in str(error.value)


def test_names_are_validated_where_registered():
    assert check_name("optimizer", "nadam-2.0") == "nadam-2.0"
    with pytest.raises(ValueError, match=r"optimizer name 'NAdam' is not valid.*e\.g\. 'nadam'"):
        bench_optimizers.register_bench_optimizer(OptimizerSpec(name="NAdam", factory=None, needs=frozenset(),
                                                                passes=(1, 1)))
    with pytest.raises(ValueError, match="workload name 'My Task' is not valid"):
        register_workload(Workload(name="My Task", metric="accuracy", lower_bound=0.0, interpolating=True, data=None,
                                   budgets=tiny.BUDGETS, build=tiny.build))


def _workload(name, build, budgets=tiny.BUDGETS):
    try:
        return get_workload(name)
    except KeyError:
        return register_workload(Workload(name=name, metric="accuracy", lower_bound=0.0, interpolating=True,
                                          data=None, budgets=budgets, build=build))


def test_build_gets_the_harness_budget_and_a_mismatch_is_an_error():
    seen = []

    def build_with_budget(size, seed, data_dir, budget):
        seen.append(budget)
        return _with_budget(tiny.build(size, seed, data_dir), budget)

    _workload("tiny-budget-arg", build_with_budget)
    record = run_trial(TrialConfig("tiny-budget-arg", "quick", "sgd", {"lr": 0.1}, 0, epochs=2))
    assert record["status"] == "ok" and seen == [Budget(epochs=2, batch_size=8)]
    assert record["workload"]["epochs"] == 2 and len(record["epochs"]) == 3

    def build_own_budget(size, seed, data_dir=None):  # trains with batch 12 while the workload declares 8
        return _with_budget(tiny.build(size, seed, data_dir), Budget(epochs=3, batch_size=12))

    _workload("tiny-budget-mismatch", build_own_budget)
    record = run_trial(TrialConfig("tiny-budget-mismatch", "quick", "sgd", {"lr": 0.1}, 0))
    assert record["status"] == "error"
    assert "batch_size=12" in record["error"] and "batch_size=8" in record["error"]
    assert "build(size, seed, data_dir, budget)" in record["error"]


def _with_budget(instance, budget):
    instance.budget = budget
    return instance


def test_an_evaluate_without_the_metric_key_fails_on_the_first_evaluation():
    def build(size, seed, data_dir=None):
        instance = tiny.build(size, seed, data_dir)
        inner = instance.evaluate
        instance.evaluate = lambda model, data: {("acc" if k == "accuracy" else k): v
                                                 for k, v in inner(model, data).items()}
        return instance

    _workload("tiny-acc-key", build)
    record = run_trial(TrialConfig("tiny-acc-key", "quick", "fake-gradient", {"lr": 0.1}, 0))
    assert record["status"] == "error" and record.get("epochs") is None  # before any training
    assert "returned ['acc', 'loss']" in record["error"] and "metric 'accuracy'" in record["error"]

    def build_without_loss(size, seed, data_dir=None):
        instance = tiny.build(size, seed, data_dir)
        inner = instance.evaluate
        instance.evaluate = lambda model, data: {"accuracy": inner(model, data)["accuracy"]}
        return instance

    _workload("tiny-no-loss", build_without_loss)
    record = run_trial(TrialConfig("tiny-no-loss", "quick", "fake-gradient", {"lr": 0.1}, 0))
    assert record["status"] == "error" and "without 'loss'" in record["error"]


def test_plugin_import_errors_are_one_line_with_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _plugin(tmp_path / "satimage.py", "X = 1\n")
    assert main(["bench", "list", "--plugin", "satimage"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean the file: --plugin satimage.py?" in err

    assert main(["bench", "list", "--plugin", "nothere.py"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--plugin: plugin file 'nothere.py' does not exist" in err and PLUGINS_ENV not in err

    monkeypatch.setenv(PLUGINS_ENV, "gone.py")
    assert main(["bench", "list"]) == 2
    assert f"${PLUGINS_ENV}: plugin file 'gone.py' does not exist" in capsys.readouterr().err
    monkeypatch.delenv(PLUGINS_ENV)

    _plugin(tmp_path / "broken.py", "import torch\n\nVALUE = undefined_name\n")
    assert main(["bench", "list", "--plugin", "broken.py"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "NameError: name 'undefined_name' is not defined (line 3 of" in err


def test_a_suite_from_a_plugin_runs_with_dash_dash_suite(tmp_path, capsys):
    plugin = _plugin(tmp_path / "suite_plugin.py", """
        from polyak.bench.suites import Suite, register_suite
        register_suite(Suite(name="tiny-suite", size="quick", workloads=("tiny-test",), library_optimizers=False,
                             optimizers=("fake-gradient",), seeds=1, grid_points=1, tune_regularisation=False,
                             summary="one tiny workload, one fake optimizer", selection="final"))
    """)
    code = main(["bench", "run", "--plugin", str(tiny.__file__), "--plugin", plugin, "--suite", "tiny-suite",
                 "--results", str(tmp_path / "runs"), "--jobs", "1", "--no-report"])
    assert code == 0, capsys.readouterr().err
    (path,) = (tmp_path / "runs" / "trials").glob("*.json")
    record = json.loads(path.read_text())
    assert record["sweep"]["suite"] == "tiny-suite" and record["sweep"]["selection"] == "final"
    assert collect([record]).rule == "final"  # the report follows the suite's rule
    assert main(["bench", "run", "--suite", "no-such-suite", "--results", str(tmp_path)]) == 2
    assert "unknown suite 'no-such-suite'" in capsys.readouterr().err


def test_a_file_named_twice_is_listed_once_in_load_order(tmp_path, monkeypatch):
    from polyak.bench.plugins import loaded_plugins

    monkeypatch.chdir(tmp_path)
    first = _plugin(tmp_path / "twice_a.py", "X = 1\n")
    second = _plugin(tmp_path / "twice_b.py", "X = 2\n")
    load_plugins(["twice_a.py", second, first])
    paths = [p["path"] for p in loaded_plugins()]
    assert paths.count(first) == 1 and paths.index(first) < paths.index(second)


def test_user_modules_are_fingerprinted_like_plugins_and_builtins_are_not():
    import hashlib

    from polyak.bench.plugins import fingerprint

    # the tiny workload's module lies outside polyak: imported or loaded as a plugin, the same fingerprint
    # (a Ray or pool worker that loads it as a plugin and a driver that imported it agree on resume)
    path = Path(tiny.__file__).resolve()
    assert fingerprint("workload", tiny.WORKLOAD) == {"source": str(path),
                                                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    get_workload("mnist-resnet8")  # the built-ins register on first look-up
    assert fingerprint("workload", "mnist-resnet8") == {"source": "polyak.bench.workloads.mnist", "sha256": None}

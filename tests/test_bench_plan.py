"""The trial plan (suites.plan_suite / plan_grid), the typed metric and the budget override."""
import pytest

from polyak.bench.records import METRICS, TrialConfig, effective_budget, get_metric
from polyak.bench.suites import Suite, plan_grid, plan_suite
from polyak.bench.workloads import Budget

import test_bench_tiny as tiny


def test_plan_grid_is_the_grid_of_each_workload_with_one_protocol():
    plan = plan_grid([tiny.WORKLOAD, tiny.WORKLOAD], ["sgd", "sgd"], size="lite", seeds=2, step_sizes=[0.1, 1.0])
    assert plan.workloads == (tiny.WORKLOAD,) and plan.optimizers == ("sgd",)
    # 2 step sizes x 2 weight decays (lite tunes regularisation) x 2 seeds
    assert len(plan.trials) == 8 and len({t.trial_id for t in plan.trials}) == 8
    assert {t.hyperparameters["lr"] for t in plan.trials} == {0.1, 1.0}
    assert plan.describe().startswith("8 trials: 1 workloads x 1 optimizers, size lite, 2 seed(s)")
    quick = plan_grid([tiny.WORKLOAD], ["sgd"], size="quick", step_sizes=[0.1])
    assert [t.hyperparameters for t in quick.trials] == [{"lr": 0.1}]  # quick does not tune regularisation


def test_plan_suite_applies_per_workload_overrides_then_the_callers_values():
    suite = Suite(name="t", size="lite", workloads=(tiny.WORKLOAD, "no-such-workload"), library_optimizers=False,
                  optimizers=("sgd",), seeds=3, grid_points=1, tune_regularisation=False, summary="",
                  epochs={tiny.WORKLOAD: 7}, overrides={tiny.WORKLOAD: {"seeds": 2}}, time_baseline="adam")
    plan = plan_suite(suite)
    assert plan.left_out == ("workload no-such-workload: not registered",)
    assert plan.protocols[tiny.WORKLOAD].seeds == 2 and plan.time_baseline == "adam"
    assert [t.seed for t in plan.trials] == [0, 1] and {t.epochs for t in plan.trials} == {7}
    again = plan_suite(suite, seeds=1, epochs=3, size="quick")
    assert [(t.seed, t.epochs, t.size) for t in again.trials] == [(0, 3, "quick")]


def test_metric_direction():
    assert get_metric("accuracy").better(0.9, 0.8) and not get_metric("accuracy").better(0.8, 0.9)
    assert get_metric("loss").better(0.1, 0.2) and max([0.3, 0.1], key=METRICS["loss"].sort_key) == 0.1
    with pytest.raises(ValueError, match="metric must be one of"):
        get_metric("f1")


def test_effective_budget_replaces_only_epochs():
    budget = Budget(epochs=5, batch_size=32, train_subset=100)
    assert effective_budget(budget, None) is budget
    assert effective_budget(budget, 2) == Budget(epochs=2, batch_size=32, train_subset=100)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        effective_budget(budget, 0)


def test_old_import_names_still_work():
    from polyak.bench.runner import RECORD_SCHEMA_VERSION, TrialConfig as RunnerTrialConfig, json_safe

    assert RunnerTrialConfig is TrialConfig and RECORD_SCHEMA_VERSION == 1 and json_safe(float("nan")) is None


def test_batched_fetch_gives_the_per_sample_values():
    import torch
    from torch.utils.data import DataLoader

    from polyak.bench.workloads import _common as C

    images = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8)
    dataset = C.ArrayDataset(images, torch.arange(20), C.normalize_images((0.5,), (0.25,)))
    batch = next(iter(DataLoader(dataset, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(1))))
    expected = torch.stack([dataset[int(i)][0] for i in batch[1]])  # the targets are the indices
    assert len(set(batch[1].tolist())) == 7 and torch.equal(batch[0], expected)


def test_cli_help_lists_the_commands_and_version(capsys):
    import polyak
    from polyak.bench.cli import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("bench list", "bench run", "bench report", "data fetch", "data list"):
        assert command in out
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"polyak {polyak.__version__}"


def test_redirected_sweep_prints_one_line_per_finished_trial(tmp_path, capsys):
    from polyak.bench.sweep import run_sweep

    plan = plan_grid([tiny.WORKLOAD], ["sgd"], size="quick", seeds=2, step_sizes=[0.1])
    run_sweep(plan.trials, tmp_path, progress=True)  # pytest's captured stderr is not a terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and lines[0].startswith("[1/2] sgd on tiny-test (lr=0.1, seed ")
    assert ": ok, test acc. (%) " in lines[1] and lines[1].endswith(" s")


def test_quick_suite_is_the_papers_methods_and_strong_peers_on_deepobs_mnist_mlp():
    from polyak.bench.suites import get_suite

    plan = plan_suite(get_suite("quick"))
    assert plan.workloads[0] == "mnist-mlp" and len(plan.optimizers) <= 8
    assert {"alig", "alig-plus", "labpal-sgd", "sgd", "adam"} <= set(plan.optimizers)
    alig_plus = [t for t in plan.trials if t.optimizer == "alig-plus"]
    # ALI-G+ chooses its sections itself (K="auto"): no K in the plan, 3 on the 3-epoch MNIST run
    assert alig_plus and all("K" not in t.hyperparameters for t in alig_plus)
    from polyak.alig_plus import resolve_sections
    from polyak.bench.records import effective_budget
    from polyak.bench.workloads import get_workload

    mnist = next(t for t in alig_plus if t.workload == "mnist-mlp")
    epochs = effective_budget(get_workload("mnist-mlp").budgets["quick"], mnist.epochs).epochs
    assert epochs == 3 and resolve_sections("auto", epochs) == 3


def test_medium_keeps_alig_plus_sections_of_five_epochs_and_scales_labpal():
    from polyak.bench.runner import scale_to_run
    from polyak.bench.suites import get_suite
    from polyak.bench.workloads import get_workload

    plan = plan_suite(get_suite("medium"))
    for workload in plan.workloads:
        assert get_workload(workload).budgets["medium"].epochs >= 25, workload  # K=5 sections x 5 epochs
    labpal = next(t for t in plan.trials if t.optimizer == "labpal-sgd")
    # the paper's 1000 of 150,000 steps, on a run of 3,000 steps: 20; its 400 untrusted: 8
    scaled = scale_to_run(labpal.hyperparameters, 3000)
    assert (scaled["reuse_steps"], scaled["untrusted_updates"]) == (20, 8)
    # LABPAL has a (decoupled) weight decay now: the medium plan sweeps it like every optimizer's
    assert set(scaled) == {"reuse_steps", "untrusted_updates", "weight_decay"}
    assert scale_to_run({"lr": 0.1, "reuse_steps": {"value": 1000, "per_total_steps": 150_000}}, 10) == \
        {"lr": 0.1, "reuse_steps": 1}


def test_fine_grid_has_three_points_per_decade_and_keeps_the_decades():
    from polyak.bench.suites import fine_grid

    grid = fine_grid("sgd", 3)  # sgd's grid spans 1e-3 .. 1
    assert len(grid) == 10 and grid[0] == 0.001 and grid[3] == 0.01 and grid[-1] == 1.0
    assert fine_grid("prodigy", 3) is None  # no step-size hyperparameter

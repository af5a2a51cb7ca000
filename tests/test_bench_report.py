"""Report: validation-based selection, the main table, time ratios, performance profile, files."""
import math
import statistics

import pytest

from polyak.bench.report import collect, main_table, performance_ratios, render_markdown, write_report
from polyak.bench.runner import RECORD_SCHEMA_VERSION, TrialConfig
from polyak.bench.store import Store
from polyak.bench.sweep import grid_trials, run_sweep

import test_bench_tiny as tiny


def _record(workload, optimizer, lr, seed, val, test, *, metric="accuracy", train_loss=0.5, diverged=False, time=0.01,
            passes=(1.0, 1.0)):
    config = TrialConfig(workload, "quick", optimizer, {"lr": lr}, seed)
    return {
        "schema_version": RECORD_SCHEMA_VERSION, "trial_id": config.trial_id, "config": config.to_dict(),
        "status": "diverged" if diverged else "ok", "diverged": diverged, "workload": {"metric": metric},
        "summary": {"metric": metric, "val_score": None if diverged else val, "best_epoch": 1,
                    "test_at_best": None if test is None else {"accuracy": test, "loss": 1 - test}, "final_train_loss": None if diverged else train_loss},
        "time_per_step_s": time, "passes_per_step": {"forward": passes[0], "backward": passes[1]},
        "epochs": [{"epoch": 1, "train_loss": train_loss, "val": {metric: val},
                    "test": {} if test is None else {"accuracy": test, "loss": 1 - test}}],
        "step_size_trace": {"steps": [1, 2], "values": [lr, lr / 2]}, "finished_at": "t",
    }


def test_selection_is_on_mean_validation_and_reports_test_mean_and_std():
    records = [
        # lr 0.1 has the better mean validation accuracy (0.8 vs 0.75) but worse test accuracy: selected anyway
        _record("w", "a", 0.1, 0, val=0.7, test=0.60), _record("w", "a", 0.1, 1, val=0.9, test=0.64),
        _record("w", "a", 1.0, 0, val=0.75, test=0.9), _record("w", "a", 1.0, 1, val=0.75, test=0.9),
    ]
    cell = collect(records).cells[(("w", "quick"), "a")]
    assert cell.hyperparameters == {"lr": 0.1}
    assert cell.mean == pytest.approx(62.0) and cell.std == pytest.approx(statistics.stdev([60.0, 64.0]))
    assert "62.00 ± 2.83" in main_table(collect(records))


def test_a_diverged_seed_disqualifies_its_setting():
    records = [
        _record("w", "a", 0.1, 0, val=0.99, test=0.99), _record("w", "a", 0.1, 1, val=None, test=None, diverged=True),
        _record("w", "a", 1.0, 0, val=0.5, test=0.5), _record("w", "a", 1.0, 1, val=0.5, test=0.5),
    ]
    assert collect(records).cells[(("w", "quick"), "a")].hyperparameters == {"lr": 1.0}
    all_diverged = [_record("w", "b", 0.1, 0, val=None, test=None, diverged=True)]
    data = collect(all_diverged)
    assert "| b | diverged |" in main_table(data)


def test_loss_workloads_select_on_lowest_validation_loss_and_report_final_training_loss():
    records = [_record("m", "a", 0.1, 0, val=0.2, test=0.0, metric="loss", train_loss=0.03),
               _record("m", "a", 1.0, 0, val=0.1, test=0.0, metric="loss", train_loss=0.05)]
    cell = collect(records).cells[(("m", "quick"), "a")]
    assert cell.hyperparameters == {"lr": 1.0} and cell.mean == pytest.approx(0.05)
    assert "final train loss" in main_table(collect(records))


def test_time_relative_to_sgd_and_passes():
    records = [_record("w", "sgd", 0.1, s, 0.5, 0.5, time=t) for s, t in enumerate((0.010, 0.012, 0.011))]
    records += [_record("w", "pal", 0.1, s, 0.5, 0.5, time=t, passes=(2.0, 1.0)) for s, t in enumerate((0.033, 0.030))]
    data = collect(records)
    assert data.time_ratio[(("w", "quick"), "pal")] == pytest.approx(0.0315 / 0.011)
    assert data.time_ratio[(("w", "quick"), "sgd")] == pytest.approx(1.0)
    assert data.passes["pal"] == (2.0, 1.0)
    assert "noisy" not in render_markdown(data)
    records[0]["sweep"] = {"jobs": 2}
    assert "Trials ran 2 at a time" in render_markdown(collect(records))


def test_performance_ratios_follow_dolan_more():
    records = [
        _record("w1", "a", 0.1, 0, 0.9, 0.90), _record("w1", "b", 0.1, 0, 0.8, 0.80),   # errors 10, 20
        _record("w2", "a", 0.1, 0, 0.1, 0.0, metric="loss", train_loss=0.4),
        _record("w2", "b", 0.1, 0, 0.1, 0.0, metric="loss", train_loss=0.1),              # losses 0.4, 0.1
        _record("w3", "a", 0.1, 0, 0.9, 0.5), _record("w3", "b", 0.1, 0, None, None, diverged=True),
    ]
    ratios = performance_ratios(collect(records))
    assert ratios["a"] == pytest.approx([1.0, 4.0, 1.0])
    assert ratios["b"][:2] == pytest.approx([2.0, 1.0]) and ratios["b"][2] == math.inf


def test_report_renders_markdown_and_pngs_from_a_real_small_store(tmp_path, capsys):
    trials = grid_trials([tiny.WORKLOAD], ["sgd", "fake-gradient"], "quick", seeds=[0, 1], step_sizes=[0.1, 1.0])
    run_sweep(trials, tmp_path, progress=False)
    path, data = write_report(tmp_path)
    text = path.read_text()
    assert text.startswith("# polyak benchmark report") and "| sgd |" in text and "| fake-gradient |" in text
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["curves_tiny-test_quick.png", "performance_profile.png", "step_sizes_tiny-test_quick.png",
                    "time_to_target_profile.png"]
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in text
    with Store(tmp_path) as store:
        by_setting = {}
        for r in store.records():
            if r["config"]["optimizer"] == "sgd":
                by_setting.setdefault(r["config"]["hyperparameters"]["lr"], []).append(r)
    best_lr = max(by_setting, key=lambda lr: statistics.fmean(r["summary"]["val_score"] for r in by_setting[lr]))
    cell = data.cells[((tiny.WORKLOAD, "quick"), "sgd")]
    assert cell.hyperparameters["lr"] == best_lr
    assert cell.mean == pytest.approx(statistics.fmean(100 * r["summary"]["test_at_best"]["accuracy"] for r in by_setting[best_lr]))


def test_report_on_a_missing_directory_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="polyak bench run"):
        write_report(tmp_path / "nothing")

"""The report's judgement: divergence by loss threshold, bold only beyond the seeds'
spread, identical rows noted, the three-line verdict, time to target, step-size windows."""
import math

import pytest

from polyak.bench.records import DIVERGENCE_FACTOR, RECORD_SCHEMA_VERSION, TrialConfig, divergence
from polyak.bench.report import (collect, main_table, standings, step_size_windows, summary_text, target_table,
                                 time_to_target, verdict)


def _record(workload, optimizer, lr, seed, accuracies, *, metric="accuracy", target=None, losses=None,
            per_epoch=10, diverged=False):
    """A finished trial whose test (and validation) accuracy per epoch 1.. is ``accuracies``."""
    config = TrialConfig(workload, "quick", optimizer, {"lr": lr}, seed)
    losses = losses or [1.0 / (e + 1) for e in range(len(accuracies))]
    epochs = [{"epoch": 0, "train_loss": None, "val": {"loss": 2.3, "accuracy": 0.1}, "test": {"accuracy": 0.1},
               "elapsed_s": 0.0}]
    epochs += [{"epoch": e + 1, "train_loss": loss, "val": {"loss": loss, "accuracy": acc},
                "test": {"loss": loss, "accuracy": acc}, "elapsed_s": 2.0 * (e + 1)}
               for e, (acc, loss) in enumerate(zip(accuracies, losses))]
    return {"schema_version": RECORD_SCHEMA_VERSION, "trial_id": config.trial_id, "config": config.to_dict(),
            "status": "diverged" if diverged else "ok", "diverged": diverged,
            "workload": {"metric": metric, "target": target, "n_batches_per_epoch": per_epoch, "epochs": len(accuracies)},
            "optimizer": {"step_size_param": "lr"},
            "summary": {"metric": metric, "val_score": None if diverged else accuracies[-1], "best_epoch": len(accuracies),
                        "test_at_best": {"accuracy": accuracies[-1], "loss": losses[-1]},
                        "final_train_loss": losses[-1]},
            "epochs": epochs, "time_per_step_s": 0.01, "step_size_trace": {"steps": [1], "values": [lr]}}


def test_a_finite_but_huge_loss_is_divergence():
    history = [{"epoch": 0, "val": {"loss": 2.0}}, {"epoch": 1, "train_loss": 1.0, "val": {"loss": 1.5}},
               {"epoch": 2, "train_loss": 1.4e30, "val": {"loss": 3.0}}]
    assert divergence(history) == {"epoch": 2, "reason": f"training loss 1.4e+30 > {DIVERGENCE_FACTOR:g} x the initial 2"}
    assert divergence(history[:2]) is None
    assert divergence([{"epoch": 0, "val": {"loss": 2.0}}, {"epoch": 1, "train_loss": None}])["reason"] == \
        "non-finite training loss"


def test_an_old_record_above_the_threshold_is_reported_as_diverged():
    exploded = _record("w", "b", 0.1, 0, [0.5, 0.6], losses=[1.0, 1.4e30])  # written before the threshold existed
    data = collect([_record("w", "a", 0.1, 0, [0.5, 0.6]), exploded])
    assert data.cells[(("w", "quick"), "b")].mean is None and "| b | diverged |" in main_table(data)


def test_bold_only_when_the_lead_exceeds_the_seeds_spread():
    clear = [_record("w", "a", 0.1, s, [0.90 + 0.001 * s]) for s in range(3)] + \
            [_record("w", "b", 0.1, s, [0.80 + 0.001 * s]) for s in range(3)]
    assert "**90.10 ± 0.10**" in main_table(collect(clear))
    noisy = [_record("w", "a", 0.1, s, [v]) for s, v in enumerate((0.90, 0.80, 0.85))] + \
            [_record("w", "b", 0.1, s, [v]) for s, v in enumerate((0.84, 0.84, 0.84))]
    data = collect(noisy)
    assert "**" not in main_table(data)  # a leads by 1 point, its std is 5
    assert "within the seeds' spread (5.00): a tie" in verdict(data)[1]
    single = collect([_record("w", "a", 0.1, 0, [0.9]), _record("w", "b", 0.1, 0, [0.8])])
    assert "**" not in main_table(single) and "1 seed: spread not measured" in verdict(single)[1]


def test_identical_rows_are_noted_not_bolded():
    records = [_record("w", name, 0.1, s, [0.90 + 0.01 * s]) for name in ("alig", "dfw") for s in range(2)]
    records += [_record("w", "sgd", 0.1, s, [0.5]) for s in range(2)]
    data = collect(records)
    assert standings(data)[("w", "quick")].tied == ("dfw",)
    text = summary_text(data)
    assert "**" not in main_table(data) and "`alig` and `dfw` give identical numbers" in text
    assert "DFW's step is ALI-G's" in text
    # equal accuracies with different training curves are a coincidence, not identity
    other = [_record("w", "x", 0.1, 0, [0.9]), _record("w", "y", 0.1, 0, [0.9], losses=[0.7])]
    assert "identical" not in summary_text(collect(other))


def test_verdict_has_three_lines_winner_margin_budget():
    records = [_record("mnist-mlp", "alig", 0.1, 0, [0.95, 0.975, 0.978], target=0.97),
               _record("mnist-mlp", "sgd", 0.1, 0, [0.95, 0.96, 0.971], target=0.97)]
    lines = verdict(collect(records))
    assert len(lines) == 3
    assert lines[0] == "Winner: mnist-mlp: alig 97.80%, target 97.00% reached at epoch 2."
    assert lines[1].startswith("Margin: mnist-mlp: 0.70 points ahead of sgd, 1 seed")
    assert lines[2].startswith("Budget (size quick): mnist-mlp 3 of the full budget's 100 epochs; 1 seed(s); "
                               "each optimizer at one step size")


def test_time_to_target_counts_updates_and_seconds_and_derives_a_target_from_the_best_baseline():
    records = [_record("w", "alig", 0.1, s, [0.6, 0.8, 0.9], per_epoch=25) for s in range(2)]
    records += [_record("w", "sgd", 0.1, 0, [0.5, 0.7, 0.85], per_epoch=25),
                _record("w", "sgd", 0.1, 1, [0.5, 0.7, 0.87], per_epoch=25)]
    data = collect(records)
    hits = time_to_target(data)  # no declared target: sgd's mean 86% (AlgoPerf's rule)
    assert hits[(("w", "quick"), "alig")].epoch == 3 and hits[(("w", "quick"), "alig")].updates == 75
    assert hits[(("w", "quick"), "alig")].seconds == 6.0 and hits[(("w", "quick"), "sgd")].reached == 1
    table = target_table(data)
    assert "target 86.00%, best tuned baseline (sgd)" in table and "in 1/2 seeds" in table


def test_step_size_window_is_the_contiguous_range_within_one_point():
    lrs = {0.01: 0.80, 0.03: 0.895, 0.1: 0.90, 0.3: 0.893, 1.0: 0.50, 3.0: 0.899}  # 3.0 is not contiguous
    records = [_record("w", "sgd", lr, 0, [acc]) for lr, acc in lrs.items()]
    data = collect(records)
    window = step_size_windows(records, data.metrics)[(("w", "quick"), "sgd")]
    assert (window.low, window.high) == (0.03, 0.3) and window.ratio == pytest.approx(10.0)
    assert not window.at_edge and window.points == 6
    assert window.per_decade == pytest.approx(5 / math.log10(300))

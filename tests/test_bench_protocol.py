"""The selection protocol: in-run epoch choice, ties, grid edges, the final rule,
what the tables state, Polyak step shares, and the researcher's CLI values."""
import random

import pytest
import torch

from polyak.bench.protocol import (
    check_overrides, epochs_trained, parse_grid, parse_set, run_score, select, step_shares, reported_value,
)
from polyak.bench.records import RECORD_SCHEMA_VERSION, TrialConfig, get_metric
from polyak.bench.report import collect, main_table, render_markdown
from polyak.bench.sweep import grid_trials

import test_bench_tiny  # noqa: F401  (registers the fake optimizers used by grid_trials)

ACC = get_metric("accuracy")


def _run(lr, seed, curve, *, optimizer="a", workload="w", planned=None, counts=None):
    """A record whose epochs 1..E have (val accuracy, val loss, test accuracy) = curve[e - 1]."""
    config = TrialConfig(workload, "quick", optimizer, {"lr": lr}, seed)
    epochs = [{"epoch": 0, "train_loss": None, "val": {"accuracy": 0.1, "loss": 3.0}, "test": {"accuracy": 0.1}}]
    epochs += [{"epoch": e, "train_loss": 1.0 / e, "val": {"accuracy": va, "loss": vl}, "test": {"accuracy": ta}}
               for e, (va, vl, ta) in enumerate(curve, start=1)]
    return {"schema_version": RECORD_SCHEMA_VERSION, "trial_id": config.trial_id, "config": config.to_dict(),
            "status": "ok", "diverged": False, "workload": {"metric": "accuracy", "epochs": planned or len(curve)},
            "optimizer": {"step_size_param": "lr"}, "epochs": epochs, "step_counts": counts, "finished_at": "t"}


def test_in_run_epoch_ties_go_to_lower_loss_then_the_later_epoch():
    # the maximum 0.9 is reached at epochs 2, 4 and 5; epoch 4 has the lowest loss among them
    record = _run(0.1, 0, [(0.8, 1.0, 0.7), (0.9, 0.5, 0.8), (0.85, 0.4, 0.8), (0.9, 0.3, 0.85), (0.9, 0.3, 0.9)])
    # epochs 4 and 5 tie on accuracy and loss: the later one (more training) is read, not the first to reach it
    assert run_score(record, ACC, "validation").epoch == 5
    assert reported_value(record, ACC, 5) == pytest.approx(90.0)
    record["epochs"][5]["val"]["loss"] = 0.35
    assert run_score(record, ACC, "validation").epoch == 4
    assert run_score(record, ACC, "final").epoch == 5 and epochs_trained(record) == 5


def _settings(records):
    out = {}
    for record in records:
        out.setdefault(repr(record["config"]["hyperparameters"]), []).append(record)
    return out


def test_setting_ties_are_flagged_and_broken_by_loss_then_larger_step_in_any_order():
    tie = [(0.9, 0.4, 0.5)]
    records = [_run(0.01, 0, [(0.9, 0.5, 0.1)]), _run(0.1, 0, tie), _run(1.0, 0, tie), _run(10.0, 0, [(0.8, 0.1, 0.9)])]
    for trial in range(5):  # the choice never depends on the order records arrive in
        random.Random(trial).shuffle(records)
        choice = select(_settings(records), ACC)
        # 0.01, 0.1 and 1.0 tie on accuracy 0.9; 0.1 and 1.0 have the lower loss; 1.0 is the larger step
        assert choice.hyperparameters == {"lr": 1.0}
        assert sorted(h["lr"] for h in choice.tied) == [0.01, 0.1]
        assert choice.edge is None  # 1.0 is inside the grid 0.01..10


def test_settings_are_scored_on_the_seeds_they_all_have_then_reported_on_all_of_theirs():
    # DeepOBS's second stage reran lr 0.1 (best on seed 0) on seeds 1 and 2, which came out
    # worse; lr 1.0 has seed 0 only. Scoring on every seed would compare 0.1's 3-seed mean
    # (0.8) with 1.0's single seed (0.85) and switch to a setting with one seed.
    records = [_run(0.1, 0, [(0.9, 0.3, 0.9)]), _run(0.1, 1, [(0.75, 0.5, 0.7)]), _run(0.1, 2, [(0.75, 0.5, 0.7)]),
               _run(1.0, 0, [(0.85, 0.4, 0.8)]), _run(0.01, 0, [(0.5, 1.0, 0.5)])]
    choice = select(_settings(records), ACC, "final")
    assert choice.hyperparameters == {"lr": 0.1} and choice.score == pytest.approx(0.9)
    assert [r["config"]["seed"] for r in choice.records] == [0, 1, 2]   # reported over all three
    # with no seed in common (hand-made records) every setting is scored on all its seeds
    apart = [_run(0.1, 1, [(0.7, 0.5, 0.7)]), _run(1.0, 0, [(0.8, 0.5, 0.8)])]
    assert select(_settings(apart), ACC, "final").hyperparameters == {"lr": 1.0}


def test_grid_edge_is_flagged_and_the_final_rule_reads_the_last_epoch():
    # lr 1 (top of the grid) peaks early on validation; lr 0.1 ends better
    records = [_run(0.01, 0, [(0.5, 1.0, 0.5), (0.6, 0.9, 0.6)]), _run(0.1, 0, [(0.6, 0.9, 0.6), (0.8, 0.5, 0.8)]),
               _run(1.0, 0, [(0.9, 0.3, 0.9), (0.7, 0.6, 0.6)])]
    best_val = select(_settings(records), ACC, "validation")
    assert best_val.hyperparameters == {"lr": 1.0} and best_val.edge == "largest"
    assert best_val.step_grid == (0.01, 0.1, 1.0)
    final = select(_settings(records), ACC, "final")
    assert final.hyperparameters == {"lr": 0.1} and final.edge is None and final.epochs == [2]


def test_every_table_states_its_rule_and_shows_both_epochs_ties_edges_and_epochs_trained():
    records = [_run(0.1, 0, [(0.9, 0.5, 0.60), (0.9, 0.5, 0.58)], planned=3),
               _run(1.0, 0, [(0.9, 0.5, 0.70), (0.9, 0.5, 0.65)], planned=3)]
    data = collect(records)
    table = main_table(data)
    assert "selection on validation (ALI-G+ paper)" in table
    # lr 1.0 wins the tie (larger step): the later of the two equal epochs (2) gives 65%, its final epoch too
    assert "65.00 (final 65.00) † ‡" in table
    final = collect(records, "final")
    assert "selection on final performance (DeepOBS)" in main_table(final) and "(best-val 65.00)" in main_table(final)
    report = render_markdown(data)
    assert "| w | a | lr=1.0 | 0.9 | 2 | 2/3 | lr=0.1 | largest lr of [0.1, 1.0] | 1 |" in report


def test_step_shares_sum_the_counts_of_every_step():
    records = [_run(0.1, 0, [(0.5, 1.0, 0.5)], counts={"steps": 10, "clipped_at_max_lr": 9, "zero": 0}),
               _run(0.1, 1, [(0.5, 1.0, 0.5)], counts={"steps": 30, "clipped_at_max_lr": 3, "zero": 6})]
    assert step_shares(records) == (pytest.approx(12 / 40), pytest.approx(6 / 40), 40)
    assert step_shares([_run(0.1, 0, [(0.5, 1.0, 0.5)])]) is None
    assert "| w | a | lr=0.1 | 30.0% | 15.0% | 40 |" in render_markdown(collect(records))
    # rows in numeric order of the step size (1e-05 before 0.0001, not text order)
    counts = {"steps": 1, "clipped_at_max_lr": 0, "zero": 0}
    mixed = [_run(lr, 0, [(0.5, 1.0, 0.5)], counts=counts) for lr in (0.0001, 1e-05, 0.1)]
    shares = render_markdown(collect(mixed)).split("## Polyak steps")[1]
    assert shares.index("lr=1e-05 |") < shares.index("lr=0.0001 |") < shares.index("lr=0.1 |")


def test_set_and_grid_values_and_their_errors():
    assert parse_set(["ALIG.momentum=0", "adam.betas=[0.9,0.99]", "alig.max_norm=none"]) == {
        "alig": {"momentum": 0, "max_norm": None}, "adam": {"betas": [0.9, 0.99]}}
    assert parse_grid(["alig=1,0.01,0.1"]) == {"alig": (0.01, 0.1, 1.0)}
    for bad in ("alig=", "alig=0,1", "alig=nan", "=0.1"):
        with pytest.raises(ValueError, match="--grid takes OPTIMIZER=V1,V2"):
            parse_grid([bad])
    with pytest.raises(ValueError, match="--set takes OPTIMIZER.PARAMETER=VALUE"):
        parse_set(["momentum=0"])
    with pytest.raises(ValueError, match="not in this run"):
        check_overrides({"adam": {"betas": [0.9, 0.9]}}, {}, ["alig"])
    with pytest.raises(ValueError, match="use --grid alig=0.5"):
        check_overrides({"alig": {"max_lr": 0.5}}, {}, ["alig"])
    with pytest.raises(ValueError, match="takes no argument 'nesterov'"):
        check_overrides({"alig": {"nesterov": True}}, {}, ["alig"])
    with pytest.raises(ValueError, match="no step-size hyperparameter"):
        check_overrides({}, {"alig-inf": (0.1,)}, ["alig-inf"])
    check_overrides({"alig": {"momentum": 0}}, {"alig": (0.1,)}, ["alig"])


def test_grid_trials_apply_fixed_values_and_per_optimizer_grids():
    trials = grid_trials(["tiny-test"], ["alig", "sgd"], "lite", [0], grids={"alig": (0.5, 5.0)},
                         fixed={"alig": {"momentum": 0, "max_norm": None}}, step_sizes=[0.1])
    alig = [t.hyperparameters for t in trials if t.optimizer == "alig"]
    sgd = [t.hyperparameters for t in trials if t.optimizer == "sgd"]
    # a fixed regulariser is not swept; the per-optimizer grid wins over --step-sizes
    assert alig == [{"momentum": 0, "max_norm": None, "max_lr": 0.5}, {"momentum": 0, "max_norm": None, "max_lr": 5.0}]
    assert sgd == [{"lr": 0.1, "weight_decay": 0.0}, {"lr": 0.1, "weight_decay": 1e-4}]
    untuned = grid_trials(["tiny-test"], ["sgd"], "lite", [0], step_sizes=[0.1], tune_regularisation=False)
    assert [t.hyperparameters for t in untuned] == [{"lr": 0.1}]


def test_the_runner_counts_every_clipped_and_every_zero_step_of_alig():
    from polyak.bench.runner import run_trial

    # max_lr far below any Polyak step: every step is clipped, none is 0
    clipped = run_trial(TrialConfig("tiny-test", "quick", "alig", {"max_lr": 1e-8}, 0))
    assert clipped["status"] == "ok"
    assert clipped["step_counts"] == {"steps": clipped["steps"], "clipped_at_max_lr": clipped["steps"], "zero": 0}
    assert all(clipped["step_size_trace"]["clipped"])
    # a fake Polyak-type step that is 0 on every 2nd step and clipped on every 3rd: counts in closed form
    zero = run_trial(TrialConfig("tiny-test", "quick", _patterned_polyak(), {"lr": 0.1}, 0))
    steps = zero["steps"]
    assert zero["status"] == "ok" and steps == 9
    assert zero["step_counts"] == {"steps": 9, "clipped_at_max_lr": steps // 3, "zero": steps // 2}
    # optimizers without the statistic record none
    assert run_trial(TrialConfig("tiny-test", "quick", "sgd", {"lr": 0.1}, 0))["step_counts"] is None


class _Patterned(torch.optim.SGD):
    def step(self, closure=None):
        self.count = getattr(self, "count", 0) + 1
        group = self.param_groups[0]
        group["step_size"] = 0.0 if self.count % 2 == 0 else group["lr"]
        group["clipped"] = self.count % 3 == 0
        return super().step(closure)


def _patterned_polyak() -> str:
    from polyak import OptimizerSpec
    from polyak.bench.optimizers import all_optimizer_info, register_bench_optimizer

    if "fake-patterned-polyak" not in all_optimizer_info():
        register_bench_optimizer(OptimizerSpec(name="fake-patterned-polyak", factory=_Patterned,
                                               needs=frozenset({"gradient"}), passes=(1, 1), defaults={"lr": 0.1}))
    return "fake-patterned-polyak"


def test_cli_set_grid_and_no_regularisation_tuning_reach_the_records(tmp_path, capsys):
    import json

    from polyak.bench.cli import main

    results = tmp_path / "runs"
    code = main(["bench", "run", "--workload", "tiny-test", "--optimizer", "alig", "--optimizer", "sgd", "--size", "lite",
                 "--set", "alig.momentum=0", "--grid", "alig=0.5", "--grid", "sgd=0.1,1", "--no-tune-regularisation",
                 "--results", str(results), "--jobs", "1", "--no-report"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(p.read_text()) for p in (results / "trials").glob("*.json")]
    alig = [r for r in records if r["config"]["optimizer"] == "alig"]
    sgd = [r for r in records if r["config"]["optimizer"] == "sgd"]
    # lite would sweep max_norm (alig) and weight_decay (sgd): switched off, one trial per step size
    assert [r["config"]["hyperparameters"] for r in alig] == [{"max_lr": 0.5, "momentum": 0}]
    assert alig[0]["optimizer"]["arguments"]["momentum"] == 0 and alig[0]["optimizer"]["arguments"]["max_lr"] == 0.5
    assert sorted(r["config"]["hyperparameters"]["lr"] for r in sgd) == [0.1, 1.0]
    assert all("weight_decay" not in r["config"]["hyperparameters"] for r in sgd)
    assert main(["bench", "run", "--workload", "tiny-test", "--optimizer", "alig", "--set", "adam.lr=1",
                 "--results", str(results), "--jobs", "1"]) == 2
    assert "--set names optimizer 'adam', which is not in this run" in capsys.readouterr().err

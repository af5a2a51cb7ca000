"""The runner feeds every kind of optimizer what its record's needs say, and its records are complete JSON."""
import json
import math

import pytest
import torch

from polyak.bench.runner import TrialConfig, json_safe, read_step_size, run_trial

import test_bench_tiny as tiny

RECORD_FIELDS = {
    "schema_version", "trial_id", "config", "seed", "versions", "git_sha", "device", "started_at", "finished_at",
    "status", "diverged", "diverged_at", "error", "optimizer", "workload", "epochs", "steps", "step_size_trace",
    "time_per_step_s", "passes_per_step", "summary", "wall_time_s",
}


def _run(optimizer, size="quick", **kwargs):
    tiny.EVENTS.clear()
    record = run_trial(TrialConfig(tiny.WORKLOAD, size, optimizer, {"lr": 0.1}, seed=0, **kwargs), device="cpu")
    assert record["status"] == "ok", record.get("traceback") or record.get("error")
    return record


@pytest.mark.parametrize("optimizer,size", [
    ("fake-gradient", "quick"), ("fake-loss", "lite"), ("fake-probe", "lite"), ("fake-per-sample", "quick"),
])
def test_each_step_kind_is_fed_and_checked_by_the_fake(optimizer, size):
    record = _run(optimizer, size)
    budget = tiny.BUDGETS[size]
    assert record["steps"] == budget.epochs * math.ceil(tiny.N_TRAIN / budget.batch_size)
    assert [e["epoch"] for e in record["epochs"]] == list(range(budget.epochs + 1))


def test_end_epoch_is_called_once_per_epoch_after_its_steps():
    _run("fake-per-sample", "paper")
    steps_per_epoch = math.ceil(tiny.N_TRAIN / 8)
    kinds = [e[0] for e in tiny.EVENTS if e[0] in ("step", "end_epoch")]
    assert kinds == (["step"] * steps_per_epoch + ["end_epoch"]) * tiny.BUDGETS["paper"].epochs


def test_train_eval_switch_wraps_every_evaluation():
    _run("fake-train-eval")
    mode, evaluations = "train", 0
    for event in tiny.EVENTS:
        if event[0] == "opt.train":
            mode = "train"
        elif event[0] == "opt.eval":
            mode = "eval"
        elif event[0] == "step":
            assert event[1] == "train", "a training step ran while the optimizer was in eval mode"
        elif event[0] == "evaluate":
            assert mode == "eval", "an evaluation ran while the optimizer was in train mode"
            evaluations += 1
    assert evaluations == 2 * (tiny.BUDGETS["quick"].epochs + 1)  # val and test, initial model + every epoch


def test_context_arguments_come_from_the_workload_instance():
    record = _run("fake-context", epochs=5)
    assert record["optimizer"]["context"] == {
        "batch_size": 8, "dataset_size": 24, "epochs": 5, "n_batches_per_epoch": 3, "num_samples": 24,
        "total_steps": 15,
    }


def test_record_has_every_field_and_is_strict_json():
    record = _run("fake-gradient")
    assert RECORD_FIELDS <= set(record)
    text = json.dumps(record, allow_nan=False)  # raises on NaN/inf
    assert json.loads(text) == record
    assert record["versions"]["python"] and record["versions"]["torch"] == torch.__version__
    assert record["device"]["type"] == "cpu"
    assert record["config"] == {"workload": tiny.WORKLOAD, "size": "quick", "optimizer": "fake-gradient",
                                "hyperparameters": {"lr": 0.1}, "seed": 0, "epochs": None}
    assert record["passes_per_step"] == {"forward": 1.0, "backward": 1.0, "source": "record"}
    assert record["time_per_step_s"] > 0
    # the fake sets step_size = lr / (1 + calls): the trace reads it, not lr
    trace = record["step_size_trace"]
    assert trace["steps"][0] == 1 and trace["values"] == [pytest.approx(0.1 / (1 + s)) for s in trace["steps"]]
    for entry in record["epochs"][1:]:
        assert set(entry["val"]) == {"loss", "accuracy"} and set(entry["test"]) == {"loss", "accuracy"}
        assert entry["train_loss"] > 0
    summary = record["summary"]
    # the documented rule: best validation accuracy, then lower validation loss, then the later epoch
    best = max(record["epochs"][1:], key=lambda e: (e["val"]["accuracy"], -e["val"]["loss"], e["epoch"]))
    assert summary["best_epoch"] == best["epoch"] and summary["test_at_best"] == best["test"]
    assert summary["final_train_loss"] == record["epochs"][-1]["train_loss"]


def test_same_seed_same_record_numbers():
    first, second = _run("fake-gradient"), _run("fake-gradient")
    assert first["epochs"][-1]["val"] == second["epochs"][-1]["val"]
    assert first["trial_id"] == second["trial_id"]


def test_non_finite_loss_stops_the_trial_and_is_recorded():
    tiny.EVENTS.clear()
    record = run_trial(TrialConfig(tiny.WORKLOAD, "quick", "fake-diverge", {"lr": 0.1}), device="cpu")
    assert record["status"] == "diverged" and record["diverged"] is True
    assert record["diverged_at"] == {"epoch": 1, "step": 3, "reason": "non-finite training loss"}
    assert record["steps"] == 3 and record["summary"]["val_score"] is None
    json.dumps(record, allow_nan=False)


def test_failing_trial_is_an_error_record_not_an_exception():
    record = run_trial(TrialConfig(tiny.WORKLOAD, "quick", "fake-gradient", {"no_such_argument": 1.0}), device="cpu")
    assert record["status"] == "error" and "no_such_argument" in record["error"]


def test_trial_id_depends_on_every_config_field():
    base = TrialConfig("w", "quick", "o", {"lr": 0.1}, 0)
    variants = [TrialConfig("w2", "quick", "o", {"lr": 0.1}, 0), TrialConfig("w", "lite", "o", {"lr": 0.1}, 0),
                TrialConfig("w", "quick", "o2", {"lr": 0.1}, 0), TrialConfig("w", "quick", "o", {"lr": 1.0}, 0),
                TrialConfig("w", "quick", "o", {"lr": 0.1}, 1), TrialConfig("w", "quick", "o", {"lr": 0.1}, 0, 3)]
    assert len({base.trial_id} | {v.trial_id for v in variants}) == 1 + len(variants)
    assert TrialConfig.from_dict(base.to_dict()) == base


def test_step_size_reader_prefers_step_size_then_d_then_lr():
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=0.5)
    assert read_step_size(opt) == 0.5
    opt.param_groups[0]["d"] = 0.1
    assert read_step_size(opt) == pytest.approx(0.05)
    opt.param_groups[0]["step_size"] = torch.tensor(2.0)
    assert read_step_size(opt) == 2.0


def test_json_safe_turns_non_finite_into_null():
    assert json_safe({"a": float("nan"), "b": (1, float("inf")), "c": torch.tensor(2.5)}) == {"a": None, "b": [1, None], "c": 2.5}


@pytest.mark.parametrize("name", ["alig", "alig-plus"])
def test_library_optimizers_run_through_their_records(name):
    import polyak

    if name not in polyak.available():
        pytest.skip(f"{name} is not registered in this checkout")
    record = run_trial(TrialConfig(tiny.WORKLOAD, "quick", name, {"max_lr": 0.1}, epochs=5), device="cpu")
    assert record["status"] == "ok", record.get("traceback")
    assert record["passes_per_step"]["source"] == "opt.cost"
    assert record["passes_per_step"]["forward"] == 1.0
    assert all(v is not None and v >= 0 for v in record["step_size_trace"]["values"])


def _registered_optimizers():
    from polyak.bench.optimizers import all_optimizer_info

    return [name for name, info in all_optimizer_info().items() if info.source != "plugin"]


@pytest.mark.parametrize("name", _registered_optimizers())
def test_every_registered_optimizer_trains_through_the_runner(name):
    """The contract the harness relies on: a record alone says how to build and feed it."""
    from polyak.bench.optimizers import optimizer_info

    info = optimizer_info(name)
    if not info.available:
        pytest.skip(f"{name}: {info.install_hint}")
    record = run_trial(TrialConfig(tiny.WORKLOAD, "quick", name, {}, epochs=5), device="cpu")
    assert record["status"] in ("ok", "diverged"), record.get("traceback")
    assert record["steps"] >= 1 and record["time_per_step_s"] > 0
    json.dumps(record, allow_nan=False)

"""The results store: atomic JSON records, an SQLite index that rebuilds from them, schema versions."""
import json
import os
import sqlite3
import time

import pytest

from polyak.bench.runner import RECORD_SCHEMA_VERSION
from polyak.bench.store import TEMP_STALE_S, Store, atomic_write_json


def _record(trial_id="w.o.s0.abc", status="ok", seed=0, val=0.5):
    return {
        "schema_version": RECORD_SCHEMA_VERSION, "trial_id": trial_id, "status": status, "diverged": status == "diverged",
        "config": {"workload": "w", "size": "quick", "optimizer": "o", "hyperparameters": {"lr": 0.1}, "seed": seed,
                   "epochs": None},
        "summary": {"metric": "accuracy", "val_score": val, "final_train_loss": 0.1},
        "passes_per_step": {"forward": 1.0, "backward": 1.0}, "time_per_step_s": 0.01, "finished_at": "t",
    }


def test_atomic_write_leaves_the_old_file_whole_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})

    def interrupted(src, dst):
        raise KeyboardInterrupt  # e.g. Ctrl-C between writing the temp file and moving it into place

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # the temp file is removed


def test_non_finite_numbers_are_written_as_null(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"loss": float("nan"), "x": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"loss": None, "x": [None, 1.0]}


def test_records_round_trip_and_done_statuses(tmp_path):
    with Store(tmp_path) as store:
        store.write_record(_record("a", "ok"))
        store.write_record(_record("b", "diverged", seed=1))
        store.write_record(_record("c", "error", seed=2))
        assert store.completed_ids() == {"a", "b"}
        assert [r["trial_id"] for r in store.records()] == ["a", "b", "c"]
        assert [r["trial_id"] for r in store.records(statuses=["ok"])] == ["a"]
        store.write_record(_record("a", "ok", val=0.9))  # rewriting replaces, never duplicates
        assert store.count() == 3


def test_index_is_rebuilt_from_json_and_temp_files_are_cleaned(tmp_path):
    with Store(tmp_path) as store:
        store.write_record(_record("a"))
    # a writer killed after its JSON and before the index, and one killed mid-write
    atomic_write_json(tmp_path / "trials" / "b.json", _record("b", seed=1))
    killed = tmp_path / "trials" / ".c.json.123.tmp"
    killed.write_text("{partial")
    in_flight = tmp_path / "trials" / ".d.json.456.tmp"  # a running sweep's record, about to be renamed
    in_flight.write_text("{being written")
    old = time.time() - TEMP_STALE_S - 60
    os.utime(killed, (old, old))
    with Store(tmp_path) as store:
        assert store.sync() == 1
        assert store.completed_ids() == {"a", "b"}
    assert list((tmp_path / "trials").glob(".*")) == [in_flight]  # only the stale one went
    (tmp_path / "results.sqlite").unlink()
    with Store(tmp_path) as store:
        assert store.completed_ids() == {"a", "b"}


def test_index_of_another_schema_version_is_set_aside_and_rebuilt(tmp_path, monkeypatch):
    with Store(tmp_path) as store:
        store.write_record(_record("a"))
    connection = sqlite3.connect(tmp_path / "results.sqlite")
    with connection:
        connection.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    connection.close()
    with pytest.warns(UserWarning, match="schema 999"):
        store = Store(tmp_path)
    with store:
        assert store.completed_ids() == {"a"}
    assert len(list(tmp_path.glob("results.schema999.*.sqlite"))) == 1


def test_records_of_another_schema_are_skipped_with_a_warning(tmp_path):
    bad = dict(_record("z"), schema_version=RECORD_SCHEMA_VERSION + 1)
    atomic_write_json(tmp_path / "trials" / "z.json", bad)
    with pytest.warns(UserWarning, match="record schema"):
        with Store(tmp_path) as store:
            assert store.count() == 0


def test_a_record_deleted_by_hand_leaves_the_index_so_resume_reruns_it(tmp_path):
    with Store(tmp_path) as store:
        store.write_record(_record("a"))
        store.write_record(_record("b", seed=1))
    (tmp_path / "trials" / "a.json").unlink()
    with Store(tmp_path) as store:
        store.sync()
        assert store.completed_ids() == {"b"}
        assert store.count() == 1

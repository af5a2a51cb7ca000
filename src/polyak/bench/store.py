"""Results of the benchmark: one JSON record per trial plus an SQLite index.

Layout of a results directory (default ``runs/``)::

    runs/trials/<trial_id>.json   the full record of one trial (source of truth)
    runs/results.sqlite           index of the records, schema versioned

Crash safety: a record is written to a temporary file in the same directory and
moved into place with ``os.replace`` (atomic on POSIX and Windows), so a reader
sees either no record or a whole one. The SQLite index is updated in one
transaction per record after the JSON exists; :meth:`Store.sync` re-imports any
JSON record the index misses (a process killed between the two writes), so the
index can always be rebuilt from the JSON files. An index written by another
schema version is set aside (renamed) and rebuilt from the records.
"""
from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Union

from .records import RECORD_SCHEMA_VERSION, json_safe

__all__ = ["SCHEMA_VERSION", "DONE_STATUSES", "Store", "atomic_write_json", "record_problem", "ResultsNotWritable",
           "check_writable"]

SCHEMA_VERSION = 1

#: a temporary record file older than this (seconds) was left by a killed writer
TEMP_STALE_S = 600.0

#: Trials in these states are not run again on resume; "error" trials are
#: (a missing data set fetched later, a bug fixed).
DONE_STATUSES = ("ok", "diverged")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY,
    workload TEXT NOT NULL,
    size TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    seed INTEGER NOT NULL,
    hyperparameters TEXT NOT NULL,
    epochs INTEGER,
    status TEXT NOT NULL,
    diverged INTEGER NOT NULL,
    metric TEXT,
    val_score REAL,
    final_train_loss REAL,
    time_per_step_s REAL,
    forward_per_step REAL,
    backward_per_step REAL,
    finished_at TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trials_by_task ON trials (workload, size, optimizer);
"""


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON to ``path`` so that ``path`` is never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(data), indent=1, sort_keys=True, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def record_problem(record: Any, stem: Optional[str] = None) -> Optional[str]:
    """Why ``record`` is not a trial record this polyak can index (None: it is)."""
    if not isinstance(record, dict):
        return f"not a trial record (a JSON {type(record).__name__}, not an object)"
    if record.get("schema_version") != RECORD_SCHEMA_VERSION:
        return f"record schema {record.get('schema_version')}, this polyak reads {RECORD_SCHEMA_VERSION}"
    config = record.get("config")
    missing = [k for k in ("trial_id", "status") if not isinstance(record.get(k), str)]
    if not isinstance(config, dict):
        missing.append("config")
    else:
        missing += [f"config.{k}" for k in ("workload", "size", "optimizer") if not isinstance(config.get(k), str)]
        if not isinstance(config.get("seed"), int):
            missing.append("config.seed")
    if missing:
        return f"not a trial record (missing or malformed: {', '.join(missing)})"
    if stem is not None and record["trial_id"] != stem:
        return f"its trial_id {record['trial_id']!r} does not match its file name"
    return None


class ResultsNotWritable(PermissionError):
    """The results directory cannot be written; the message says what to do instead."""


def check_writable(directory: Union[str, Path], purpose: str) -> None:
    """Raise ResultsNotWritable unless a file can be created in ``directory`` (created if
    absent). Tried, not inferred from permission bits: root ignores those, a read-only
    mount does not."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".polyak-write-probe.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ResultsNotWritable(
            f"results directory {directory} is not writable ({error.strerror or error}); {purpose}. "
            f"Make it writable, or copy it (cp -r {directory} COPY) and use the copy"
        ) from error


class Store:
    """A results directory. Only one process should write the index at a time
    (the sweep's parent); workers write their JSON records themselves.

    ``readonly``: read the JSON records into an index in memory and write nothing
    (a results directory on a read-only disk, or one a running sweep owns)."""

    def __init__(self, root: Union[str, Path] = "runs", *, readonly: bool = False):
        self.root = Path(root)
        self.trials_dir = self.root / "trials"
        self.readonly = readonly
        self.db_path = self.root / "results.sqlite"
        if readonly:
            if not self.root.is_dir():
                raise FileNotFoundError(f"results directory {self.root} does not exist")
            self._connection = self._connect()
            with self._connection:
                self._connection.executescript(_SCHEMA)
            self.sync()
            return
        check_writable(self.trials_dir, "a sweep writes its records and their index there")
        self._connection = self._open()

    # ------------------------------------------------------------ database
    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(":memory:" if self.readonly else self.db_path, timeout=60)
        connection.row_factory = sqlite3.Row
        return connection

    def _set_aside(self, connection: sqlite3.Connection, tag: str, why: str) -> sqlite3.Connection:
        """Move the index out of the way (it is rebuilt from the JSON records) and open a new one."""
        connection.close()
        aside = self.db_path.with_name(f"results.{tag}.{int(time.time())}.sqlite")
        os.replace(self.db_path, aside)
        warnings.warn(f"{self.db_path} {why}: moved it to {aside.name} and rebuilt the index from the JSON records "
                      f"in {self.trials_dir} (delete {aside.name} once you no longer need it)")
        return self._connect()

    def _open(self) -> sqlite3.Connection:
        connection = self._connect()
        try:
            version = self._schema_version(connection)
            if version is not None and version != SCHEMA_VERSION:
                connection = self._set_aside(connection, f"schema{version}",
                                             f"has schema {version}, this polyak writes {SCHEMA_VERSION}")
            with connection:
                connection.executescript(_SCHEMA)
                connection.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as error:  # not an SQLite file, or a damaged one
            version = None
            connection = self._set_aside(connection, "damaged", f"is not a readable index ({error})")
            with connection:
                connection.executescript(_SCHEMA)
                connection.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        if version != SCHEMA_VERSION:
            self._connection = connection
            self.sync()
        return connection

    @staticmethod
    def _schema_version(connection: sqlite3.Connection) -> Optional[int]:
        try:
            row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError:
            return None
        return int(row[0]) if row else None

    def close(self) -> None:
        self._connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ------------------------------------------------------------- records
    def record_path(self, trial_id: str) -> Path:
        return self.trials_dir / f"{trial_id}.json"

    def write_record(self, record: Mapping[str, Any]) -> Path:
        """Write the JSON record atomically, then index it."""
        path = self.record_path(record["trial_id"])
        atomic_write_json(path, record)
        self.index_record(record)
        return path

    def index_record(self, record: Mapping[str, Any]) -> None:
        config = record["config"]
        summary = record.get("summary") or {}
        passes = record.get("passes_per_step") or {}
        row = (
            record["trial_id"], config["workload"], config["size"], config["optimizer"], int(config["seed"]),
            json.dumps(config.get("hyperparameters") or {}, sort_keys=True), config.get("epochs"),
            record["status"], int(bool(record.get("diverged"))), summary.get("metric"), summary.get("val_score"),
            summary.get("final_train_loss"), record.get("time_per_step_s"), passes.get("forward"),
            passes.get("backward"), record.get("finished_at"), json.dumps(record, sort_keys=True, allow_nan=False),
        )
        with self._connection:
            self._connection.execute(f"INSERT OR REPLACE INTO trials VALUES ({','.join('?' * len(row))})", row)

    def sync(self) -> int:
        """Index every JSON record the database misses or holds another copy of;
        delete temporary files left by a killed writer. Returns how many were indexed.

        A temporary file counts as left behind only when it is older than
        ``TEMP_STALE_S``: writing one takes milliseconds, and a younger one may belong to
        a sweep running right now (here or on another machine sharing the directory),
        which would lose that record if it vanished before its rename."""
        now = time.time()
        for leftover in [] if self.readonly else self.trials_dir.glob(".*.tmp"):
            try:
                if now - leftover.stat().st_mtime > TEMP_STALE_S:
                    leftover.unlink()
            except FileNotFoundError:
                pass
        known = {row["trial_id"]: row["record"] for row in self._connection.execute("SELECT trial_id, record FROM trials")}
        indexed = 0
        on_disk = set()
        for path in sorted(self.trials_dir.glob("*.json")):
            on_disk.add(path.stem)
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                warnings.warn(f"skipping unreadable record {path}: {error}. Move it out of {self.trials_dir} "
                              "(or delete it: the sweep reruns that trial)")
                continue
            problem = record_problem(record, path.stem)
            if problem:
                warnings.warn(f"skipping {path}: {problem}. Move it out of {self.trials_dir} "
                              "(only trial records belong there; delete it to rerun that trial)")
                continue
            trial_id = record.get("trial_id")
            if trial_id in known and known[trial_id] == json.dumps(record, sort_keys=True, allow_nan=False):
                continue
            self.index_record(record)
            indexed += 1
        # The JSON records are the truth: a record deleted by hand (to rerun that trial)
        # leaves the index too, or resume would count the trial as done.
        gone = [trial_id for trial_id in known if trial_id not in on_disk]
        if gone:
            with self._connection:
                self._connection.executemany("DELETE FROM trials WHERE trial_id = ?", [(t,) for t in gone])
        return indexed

    def completed_ids(self) -> Set[str]:
        marks = ",".join("?" * len(DONE_STATUSES))
        rows = self._connection.execute(f"SELECT trial_id FROM trials WHERE status IN ({marks})", DONE_STATUSES)
        return {row[0] for row in rows}

    def records(self, *, workloads: Optional[Iterable[str]] = None, statuses: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
        query, args = "SELECT record FROM trials", []
        clauses = []
        if workloads is not None:
            workloads = list(workloads)
            clauses.append(f"workload IN ({','.join('?' * len(workloads))})")
            args += workloads
        if statuses is not None:
            statuses = list(statuses)
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY workload, size, optimizer, seed, trial_id"
        return [json.loads(row[0]) for row in self._connection.execute(query, args)]

    def count(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM trials").fetchone()[0]

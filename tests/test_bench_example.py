"""examples/plugin_example.py runs as written through the CLI, and the mlbench loaders
read R's files (small ones written here; the real sets when fetched)."""
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polyak.bench.datasets import FETCHABLE, DataFormatError, MLBENCH_SETS, is_available, load_mlbench
from polyak.bench.datasets.fetching import RECORD_NAME, sha256_file

from test_datasets_rdata import RSerializer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_example.py"
SATELLITE_LEVELS = ["red soil", "cotton crop", "grey soil", "damp grey soil", "vegetation stubble",
                    "very damp grey soil"]


def _write_frame(path, name, columns, rows):
    writer = RSerializer(version=2)
    encoded = []
    for column, kind, values, levels in columns:
        encoded.append((column, writer.doubles(values) if kind == "num" else writer.factor(values, levels)))
    path.write_bytes(lzma.compress(writer.rda([(name, writer.data_frame(encoded, rows))])))


def _fake_mlbench(root: Path, rows: int = 240, files=None) -> Path:
    """<root>/mlbench as `polyak data fetch mlbench` leaves it, with a small random Satellite.rda
    (36 features, 6 classes; its label depends on the first feature so there is something to learn)."""
    folder = root / "mlbench"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    features = rng.integers(30, 130, size=(rows, 36)).astype(float)
    labels = np.minimum(5, ((features[:, 0] - 30) // 17).astype(int))
    columns = [(f"x.{j + 1}", "num", features[:, j], None) for j in range(36)]
    _write_frame(folder / "Satellite.rda", "Satellite", columns + [("classes", "fac", labels + 1, SATELLITE_LEVELS)],
                 rows)
    spec = FETCHABLE["mlbench"]
    files = spec.files if files is None else files  # what the fetch kept (an older polyak kept fewer)
    for name in files:
        if not (folder / name).exists():
            (folder / name).write_bytes(b"")
    record = {"name": "mlbench", "registry": spec.registry, "package": spec.package_ref, "package_file": "x.deb",
              "sha256": spec.sha256, "files": {name: {"size": (folder / name).stat().st_size,
                                                      "sha256": sha256_file(folder / name)} for name in files}}
    (folder / RECORD_NAME).write_text(json.dumps(record))
    return folder


def test_the_example_plugin_runs_through_the_cli(tmp_path):
    data = tmp_path / "data"
    _fake_mlbench(data)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    env.pop("POLYAK_BENCH_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-m", "polyak.bench.cli", "run", "--plugin", str(EXAMPLE), "--workload", "satimage-rbf",
         "--optimizer", "polyak-sgd", "--optimizer", "alig", "--grid", "polyak-sgd=0.1,1", "--grid", "alig=0.1",
         "--epochs", "2", "--data-dir", str(data), "--results", str(tmp_path / "runs"), "--jobs", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "trials").glob("*.json")]
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    assert all(r["plugins"][0]["path"] == str(EXAMPLE) for r in records)
    polyak_sgd = [r for r in records if r["config"]["optimizer"] == "polyak-sgd"]
    # the example's optimizer reports its clipping: counted on every step
    assert all(r["step_counts"]["steps"] == r["steps"] for r in polyak_sgd)
    report = (tmp_path / "runs" / "report.md").read_text()
    assert "polyak-sgd [plugin plugin_example.py sha256" in report
    assert "| satimage-rbf | polyak-sgd | max_lr=0.1 |" in report  # the clipped / zero shares


def test_the_example_registers_the_label_noise_variant(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("POLYAK_BENCH_PLUGINS", None)
    done = subprocess.run([sys.executable, "-m", "polyak.bench.cli", "list", "--plugin", str(EXAMPLE)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fmnist-resnet8-noisy40" in done.stdout and "40% of training labels flipped" in done.stdout
    assert "polyak-sgd" in done.stdout and "satimage-rbf" in done.stdout


def test_mlbench_numeric_factor_levels_become_numbers_and_classes_keep_r_order(tmp_path):
    # like DNA: indicator columns stored as factors with levels "0"/"1", class levels in R's order
    codes = np.array([1, 2, 2, 1])  # 1-based R factor codes
    columns = [(f"V{j + 1}", "fac", codes if j % 2 else 3 - codes, ["0", "1"]) for j in range(180)]
    _write_frame(tmp_path / "DNA.rda", "DNA", columns + [("Class", "fac", np.array([3, 1, 2, 3]), ["ei", "ie", "n"])],
                 4)
    X, y, classes = load_mlbench("dna", tmp_path)
    assert X.shape == (4, 180) and X.dtype == np.float32
    assert X[:, 1].tolist() == [0.0, 1.0, 1.0, 0.0] and X[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert classes == ("ei", "ie", "n") and y.tolist() == [2, 0, 1, 2]
    sonar = [("V1", "num", [0.1, 0.2], None), ("Class", "fac", [1, 2], ["M", "R"])]
    _write_frame(tmp_path / "Sonar.rda", "Sonar", sonar, 2)
    with pytest.raises(DataFormatError, match="expected 60 features and 2 classes, found 1"):
        load_mlbench("sonar", tmp_path)
    with pytest.raises(KeyError, match="known: satellite, letter"):
        load_mlbench("iris", tmp_path)


@pytest.mark.realdata
def test_mlbench_sets_on_the_fetched_package():
    if not is_available("mlbench"):
        pytest.skip("real data 'mlbench' is not fetched; run `polyak data fetch mlbench` to enable this test")
    # class counts of the UCI documentation (satimage train + test; letter A; BreastCancer's complete rows)
    expected = {"satellite": [1533, 703, 1358, 626, 707, 1508], "dna": [767, 765, 1654], "breastcancer": [444, 239],
                "sonar": [111, 97], "ionosphere": [126, 225], "pima": [500, 268]}
    for name, spec in MLBENCH_SETS.items():
        X, y, classes = load_mlbench(name)
        assert X.shape == spec.shape and len(classes) == spec.classes, name
        if name in expected:
            assert np.bincount(y).tolist() == expected[name], name
    X, y, classes = load_mlbench("letter")
    assert classes[0] == "A" and int((y == 0).sum()) == 789


def test_a_cache_fetched_when_mlbench_kept_fewer_files_still_serves_them(tmp_path):
    from polyak.bench.datasets import DatasetCorrupted

    old_files = ("Shuttle.rda", "LetterRecognition.rda", "Satellite.rda", "DNA.rda", "Sonar.rda", "Ionosphere.rda")
    _fake_mlbench(tmp_path, rows=30, files=old_files)
    X, y, classes = load_mlbench("satellite", data_dir=tmp_path)
    assert X.shape == (30, 36) and classes == tuple(SATELLITE_LEVELS)
    with pytest.raises(DatasetCorrupted, match=r"Vehicle.rda is missing \(the cache was fetched when this set kept "
                                               r"fewer files\).*polyak data fetch mlbench"):
        load_mlbench("vehicle", data_dir=tmp_path)

"""The loaders on the real data sets fetched by ``polyak data fetch`` (skipped when absent).

Expected numbers: DATA.md (MNIST label counts) and the sets' documentation
(Fashion-MNIST: 6000/1000 per class; Spambase: 1813 spam of 4601; Statlog
Shuttle: 45586 Rad.Flow of 58000 rows, train and test together).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from polyak.bench.datasets import (
    FETCHABLE,
    cache_dir,
    fetch,
    is_available,
    load_austen,
    load_fashion_mnist,
    load_mnist,
    load_shuttle,
    load_spam,
)
from polyak.bench.datasets import fetching
from polyak.bench.datasets.fetching import RECORD_NAME, sha256_file

pytestmark = pytest.mark.realdata


def needs(name):
    if not is_available(name):
        pytest.skip(f"real data {name!r} is not in {cache_dir()}; run `polyak data fetch {name}` to enable this test")


@pytest.mark.parametrize("name", list(FETCHABLE))
def test_cached_files_match_the_fetch_record(name):
    needs(name)
    folder = cache_dir() / name
    record = json.loads((folder / RECORD_NAME).read_text())
    assert record["sha256"] == FETCHABLE[name].sha256
    for file_name, entry in record["files"].items():
        assert sha256_file(folder / file_name) == entry["sha256"], file_name


def test_second_fetch_runs_no_tool(monkeypatch):
    needs("mnist")

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"fetch ran {args[0]} although the data is present")

    monkeypatch.setattr(fetching.subprocess, "run", no_subprocess)
    assert fetch("mnist") == cache_dir() / "mnist"


def test_mnist():
    needs("mnist")
    splits = load_mnist()
    X, y = splits["train"]
    assert X.shape == (60000, 28, 28) and X.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    X_test, y_test = splits["test"]
    assert X_test.shape == (10000, 28, 28)
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert X.max() == 255 and X.min() == 0


def test_fashion_mnist():
    needs("fashion-mnist")
    splits = load_fashion_mnist()
    assert splits["train"][0].shape == (60000, 28, 28) and splits["test"][0].shape == (10000, 28, 28)
    assert np.bincount(splits["train"][1]).tolist() == [6000] * 10
    assert np.bincount(splits["test"][1]).tolist() == [1000] * 10


def test_spam():
    needs("kernlab")
    X, y = load_spam()
    assert X.shape == (4601, 57) and X.dtype == np.float32
    assert np.bincount(y).tolist() == [2788, 1813]
    # Spambase's last three columns are capital-run statistics: longest run >= 1 everywhere.
    assert X[:, 55].min() >= 1


@pytest.mark.slow
def test_shuttle():
    needs("mlbench")
    X, y = load_shuttle()
    assert X.shape == (58000, 9) and X.dtype == np.float32
    assert int(y.sum()) == 45586 and abs(y.mean() - 0.786) < 0.001


@pytest.mark.slow
def test_austen():
    needs("austen")
    text = load_austen()
    assert len(text) == 4025027
    assert len(set(text)) == 81
    assert text.startswith("SENSE AND SENSIBILITY\n")
    assert "It is a truth universally acknowledged, that a single man in possession" in text
    assert text.rstrip().endswith("Finis")

"""IDX reader and the MNIST-layout loaders on small files written here in the IDX format."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from polyak.bench.datasets import DataFormatError, DatasetMissing, load_fashion_mnist, load_idx, load_mnist

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX as LeCun describes it: 0, 0, dtype code, ndim, big-endian uint32 dims, big-endian values."""
    code = IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, gz=False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_every_dtype(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    loaded = load_idx(write_idx(tmp_path / "a.idx", array, gz))
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


def test_idx_big_endian_values_are_decoded(tmp_path):
    # 0x0102 stored big-endian is 258, not 513.
    (tmp_path / "b.idx").write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 1, 0x01, 0x02]))
    assert load_idx(tmp_path / "b.idx").tolist() == [258]


def test_idx_truncated_data_says_how_much_is_missing(tmp_path):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    (tmp_path / "t").write_bytes(data[:-100])
    with pytest.raises(DataFormatError, match=r"truncated IDX data.*\(100 missing\)"):
        load_idx(tmp_path / "t")


def test_idx_truncated_header(tmp_path):
    (tmp_path / "t").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 10]))
    with pytest.raises(DataFormatError, match="truncated IDX header"):
        load_idx(tmp_path / "t")


def test_idx_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    (tmp_path / "t.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="gzip data is corrupt or truncated"):
        load_idx(tmp_path / "t.gz")


def test_idx_bad_magic_and_dtype_and_trailing_bytes(tmp_path):
    (tmp_path / "m").write_bytes(b"PK\x03\x04" + bytes(8))
    with pytest.raises(DataFormatError, match="not an IDX file"):
        load_idx(tmp_path / "m")
    (tmp_path / "d").write_bytes(bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DataFormatError, match="unknown IDX dtype code 0x0a"):
        load_idx(tmp_path / "d")
    (tmp_path / "z").write_bytes(bytes([0, 0, 0x08, 0]))
    with pytest.raises(DataFormatError, match="0 dimensions"):
        load_idx(tmp_path / "z")
    (tmp_path / "x").write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\x00\x00")
    with pytest.raises(DataFormatError, match="2 unexpected bytes"):
        load_idx(tmp_path / "x")
    (tmp_path / "s").write_bytes(b"\x00\x00")
    with pytest.raises(DataFormatError, match="too short"):
        load_idx(tmp_path / "s")


def test_idx_missing_file(tmp_path):
    with pytest.raises(DatasetMissing, match="does not exist"):
        load_idx(tmp_path / "nope")


def write_mnist_layout(folder, gz, num_train=7, num_test=3, seed=0):
    rng = np.random.default_rng(seed)
    expected = {}
    suffix = ".gz" if gz else ""
    for split, prefix, n in (("train", "train", num_train), ("test", "t10k", num_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        expected[split] = (images, labels)
    return expected


@pytest.mark.parametrize("loader,gz", [(load_mnist, False), (load_fashion_mnist, True)])
def test_mnist_layout_plain_and_gzipped(tmp_path, loader, gz):
    expected = write_mnist_layout(tmp_path, gz)
    splits = loader(tmp_path)
    assert sorted(splits) == ["test", "train"]
    for split, (images, labels) in expected.items():
        X, y = splits[split]
        assert X.dtype == np.uint8 and X.shape == images.shape
        assert y.dtype == np.int64
        np.testing.assert_array_equal(X, images)
        np.testing.assert_array_equal(y, labels)


def test_mnist_count_mismatch(tmp_path):
    write_mnist_layout(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataFormatError, match="test has 3 images but 4 labels"):
        load_mnist(tmp_path)


def test_mnist_wrong_image_shape_and_label_range(tmp_path):
    write_mnist_layout(tmp_path, gz=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((7, 32, 32), np.uint8))
    with pytest.raises(DataFormatError, match=r"uint8 images \[N,28,28\]"):
        load_mnist(tmp_path)
    write_mnist_layout(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(7, 11, np.uint8))
    with pytest.raises(DataFormatError, match="label 11 outside 0..9"):
        load_mnist(tmp_path)


def test_mnist_missing_file_and_missing_fetch(tmp_path):
    with pytest.raises(DatasetMissing, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(DatasetMissing, match="polyak data fetch mnist"):
        load_mnist(data_dir=tmp_path)
    with pytest.raises(DatasetMissing, match="polyak data fetch fashion-mnist"):
        load_fashion_mnist(data_dir=tmp_path)

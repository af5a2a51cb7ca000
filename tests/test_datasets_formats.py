"""Loaders for user-provided data (CIFAR, SVHN, LIBSVM, IMDB, SNLI) on small files in their real formats."""
from __future__ import annotations

import bz2
import json
import pickle
import struct

import numpy as np
import pytest

from polyak.bench.datasets import (
    DataFormatError,
    DatasetMissing,
    load_cifar,
    load_imdb,
    load_libsvm,
    load_snli,
    load_svhn,
)

# ---- CIFAR: Python 2 cPickle dicts with byte-string keys, as the official archives hold ----


class Python2Pickler(pickle._Pickler):
    """Writes byte strings as Python 2's str opcodes (SHORT_BINSTRING / BINSTRING), like the original files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def python2_pickle(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    # The archives were written with numpy 1.x, whose array reconstructor lived in numpy.core.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_images(rng, n):
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def to_cifar_rows(images):
    # One row per image: the red plane, then green, then blue, each row-major.
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(folder, per_batch=2, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images, labels = cifar_images(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
        content = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": to_cifar_rows(images),
            b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(python2_pickle(content))
        batches[name] = (images, np.array(labels))
    return batches


def test_cifar10_batches(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_cifar(tmp_path)  # the parent of the extracted folder works too
    X, y = splits["train"]
    assert X.shape == (10, 32, 32, 3) and X.dtype == np.uint8 and y.dtype == np.int64
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    np.testing.assert_array_equal(X, np.concatenate([batches[n][0] for n in train_names]))
    np.testing.assert_array_equal(y, np.concatenate([batches[n][1] for n in train_names]))
    np.testing.assert_array_equal(splits["test"][0], batches["test_batch"][0])
    # the folder itself works as root
    np.testing.assert_array_equal(load_cifar(tmp_path / "cifar-10-batches-py")["test"][1], batches["test_batch"][1])


def test_cifar_pixel_layout_is_channel_planes(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=1)
    row = np.zeros((1, 3072), np.uint8)
    row[0, 0], row[0, 1024], row[0, 2048 + 33] = 200, 100, 50  # red (0,0), green (0,0), blue (1,1)
    (folder / "test_batch").write_bytes(python2_pickle({b"labels": [3], b"data": row}))
    image = load_cifar(folder)["test"][0][0]
    assert image[0, 0].tolist() == [200, 100, 0]
    assert image[1, 1].tolist() == [0, 0, 50]


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    expected = {}
    for name, n in (("train", 4), ("test", 2)):
        images = cifar_images(rng, n)
        fine, coarse = rng.integers(0, 100, n).tolist(), rng.integers(0, 20, n).tolist()
        content = {b"filenames": [b"x"] * n, b"fine_labels": fine, b"coarse_labels": coarse, b"data": to_cifar_rows(images)}
        (folder / name).write_bytes(python2_pickle(content))
        expected[name] = (images, fine)
    splits = load_cifar(tmp_path, num_classes=100)
    for name, (images, fine) in expected.items():
        np.testing.assert_array_equal(splits[name][0], images)
        assert splits[name][1].tolist() == fine


def test_cifar_errors(tmp_path):
    with pytest.raises(ValueError, match="num_classes must be 10"):
        load_cifar(tmp_path, num_classes=20)
    with pytest.raises(DatasetMissing, match=r"cifar-10-python.tar.gz.*--data-dir"):
        load_cifar(tmp_path)
    with pytest.raises(DatasetMissing, match="cifar-100-python"):
        load_cifar(data_dir=tmp_path, num_classes=100)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DataFormatError, match="data_batch_3: not a readable CIFAR pickle"):
        load_cifar(folder)
    batch.write_bytes(python2_pickle({b"labels": [1], b"data": np.zeros((1, 100), np.uint8)}))
    with pytest.raises(DataFormatError, match=r"uint8 \[N, 3072\]"):
        load_cifar(folder)
    batch.write_bytes(python2_pickle({b"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DataFormatError, match="no 'labels' entry"):
        load_cifar(folder)


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "test_batch").write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(DataFormatError, match="refusing to load os.system"):
        load_cifar(folder)


# ---- SVHN: MATLAB v5 files with X [32,32,3,N] uint8 and y [N,1] double in 1..10 ----


def write_svhn(folder, seed=0):
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, n in (("train", 5), ("test", 3)):
        X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.float64)
        y[0, 0] = 10  # the digit 0
        savemat(str(folder / f"{split}_32x32.mat"), {"X": X, "y": y})
        expected[split] = (X, y)
    return expected


def test_svhn(tmp_path):
    expected = write_svhn(tmp_path / "svhn")
    splits = load_svhn(tmp_path)
    for split, (X, y) in expected.items():
        images, labels = splits[split]
        assert images.shape == (X.shape[3], 32, 32, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[1], X[:, :, :, 1])
        assert labels.dtype == np.int64 and labels[0] == 0
        np.testing.assert_array_equal(labels, np.where(y[:, 0] == 10, 0, y[:, 0]).astype(np.int64))


def test_svhn_errors(tmp_path):
    from scipy.io import savemat

    with pytest.raises(DatasetMissing, match=r"train_32x32.mat.*housenumbers"):
        load_svhn(tmp_path)
    folder = tmp_path / "svhn"
    write_svhn(folder)
    savemat(str(folder / "test_32x32.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0.0], [3.0]])})
    with pytest.raises(DataFormatError, match=r"labels should be 1..10"):
        load_svhn(folder)
    savemat(str(folder / "test_32x32.mat"), {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DataFormatError, match=r"X should be \[32,32,3,N\]"):
        load_svhn(folder)
    path = folder / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataFormatError, match="train_32x32.mat: not a readable MATLAB"):
        load_svhn(folder)


# ---- LIBSVM text ----


def test_libsvm_dense_and_integer_labels(tmp_path):
    path = tmp_path / "mushrooms"
    path.write_text("1 3:1 10:1\n2 1:1 2:0.5\n\n# a comment line\n1 10:-2.25  # trailing comment\n")
    X, y = load_libsvm(path)
    assert X.dtype == np.float32 and X.shape == (3, 10)
    expected = np.zeros((3, 10), np.float32)
    expected[0, [2, 9]] = 1
    expected[1, [0, 1]] = [1, 0.5]
    expected[2, 9] = -2.25
    np.testing.assert_array_equal(X, expected)
    assert y.dtype == np.int64 and y.tolist() == [1, 2, 1]


def test_libsvm_bz2_plus_minus_labels_and_n_features(tmp_path):
    (tmp_path / "libsvm").mkdir()
    (tmp_path / "libsvm" / "ijcnn1.bz2").write_bytes(bz2.compress(b"-1 1:0.25 22:1\n+1 5:-0.5\n"))
    X, y = load_libsvm("ijcnn1", n_features=25, data_dir=tmp_path)  # found as <root>/libsvm/ijcnn1.bz2
    assert X.shape == (2, 25) and X[0, 21] == 1 and X[1, 4] == -0.5
    assert y.tolist() == [-1, 1]


def test_libsvm_real_valued_labels_stay_float(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("0.5 1:1\n-1.25 2:1\n")
    X, y = load_libsvm(path)
    assert y.dtype == np.float64 and y.tolist() == [0.5, -1.25]


@pytest.mark.parametrize(
    "text,message",
    [
        ("1 0:1\n", "1-based"),
        ("1 2:1 1:1\n", "must ascend"),
        ("1 3\n", "expected index:value"),
        ("1 a:1\n", "expected index:value"),
        ("1,2 1:1\n", "multi-label"),
        ("\n# nothing\n", "no samples"),
    ],
)
def test_libsvm_malformed_lines(tmp_path, text, message):
    path = tmp_path / "bad"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        load_libsvm(path)


def test_libsvm_errors(tmp_path):
    path = tmp_path / "f"
    path.write_text("1 30:1\n")
    with pytest.raises(DataFormatError, match="exceeds n_features=20"):
        load_libsvm(path, n_features=20)
    with pytest.raises(ValueError, match="n_features must be a positive int"):
        load_libsvm(path, n_features=0)
    with pytest.raises(DatasetMissing, match=r"libsvmtools.*--data-dir"):
        load_libsvm("mushrooms", data_dir=tmp_path)
    (tmp_path / "cut.bz2").write_bytes(bz2.compress(b"1 1:1\n" * 100)[:30])
    with pytest.raises(DataFormatError, match="corrupt or truncated"):
        load_libsvm(tmp_path / "cut.bz2")


# ---- IMDB: aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt ----


def write_imdb(root):
    reviews = {
        ("train", "neg"): {"10_2.txt": "Dull.<br /><br />Too long.", "2_1.txt": "Awful."},
        ("train", "pos"): {"0_9.txt": "Great — truly great.", "1_10.txt": "Loved it."},
        ("test", "neg"): {"0_3.txt": "Meh."},
        ("test", "pos"): {"0_8.txt": "Fine film."},
    }
    for (split, sentiment), files in reviews.items():
        folder = root / "aclImdb" / split / sentiment
        folder.mkdir(parents=True)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
    (root / "aclImdb" / "train" / "unsup").mkdir()
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("unlabelled")


def test_imdb(tmp_path):
    write_imdb(tmp_path)
    splits = load_imdb(tmp_path)
    texts, labels = splits["train"]
    # negatives first, each sentiment by numeric id (2 before 10), unsup ignored
    assert texts == ["Awful.", "Dull.<br /><br />Too long.", "Great — truly great.", "Loved it."]
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1]
    assert splits["test"][0] == ["Meh.", "Fine film."] and splits["test"][1].tolist() == [0, 1]


def test_imdb_errors(tmp_path):
    with pytest.raises(DatasetMissing, match=r"aclImdb_v1.tar.gz.*POLYAK_DATA_DIR"):
        load_imdb(tmp_path)
    write_imdb(tmp_path)
    (tmp_path / "aclImdb" / "test" / "pos" / "5_7.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(DataFormatError, match="5_7.txt: not UTF-8"):
        load_imdb(tmp_path / "aclImdb")


# ---- SNLI: snli_1.0_{train,dev,test}.jsonl ----


def snli_record(gold, premise, hypothesis, votes):
    return {
        "annotator_labels": votes,
        "captionID": "3416050480.jpg#4",
        "gold_label": gold,
        "pairID": "3416050480.jpg#4r1n",
        "sentence1": premise,
        "sentence1_binary_parse": "( ( A person ) ... )",
        "sentence1_parse": "(ROOT (S ...))",
        "sentence2": hypothesis,
        "sentence2_binary_parse": "( ... )",
        "sentence2_parse": "(ROOT ...)",
    }


def write_snli(root):
    folder = root / "snli_1.0"
    folder.mkdir()
    content = {
        "train": [
            snli_record("neutral", "A person on a horse jumps.", "A person is training.", ["neutral"]),
            snli_record("-", "Two men smile.", "They laugh.", ["neutral", "entailment", "contradiction"]),
            snli_record("contradiction", "A man sits.", "A man runs.", ["contradiction"]),
        ],
        "dev": [snli_record("entailment", "Kids play.", "Children play.", ["entailment"])],
        "test": [snli_record("entailment", "A dog runs.", "An animal moves.", ["entailment"])],
    }
    for split, records in content.items():
        (folder / f"snli_1.0_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_snli(tmp_path):
    write_snli(tmp_path)
    splits = load_snli(tmp_path)
    assert splits["train"] == [
        ("A person on a horse jumps.", "A person is training.", 1),
        ("A man sits.", "A man runs.", 2),
    ]
    assert splits["dev"] == [("Kids play.", "Children play.", 0)]
    assert splits["test"] == [("A dog runs.", "An animal moves.", 0)]


def test_snli_errors(tmp_path):
    with pytest.raises(DatasetMissing, match="snli_1.0.zip"):
        load_snli(tmp_path)
    folder = write_snli(tmp_path)
    dev = folder / "snli_1.0_dev.jsonl"
    dev.write_text(json.dumps(snli_record("maybe", "a", "b", [])) + "\n")
    with pytest.raises(DataFormatError, match="unknown gold_label 'maybe'"):
        load_snli(folder)
    dev.write_text(json.dumps(snli_record("neutral", "a", "b", []))[:40] + "\n")
    with pytest.raises(DataFormatError, match=r"snli_1.0_dev.jsonl:1: not an SNLI record"):
        load_snli(folder)

"""CIFAR-10 / CIFAR-100 from their "python version" pickles (user-provided; not fetchable here).

CIFAR-10 (cifar-10-python.tar.gz extracts to ``cifar-10-batches-py/``): pickles
``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a dict with ``data``
(uint8 [10000, 3072]: 1024 red, 1024 green, 1024 blue values per image, rows in
order) and ``labels``. CIFAR-100 (``cifar-100-python/``): pickles ``train`` and
``test`` with ``data`` and ``fine_labels`` (100 classes; ``coarse_labels`` unused).

The files were written by Python 2, so keys are byte strings. They are unpickled
with a restricted unpickler that can build numpy arrays and nothing else.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .cache import DataFormatError, PathLike, user_data_root

_LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}
_URL = {10: "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 100: "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}

# The only callables a CIFAR pickle refers to: numpy's array reconstruction (under
# its Python 2 era module names or numpy 2's) and Python 3's bytes encoding shim.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.array(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.array(0).__reduce__()[0],
    ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")


def _text_key(key):
    return key.decode("latin1") if isinstance(key, bytes) else key


def _read_batch(path: Path, label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataFormatError(f"{path}: not a readable CIFAR pickle ({type(error).__name__}: {error}); corrupt or truncated?") from error
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {_text_key(k): v for k, v in batch.items()}
    for key in ("data", label_key):
        if key not in batch:
            raise DataFormatError(f"{path}: no {key!r} entry (found {sorted(batch)}); is it the right CIFAR variant?")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{path}: 'data' should be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataFormatError(f"{path}: {data.shape[0]} images but {labels.shape} {label_key}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar(
    root: Optional[PathLike] = None, num_classes: int = 10, *, data_dir: Optional[PathLike] = None
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 or CIFAR-100 as ``{"train": (X uint8 [50000,32,32,3], y int64), "test": (X [10000,...], y)}``.

    root: the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or a
    folder containing it; None: look under the data root (--data-dir / POLYAK_DATA_DIR).
    num_classes: 10 or 100 (CIFAR-100's fine labels).
    """
    if num_classes not in _LAYOUT:
        raise ValueError(f"num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100), got {num_classes!r}")
    folder_name, train_files, test_files, label_key = _LAYOUT[num_classes]
    folder = user_data_root(
        root,
        data_dir,
        folder_name,
        tuple(train_files + test_files),
        f"CIFAR-{num_classes} cannot be fetched offline: download {_URL[num_classes]} and extract it (python pickle version).",
    )
    splits = {}
    for split, names in (("train", train_files), ("test", test_files)):
        parts = [_read_batch(folder / name, label_key) for name in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataFormatError(f"{folder}: {split} labels outside 0..{num_classes - 1}")
        splits[split] = (images, labels)
    return splits

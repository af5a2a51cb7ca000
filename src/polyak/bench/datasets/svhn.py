"""SVHN cropped digits (format 2) from ``train_32x32.mat`` / ``test_32x32.mat`` (user-provided).

Each file is MATLAB v5 with ``X`` uint8 [32, 32, 3, N] and ``y`` [N, 1] in 1..10,
where 10 stands for the digit 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .cache import DataFormatError, PathLike, user_data_root

_URL = "http://ufldl.stanford.edu/housenumbers/"


def _read_split(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        contents = loadmat(str(path))
    except Exception as error:  # scipy raises ValueError, TypeError, OSError... on damaged files
        raise DataFormatError(f"{path}: not a readable MATLAB v5 file ({type(error).__name__}: {error}); corrupt or truncated?") from error
    for key in ("X", "y"):
        if key not in contents:
            raise DataFormatError(f"{path}: no variable {key!r} (found {sorted(k for k in contents if not k.startswith('__'))})")
    images, labels = np.asarray(contents["X"]), np.asarray(contents["y"])
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataFormatError(f"{path}: X should be [32,32,3,N], got {images.shape}")
    if images.dtype != np.uint8:
        raise DataFormatError(f"{path}: X should be uint8, got {images.dtype}")
    labels = labels.reshape(-1).astype(np.int64)
    if labels.shape[0] != images.shape[3]:
        raise DataFormatError(f"{path}: {images.shape[3]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataFormatError(f"{path}: labels should be 1..10 (10 = digit 0), found {labels.min()}..{labels.max()}")
    labels[labels == 10] = 0
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2)), labels


def load_svhn(
    root: Optional[PathLike] = None, *, include_extra: bool = False, data_dir: Optional[PathLike] = None
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """SVHN as ``{"train": (X uint8 [73257,32,32,3], y int64 0..9), "test": (X [26032,...], y)}``.

    root: a folder with train_32x32.mat and test_32x32.mat, or one containing ``svhn/``
    with them; None: ``<data root>/svhn``. include_extra adds "extra" from extra_32x32.mat.
    """
    required = ("train_32x32.mat", "test_32x32.mat") + (("extra_32x32.mat",) if include_extra else ())
    folder = user_data_root(
        root,
        data_dir,
        "svhn",
        required,
        f"SVHN cannot be fetched offline: download {', '.join(required)} from {_URL} into a folder 'svhn'.",
    )
    splits = {"train": _read_split(folder / "train_32x32.mat"), "test": _read_split(folder / "test_32x32.mat")}
    if include_extra:
        splits["extra"] = _read_split(folder / "extra_32x32.mat")
    return splits

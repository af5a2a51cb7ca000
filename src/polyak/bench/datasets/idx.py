"""IDX files (LeCun's MNIST format) and the MNIST / Fashion-MNIST loaders.

IDX layout: two zero bytes, a dtype code, the number of dimensions ``n``, then
``n`` big-endian uint32 sizes, then the values in C order, big-endian. Files may
be gzipped (detected by content, not by name).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .cache import DataFormatError, DatasetMissing, PathLike
from .fetching import require

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise DataFormatError(f"{path}: gzip data is corrupt or truncated ({error}); fetch or copy it again") from error


def load_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into an array of native byte order.

    Raises DataFormatError when the magic, dtype code, dimensions or data length
    are wrong (a truncated file names how many bytes are missing).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetMissing(f"IDX file {path} does not exist")
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DataFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header (4 bytes of magic)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(
            f"{path}: not an IDX file (magic must start with two zero bytes, got {raw[:4].hex()})"
        )
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code not in _IDX_DTYPES:
        raise DataFormatError(
            f"{path}: unknown IDX dtype code 0x{dtype_code:02x}; valid codes are "
            + ", ".join(f"0x{code:02x}" for code in _IDX_DTYPES)
        )
    if ndim == 0:
        raise DataFormatError(f"{path}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataFormatError(f"{path}: truncated IDX header: {ndim} dimensions need {header_size} bytes, file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[dtype_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_size
    if found < expected:
        raise DataFormatError(
            f"{path}: truncated IDX data: shape {shape} of {dtype.name} needs {expected} bytes after the header, "
            f"found {found} ({expected - found} missing)"
        )
    if found > expected:
        raise DataFormatError(
            f"{path}: {found - expected} unexpected bytes after the IDX data of shape {shape} (corrupt header?)"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=True)


_SPLIT_FILES = {"train": "train", "test": "t10k"}


def _find(root: Path, stem: str, name: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetMissing(
        f"{stem} (or {stem}.gz) not found in {root}; point root to the folder holding the four IDX files, "
        f"or fetch them with: polyak data fetch {name}"
    )


def _load_mnist_layout(root: Path, name: str, num_classes: int = 10) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    splits = {}
    for split, prefix in _SPLIT_FILES.items():
        images_path = _find(root, f"{prefix}-images-idx3-ubyte", name)
        labels_path = _find(root, f"{prefix}-labels-idx1-ubyte", name)
        images, labels = load_idx(images_path), load_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataFormatError(f"{images_path}: expected uint8 images [N,28,28], got {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataFormatError(f"{labels_path}: expected uint8 labels [N], got {labels.dtype} {labels.shape}")
        if len(labels) != len(images):
            raise DataFormatError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() >= num_classes:
            raise DataFormatError(f"{labels_path}: label {labels.max()} outside 0..{num_classes - 1}")
        splits[split] = (images, labels.astype(np.int64))
    return splits


def load_mnist(
    root: Optional[PathLike] = None, *, data_dir: Optional[PathLike] = None
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """MNIST as ``{"train": (X uint8 [60000,28,28], y int64), "test": (X [10000,28,28], y)}``.

    root: a folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte (each may be .gz);
    None: the fetched copy in ``<data_dir or cache>/mnist`` (``polyak data fetch mnist``).
    """
    folder = Path(root) if root is not None else require("mnist", data_dir)
    return _load_mnist_layout(folder, "mnist")


def load_fashion_mnist(
    root: Optional[PathLike] = None, *, data_dir: Optional[PathLike] = None
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST, same layout and output as :func:`load_mnist` (``polyak data fetch fashion-mnist``)."""
    folder = Path(root) if root is not None else require("fashion-mnist", data_dir)
    return _load_mnist_layout(folder, "fashion-mnist")

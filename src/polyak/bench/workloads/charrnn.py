"""Character-level language model on Jane Austen's novels (stand-in for DeepOBS's
Tolstoi Char-RNN on War and Peace, which cannot be fetched here).

DeepOBS protocol: a 2-layer LSTM of 128 units over character sequences of
length 50, batch 50, 200 epochs; targets are the inputs shifted by one
character. Here: the text (4.0M characters, 81 symbols, vocabulary from the
whole text) is cut into contiguous 80% train / 20% test parts, each chopped into
non-overlapping windows of 51 characters (50 inputs, 50 next-character targets);
10% of the training windows are held out (seeded) for validation. A sample is
one window: its loss is the mean cross-entropy over its 50 positions, and
accuracy is next-character accuracy over all positions. Costs on one CPU
thread: ~50 ms a step at batch 50, so lite (600 steps) is ~30 s a trial.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ..models import CharLSTM
from . import _common as C
from .base import Budget, Workload, WorkloadInstance, register_workload

SEQUENCE_LENGTH = 50
TEST_FRACTION = 0.2

BUDGETS = {
    # At least 5 epochs everywhere: ALI-G+ then runs the paper's K = 5 sections (K="auto").
    "quick": Budget(epochs=5, batch_size=50, train_subset=300, test_subset=500),
    "lite": Budget(epochs=5, batch_size=50, train_subset=6000, test_subset=2000),
    # DeepOBS tolstoi_char_rnn: batch 50, 200 epochs.
    "paper": Budget(epochs=200, batch_size=50),
}


def encode_text(text: str) -> Tuple[np.ndarray, str]:
    """(ids int64 [len(text)], vocabulary string with symbol i at position i, sorted)."""
    if not text:
        raise ValueError("the text to encode is empty")
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    symbols, ids = np.unique(code_points, return_inverse=True)
    return ids.astype(np.int64), "".join(chr(int(s)) for s in symbols)


def windows(ids: np.ndarray, length: int = SEQUENCE_LENGTH) -> Tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping (input, target) windows: input ids[k*L : k*L+L], target shifted by one."""
    count = (len(ids) - 1) // length
    if count < 1:
        raise ValueError(f"text of {len(ids)} symbols is too short for one window of {length}+1")
    inputs = ids[: count * length].reshape(count, length)
    targets = ids[1 : count * length + 1].reshape(count, length)
    return torch.from_numpy(np.ascontiguousarray(inputs)), torch.from_numpy(np.ascontiguousarray(targets))


def build(size: str, seed: int, data_dir=None) -> WorkloadInstance:
    from polyak.bench import datasets

    budget = BUDGETS[size]
    ids, vocabulary = encode_text(datasets.load_austen(None, data_dir=data_dir))
    cut = int(len(ids) * (1 - TEST_FRACTION))
    train_x, train_y = windows(ids[:cut])
    test_x, test_y = windows(ids[cut:])
    train_pos, val_pos = C.holdout_split(len(train_x))
    train_pos = C.take_subset(train_pos, budget.train_subset)
    with C.seeded(seed):
        model = CharLSTM(len(vocabulary))
    return WorkloadInstance(
        model=model,
        train=C.ArrayDataset(train_x[train_pos], train_y[train_pos]),
        val=C.truncate(C.ArrayDataset(train_x[val_pos], train_y[val_pos]), budget.test_subset),
        test=C.truncate(C.ArrayDataset(test_x, test_y), budget.test_subset),
        per_sample_loss=C.cross_entropy_per_sample,
        evaluate=C.classifier_evaluate(),
        budget=budget,
    )


register_workload(
    Workload(
        name="austen-charrnn",
        metric="accuracy",
        lower_bound=0.0,
        interpolating=False,
        data="austen",
        budgets=BUDGETS,
        build=build,
        summary="2-layer LSTM (128) char-level LM on Jane Austen, length 50 (stand-in for DeepOBS Tolstoi)",
        tags=("text", "recurrent", "real-data"),
    )
)

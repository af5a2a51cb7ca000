"""Classification on a feature matrix: the builder behind the RBF-kernel workloads
(kernel.py) and the one a plugin uses for its own table of data (e.g. mlbench's
satimage, see examples/plugin_example.py).

:func:`build_tabular` does, in order (everything about the data seeded with
``DATA_SEED``, so every optimizer and trial seed sees the same sets):

1. one fixed random order of the rows, then an unshuffled cut: the last
   ``test_fraction`` of the rows are the test set (the papers' "80/20 split
   without shuffling", applied after the fixed shuffle because source files are
   often sorted by class);
2. ``VAL_FRACTION`` of the remaining rows held out for validation, and the
   training part cut to ``budget.train_subset`` rows;
3. features standardised with the training mean and standard deviation;
4. optionally RBF-kernel features ``exp(-||x - c||^2 / (2 sigma^2))`` over the
   training rows as centres;
5. optionally a ``label_noise`` fraction of the TRAINING labels flipped to another
   class (validation and test keep their labels);
6. validation and test cut to ``budget.test_subset`` rows;
7. a linear model without bias (one logit and the logistic loss for two
   classes, else ``num_classes`` logits and cross-entropy) built under the trial
   seed, unless ``make_model(in_features, out_features)`` is given.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from . import _common as C
from .base import Budget, WorkloadInstance

__all__ = ["rbf_features", "build_tabular"]


def rbf_features(points: np.ndarray, centres: np.ndarray, sigma: float, chunk: int = 2048) -> np.ndarray:
    """exp(-||p - c||^2 / (2 sigma^2)) for every point p (rows) and centre c (columns), float32.

    Computed in float64 blocks of ``chunk`` rows so that only the float32 result
    is ever held in full.
    """
    out = np.empty((len(points), len(centres)), dtype=np.float32)
    centre_norms = (centres**2).sum(1)[None, :]
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        squared = (block**2).sum(1)[:, None] + centre_norms - 2.0 * block @ centres.T
        out[start : start + chunk] = np.exp(-np.maximum(squared, 0.0) / (2.0 * sigma**2))
    return out


def build_tabular(
    X: np.ndarray,
    y: np.ndarray,
    budget: Budget,
    seed: int,
    *,
    num_classes: int,
    test_fraction: float = 0.2,
    rbf_sigma: Optional[float] = None,
    label_noise: float = 0.0,
    make_model: Optional[Callable[[int, int], nn.Module]] = None,
) -> WorkloadInstance:
    """A ready workload instance from features ``X`` [n, d] and labels ``y`` in 0..num_classes-1
    (steps in the module docstring)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    order = C.permutation(len(y))
    X, y = X[order], y[order]
    n_train_full = len(y) - int(round(test_fraction * len(y)))
    train_pos, val_pos = C.holdout_split(n_train_full)
    train_pos = C.take_subset(train_pos, budget.train_subset)
    test_pos = np.arange(n_train_full, len(y))

    mean, std = X[train_pos].mean(0), X[train_pos].std(0)
    std[std == 0] = 1.0  # a constant feature carries no information; keep it finite
    Z = (X - mean) / std
    centres = Z[train_pos]
    train_labels = C.flip_labels(y, label_noise, num_classes) if label_noise else y

    def make(positions, labels, limit=None):
        positions = C.take_subset(positions, limit)
        rows = Z[positions]
        features = rbf_features(rows, centres, rbf_sigma) if rbf_sigma is not None else rows.astype(np.float32)
        return C.ArrayDataset(torch.from_numpy(features), torch.from_numpy(labels[positions]))

    binary = num_classes == 2
    in_features = len(centres) if rbf_sigma is not None else Z.shape[1]
    with C.seeded(seed):
        model = (make_model(in_features, 1 if binary else num_classes) if make_model is not None
                 else nn.Linear(in_features, 1 if binary else num_classes, bias=False))
    loss = C.logistic_per_sample if binary else C.cross_entropy_per_sample
    return WorkloadInstance(
        model=model,
        train=make(train_pos, train_labels),
        val=make(val_pos, y, budget.test_subset),
        test=make(test_pos, y, budget.test_subset),
        per_sample_loss=loss,
        evaluate=C.classifier_evaluate(loss, C.sign_correct if binary else C.argmax_correct),
        budget=budget,
    )

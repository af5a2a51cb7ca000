"""RBF-kernel binary classification (SLS, SPS and ALI-G+ papers), on stand-ins.

Papers: LIBSVM mushrooms (sigma 0.5) and ijcnn1 (sigma 0.05); features
phi(x) = [exp(-||x - x_j||^2 / (2 sigma^2))]_j over the training points x_j,
80/20 split without shuffling, a linear model (no bias) on phi, logistic loss,
batch 100, 35 epochs (the SLS code's experiment configurations for
mushrooms and ijcnn, reused by the ALI-G+ code). Those data sets cannot be had here,
so the workloads use Spambase (stand-in for mushrooms) and Statlog Shuttle,
"Rad.Flow" vs rest (stand-in for ijcnn1); see DATA.md.

Deviations, and why:
- The Spambase file is sorted by class (1813 spam, then 2788 non-spam), so an
  unshuffled 80/20 cut would test on one class only. Both stand-ins are put in
  one fixed random order (DATA_SEED) before the papers' unshuffled 80/20 cut.
- Features are standardised with the training mean and standard deviation, and
  sigma = 2.0 for both. On mushrooms' one-hot features (squared distance 2 per
  differing attribute) the papers' sigma 0.5 makes the kernel almost the
  identity; on the standardised stand-ins (median squared distance 62 for spam,
  6 for shuttle) sigma 0.5 and below still fit the training set but generalise
  poorly (spam test accuracy 0.80 at 0.5, 0.74 at 0.05), while 2.0 keeps the
  training set (near) separable and the test accuracy meaningful. Measured with
  an almost unregularised logistic regression on the kernel features (seed 0):
  spam train 0.991 / test 0.927, shuttle (3000 training points) 1.000 / 0.999.
  The Gram matrix of distinct points is positive definite, so the training set
  is separable in principle: the task interpolates.
- 10% of the training points are held out for validation; kernel centres are
  the remaining (subset of) training points. Shuttle's 46k training points
  give a 46k x 46k kernel (8.6 GB in float32): the paper size is for a big
  machine, quick/lite subsample the training set.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import _common as C
from .base import Budget, Workload, WorkloadInstance, register_workload

SIGMA = 2.0
TEST_FRACTION = 0.2


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


def _build(loader_name: str, size: str, seed: int, data_dir, budgets) -> WorkloadInstance:
    from polyak.bench import datasets

    budget = budgets[size]
    X, y = getattr(datasets, loader_name)(None, data_dir=data_dir)
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)
    order = C.permutation(len(y))
    X, y = X[order], y[order]
    n_train_full = len(y) - int(round(TEST_FRACTION * len(y)))
    train_pos, val_pos = C.holdout_split(n_train_full)
    train_pos = C.take_subset(train_pos, budget.train_subset)
    test_pos = np.arange(n_train_full, len(y))

    mean, std = X[train_pos].mean(0), X[train_pos].std(0)
    std[std == 0] = 1.0  # a constant feature carries no information; keep it finite
    Z = (X - mean) / std
    centres = Z[train_pos]

    def make(positions, limit=None):
        positions = C.take_subset(positions, limit)
        features = torch.from_numpy(rbf_features(Z[positions], centres, SIGMA))
        return C.ArrayDataset(features, torch.from_numpy(y[positions]))

    with C.seeded(seed):
        model = nn.Linear(len(centres), 1, bias=False)
    return WorkloadInstance(
        model=model,
        train=make(train_pos),
        val=make(val_pos, budget.test_subset),
        test=make(test_pos, budget.test_subset),
        per_sample_loss=C.logistic_per_sample,
        evaluate=C.classifier_evaluate(C.logistic_per_sample, C.sign_correct),
        budget=budget,
    )


def _register(name: str, loader_name: str, data: str, budgets, summary: str):
    register_workload(
        Workload(
            name=name,
            metric="accuracy",
            lower_bound=0.0,
            interpolating=True,
            data=data,
            budgets=budgets,
            build=lambda size, seed, data_dir=None: _build(loader_name, size, seed, data_dir, budgets),
            summary=summary,
            tags=("convex", "kernel", "real-data"),
        )
    )


# Spambase: 4601 rows -> 3681 train (3313 after the validation hold-out), 920 test.
_register(
    "kernel-spam",
    "load_spam",
    "kernlab",
    {
        "quick": Budget(epochs=5, batch_size=100, train_subset=1000, test_subset=500),
        "lite": Budget(epochs=35, batch_size=100),
        "paper": Budget(epochs=35, batch_size=100),
    },
    "RBF-kernel logistic regression on Spambase (stand-in for mushrooms), sigma 2 after standardising",
)
# Shuttle: 58000 rows -> 46400 train (41760 after the hold-out), 11600 test.
_register(
    "kernel-shuttle",
    "load_shuttle",
    "mlbench",
    {
        "quick": Budget(epochs=5, batch_size=100, train_subset=1000, test_subset=500),
        "lite": Budget(epochs=35, batch_size=100, train_subset=4000, test_subset=4000),
        "paper": Budget(epochs=35, batch_size=100),
    },
    "RBF-kernel logistic regression on Statlog Shuttle, Rad.Flow vs rest (stand-in for ijcnn1), sigma 2",
)

"""Matrix factorisation (SLS, SPS and ALI-G+ papers; data after B. Recht's
shallow-linear-net notebook).

Data (fixed seed, identical for every optimizer and trial seed):
A = linspace(1, 1e-10, 10)[:, None] * U(0, 1)^(10 x 6), inputs x ~ N(0, I_6)
(1000 samples, drawn as a 6 x 1000 matrix like the reference), targets y = A x;
a seeded 80/20 train/test split, then 10% of the training samples held out for
validation. Model: bias-free linear network 6 -> [k] -> 10. Loss: squared error
(mean over the 10 outputs, so the batch mean equals torch's MSELoss), batch 100,
50 epochs in the papers. Ranks 1 and 4 cannot interpolate (A has rank 6);
rank 10 and the true model (one 10 x 6 matrix) can.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..models import LinearNetwork
from . import _common as C
from .base import Budget, Workload, WorkloadInstance, register_workload

NUM_SAMPLES, INPUT_DIM, OUTPUT_DIM = 1000, 6, 10
CONDITION = 1e-10

# Papers: batch 100, 50 epochs (SLS experiments, reused by SPS and ALI-G+; DATA.md).
BUDGETS = {
    "quick": Budget(epochs=20, batch_size=100),
    "lite": Budget(epochs=50, batch_size=100),
    "paper": Budget(epochs=50, batch_size=100),
}


def make_matrix_factorisation_data(seed: int = C.DATA_SEED) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A [10, 6], X [1000, 6], Y [1000, 10]) in float64, drawn in the reference's order."""
    rng = np.random.RandomState(seed)
    A = np.linspace(1.0, CONDITION, OUTPUT_DIM)[:, None] * rng.rand(OUTPUT_DIM, INPUT_DIM)
    X = rng.randn(INPUT_DIM, NUM_SAMPLES).T
    return A, X, X @ A.T


def split_indices(n: int = NUM_SAMPLES, seed: int = C.DATA_SEED):
    """(train, val, test) index arrays: seeded 80/20 split, then 10% of train held out."""
    order = C.permutation(n, seed)
    n_test = n // 5
    test, train_full = np.sort(order[:n_test]), order[n_test:]
    train_pos, val_pos = C.holdout_split(len(train_full), seed=seed)
    return np.sort(train_full[train_pos]), np.sort(train_full[val_pos]), test


def _build(hidden: Sequence[int], size: str, seed: int, data_dir=None) -> WorkloadInstance:
    budget = BUDGETS[size]
    _, X, Y = make_matrix_factorisation_data()
    X_t, Y_t = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    train, val, test = split_indices()
    train = C.take_subset(train, budget.train_subset)
    with C.seeded(seed):
        model = LinearNetwork(INPUT_DIM, list(hidden), OUTPUT_DIM)
    make = lambda idx: C.ArrayDataset(X_t[idx], Y_t[idx])  # noqa: E731
    return WorkloadInstance(
        model=model,
        train=make(train),
        val=C.truncate(make(val), budget.test_subset),
        test=C.truncate(make(test), budget.test_subset),
        per_sample_loss=C.squared_error_per_sample,
        evaluate=C.loss_evaluate(C.squared_error_per_sample),
        budget=budget,
    )


def _register(name: str, hidden: Optional[Sequence[int]], interpolating: bool, summary: str):
    register_workload(
        Workload(
            name=name,
            metric="loss",
            lower_bound=0.0,
            interpolating=interpolating,
            data=None,
            budgets=BUDGETS,
            build=lambda size, seed, data_dir=None: _build(hidden, size, seed, data_dir),
            summary=summary,
            tags=("synthetic", "convex" if not hidden else "nonconvex", "matfac"),
        )
    )


_register("matfac-rank1", [1], False, "linear net 6->1->10 on y = A x (rank-6 A): cannot interpolate")
_register("matfac-rank4", [4], False, "linear net 6->4->10 on y = A x (rank-6 A): cannot interpolate")
_register("matfac-rank10", [10], True, "linear net 6->10->10 on y = A x: over-parameterised, interpolates")
_register("matfac-true", [], True, "one 10x6 matrix on y = A x (the true model): interpolates")

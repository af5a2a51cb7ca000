"""The public toolkit for writing a workload (what the built-in ones use).

Import as ``from polyak.bench.workloads import helpers as H``. Names here are
kept stable; the modules they come from are not part of the API.

Seeding convention: everything about the DATA (splits, subsets, label noise,
synthetic data) is drawn with the fixed :data:`DATA_SEED`, so every optimizer
and every trial seed sees the same sets; the trial seed drives the model's
initialisation (build it inside ``with seeded(seed):``) and augmentation draws.

Data
    :data:`DATA_SEED`, :data:`VAL_FRACTION` (validation share held out of training).
    :class:`ArrayDataset` (inputs, targets) over in-memory tensors, with a batch-wise
    ``transform`` and a per-sample seeded ``augment``; ``.subset(indices)``.
    :func:`permutation` (n, seed), :func:`holdout_split` (n -> train, val indices),
    :func:`take_subset` (at most ``size`` indices), :func:`truncate` (an evaluation set
    cut to ``budget.test_subset``), :func:`flip_labels` (exactly ``round(fraction * n)``
    labels changed to another class), :func:`seeded` (a block under a torch seed).
    Images: :func:`to_nchw`, :func:`normalize_images`, :func:`random_crop`,
    :func:`build_image_workload` (uint8 image splits -> instance, with label noise).
    Tables: :func:`rbf_features`, :func:`build_tabular` (a feature matrix -> instance:
    fixed split, standardisation, optional RBF kernel and label noise).

Losses (per sample, 1-D; their mean is the training loss)
    :func:`cross_entropy_per_sample` (also sequences [n, T, V]),
    :func:`logistic_per_sample` (one logit, targets 0/1), :func:`squared_error_per_sample`.

Evaluation (``evaluate(model, dataset) -> {"loss": ..., "accuracy": ...}``)
    :func:`classifier_evaluate` (loss + accuracy; ``correct=`` :func:`argmax_correct`
    or :func:`sign_correct`), :func:`loss_evaluate` (loss only), :func:`evaluate`.
"""
from __future__ import annotations

from ._common import (
    DATA_SEED,
    VAL_FRACTION,
    ArrayDataset,
    argmax_correct,
    classifier_evaluate,
    cross_entropy_per_sample,
    evaluate,
    flip_labels,
    holdout_split,
    logistic_per_sample,
    loss_evaluate,
    normalize_images,
    permutation,
    random_crop,
    seeded,
    sign_correct,
    squared_error_per_sample,
    take_subset,
    truncate,
)
from ._vision import build_image_workload, to_nchw
from .tabular import build_tabular, rbf_features

__all__ = [
    "DATA_SEED", "VAL_FRACTION", "ArrayDataset", "argmax_correct", "build_image_workload", "build_tabular",
    "classifier_evaluate", "cross_entropy_per_sample", "evaluate", "flip_labels", "holdout_split",
    "logistic_per_sample", "loss_evaluate", "normalize_images", "permutation", "random_crop", "rbf_features",
    "seeded", "sign_correct", "squared_error_per_sample", "take_subset", "to_nchw", "truncate",
]

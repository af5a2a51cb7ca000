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

from .base import Budget, Workload, register_workload
from .tabular import build_tabular, rbf_features  # noqa: F401  (rbf_features: kernel.rbf_features stays importable)

SIGMA = 2.0
TEST_FRACTION = 0.2


def _build(loader_name: str, budget: Budget, seed: int, data_dir):
    from polyak.bench import datasets

    X, y = getattr(datasets, loader_name)(None, data_dir=data_dir)
    return build_tabular(X, y, budget, seed, num_classes=2, test_fraction=TEST_FRACTION, rbf_sigma=SIGMA)


def _register(name: str, loader_name: str, data: str, budgets, summary: str):
    register_workload(
        Workload(
            name=name,
            metric="accuracy",
            lower_bound=0.0,
            interpolating=True,
            data=data,
            budgets=budgets,
            build=lambda size, seed, data_dir=None, budget=None: _build(loader_name, budget or budgets[size], seed,
                                                                        data_dir),
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

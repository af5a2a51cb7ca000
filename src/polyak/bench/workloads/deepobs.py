"""DeepOBS test problems (Schneider, Balles & Hennig, ICLR 2019) as DeepOBS 1.2's
PyTorch port defines them, on the data fetched here:

=================  ==========================  =====  ======  ====================
workload           model (models/deepobs.py)   batch  epochs  reported
=================  ==========================  =====  ======  ====================
quadratic-deep     100-d noisy quadratic       128    100     test loss (floor ~87)
mnist-logreg       logistic regression         128    50      test accuracy
mnist-mlp          MLP 784-1000-500-100-10     128    100     test accuracy
fmnist-mlp         MLP 784-1000-500-100-10     128    100     test accuracy
fmnist-2c2d        2 conv + 2 dense            128    100     test accuracy
=================  ==========================  =====  ======  ====================

Data as DeepOBS's loaders give it: images scaled to [0, 1] (``ToTensor``, no mean
or std normalisation), 10,000 of the 60,000 training images held out for validation,
the 10,000 test images for test, incomplete last batches dropped every epoch. No
regularisation, no augmentation. The noisy quadratic: 1,000 points from N(0, 0.6^2 I)
with numpy seeds 42 (train), 44 (validation) and 43 (test).

One difference, on purpose: DeepOBS draws the train/validation split with the run's
seed; here it is drawn once (``DATA_SEED``) so every optimizer and seed trains on the
same 50,000 images, like every other workload of the harness.

Budgets: ``paper`` is DeepOBS's (epochs and batch above); ``lite`` and ``quick`` keep
the batch size and the data and train fewer epochs (fmnist-2c2d, 100 s an epoch on
one CPU core, also trains on a subset). Targets for time-to-target: mnist-mlp 97%
test accuracy (AlgoPerf's MNIST target); the others derive theirs from the best tuned
baseline in the results (AlgoPerf's rule), see polyak.bench.report.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..models.deepobs import DeepOBSMLP, LogReg, NoisyQuadratic, TwoConvTwoDense, deep_quadratic_hessian
from . import _common as C
from .base import Budget, Workload, WorkloadInstance, register_workload

SOURCE = ("DeepOBS 1.2 PyTorch port (github.com/fsschneider/DeepOBS, deepobs/pytorch/testproblems and "
          "datasets; defaults in deepobs/config.py)")
BATCH = 128
VALID_SIZE = 10_000  # DeepOBS's train_eval_size: the validation set held out of the training images
QUADRATIC_DIM, QUADRATIC_SIZE, QUADRATIC_NOISE = 100, 1000, 0.6
QUADRATIC_SEEDS = {"train": 42, "val": 44, "test": 43}


def _budgets(paper_epochs: int, lite_epochs: int, quick_epochs: int, lite_subset: Optional[int] = None,
             quick_subset: Optional[int] = None):
    return {
        "quick": Budget(epochs=quick_epochs, batch_size=BATCH, train_subset=quick_subset, drop_last=True),
        "lite": Budget(epochs=lite_epochs, batch_size=BATCH, train_subset=lite_subset, drop_last=True),
        "paper": Budget(epochs=paper_epochs, batch_size=BATCH, drop_last=True),
    }


def _unit_scale(images: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 1, 28, 28] -> float32 in [0, 1], as torchvision's ToTensor."""
    return images.float() / 255.0


def _image_problem(data: str, make_model: Callable[[], nn.Module], budget: Budget, seed: int,
                   data_dir=None) -> WorkloadInstance:
    from polyak.bench import datasets

    splits = (datasets.load_mnist if data == "mnist" else datasets.load_fashion_mnist)(None, data_dir=data_dir)
    images, labels = splits["train"]
    test_images, test_labels = splits["test"]
    images = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    test_images = torch.from_numpy(np.ascontiguousarray(test_images))[:, None]
    labels, test_labels = torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(test_labels, dtype=torch.long)
    order = C.permutation(len(labels))
    n_val = min(VALID_SIZE, len(labels) // 6)  # 10,000 of MNIST's 60,000; a sixth of a smaller stand-in
    val_pos, train_pos = np.sort(order[:n_val]), np.sort(order[n_val:])
    train_pos = C.take_subset(train_pos, budget.train_subset)
    with C.seeded(seed):
        model = make_model()
    return WorkloadInstance(
        model=model,
        train=C.ArrayDataset(images[train_pos], labels[train_pos], _unit_scale),
        val=C.truncate(C.ArrayDataset(images[val_pos], labels[val_pos], _unit_scale), budget.test_subset),
        test=C.truncate(C.ArrayDataset(test_images, test_labels, _unit_scale), budget.test_subset),
        per_sample_loss=C.cross_entropy_per_sample,
        evaluate=C.classifier_evaluate(),
        budget=budget,
    )


def _quadratic_points(split: str) -> torch.Tensor:
    rng = np.random.RandomState(QUADRATIC_SEEDS[split])
    return torch.from_numpy(np.float32(rng.normal(0.0, QUADRATIC_NOISE, (QUADRATIC_SIZE, QUADRATIC_DIM))))


def _quadratic_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The model already returns each sample's loss; the (all-zero) target is unused."""
    return output


def _build_quadratic(budget: Budget, seed: int) -> WorkloadInstance:
    with C.seeded(seed):  # theta starts at ones whatever the seed: the seed only shuffles the batches
        model = NoisyQuadratic(deep_quadratic_hessian(QUADRATIC_DIM))
    # DeepOBS evaluates whole batches only: the first 7 x 128 = 896 points of the
    # (unshuffled) validation and test sets; training drops a different remainder each epoch.
    evaluated = (QUADRATIC_SIZE // budget.batch_size) * budget.batch_size

    def make(split):
        points = _quadratic_points(split)
        if split != "train":
            points = points[:evaluated]
        return C.ArrayDataset(points, torch.zeros(len(points)))
    return WorkloadInstance(
        model=model, train=make("train"), val=make("val"), test=make("test"),
        per_sample_loss=_quadratic_loss, evaluate=C.loss_evaluate(_quadratic_loss), budget=budget,
    )


def _register(name: str, metric: str, data: Optional[str], budgets, build, summary: str, interpolating: bool,
              target: Optional[float] = None):
    register_workload(Workload(
        name=name, metric=metric, lower_bound=0.0, interpolating=interpolating, data=data, budgets=budgets,
        build=build, summary=summary, tags=("deepobs",) + (("real-data", "image") if data else ("synthetic",)),
        target=target, source=SOURCE,
    ))


_QUADRATIC_BUDGETS = _budgets(100, 100, 100)  # 7 steps an epoch: DeepOBS's full budget costs seconds
_register("quadratic-deep", "test_loss", None, _QUADRATIC_BUDGETS,
          lambda size, seed, data_dir=None: _build_quadratic(_QUADRATIC_BUDGETS[size], seed),
          "DeepOBS quadratic_deep: 100-d noisy quadratic, deep-learning-like spectrum; test loss floor ~87",
          interpolating=False)

_LOGREG_BUDGETS = _budgets(50, 10, 3)
_register("mnist-logreg", "accuracy", "mnist", _LOGREG_BUDGETS,
          lambda size, seed, data_dir=None: _image_problem("mnist", LogReg, _LOGREG_BUDGETS[size], seed, data_dir),
          "DeepOBS mnist_logreg: multinomial logistic regression on MNIST, zero init", interpolating=False)

_MLP_BUDGETS = _budgets(100, 10, 3)
_register("mnist-mlp", "accuracy", "mnist", _MLP_BUDGETS,
          lambda size, seed, data_dir=None: _image_problem("mnist", DeepOBSMLP, _MLP_BUDGETS[size], seed, data_dir),
          "DeepOBS mnist_mlp: MLP 784-1000-500-100-10 on MNIST (1.4M parameters)", interpolating=True, target=0.97)
_register("fmnist-mlp", "accuracy", "fashion-mnist", _MLP_BUDGETS,
          lambda size, seed, data_dir=None: _image_problem("fashion-mnist", DeepOBSMLP, _MLP_BUDGETS[size], seed,
                                                           data_dir),
          "DeepOBS fmnist_mlp: MLP 784-1000-500-100-10 on Fashion-MNIST", interpolating=True)

_2C2D_BUDGETS = _budgets(100, 5, 2, lite_subset=10_000, quick_subset=3_000)
_register("fmnist-2c2d", "accuracy", "fashion-mnist", _2C2D_BUDGETS,
          lambda size, seed, data_dir=None: _image_problem("fashion-mnist", TwoConvTwoDense, _2C2D_BUDGETS[size],
                                                           seed, data_dir),
          "DeepOBS fmnist_2c2d: 2 conv + 2 dense layers on Fashion-MNIST (3.3M parameters)", interpolating=True)

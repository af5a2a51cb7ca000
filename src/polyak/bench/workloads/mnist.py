"""ResNet8 on MNIST and Fashion-MNIST: plain, with augmentation, with label noise.

The ALI-G+ paper's small ResNet (8 layers, 16/32/64 channels, ~78K parameters)
on the two 28x28 grey-scale sets that can be fetched here. Variants:
- ``-aug``: random 28x28 crops of the image zero-padded by 4, drawn per sample
  and per visit (no flips: digits and clothes are not mirror-symmetric classes).
  Augmented views make exact interpolation unlikely for so small a network.
- ``-noisy``: 20% of the training labels replaced by a different class drawn
  uniformly (fixed seed; validation and test labels stay clean), so no
  classifier can fit the training set: the non-interpolating setting that
  ALI-G+ targets.

Budgets: paper = 200 epochs, batch 128 (the ALI-G+ paper's budget for its
CIFAR-type image tasks; ALI-G's CIFAR WRN runs also use 200 epochs);
lite = 3k training images for 5 epochs (~35 s a trial on one CPU thread);
quick = 1k images for 5 epochs (40 steps, ~10 s a trial with evaluations).
Every budget has at least 5 epochs: ALI-G+ then runs the paper's K = 5 sections (K="auto").
"""
from __future__ import annotations

from ..models import ResNet8
from . import _common as C
from ._vision import build_image_workload
from .base import Budget, Workload, register_workload

BUDGETS = {
    "quick": Budget(epochs=5, batch_size=128, train_subset=1000, test_subset=500),
    "lite": Budget(epochs=5, batch_size=128, train_subset=3000, test_subset=2000),
    "paper": Budget(epochs=200, batch_size=128),
}
LABEL_NOISE = 0.2  # of the -noisy workloads; other rates: resnet8_workload(..., label_noise=...)

# Per-pixel statistics of the training images (standard values).
_NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}
_LOADERS = {"mnist": "load_mnist", "fashion-mnist": "load_fashion_mnist"}


def build_resnet8(data: str, size: str, seed: int, data_dir=None, augment: bool = False, label_noise: float = 0.0,
                  budget=None):
    """Build ResNet8 on ``data`` ("mnist" or "fashion-mnist") with optional crops and label-noise fraction
    (``budget``: the harness's, default ``BUDGETS[size]``)."""
    from polyak.bench import datasets

    splits = getattr(datasets, _LOADERS[data])(None, data_dir=data_dir)
    mean, std = _NORMALISATION[data]
    return build_image_workload(
        splits,
        budget or BUDGETS[size],
        seed,
        lambda in_channels, num_classes: ResNet8(in_channels, num_classes),
        num_classes=10,
        mean=mean,
        std=std,
        augment=C.random_crop(padding=4) if augment else None,
        label_noise=label_noise,
    )


def resnet8_workload(name: str, data: str, *, augment: bool = False, label_noise: float = 0.0,
                     budgets=None, summary: str = "") -> Workload:
    """A ResNet8 workload on ``data`` ("mnist" or "fashion-mnist") with these parameters, to
    register under a new name without copying this module, e.g. 40% flipped labels::

        register_workload(resnet8_workload("fmnist-resnet8-noisy40", "fashion-mnist", label_noise=0.4))

    augment: random crops (padding 4); label_noise: fraction of training labels flipped
    (validation and test stay clean); budgets: per size (default: this module's BUDGETS).
    The workload interpolates only without augmentation and label noise.
    """
    if data not in _LOADERS:
        raise ValueError(f"data must be one of {sorted(_LOADERS)}, got {data!r}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise is a fraction in [0, 1], got {label_noise}")
    budgets = dict(budgets or BUDGETS)
    tags = ["image", "real-data"] + (["augmentation"] if augment else []) + (["label-noise"] if label_noise else [])
    return Workload(
        name=name,
        metric="accuracy",
        lower_bound=0.0,
        interpolating=not augment and not label_noise,
        data=data,
        budgets=budgets,
        build=lambda size, seed, data_dir=None, budget=None: build_resnet8(
            data, size, seed, data_dir, augment, label_noise, budget or budgets[size]),
        summary=summary or f"ResNet8 on {data}" + (" with random crops" if augment else "")
        + (f" with {100 * label_noise:g}% of training labels flipped" if label_noise else ""),
        tags=tuple(tags),
    )


for _prefix, _data, _title in (("mnist", "mnist", "MNIST"), ("fmnist", "fashion-mnist", "Fashion-MNIST")):
    register_workload(resnet8_workload(f"{_prefix}-resnet8", _data, summary=f"ResNet8 on {_title}"))
    register_workload(resnet8_workload(f"{_prefix}-resnet8-aug", _data, augment=True,
                                       summary=f"ResNet8 on {_title} with random crops (padding 4)"))
    register_workload(resnet8_workload(
        f"{_prefix}-resnet8-noisy", _data, label_noise=LABEL_NOISE,
        summary=f"ResNet8 on {_title} with 20% of training labels flipped (cannot interpolate)"))

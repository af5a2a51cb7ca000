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
Every budget has at least 5 epochs: ALI-G+ splits training into K = 5 sections.
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
LABEL_NOISE = 0.2

# Per-pixel statistics of the training images (standard values).
_NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}
_LOADERS = {"mnist": "load_mnist", "fashion-mnist": "load_fashion_mnist"}


def build_resnet8(data: str, size: str, seed: int, data_dir=None, augment: bool = False, label_noise: float = 0.0):
    """Build ResNet8 on ``data`` ("mnist" or "fashion-mnist") with optional crops and label-noise fraction."""
    from polyak.bench import datasets

    splits = getattr(datasets, _LOADERS[data])(None, data_dir=data_dir)
    mean, std = _NORMALISATION[data]
    return build_image_workload(
        splits,
        BUDGETS[size],
        seed,
        lambda in_channels, num_classes: ResNet8(in_channels, num_classes),
        num_classes=10,
        mean=mean,
        std=std,
        augment=C.random_crop(padding=4) if augment else None,
        label_noise=label_noise,
    )


def _register(name: str, data: str, augment: bool = False, label_noise: float = 0.0, interpolating: bool = True, summary: str = ""):
    tags = ["image", "real-data"] + (["augmentation"] if augment else []) + (["label-noise"] if label_noise else [])
    register_workload(
        Workload(
            name=name,
            metric="accuracy",
            lower_bound=0.0,
            interpolating=interpolating,
            data=data,
            budgets=BUDGETS,
            build=lambda size, seed, data_dir=None: build_resnet8(data, size, seed, data_dir, augment, label_noise),
            summary=summary,
            tags=tuple(tags),
        )
    )


for _prefix, _data, _title in (("mnist", "mnist", "MNIST"), ("fmnist", "fashion-mnist", "Fashion-MNIST")):
    _register(f"{_prefix}-resnet8", _data, summary=f"ResNet8 on {_title}")
    _register(f"{_prefix}-resnet8-aug", _data, augment=True, interpolating=False,
              summary=f"ResNet8 on {_title} with random crops (padding 4)")
    _register(f"{_prefix}-resnet8-noisy", _data, label_noise=LABEL_NOISE, interpolating=False,
              summary=f"ResNet8 on {_title} with 20% of training labels flipped (cannot interpolate)")

"""Image classification on data the user provides: CIFAR-10/100 and SVHN.

These sets cannot be downloaded on the project's machines; the user puts them,
in their standard on-disk formats (CIFAR python pickles, SVHN .mat files), under
the data root: ``data_dir`` (--data-dir), else $POLYAK_DATA_DIR or the cache.
When they are absent, build() raises DatasetMissing naming the workload, what to
download and where to put it.

Protocols and sources:
- CIFAR-10/100 + ResNet8, CIFAR-10 + WRN-16-4: 200 epochs, batch 128, random
  crops (padding 4) and horizontal flips, 45k/5k train/validation split
  (ALI-G repository, experiments/reproduce/cifar.py and hparams/cifar.yaml: WRN
  for 200 epochs at batch 128 for most optimizers; the ALI-G+ paper keeps 200
  epochs and batch 128 for its CIFAR-type tasks). ALI-G trains WRN-40-4; the
  benchmark uses WRN-16-4 (2.7M parameters) to keep the cost sane.
- SVHN + ResNet8: 160 epochs, batch 128, no augmentation (ALI-G repository,
  experiments/reproduce/svhn.py: WRN-16-4 for 160 epochs at batch 128 without
  data augmentation). ALI-G trains on train+extra; the loader's train split is
  used here as given.
"""
from __future__ import annotations

from ..models import ResNet8, WideResNet
from . import _common as C
from ._vision import build_image_workload
from .base import Budget, Workload, register_workload

_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_SVHN_MEAN, _SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


def _budgets(paper_epochs: int, lite_subset: int = 3000, quick_subset: int = 1000):
    # At least 5 epochs everywhere: ALI-G+ then runs the paper's K = 5 sections (K="auto").
    return {
        "quick": Budget(epochs=5, batch_size=128, train_subset=quick_subset, test_subset=500),
        "lite": Budget(epochs=5, batch_size=128, train_subset=lite_subset, test_subset=2000),
        "paper": Budget(epochs=paper_epochs, batch_size=128),
    }


def _load(data: str, name: str, data_dir):
    from polyak.bench import datasets

    if data == "svhn":
        return C.load_user_data(name, datasets.load_svhn, data_dir)
    return C.load_user_data(name, datasets.load_cifar, data_dir, num_classes=100 if data == "cifar100" else 10)


def _register(name: str, data: str, num_classes: int, model: str, augment: bool, budgets, interpolating: bool, summary: str):
    mean, std = (_SVHN_MEAN, _SVHN_STD) if data == "svhn" else (_CIFAR_MEAN, _CIFAR_STD)

    def make_model(in_channels: int, classes: int):
        if model == "wrn":
            return WideResNet(depth=16, width=4, in_channels=in_channels, num_classes=classes)
        return ResNet8(in_channels, classes)

    def build(size: str, seed: int, data_dir=None):
        splits = _load(data, name, data_dir)
        return build_image_workload(
            splits, budgets[size], seed, make_model, num_classes, mean, std,
            augment=C.random_crop(padding=4, flip=True) if augment else None,
        )

    register_workload(
        Workload(
            name=name,
            metric="accuracy",
            lower_bound=0.0,
            interpolating=interpolating,
            data=data,
            budgets=budgets,
            build=build,
            summary=summary,
            tags=("image", "user-data") + (("augmentation",) if augment else ()),
        )
    )


_register("cifar10-resnet8", "cifar10", 10, "resnet8", True, _budgets(200), False,
          "ResNet8 on CIFAR-10 with crops and flips (user-provided data)")
_register("cifar100-resnet8", "cifar100", 100, "resnet8", True, _budgets(200), False,
          "ResNet8 on CIFAR-100 with crops and flips (user-provided data)")
_register("svhn-resnet8", "svhn", 10, "resnet8", False, _budgets(160), False,
          "ResNet8 on SVHN without augmentation (user-provided data)")
_register("cifar10-wrn", "cifar10", 10, "wrn", True, _budgets(200, lite_subset=500, quick_subset=200), True,
          "WRN-16-4 on CIFAR-10 with crops and flips (user-provided data)")

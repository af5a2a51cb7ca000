"""Image-classification workloads built from uint8 arrays: one builder shared by
the MNIST-family and the user-data (CIFAR, SVHN) modules."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import _common as C
from .base import Budget, WorkloadInstance

ImageSplits = Dict[str, Tuple[np.ndarray, np.ndarray]]


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] (grey) or [N, H, W, C] -> uint8 tensor [N, C, H, W]."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images))


def build_image_workload(
    splits: ImageSplits,
    budget: Budget,
    seed: int,
    make_model: Callable[[int, int], nn.Module],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: Optional[Callable] = None,
    label_noise: float = 0.0,
) -> WorkloadInstance:
    """Seeded train/validation hold-out, fixed training subset, optional label
    noise on the training part only (validation and test keep clean labels),
    per-sample augmentation on the training part only.

    make_model(in_channels, num_classes) builds the network (under the trial seed).
    """
    train_images, train_labels = splits["train"]
    test_images, test_labels = splits["test"]
    train_images, test_images = to_nchw(train_images), to_nchw(test_images)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    train_pos, val_pos = C.holdout_split(len(train_labels))
    train_pos = C.take_subset(train_pos, budget.train_subset)
    noisy_labels = C.flip_labels(train_labels, label_noise, num_classes) if label_noise else train_labels

    transform = C.normalize_images(mean, std)
    train = C.ArrayDataset(
        train_images[train_pos], torch.from_numpy(noisy_labels[train_pos]), transform, augment, seed=seed
    )
    val = C.ArrayDataset(train_images[val_pos], torch.from_numpy(train_labels[val_pos]), transform)
    test = C.ArrayDataset(test_images, torch.as_tensor(np.asarray(test_labels, dtype=np.int64)), transform)
    with C.seeded(seed):
        model = make_model(train_images.shape[1], num_classes)
    return WorkloadInstance(
        model=model,
        train=train,
        val=C.truncate(val, budget.test_subset),
        test=C.truncate(test, budget.test_subset),
        per_sample_loss=C.cross_entropy_per_sample,
        evaluate=C.classifier_evaluate(),
        budget=budget,
    )

"""Helpers shared by the workload modules: datasets over in-memory arrays with
on-the-fly augmentation, seeded splits and subsets, per-sample losses and one
evaluate() for every task.

Seeding convention: everything about the DATA (splits, subsets, label noise,
synthetic data) comes from the fixed ``DATA_SEED``, so every optimizer and every
trial seed sees the same training set; the trial seed drives the model's
initialisation and the augmentation draws.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

DATA_SEED = 0
# Fraction of the training set held out for hyperparameter selection (ALI-G's
# CIFAR protocol: 45k train / 5k validation).
VAL_FRACTION = 0.1


# --------------------------------------------------------------------- datasets
class ArrayDataset(Dataset):
    """(input, target) pairs over in-memory tensors.

    inputs, targets: tensors with the sample as first dimension (inputs may be
        uint8 images, kept compact and converted per access).
    transform: batch-wise function applied to inputs on every access (e.g.
        uint8 -> normalised float); it must accept a batch [n, ...].
    augment: per-sample function ``augment(x, generator) -> x`` applied before
        ``transform`` in ``__getitem__`` only; ``generator`` is the dataset's own
        torch.Generator seeded with ``seed``, so a trial replays the same draws.
        ``get_batch`` (used by evaluate) never augments.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        transform: Optional[Callable[[Tensor], Tensor]] = None,
        augment: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None,
        seed: int = 0,
    ):
        if len(inputs) != len(targets):
            raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) must have the same length")
        self.inputs, self.targets = inputs, targets
        self.transform, self.augment = transform, augment
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index) -> Tuple[Tensor, Tensor]:
        x = self.inputs[index]
        if self.augment is not None:
            x = self.augment(x, self.generator)
        if self.transform is not None:
            x = self.transform(x.unsqueeze(0)).squeeze(0)
        return x, self.targets[index]

    def __getitems__(self, indices) -> List[Tuple[Tensor, Tensor]]:
        """A batch of samples, as DataLoader asks for them: without augmentation the
        transform runs once on the whole batch (the same values as per sample, without
        a Python call per image); with augmentation per sample, in index order, so the
        draws match ``__getitem__``'s."""
        if self.augment is not None:
            return [self[i] for i in indices]
        x, y = self.get_batch(torch.as_tensor(indices, dtype=torch.long))
        return list(zip(x.unbind(0), y.unbind(0)))

    def get_batch(self, indices) -> Tuple[Tensor, Tensor]:
        x = self.inputs[indices]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[indices]

    def subset(self, indices) -> "ArrayDataset":
        """A dataset over ``indices`` sharing transform, augmentation and seed."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        out = ArrayDataset(self.inputs[indices], self.targets[indices], self.transform, self.augment)
        out.generator = self.generator
        return out


def normalize_images(mean: Sequence[float], std: Sequence[float]) -> Callable[[Tensor], Tensor]:
    """uint8 images [n, C, H, W] -> float32 (x / 255 - mean) / std per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def transform(images: Tensor) -> Tensor:
        return (images.float() / 255.0 - mean_t) / std_t

    return transform


def random_crop(padding: int = 4, flip: bool = False) -> Callable[[Tensor, torch.Generator], Tensor]:
    """Per-sample augmentation of a [C, H, W] image: zero-pad by ``padding``, crop
    back to H x W at a uniformly drawn offset, and (``flip``) mirror with probability 1/2.

    Zero padding on the raw uint8 image equals padding with black pixels after
    normalisation, as torchvision's RandomCrop(padding=4) does.
    """
    if padding < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")

    def augment(image: Tensor, generator: torch.Generator) -> Tensor:
        _, height, width = image.shape
        draws = torch.randint(0, 2 * padding + 1, (2,), generator=generator)
        padded = F.pad(image, (padding, padding, padding, padding))
        top, left = int(draws[0]), int(draws[1])
        out = padded[:, top : top + height, left : left + width]
        if flip and bool(torch.randint(0, 2, (1,), generator=generator)):
            out = out.flip(-1)
        return out

    return augment


# ------------------------------------------------------------- splits, subsets
def permutation(n: int, seed: int = DATA_SEED) -> np.ndarray:
    return np.random.RandomState(seed).permutation(n)


def holdout_split(n: int, fraction: float = VAL_FRACTION, seed: int = DATA_SEED) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (train indices, validation indices)."""
    order = permutation(n, seed)
    n_val = max(1, int(round(n * fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def take_subset(indices: np.ndarray, size: Optional[int], seed: int = DATA_SEED) -> np.ndarray:
    """At most ``size`` of ``indices``, drawn without replacement with a fixed seed."""
    if size is None or size >= len(indices):
        return indices
    if size < 1:
        raise ValueError(f"subset size must be positive, got {size}")
    return np.sort(np.random.RandomState(seed + 1).choice(indices, size, replace=False))


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int = DATA_SEED) -> np.ndarray:
    """Replace the labels of ``round(fraction * n)`` samples by a different class drawn uniformly.

    Exactly that many labels end up wrong, so no model can fit them all with the
    rest (interpolation becomes impossible for any classifier that generalises).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label_noise fraction must be in [0, 1], got {fraction}")
    rng = np.random.RandomState(seed + 2)
    labels = np.array(labels, dtype=np.int64, copy=True)
    chosen = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    shift = rng.randint(1, num_classes, size=len(chosen))
    labels[chosen] = (labels[chosen] + shift) % num_classes
    return labels


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block (model construction) under ``torch.manual_seed(seed)`` without
    disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def load_user_data(workload: str, loader: Callable, data_dir: Optional[Path], **options):
    """``loader(None, data_dir=data_dir, **options)``, naming the workload in DatasetMissing.

    The loaders look under ``data_dir`` (None: $POLYAK_DATA_DIR or the cache) and
    say what to download and where to put it; this adds which workload asked.
    """
    from polyak.bench.datasets import DatasetMissing

    try:
        return loader(None, data_dir=data_dir, **options)
    except DatasetMissing as missing:
        raise DatasetMissing(f"workload {workload!r} needs data that is not there. {missing}") from missing


# ---------------------------------------------------------------------- losses
def cross_entropy_per_sample(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy per sample; for sequences ([n, T, V] vs [n, T]) the mean over the sequence."""
    if output.dim() == 3:
        return F.cross_entropy(output.transpose(1, 2), target, reduction="none").mean(dim=1)
    return F.cross_entropy(output, target, reduction="none")


def squared_error_per_sample(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the output dimensions of each sample (batch mean = torch's MSELoss)."""
    return (output - target).pow(2).flatten(1).mean(dim=1)


def logistic_per_sample(output: Tensor, target: Tensor) -> Tensor:
    """log(1 + exp(-s t)) with s = +-1 from target in {0, 1}, for one logit per sample."""
    return F.binary_cross_entropy_with_logits(output.reshape(-1), target.reshape(-1).to(output.dtype), reduction="none")


def argmax_correct(output: Tensor, target: Tensor) -> Tensor:
    return output.argmax(dim=-1) == target


def sign_correct(output: Tensor, target: Tensor) -> Tensor:
    return (output.reshape(-1) > 0).long() == target.reshape(-1).long()


# ------------------------------------------------------------------ evaluation
def _batches(dataset: Dataset, batch_size: int):
    if hasattr(dataset, "get_batch"):
        for start in range(0, len(dataset), batch_size):
            yield dataset.get_batch(torch.arange(start, min(start + batch_size, len(dataset))))
    else:
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=False)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    per_sample_loss: Callable[[Tensor, Tensor], Tensor],
    correct: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    accuracy_name: str = "accuracy",
    batch_size: int = 500,
) -> Dict[str, float]:
    """Mean per-sample loss and, with ``correct``, the fraction of correct predictions.

    ``correct(output, target)`` returns a boolean tensor (one entry per sample,
    or per position for sequences); accuracy is the mean over all entries.
    The model is put in eval mode and run without gradients on the device of
    its parameters.
    """
    model.eval()
    device = next(model.parameters()).device
    loss_sum, count, hits, entries = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for inputs, targets in _batches(dataset, batch_size):
            inputs, targets = inputs.to(device), targets.to(device)
            output = model(inputs)
            losses = per_sample_loss(output, targets)
            loss_sum += float(losses.double().sum())
            count += losses.numel()
            if correct is not None:
                ok = correct(output, targets)
                hits += float(ok.double().sum())
                entries += ok.numel()
    if count == 0:
        raise ValueError("evaluate() got an empty dataset")
    result = {"loss": loss_sum / count}
    if correct is not None:
        result[accuracy_name] = hits / entries
    return result


def classifier_evaluate(per_sample_loss=cross_entropy_per_sample, correct=argmax_correct, accuracy_name="accuracy"):
    """evaluate() bound to a loss and an accuracy, with the contract's (model, dataset) signature."""

    def run(model: nn.Module, dataset: Dataset) -> Dict[str, float]:
        return evaluate(model, dataset, per_sample_loss, correct, accuracy_name)

    return run


def loss_evaluate(per_sample_loss):
    def run(model: nn.Module, dataset: Dataset) -> Dict[str, float]:
        return evaluate(model, dataset, per_sample_loss)

    return run


def truncate(dataset: ArrayDataset, size: Optional[int]) -> ArrayDataset:
    """At most ``size`` samples of an evaluation set, drawn with the fixed data seed
    (not the first ones: some source files are sorted by class)."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.subset(take_subset(np.arange(len(dataset)), size))

"""Sample-index plumbing for optimizers that keep per-sample state (ALI-G+).

ALI-G+ keeps one approximate optimal value per training sample, so every step
needs the dataset indices of its batch. :class:`IndexedDataset` wraps any
map-style dataset so that the DataLoader yields them next to the samples, with
any sampler (sequential, random, distributed, weighted) and the default collate::

    train = IndexedDataset(train_set)
    loader = DataLoader(train, batch_size=128, shuffle=True)
    for index, (x, y) in loader:        # index: LongTensor of dataset indices
        ...
        opt.step(loss=losses, index=index)

Every augmented view of a sample carries the same index, so all views share one AOV.
Which indices: wrapping a ``Subset`` indexes the subset (0 .. len(subset)-1, use
``num_samples=len(subset)``); ``Subset(IndexedDataset(full), ids)`` keeps the
indices of the full set (use ``num_samples=len(full)``).
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from torch.utils.data import Dataset, IterableDataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Map-style dataset yielding ``(index, dataset[index])``.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``): a torch
            ``Dataset``, ``TensorDataset``, ``Subset``, torchvision dataset, or a list.
    """

    def __init__(self, dataset: Any):
        if isinstance(dataset, IterableDataset):
            raise TypeError(
                "IndexedDataset needs a map-style dataset (with __getitem__ and __len__), got the "
                f"IterableDataset {type(dataset).__name__}: a stream has no stable sample index; "
                "yield (index, sample) pairs from the stream yourself, or materialise it into a map-style dataset"
            )
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(
                f"IndexedDataset needs a map-style dataset with __getitem__ and __len__, got "
                f"{type(dataset).__name__}; wrap the data in a torch.utils.data.Dataset or TensorDataset"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[int, Any]:
        return index, self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> List[Tuple[int, Any]]:
        # DataLoader fetches a whole batch through __getitems__ when the dataset has it;
        # forwarding keeps the wrapped dataset's batched fetch (e.g. Subset's) fast.
        batched = getattr(self.dataset, "__getitems__", None)
        samples = batched(list(indices)) if batched else [self.dataset[i] for i in indices]
        return list(zip(indices, samples))

    def __repr__(self) -> str:
        return f"IndexedDataset({self.dataset!r})"

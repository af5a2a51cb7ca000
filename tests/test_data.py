"""IndexedDataset: indices that match the samples through real DataLoaders, samplers and Subsets."""
import pytest
import torch
from torch.utils.data import (
    BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler, Subset, TensorDataset,
    WeightedRandomSampler,
)

from polyak import ALIGPlus
from polyak.data import IndexedDataset

N = 23   # not a multiple of the batch size: the last batch is short


def make_dataset():
    X = torch.arange(N * 3, dtype=torch.float32).reshape(N, 3)   # row i starts with 3*i
    y = torch.arange(N) * 10
    return X, y, TensorDataset(X, y)


def test_item_and_length():
    X, y, ds = make_dataset()
    wrapped = IndexedDataset(ds)
    assert len(wrapped) == N
    index, (x, label) = wrapped[7]
    assert index == 7 and torch.equal(x, X[7]) and label == y[7]


def test_random_sampler_batches_carry_their_own_indices_and_cover_the_epoch():
    X, y, ds = make_dataset()
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(3))
    loader = DataLoader(IndexedDataset(ds), batch_size=5, sampler=sampler)
    seen = []
    for index, (x, label) in loader:
        assert index.dtype == torch.int64 and index.shape == (x.shape[0],)
        assert torch.equal(x, X[index]) and torch.equal(label, y[index])
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(N))
    assert seen != list(range(N))   # it really was shuffled


def test_shuffle_drop_last_and_weighted_sampling():
    X, y, ds = make_dataset()
    loader = DataLoader(IndexedDataset(ds), batch_size=4, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(batches) == N // 4
    for index, (x, _) in batches:
        assert torch.equal(x, X[index])
    weights = torch.zeros(N)
    weights[[2, 5]] = 1.0   # only samples 2 and 5 can be drawn
    sampler = WeightedRandomSampler(weights, num_samples=12, generator=torch.Generator().manual_seed(0))
    for index, (x, _) in DataLoader(IndexedDataset(ds), batch_size=6, sampler=sampler):
        assert set(index.tolist()) <= {2, 5} and torch.equal(x, X[index])


def test_indexing_a_subset_gives_subset_positions():
    X, y, ds = make_dataset()
    ids = [20, 3, 11, 7, 0, 15]
    wrapped = IndexedDataset(Subset(ds, ids))
    assert len(wrapped) == len(ids)
    loader = DataLoader(wrapped, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    seen = []
    for index, (x, _) in loader:
        assert torch.equal(x, X[torch.tensor(ids)[index]])
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(len(ids)))


def test_subset_of_an_indexed_dataset_keeps_the_full_set_indices():
    X, y, ds = make_dataset()
    ids = [20, 3, 11, 7, 0, 15]
    loader = DataLoader(Subset(IndexedDataset(ds), ids), batch_size=4,
                        sampler=RandomSampler(range(len(ids)), generator=torch.Generator().manual_seed(2)))
    seen = []
    for index, (x, _) in loader:
        assert torch.equal(x, X[index])
        seen.extend(index.tolist())
    assert sorted(seen) == sorted(ids)


def test_plain_list_batch_sampler_and_no_auto_collation():
    samples = [torch.tensor([float(i)]) for i in range(N)]
    wrapped = IndexedDataset(samples)
    loader = DataLoader(wrapped, batch_sampler=BatchSampler(SequentialSampler(wrapped), 6, drop_last=False))
    first_index, first_x = next(iter(loader))
    assert first_index.tolist() == list(range(6)) and torch.equal(first_x.squeeze(1), first_index.float())
    # batch_size=None: one (index, sample) at a time, no collation
    single = list(DataLoader(wrapped, batch_size=None))
    assert single[4][0] == 4 and torch.equal(single[4][1], samples[4])


def test_worker_processes_keep_indices_aligned():
    X, y, ds = make_dataset()
    loader = DataLoader(IndexedDataset(ds), batch_size=8, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(4))
    seen = []
    for index, (x, _) in loader:
        assert torch.equal(x, X[index])
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(N))


class _Stream(IterableDataset):
    def __iter__(self):
        yield from range(3)


def test_iterable_dataset_is_rejected_with_the_fix():
    with pytest.raises(TypeError, match="map-style.*IterableDataset.*yield \\(index, sample\\)"):
        IndexedDataset(_Stream())


def test_object_without_len_is_rejected():
    with pytest.raises(TypeError, match="__getitem__ and __len__"):
        IndexedDataset(x for x in range(3))


def test_alig_plus_trains_from_an_indexed_loader():
    X, y, ds = make_dataset()
    targets = (X[:, 0] / 30.0).double()
    model = torch.nn.Linear(3, 1).double()
    loader = DataLoader(IndexedDataset(ds), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = ALIGPlus(model.parameters(), max_lr=0.1, num_samples=len(ds), epochs=4, K=2)
    for _ in range(4):
        for index, (x, _) in loader:
            losses = (model(x.double() / 30.0).squeeze(1) - targets[index]) ** 2
            opt.zero_grad()
            losses.mean().backward()
            opt.step(loss=losses, index=index)
        opt.end_epoch()
    # every sample was recorded once per epoch through its own index
    assert opt.global_state["aov_updates"] == 2
    assert (opt.tables["loss_record"] > 0).sum().item() == N

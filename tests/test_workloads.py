"""Workloads: every registered one builds on small fake data and trains one ALI-G
step; the synthetic data follow DATA.md; user data absent -> DatasetMissing."""
import math

import numpy as np
import pytest
import torch

import polyak
from polyak.bench import datasets
from polyak.bench.workloads import SIZES, all_workloads, get_workload
from polyak.bench.workloads import _common as C
from polyak.bench.workloads import dnc_copy, kernel, matfac
from polyak.bench.workloads.charrnn import encode_text, windows

def ours():
    """The workloads this package registers (other tests may register their own)."""
    return {name: w for name, w in all_workloads().items() if w.build.__module__.startswith("polyak.bench.workloads.")}


USER_DATA = ("cifar10-resnet8", "cifar100-resnet8", "svhn-resnet8", "cifar10-wrn", "imdb-bilstm")


def _images(rng, n, shape, classes):
    return rng.randint(0, 256, size=(n, *shape)).astype(np.uint8), rng.randint(0, classes, size=n).astype(np.int64)


@pytest.fixture
def fake_data(monkeypatch):
    """Small arrays with the real loaders' shapes and dtypes; returns the arrays handed out."""
    rng = np.random.RandomState(123)
    handed = {}

    # Each loader hands out the same arrays on every call, like a file on disk.
    def image_loader(key, shape, classes):
        def load(root=None, *, data_dir=None, **options):
            n_classes = options.get("num_classes", classes)
            name = f"{key}{n_classes}" if key == "cifar" else key
            if name not in handed:
                handed[name] = {"train": _images(rng, 60, shape, n_classes), "test": _images(rng, 20, shape, n_classes)}
            return handed[name]
        return load

    def tabular_loader(key, features):
        def load(root=None, *, data_dir=None):
            if key not in handed:
                X = rng.randn(200, features).astype(np.float32)
                handed[key] = (X, (X[:, 0] > 0).astype(np.int64))
            return handed[key]
        return load

    def austen(root=None, *, data_dir=None):
        if "austen" not in handed:
            symbols = np.array(list("abcdefghijklmnopqrstuvwxyz .,;!?\n'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-:()\"&*[]_/`"))
            handed["austen"] = "".join(rng.choice(symbols, size=10_000))
        return handed["austen"]

    def imdb(root=None, *, data_dir=None):
        if "imdb" not in handed:
            words = ["good", "bad", "film", "plot", "actor", "boring", "great", "<br />", "!"]
            make = lambda n: ([" ".join(rng.choice(words, size=rng.randint(3, 40))) for _ in range(n)], rng.randint(0, 2, size=n).astype(np.int64))  # noqa: E731
            handed["imdb"] = {"train": make(80), "test": make(30)}
        return handed["imdb"]

    monkeypatch.setattr(datasets, "load_mnist", image_loader("mnist", (28, 28), 10))
    monkeypatch.setattr(datasets, "load_fashion_mnist", image_loader("fashion-mnist", (28, 28), 10))
    monkeypatch.setattr(datasets, "load_cifar", image_loader("cifar", (32, 32, 3), 10))
    monkeypatch.setattr(datasets, "load_svhn", image_loader("svhn", (32, 32, 3), 10))
    monkeypatch.setattr(datasets, "load_spam", tabular_loader("spam", 57))
    monkeypatch.setattr(datasets, "load_shuttle", tabular_loader("shuttle", 9))
    monkeypatch.setattr(datasets, "load_austen", austen)
    monkeypatch.setattr(datasets, "load_imdb", imdb)
    return handed


def test_registry_lists_the_papers_tasks():
    names = set(ours())
    expected = {
        "matfac-rank1", "matfac-rank4", "matfac-rank10", "matfac-true", "kernel-spam", "kernel-shuttle",
        "mnist-resnet8", "fmnist-resnet8", "mnist-resnet8-aug", "fmnist-resnet8-aug", "mnist-resnet8-noisy",
        "austen-charrnn", "dnc-copy", *USER_DATA,
        "quadratic-deep", "mnist-logreg", "mnist-mlp", "fmnist-mlp", "fmnist-2c2d",
    }
    assert expected <= names
    for workload in ours().values():
        assert set(SIZES) <= set(workload.budgets)
        quick, paper = workload.budgets["quick"], workload.budgets["paper"]
        quick_samples = quick.epochs * (quick.train_subset or 10**9)
        paper_samples = paper.epochs * (paper.train_subset or 10**9)
        assert quick_samples <= paper_samples, workload.name
        # at least 5 epochs, so ALI-G+'s K="auto" gives the paper's 5 sections; DeepOBS's
        # problems keep DeepOBS's epochs, and shorter runs get one section an epoch
        if "deepobs" not in workload.tags:
            assert all(budget.epochs >= 5 for budget in workload.budgets.values()), workload.name
        assert all(budget.epochs >= 1 for budget in workload.budgets.values()), workload.name
        assert workload.lower_bound == 0.0


@pytest.mark.parametrize("name", sorted(ours()))
def test_builds_on_fake_data_and_trains_one_alig_step(name, fake_data, tmp_path):
    workload = get_workload(name)
    instance = workload.build("quick", 0, tmp_path)
    assert instance.budget == workload.budgets["quick"]
    loader = torch.utils.data.DataLoader(instance.train, batch_size=min(4, len(instance.train)), shuffle=False)
    inputs, targets = next(iter(loader))
    model = instance.model.train()
    before = [p.detach().clone() for p in model.parameters()]
    losses = instance.per_sample_loss(model(inputs), targets)
    assert losses.shape == (len(inputs),)
    assert torch.isfinite(losses).all() and (losses >= workload.lower_bound).all()
    optimizer = polyak.ALIG(model.parameters(), max_lr=0.1)
    optimizer.zero_grad()
    losses.mean().backward()
    optimizer.step(loss=losses.mean())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    for split in (instance.val, instance.test):
        result = instance.evaluate(model, C.truncate(split, 16))  # a few samples keep the test fast
        assert math.isfinite(result["loss"]) and result["loss"] >= 0
        for key, value in result.items():
            if key != "loss":
                assert 0.0 <= value <= 1.0
        if workload.metric == "accuracy":
            assert "accuracy" in result
    assert not model.training  # evaluate() switches to eval mode; the runner switches back


@pytest.mark.parametrize("name", ["mnist-resnet8-aug", "dnc-copy", "kernel-spam", "austen-charrnn"])
def test_builds_are_reproducible(name, fake_data, tmp_path):
    first = get_workload(name).build("quick", 7, tmp_path)
    second = get_workload(name).build("quick", 7, tmp_path)
    other = get_workload(name).build("quick", 8, tmp_path)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(first.model.parameters(), other.model.parameters()))
    # same training data for every trial seed; same augmentation draws for the same seed
    for index in (0, 3, 0):  # index 0 twice: the second visit draws a new crop, alike in both
        x1, y1 = first.train[index]
        x2, y2 = second.train[index]
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(y1, other.train[index][1])


# ------------------------------------------------------------------ matfac
def test_matfac_data_follow_data_md():
    # DATA.md: A = linspace(1, 1e-10, 10)[:, None] * U(0,1)^(10x6); x ~ N(0, I_6), 1000 samples; y = A x
    rng = np.random.RandomState(0)
    A_ref = np.linspace(1, 1e-10, 10)[:, None] * rng.rand(10, 6)
    X_ref = rng.randn(6, 1000).T
    A, X, Y = matfac.make_matrix_factorisation_data()
    np.testing.assert_array_equal(A, A_ref)
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_allclose(Y, X_ref @ A_ref.T)
    train, val, test = matfac.split_indices()
    assert len(test) == 200 and len(train) + len(val) == 800 and len(val) == 80
    assert len(np.unique(np.concatenate([train, val, test]))) == 1000


def test_matfac_workloads_share_the_data_and_split():
    A, X, Y = matfac.make_matrix_factorisation_data()
    train, val, test = matfac.split_indices()
    for name, hidden in (("matfac-rank1", [1]), ("matfac-rank4", [4]), ("matfac-rank10", [10]), ("matfac-true", [])):
        instance = get_workload(name).build("paper", 3, None)
        torch.testing.assert_close(instance.train.inputs, torch.tensor(X[train], dtype=torch.float32))
        torch.testing.assert_close(instance.test.targets, torch.tensor(Y[test], dtype=torch.float32))
        widths = [m.out_features for m in instance.model.modules() if isinstance(m, torch.nn.Linear)]
        assert widths == hidden + [10]
        assert all(m.bias is None for m in instance.model.modules() if isinstance(m, torch.nn.Linear))
    assert instance.budget.epochs == 50 and instance.budget.batch_size == 100


def test_matfac_interpolation_split_is_right():
    # Best rank-k fit in closed form (Eckart-Young on the least-squares fit): ranks 1 and 4
    # leave a positive training loss, rank >= 6 (rank 10, true model) reaches zero.
    A, X, Y = matfac.make_matrix_factorisation_data()
    train, _, _ = matfac.split_indices()
    Xt, Yt = X[train], Y[train]
    W = np.linalg.lstsq(Xt, Yt, rcond=None)[0].T  # 10x6, equals A
    np.testing.assert_allclose(W, A, atol=1e-8)
    U, s, Vt = np.linalg.svd(Yt, full_matrices=False)  # Y = X A^T has rank 6: rank-k fits of Y
    for k, name in ((1, "matfac-rank1"), (4, "matfac-rank4")):
        residual = (s[k:] ** 2).sum() / Yt.size
        assert residual > 1e-6
        assert not get_workload(name).interpolating
    assert s[6:].max() < 1e-8 * s[0]
    assert get_workload("matfac-rank10").interpolating and get_workload("matfac-true").interpolating


# ------------------------------------------------------------------ kernel
def test_rbf_features_match_the_definition():
    rng = np.random.RandomState(0)
    points, centres = rng.randn(7, 3), rng.randn(5, 3)
    features = kernel.rbf_features(points, centres, sigma=0.7, chunk=3)
    for i in range(7):
        for j in range(5):
            expected = math.exp(-np.sum((points[i] - centres[j]) ** 2) / (2 * 0.7**2))
            assert features[i, j] == pytest.approx(expected, rel=1e-6)


def test_kernel_split_standardisation_and_features(fake_data):
    instance = get_workload("kernel-spam").build("paper", 0, None)
    X, y = fake_data["spam"]
    order = C.permutation(len(y))
    Xp, yp = X[order].astype(np.float64), y[order]
    n_train_full = 160  # 80% of 200, unshuffled cut after the fixed permutation
    train_pos, val_pos = C.holdout_split(n_train_full)
    mean, std = Xp[train_pos].mean(0), Xp[train_pos].std(0)
    Z = (Xp - mean) / std
    assert instance.train.inputs.shape == (len(train_pos), len(train_pos))
    torch.testing.assert_close(torch.diagonal(instance.train.inputs), torch.ones(len(train_pos)))
    expected_test = kernel.rbf_features(Z[n_train_full:], Z[train_pos], kernel.SIGMA)
    torch.testing.assert_close(instance.test.inputs, torch.from_numpy(expected_test))
    assert torch.equal(instance.test.targets, torch.from_numpy(yp[n_train_full:]))
    assert instance.model.bias is None and instance.model.in_features == len(train_pos)


# ------------------------------------------------------------ images, noise, crops
def test_label_noise_flips_exactly_the_fraction_to_other_classes():
    labels = np.random.RandomState(0).randint(0, 10, size=5000)
    noisy = C.flip_labels(labels, 0.2, 10)
    changed = noisy != labels
    assert changed.sum() == 1000
    assert ((noisy >= 0) & (noisy < 10)).all()
    # new classes are spread over the 9 others
    shifts = (noisy[changed] - labels[changed]) % 10
    counts = np.bincount(shifts, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 60
    with pytest.raises(ValueError, match="label_noise"):
        C.flip_labels(labels, 1.5, 10)


def test_noisy_workload_keeps_validation_and_test_clean(fake_data):
    instance = get_workload("mnist-resnet8-noisy").build("paper", 0, None)
    train_x, train_y = fake_data["mnist"]["train"]
    train_pos, val_pos = C.holdout_split(len(train_y))
    assert torch.equal(instance.val.targets, torch.from_numpy(train_y[val_pos]))
    assert torch.equal(instance.test.targets, torch.from_numpy(fake_data["mnist"]["test"][1]))
    flipped = (instance.train.targets.numpy() != train_y[train_pos]).mean()
    assert 0.1 < flipped < 0.3


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    image = torch.arange(1, 1 + 2 * 6 * 5, dtype=torch.uint8).view(2, 6, 5)
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    augment = C.random_crop(padding=4)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        out = augment(image, generator)
        assert out.shape == image.shape
        matches = [(t, l) for t in range(9) for l in range(9) if torch.equal(out, padded[:, t : t + 6, l : l + 5])]
        assert matches
        seen.update(matches)
    assert len(seen) > 60  # offsets drawn over the whole 9 x 9 range


def test_seeded_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with C.seeded(123):
        inside = torch.rand(3)
    torch.testing.assert_close(torch.rand(3), expected)
    with C.seeded(123):
        torch.testing.assert_close(torch.rand(3), inside)


def test_evaluate_matches_a_manual_loop():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    data = C.ArrayDataset(torch.randn(1234, 4), torch.randint(0, 3, (1234,)))
    result = C.evaluate(model, data, C.cross_entropy_per_sample, C.argmax_correct, batch_size=100)
    with torch.no_grad():
        logits = model(data.inputs)
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, data.targets).item(), rel=1e-5)
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == data.targets).double().mean().item())


# ------------------------------------------------------------ char-rnn and DNC data
def test_char_windows_shift_targets_by_one():
    ids, vocabulary = encode_text("hello, world! hello again.")
    assert "".join(vocabulary[i] for i in ids) == "hello, world! hello again."
    inputs, targets = windows(ids, length=5)
    assert inputs.shape == targets.shape == ((len(ids) - 1) // 5, 5)
    assert torch.equal(inputs.flatten()[1:], targets.flatten()[:-1])


def test_repeat_copy_sequences():
    inputs, targets = dnc_copy.repeat_copy_data(200, seed=1)
    B = dnc_copy.NUM_BITS
    for x, y in zip(inputs, targets):
        repeat_step = int(torch.nonzero(x[:, B + 1]).item())
        length = repeat_step - 1
        times = round(float(x[repeat_step, B + 1]) * dnc_copy.MAX_REPEATS)
        assert 1 <= length <= 2 and 1 <= times <= 2 and x[0, B] == 1
        pattern = x[1 : 1 + length, :B]
        recall = 2 + length
        assert torch.equal(y[recall : recall + times * length, :B], pattern.repeat(times, 1))
        assert y[recall + times * length, B] == 1
        assert y[:, -1].sum() == times * length + 1
    # a prediction with the right signs and large margins has ~zero loss
    logits = 40 * (2 * targets[..., :-1] - 1)
    assert dnc_copy.masked_bce_per_sample(logits.clamp(-20, 20), targets).max() < 1e-6 * 20 * 10
    assert dnc_copy.masked_bit_correct(logits, targets).all()


# ------------------------------------------------------------ user data absent
@pytest.mark.parametrize("name", USER_DATA)
def test_user_data_workloads_say_what_is_missing(name, tmp_path, monkeypatch):
    empty_root = tmp_path / "empty"
    empty_root.mkdir()
    monkeypatch.setenv("POLYAK_DATA_DIR", str(empty_root))
    for data_dir in (None, empty_root):
        with pytest.raises(datasets.DatasetMissing) as error:
            get_workload(name).build("quick", 0, data_dir)
        message = str(error.value)
        assert name in message and "download" in message and "--data-dir" in message


# ------------------------------------------------------------ real data
def _needs(name):
    if not datasets.is_available(name):
        pytest.skip(f"real data set {name!r} is not fetched; run `polyak data fetch {name}`")


@pytest.mark.realdata
def test_real_mnist_split_sizes():
    _needs("mnist")
    instance = get_workload("mnist-resnet8").build("paper", 0, None)
    assert len(instance.train) + len(instance.val) == 60000 and len(instance.val) == 6000
    assert len(instance.test) == 10000
    x, _ = instance.val.get_batch(torch.arange(len(instance.val)))
    # normalised with MNIST's pixel statistics: mean ~0, std ~1
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


@pytest.mark.realdata
def test_real_spam_kernel_workload():
    _needs("kernlab")
    instance = get_workload("kernel-spam").build("paper", 0, None)
    assert len(instance.test) == 920 and len(instance.train) + len(instance.val) == 3681
    # the fixed permutation mixes the classes of the sorted source file into the test set
    assert 0.3 < float(instance.test.targets.float().mean()) < 0.5


@pytest.mark.realdata
def test_real_austen_windows():
    _needs("austen")
    instance = get_workload("austen-charrnn").build("paper", 0, None)
    assert instance.model.head.out_features == 81  # DATA.md: 81 symbols
    windows_total = len(instance.train) + len(instance.val) + len(instance.test)
    assert windows_total == pytest.approx(4_025_027 / 50, rel=1e-3)
    x, y = instance.train[0]
    assert x.shape == y.shape == (50,) and torch.equal(x[1:], y[:-1])


# ------------------------------------------------------------ user data present (real loaders)
def test_cifar_workload_reads_the_python_pickle_layout(tmp_path):
    import pickle

    rng = np.random.RandomState(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.randint(0, 256, size=(10, 3072)).astype(np.uint8), b"labels": list(rng.randint(0, 10, size=10))}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    instance = get_workload("cifar10-resnet8").build("paper", 0, tmp_path)
    assert len(instance.train) + len(instance.val) == 50 and len(instance.test) == 10
    x, y = instance.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # channel order: pickle rows are [R(1024) G(1024) B(1024)], the model sees [C, H, W]
    with open(folder / "test_batch", "rb") as handle:
        first = pickle.load(handle)[b"data"][0].reshape(3, 32, 32)
    image, _ = instance.test.get_batch(torch.arange(1))
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(3, 1, 1)
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(3, 1, 1)
    torch.testing.assert_close(image[0] * std + mean, torch.from_numpy(first).float() / 255, atol=1e-5, rtol=0)


def test_imdb_workload_reads_the_aclimdb_layout(tmp_path):
    reviews = {"pos": ["A great film!<br />Loved it.", "Great actor, great plot."], "neg": ["Boring.", "Bad plot, bad film."]}
    for split in ("train", "test"):
        for sentiment, texts in reviews.items():
            folder = tmp_path / "aclImdb" / split / sentiment
            folder.mkdir(parents=True)
            for i, text in enumerate(texts * 5):
                (folder / f"{i}_{8 if sentiment == 'pos' else 2}.txt").write_text(text, encoding="utf-8")
    instance = get_workload("imdb-bilstm").build("paper", 0, tmp_path)
    assert len(instance.train) + len(instance.val) == 20 and len(instance.test) == 20
    tokens, label = instance.test[0]
    assert tokens.shape == (256,) and (tokens[:1] > 1).all() and (tokens[20:] == 0).all()
    result = instance.evaluate(instance.model, instance.test)
    assert 0 <= result["accuracy"] <= 1

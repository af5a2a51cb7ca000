"""Small helpers shared by the test modules."""
import io
import math

import torch


def through_torch_save(obj):
    """``obj`` after a torch.save / torch.load round trip in memory: what a checkpoint
    written to disk and read back gives (tensors copied, Python state pickled)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def assert_same_state(actual, expected, where="state"):
    """Two (nested) optimizer states are equal: tensors bit-identical (same dtype and
    shape), everything else == (a NaN float equals a NaN float: a bit-identical state)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: {type(actual).__name__} instead of a tensor"
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), f"{where}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), f"{where}: keys {sorted(map(str, actual))} != {sorted(map(str, expected))}"
        for key in expected:
            assert_same_state(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_state(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), f"{where}: {actual!r} != nan"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


class RaisesOnCall:
    """A closure that returns ``loss_fn()`` until its ``fail_at``-th call (1-based), which raises."""

    class Failure(RuntimeError):
        pass

    def __init__(self, loss_fn, fail_at):
        self.loss_fn, self.fail_at, self.calls = loss_fn, fail_at, 0

    def __call__(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RaisesOnCall.Failure(f"closure call {self.calls}")
        return self.loss_fn()


def linear_classification_problem(seed=0, n_batches=40, n_classes=5, n_features=4, batch=8,
                                  labels="random", loss=None):
    """A linear classifier on fixed random batches: ``([W0, b0], loss_fn, batch ids)``
    with ``loss_fn([W, b], i)`` the mean loss of batch i (cross-entropy unless ``loss``
    is given as ``loss(scores, targets)``). ``labels="teacher"``: labels of a linear
    teacher, so the loss can reach 0 (interpolation)."""
    gen = torch.Generator().manual_seed(seed)
    W0 = torch.randn(n_classes, n_features, generator=gen)
    b0 = torch.randn(n_classes, generator=gen)
    X = torch.randn(n_batches, batch, n_features, generator=gen)
    if labels == "teacher":
        teacher = torch.randn(n_classes, n_features, generator=gen)
        Y = (X @ teacher.T).argmax(-1)
    else:
        Y = torch.randint(0, n_classes, (n_batches, batch), generator=gen)
    criterion = torch.nn.functional.cross_entropy if loss is None else loss

    def loss_fn(params, i):
        W, b = params
        return criterion(X[i] @ W.T + b, Y[i])

    return [W0, b0], loss_fn, list(range(n_batches))


def line_search_step(opt, closure):
    """One step of a line-search-family optimizer on ``closure`` (the loss WITHOUT
    backward): PAL, SLS and LABPAL take the closure itself; L4, which is loss-driven,
    takes the loss after backward."""
    from polyak import L4

    if isinstance(opt, L4):
        opt.zero_grad()
        loss = closure()
        loss.backward()
        opt.step(loss=loss)
    else:
        opt.step(closure)

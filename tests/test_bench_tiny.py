"""A tiny synthetic workload and fake optimizers, one per way of feeding step().

Imported by the other test_bench_* modules, and loaded as a plugin
(``--plugin tests/test_bench_tiny.py``) by the CLI tests that run in subprocesses.
Registration is idempotent so both routes can meet in one process.

The data are fixed (independent of the trial seed) so the fakes can recompute
losses from their own parameters and check what the runner fed them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from polyak import OptimizerSpec
from polyak.bench.optimizers import register_bench_optimizer
from polyak.bench.workloads import Budget, Workload, WorkloadInstance, register_workload

WORKLOAD = "tiny-test"
N_TRAIN, N_EVAL, FEATURES, CLASSES = 24, 12, 4, 3
BUDGETS = {"quick": Budget(epochs=3, batch_size=8), "lite": Budget(epochs=2, batch_size=N_TRAIN),
           "paper": Budget(epochs=4, batch_size=8)}
EVENTS: list = []  # ("opt.train" | "opt.eval" | "step" | "evaluate", ...) in call order


def _data():
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(FEATURES, CLASSES, generator=g)
    x = torch.randn(N_TRAIN + 2 * N_EVAL, FEATURES, generator=g)
    return x, (x @ w).argmax(1)


X, Y = _data()
X_TRAIN, Y_TRAIN = X[:N_TRAIN], Y[:N_TRAIN]


def per_sample_loss(output, target):
    return F.cross_entropy(output, target, reduction="none")


def evaluate(model, dataset):
    EVENTS.append(("evaluate",))
    assert not model.training, "the workload contract promises eval mode is set by evaluate itself"
    x, y = dataset.tensors
    with torch.no_grad():
        out = model(x)
    return {"loss": float(per_sample_loss(out, y).mean()), "accuracy": float((out.argmax(1) == y).float().mean())}


def _evaluate(model, dataset):
    model.eval()
    try:
        return evaluate(model, dataset)
    finally:
        model.train()


def build(size, seed, data_dir=None):
    torch.manual_seed(seed)
    return WorkloadInstance(
        model=nn.Linear(FEATURES, CLASSES), train=TensorDataset(X_TRAIN, Y_TRAIN),
        val=TensorDataset(X[N_TRAIN:N_TRAIN + N_EVAL], Y[N_TRAIN:N_TRAIN + N_EVAL]),
        test=TensorDataset(X[N_TRAIN + N_EVAL:], Y[N_TRAIN + N_EVAL:]),
        per_sample_loss=per_sample_loss, evaluate=_evaluate, budget=BUDGETS[size],
    )


def reference_losses(params, index):
    """Per-sample losses of training samples ``index`` under (weight, bias) = params, computed here."""
    weight, bias = params
    with torch.no_grad():
        return per_sample_loss(X_TRAIN[index] @ weight.T + bias, Y_TRAIN[index])


# ------------------------------------------------------------------ fakes
class _FakeBase(torch.optim.Optimizer):
    """Plain gradient descent that checks what it is fed; a failed check raises,
    which the runner records as status "error" with the message."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})
        self.end_epochs = 0
        self.mode = "train"
        self.calls = 0

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def _descend(self):
        with torch.no_grad():
            for p in self._params():
                p.add_(p.grad, alpha=-self.param_groups[0]["lr"])
        self.calls += 1
        EVENTS.append(("step", self.mode))
        self.param_groups[0]["step_size"] = torch.tensor(self.param_groups[0]["lr"] / (1 + self.calls))


class FakeGradient(_FakeBase):
    def step(self, closure=None, **kwargs):
        assert closure is None and not kwargs, f"gradient optimizers get step() with nothing, got {kwargs}"
        assert all(p.grad is not None for p in self._params()), "backward must run before step()"
        self._descend()


def _full_batch_check(params, loss):
    expected = reference_losses(params, torch.arange(N_TRAIN)).mean()
    assert torch.allclose(loss.double(), expected.double(), atol=1e-6), f"loss {float(loss)} != full-batch {float(expected)}"


class FakeLoss(_FakeBase):
    """Runs with a full batch (size "lite"): loss and gradient are checkable."""

    def step(self, closure=None, *, loss=None, **kwargs):
        assert closure is None and not kwargs and loss is not None
        assert loss.dim() == 0 and not loss.requires_grad, "loss= is the detached batch mean"
        params = self._params()
        _full_batch_check(params, loss)
        reference = [p.detach().clone().requires_grad_(True) for p in params]
        per_sample_loss(X_TRAIN @ reference[0].T + reference[1], Y_TRAIN).mean().backward()
        for p, r in zip(params, reference):
            assert torch.allclose(p.grad, r.grad, atol=1e-6), "p.grad is not the gradient of the batch mean loss"
        self._descend()


class FakePerSample(_FakeBase):
    def step(self, closure=None, *, loss=None, index=None):
        assert loss is not None and loss.dim() == 1 and index is not None and index.dtype == torch.long
        assert len(index) == len(loss)
        expected = reference_losses(self._params(), index)
        assert torch.allclose(loss, expected, atol=1e-6), "per-sample losses do not belong to the given indices"
        self.seen = getattr(self, "seen", torch.zeros(N_TRAIN, dtype=torch.long))
        self.seen[index] += 1
        self._descend()

    def end_epoch(self):
        assert bool((self.seen == self.end_epochs + 1).all()), "each sample is seen once per epoch"
        self.end_epochs += 1
        EVENTS.append(("end_epoch", self.end_epochs))


class FakeProbe(_FakeBase):
    """A line search: the closure gives the loss without backward; the optimizer backprops."""

    def step(self, closure=None, **kwargs):
        assert callable(closure) and not kwargs
        params = self._params()
        for p in params:
            assert p.grad is None or not p.grad.any(), "the runner must not backprop for a probe_closure optimizer"
        with torch.enable_grad():
            loss = closure()
        assert loss.dim() == 0 and loss.requires_grad, "closure() returns the graph-attached batch mean loss"
        _full_batch_check(params, loss.detach())
        loss.backward()
        with torch.no_grad():
            again = closure()  # a re-evaluation (without gradients), as line searches do
        assert torch.allclose(again, loss.detach())
        self._descend()
        return loss.detach()


class FakeTrainEval(FakeGradient):
    def train(self):
        self.mode = "train"
        EVENTS.append(("opt.train",))

    def eval(self):
        self.mode = "eval"
        EVENTS.append(("opt.eval",))


class FakeContext(FakeGradient):
    def __init__(self, params, lr=0.1, *, num_samples, epochs, n_batches_per_epoch, total_steps, batch_size,
                 dataset_size, lower_bound=None):
        super().__init__(params, lr)
        self.context = dict(num_samples=num_samples, epochs=epochs, n_batches_per_epoch=n_batches_per_epoch,
                            total_steps=total_steps, batch_size=batch_size, dataset_size=dataset_size,
                            lower_bound=lower_bound)
        expected = dict(num_samples=N_TRAIN, dataset_size=N_TRAIN, batch_size=8, n_batches_per_epoch=math.ceil(N_TRAIN / 8),
                        lower_bound=0.0)
        for key, value in expected.items():
            assert self.context[key] == value, f"context {key}={self.context[key]}, expected {value}"
        assert total_steps == epochs * n_batches_per_epoch


class FakeDiverge(FakeGradient):
    """Blows the weights up on the second step, so the next loss is not finite."""

    def step(self, closure=None):
        super().step()
        if self.calls == 2:
            with torch.no_grad():
                for p in self._params():
                    p.fill_(float("inf"))


FAKES = {
    "fake-gradient": (FakeGradient, {"gradient"}, ()),
    "fake-loss": (FakeLoss, {"loss"}, ()),
    "fake-per-sample": (FakePerSample, {"per_sample_loss", "index", "end_epoch"}, ()),
    "fake-probe": (FakeProbe, {"probe_closure"}, ()),
    "fake-train-eval": (FakeTrainEval, {"gradient", "train_eval"}, ()),
    "fake-context": (FakeContext, {"gradient"}, ("num_samples", "epochs", "n_batches_per_epoch", "total_steps",
                                                 "batch_size", "dataset_size")),
    "fake-diverge": (FakeDiverge, {"gradient"}, ()),
}


MISSING_WORKLOAD = "tiny-missing-data"


def build_missing(size, seed, data_dir=None):
    from polyak.bench.datasets import DatasetMissing

    raise DatasetMissing("data set 'tiny' is not here: run `polyak data fetch tiny`")


def register_tiny():
    for name, builder in ((WORKLOAD, build), (MISSING_WORKLOAD, build_missing)):
        try:
            register_workload(Workload(name=name, metric="accuracy", lower_bound=0.0, interpolating=True, data=None,
                                       budgets=BUDGETS, build=builder, summary="tiny synthetic test workload"))
        except ValueError:
            pass  # already registered by another import of this file
    for name, (cls, needs, context) in FAKES.items():
        spec = OptimizerSpec(name=name, factory=cls, needs=frozenset(needs), passes=(1, 1), defaults={"lr": 0.1},
                             context=frozenset(context), step_size_param="lr", step_size_grid=(0.01, 0.1, 1.0))
        try:
            register_bench_optimizer(spec)
        except ValueError:
            pass


register_tiny()


def test_tiny_workload_follows_the_contract():
    instance = build("quick", 0)
    x, y = instance.train[0]
    assert x.shape == (FEATURES,) and instance.per_sample_loss(instance.model(x[None]), y[None]).shape == (1,)
    metrics = instance.evaluate(instance.model, instance.val)
    assert set(metrics) == {"loss", "accuracy"} and instance.model.training

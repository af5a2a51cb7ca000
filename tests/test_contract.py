"""One contract, every registered optimizer: driven by the registry records alone.

Nothing here branches on an optimizer's name: what a step is fed comes from the
record's `needs`, the constructor's run-dependent arguments from its `context`.
"""
import copy
import inspect
import math

import pytest
import torch
from torch import nn

import polyak
from polyak.bench.feeding import Stepper

from helpers import through_torch_save  # tests/helpers.py

N_SAMPLES, BATCH, EPOCHS = 96, 16, 8
N_BATCHES = N_SAMPLES // BATCH


def _data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N_SAMPLES, 5, generator=gen)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    return X, y


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))


def _context(spec):
    values = {
        "num_samples": N_SAMPLES, "epochs": EPOCHS, "n_batches_per_epoch": N_BATCHES,
        "total_steps": EPOCHS * N_BATCHES, "batch_size": BATCH, "dataset_size": N_SAMPLES,
    }
    return {name: values[name] for name in spec.context}


def _build(spec, model, **extra):
    kwargs = _context(spec)
    if "probe_closure" in spec.needs and "approx_batches" in inspect.signature(spec.factory).parameters:
        # measure over 2 batches and re-measure every 4 updates, so a short test sees the whole cycle
        kwargs.update(approx_batches=2, reuse_steps=4)
    kwargs.update(extra)
    return spec.create(model.parameters(), **kwargs)


def _feed(spec, opt, model, X, y, idx, corrupt=False):
    """One step, fed what the record says the optimizer needs: the harness's own feeding
    (polyak.bench.feeding.Stepper), so the contract holds for what the benchmark does."""
    def per_sample_loss(output, target):
        losses = nn.functional.cross_entropy(output, target, reduction="none")
        return losses * float("nan") if corrupt else losses

    Stepper(spec.needs, opt, model, per_sample_loss).step(idx if "index" in spec.needs else None, X[idx], y[idx])


def _train(spec, opt, model, X, y, epochs, start_epoch=0):
    for epoch in range(start_epoch, start_epoch + epochs):
        order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(epoch))
        for b in range(N_BATCHES):
            _feed(spec, opt, model, X, y, order[b * BATCH:(b + 1) * BATCH])
        if "end_epoch" in spec.needs:
            opt.end_epoch()


SPECS = polyak.specs()
IDS = [s.name for s in SPECS]


def test_every_optimizer_is_registered():
    names = set(polyak.available())
    for expected in ["alig", "alig-inf", "alig-plus", "sps", "pal", "labpal-sgd", "labpal-nsgd",
                     "sls-armijo", "sls-goldstein", "sls-polyak", "l4-adam", "l4-mom", "dfw"]:
        assert expected in names


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_record_matches_the_constructor(spec):
    parameters = inspect.signature(spec.factory).parameters
    for name in list(spec.context) + list(spec.defaults):
        assert name in parameters, f"{spec.name}: {name} is not an argument of {spec.factory.__name__}"
    if spec.step_size_param is not None:
        assert spec.step_size_param in parameters
        assert spec.step_size_grid and all(v > 0 for v in spec.step_size_grid)
    forward, backward = spec.passes
    assert forward >= 1 and backward >= 0


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_training_lowers_the_loss_and_reports_a_step_size(spec):
    X, y = _data()
    model = _model()
    opt = _build(spec, model)
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(X), y).item()
    # 3 epochs: long enough to see progress; LABPAL&SGD's reused learning rate (about 2 on
    # this net) later makes the loss oscillate upwards, which is the method, not the contract.
    _train(spec, opt, model, X, y, 3)
    with torch.no_grad():
        after = nn.functional.cross_entropy(model(X), y).item()
    assert math.isfinite(after) and after < before
    assert all(math.isfinite(float(g["step_size"])) and float(g["step_size"]) >= 0 for g in opt.param_groups)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_cost_counts_at_least_the_declared_passes(spec):
    X, y = _data()
    model = _model()
    opt = _build(spec, model)
    _train(spec, opt, model, X, y, 2)
    steps = 2 * N_BATCHES
    forward, backward = spec.passes
    cost = opt.cost
    assert set(cost) == {"forward", "backward"}
    if float(forward).is_integer() and float(backward).is_integer():
        # a fixed cost per update: exactly that many passes (line searches may spend more forwards)
        assert cost["backward"] == backward * steps
        assert cost["forward"] >= forward * steps
    else:
        assert cost["forward"] >= steps and cost["backward"] >= 1


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_state_dict_round_trip_continues_bit_identically(spec):
    X, y = _data()
    model_a = _model()
    opt_a = _build(spec, model_a)
    _train(spec, opt_a, model_a, X, y, 3)

    saved = through_torch_save({"model": model_a.state_dict(), "opt": opt_a.state_dict()})
    model_b = _model(seed=1)
    model_b.load_state_dict(saved["model"])
    opt_b = _build(spec, model_b)
    opt_b.load_state_dict(saved["opt"])

    rng = torch.get_rng_state()
    _train(spec, opt_a, model_a, X, y, 2, start_epoch=3)
    torch.set_rng_state(rng)
    _train(spec, opt_b, model_b, X, y, 2, start_epoch=3)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_nan_loss_leaves_parameters_bit_identical(spec):
    X, y = _data()
    model = _model()
    opt = _build(spec, model)
    _train(spec, opt, model, X, y, 1)
    before = copy.deepcopy(model.state_dict())
    _feed(spec, opt, model, X, y, torch.arange(BATCH), corrupt=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name

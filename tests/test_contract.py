"""One contract, every registered optimizer: driven by the registry records alone.

Nothing here branches on an optimizer's name: what a step is fed comes from the
record's `needs`, the constructor's run-dependent arguments from its `context`.
"""
import copy
import inspect
import io
import math
import pickle

import pytest
import torch
from torch import nn

import polyak
from polyak.bench.feeding import Stepper

from helpers import assert_same_state, through_torch_save  # tests/helpers.py

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


def _trained(spec, epochs):
    """``(X, y, model, opt)`` after ``epochs`` epochs of ``spec``'s optimizer."""
    X, y = _data()
    model = _model()
    opt = _build(spec, model)
    _train(spec, opt, model, X, y, epochs)
    return X, y, model, opt


def _assert_unchanged(model, before):
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


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
    _, _, model, opt = _trained(spec, 2)
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
    _assert_continue_identically(spec, (opt_a, model_a), (opt_b, model_b), epochs=2, start_epoch=3)


def _assert_continue_identically(spec, run_a, run_b, epochs, start_epoch):
    """Train both (optimizer, model) runs on the same batches from the same RNG state
    (closures may draw random numbers): the parameters end bit-identical."""
    X, y = _data()
    rng = torch.get_rng_state()
    for opt, model in (run_a, run_b):
        torch.set_rng_state(rng)
        _train(spec, opt, model, X, y, epochs, start_epoch=start_epoch)
    for a, b in zip(run_a[1].parameters(), run_b[1].parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_nan_loss_leaves_parameters_bit_identical(spec):
    X, y, model, opt = _trained(spec, 1)
    before = copy.deepcopy(model.state_dict())
    _feed(spec, opt, model, X, y, torch.arange(BATCH), corrupt=True)
    _assert_unchanged(model, before)


# ---------------------------------------------------------------- the policy (issue 7)
def _one_epoch_copy(spec, copier):
    _, _, model, opt = _trained(spec, 1)
    model_b, opt_b = copier((model, opt))
    _assert_continue_identically(spec, (opt, model), (opt_b, model_b), epochs=1, start_epoch=1)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_every_group_has_lr_and_a_step_lr_schedule_runs(spec):
    X, y = _data()
    model = _model()
    opt = _build(spec, model)
    assert all(group["lr"] == 1.0 for group in opt.param_groups)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=N_BATCHES, gamma=0.5)
    for epoch in range(2):
        order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(epoch))
        for b in range(N_BATCHES):
            _feed(spec, opt, model, X, y, order[b * BATCH:(b + 1) * BATCH])
            scheduler.step()
        if "end_epoch" in spec.needs:
            opt.end_epoch()
    assert opt.param_groups[0]["lr"] == 0.25
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_lr_zero_freezes_the_parameters(spec):
    X, y = _data()
    model = _model()
    opt = _build(spec, model, lr=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    _train(spec, opt, model, X, y, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_unknown_group_key_is_refused(spec):
    model = _model()
    with pytest.raises(ValueError, match="no_such_key"):
        spec.create([{"params": list(model.parameters()), "no_such_key": 1.0}], **_context(spec))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_add_param_group_runs_the_checks(spec):
    model = _model()
    opt = _build(spec, model)
    extra = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [extra], "lr": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [extra]})
    assert opt.param_groups[1]["lr"] == 1.0


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_deepcopy_steps_identically(spec):
    _one_epoch_copy(spec, copy.deepcopy)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_pickle_steps_identically(spec):
    _one_epoch_copy(spec, lambda obj: pickle.loads(pickle.dumps(obj)))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_state_dict_loads_with_weights_only(spec):
    _, _, model, opt = _trained(spec, 1)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    _build(spec, model).load_state_dict(torch.load(buffer, weights_only=True))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_foreign_state_is_refused(spec):
    # the state of the next registered optimizer of another class
    other = next(s for s in SPECS[SPECS.index(spec) + 1:] + SPECS if s.factory is not spec.factory)
    model = _model()
    with pytest.raises(ValueError, match=other.factory.__name__):
        _build(spec, model).load_state_dict(_build(other, model).state_dict())


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_empty_batch_is_a_counted_skip_that_changes_nothing(spec):
    X, y, model, opt = _trained(spec, 1)
    before = copy.deepcopy(model.state_dict())
    skipped = opt.skipped_steps
    # a counted skip, not an error: under DDP one rank's batch may be empty (polyak._base)
    _feed(spec, opt, model, X, y, torch.arange(0))
    assert opt.skipped_steps == skipped + 1
    _assert_unchanged(model, before)


CLOSURE_SPECS = [s for s in SPECS if "probe_closure" in s.needs]


@pytest.mark.parametrize("spec", CLOSURE_SPECS, ids=[s.name for s in CLOSURE_SPECS])
def test_raising_closure_restores_parameters_and_state(spec):
    X, y, model, opt = _trained(spec, 1)
    for step in range(8):   # LABPAL re-evaluates only on some steps: raise at the first re-evaluation
        params_before = copy.deepcopy(model.state_dict())
        state_before = copy.deepcopy(opt.state_dict())
        calls = []

        def closure():
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("data loader died")
            return nn.functional.cross_entropy(model(X[:BATCH]), y[:BATCH])

        try:
            opt.step(closure)
        except RuntimeError as error:
            assert "data loader died" in str(error)
            break
    else:
        pytest.fail("no step re-evaluated its closure")
    _assert_unchanged(model, params_before)
    assert_same_state(opt.state_dict()["state"], state_before["state"])

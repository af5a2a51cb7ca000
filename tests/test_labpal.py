"""LABPAL against closed-form answers on exact parabolas, numpy's gradient for the
published fit, the batch-size schedule, failure handling and state resume."""
import copy
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import polyak
from polyak._closure import ClosureError
from polyak.labpal import LABPAL

CURVATURE = torch.tensor([4.0, 8.0, 12.0], dtype=torch.float64)
START = torch.tensor([0.25, 0.25, 0.25], dtype=torch.float64)


def _centres(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.02 * torch.randn(3, generator=g, dtype=torch.float64) for _ in range(n)]


def _quadratic(w, centre):
    """Batch loss 0.5 sum h (w - c)^2: every mean of such losses is an exact parabola along any line."""
    return lambda: 0.5 * (CURVATURE * (w - centre) ** 2).sum()


def _along_line(w0, direction, centres, x):
    """Mean batch loss at w0 - x * direction / ||direction||, in numpy float64."""
    u = (direction / direction.norm()).numpy()
    h, w = CURVATURE.numpy(), w0.numpy()
    return np.mean([0.5 * np.sum(h * (w - x * u - c.numpy()) ** 2) for c in centres])


def _true_minimiser(w0, direction, centres):
    u = direction / direction.norm()
    centre = torch.stack(centres).mean(0)
    return float((u * CURVATURE * (w0 - centre)).sum() / (u * CURVATURE * u).sum())


def _small(**kwargs):
    base = dict(approx_batches=4, reuse_steps=5, total_steps=10_000, untrusted_updates=10_000)
    return {**base, **kwargs}


@pytest.mark.parametrize("mode", ["nsgd", "sgd"])
def test_exact_fit_first_measurement_moves_alpha_times_the_true_minimiser(mode):
    w = nn.Parameter(START.clone())
    centres = _centres(4)
    opt = LABPAL([w], mode=mode, **_small())
    for i, c in enumerate(centres):
        before = w.detach().clone()
        opt.step(_quadratic(w, c))
        if i < 3:  # only the last measurement call moves
            assert torch.equal(w.detach(), before) and opt.measuring
    direction = CURVATURE * (START - centres[0])  # gradient of the first (k = 1) batch
    minimiser = _true_minimiser(START, direction, centres)
    assert 0.1 < minimiser < 1.0  # below max_step: the clip is inactive
    expected_step = 1.8 * minimiser
    expected_w = START - expected_step * direction / direction.norm()
    torch.testing.assert_close(w.detach(), expected_w, rtol=1e-6, atol=1e-9)
    assert opt.update_step == pytest.approx(expected_step, rel=1e-6)
    assert opt.learning_rate == pytest.approx(expected_step / float(direction.norm()), rel=1e-6)
    assert opt.global_state["step"] == 1 and not opt.measuring
    # n calls: n first forwards + 2 n re-evaluations, 1 backward (k = 1)
    assert opt.cost == {"forward": 12, "backward": 1}

    # Then plain updates reuse the value: a readable reference step.
    centre = _centres(1, seed=5)[0]
    w_before = w.detach().clone()
    grad = CURVATURE * (w_before - centre)
    opt.step(_quadratic(w, centre))
    if mode == "sgd":
        expected = w_before - opt.learning_rate * grad
    else:
        expected = w_before - opt.update_step * grad / grad.norm()
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-12)
    assert opt.cost == {"forward": 13, "backward": 2}


def test_max_step_clips_before_alpha():
    w = nn.Parameter(START.clone())
    centres = _centres(2)
    opt = LABPAL([w], approx_batches=2, max_step=0.05, reuse_steps=5, untrusted_updates=10_000)
    for c in centres:
        opt.step(_quadratic(w, c))
    assert opt.update_step == pytest.approx(1.8 * 0.05, rel=1e-12)


def test_reference_fit_reproduces_the_published_numpy_computation():
    w = nn.Parameter(START.clone())
    centres = _centres(4)
    opt = LABPAL([w], fit="reference", **_small())
    for c in centres:
        opt.step(_quadratic(w, c))
    direction = CURVATURE * (START - centres[0])
    points = np.array([0.0, 1.77e-4, 0.01])
    losses = np.array([_along_line(START, direction, centres, x) for x in points])
    first = np.gradient(losses, points)
    second = np.gradient(first, points)
    b, a = first[0], second[0] / 2
    expected_step = 1.8 * min(-b / (2 * a), 1.0)
    assert opt.last_fit["points"] == (0.0, 1.77e-4, 0.01)
    assert opt.update_step == pytest.approx(expected_step, rel=1e-5)
    # ... which is about twice the exact-fit step on a parabola
    exact_step = 1.8 * _true_minimiser(START, direction, centres)
    assert opt.update_step / exact_step == pytest.approx(2.0, rel=0.01)
    expected_w = START - expected_step * direction / direction.norm()
    torch.testing.assert_close(w.detach(), expected_w, rtol=1e-5, atol=1e-8)


def _trace_schedule(calls, **kwargs):
    w = nn.Parameter(START.clone())
    opt = LABPAL([w], **kwargs)
    seen = []
    for t, c in enumerate(_centres(calls)):
        opt.step(_quadratic(w, c))
        seen.append(opt.batch_inferences)
    return opt, seen


def test_batch_size_schedule_switches_at_half_and_three_quarters():
    # cycle: a 2-call measurement + 3 one-call updates = 5 calls, so calls 20 and 30 are boundaries
    opt, seen = _trace_schedule(40, approx_batches=2, reuse_steps=3, total_steps=40, untrusted_updates=0)
    assert seen[:20] == [1] * 20 and seen[20:30] == [2] * 10 and seen[30:] == [4] * 10


def test_batch_size_switch_waits_for_the_update_boundary_and_starts_a_measurement():
    # k = 2 (noise factor 2): updates take calls (2j, 2j+1); the switch to 4 is due at
    # call 21 (50% of 42), inside the update of calls 20-21, so it happens at call 22
    opt, seen = _trace_schedule(24, batch_size=64, approx_batches=1, reuse_steps=3, total_steps=42, untrusted_updates=0)
    assert seen[:22] == [2] * 22 and seen[22:] == [4, 4]
    assert opt.measuring  # the new batch size is measured first


@pytest.mark.parametrize("batch_size, dataset_size, expected", [(64, 40000, 2), (128, 80000, 2), (128, 40000, 1), (256, 40000, 1)])
def test_noise_factor_multiplies_the_inferences_per_update(batch_size, dataset_size, expected):
    w = nn.Parameter(START.clone())
    opt = LABPAL([w], batch_size=batch_size, dataset_size=dataset_size)
    assert opt.noise_factor == pytest.approx((128 / batch_size) * (dataset_size / 40000))
    assert opt.batch_inferences == expected


def test_an_update_averages_the_gradients_of_k_calls():
    w = nn.Parameter(START.clone())
    opt = LABPAL([w], mode="sgd", approx_batches=1, reuse_steps=5, batch_size=64, untrusted_updates=10_000)
    assert opt.batch_inferences == 2
    centres = _centres(4)
    opt.step(_quadratic(w, centres[0]))
    opt.step(_quadratic(w, centres[1]))  # measurement over 1 * k = 2 batches ends here
    assert opt.global_state["step"] == 1
    w_before = w.detach().clone()
    opt.step(_quadratic(w, centres[2]))
    assert torch.equal(w.detach(), w_before)  # half an update: nothing moves
    opt.step(_quadratic(w, centres[3]))
    mean_grad = (CURVATURE * (w_before - centres[2]) + CURVATURE * (w_before - centres[3])) / 2
    torch.testing.assert_close(w.detach(), w_before - opt.learning_rate * mean_grad, rtol=1e-12, atol=1e-12)


def _concave(w):
    return lambda: -(w ** 2).sum() + 10.0


def test_first_failed_measurement_keeps_the_documented_zero_step_and_remeasures():
    w = nn.Parameter(START.clone())
    opt = LABPAL([w], **_small())
    for _ in range(4):
        opt.step(_concave(w))
    assert opt.last_fit["accepted"] is False and "curvature" in opt.last_fit["reason"]
    assert opt.update_step == 0.0 and opt.learning_rate == 0.0
    assert torch.equal(w.detach(), START)  # bit-exactly back at the base point
    assert opt.global_state["step"] == 0 and opt.global_state["labpal"].failed_measurements == 1
    opt.step(_concave(w))
    assert opt.measuring  # nothing to reuse: the next call measures again


def test_non_finite_fit_fails_without_crashing():
    w = nn.Parameter(START.clone())

    def closure():  # finite at the base point, NaN once the parameters move 1e-2
        return (w ** 2).sum() + 0 * torch.log(1e-3 - (w - START).abs().sum())

    opt = LABPAL([w], **_small())
    for _ in range(4):
        opt.step(closure)
    assert opt.last_fit["accepted"] is False and "not finite" in opt.last_fit["reason"]
    assert torch.equal(w.detach(), START) and opt.update_step == 0.0


def test_failed_measurement_after_a_success_keeps_and_moves_by_the_previous_step():
    w = nn.Parameter(START.clone())
    opt = LABPAL([w], approx_batches=2, reuse_steps=1, untrusted_updates=10_000)
    centres = _centres(3)
    opt.step(_quadratic(w, centres[0]))
    opt.step(_quadratic(w, centres[1]))
    kept = opt.update_step
    opt.step(_quadratic(w, centres[2]))  # the one reuse update
    base = w.detach().clone()
    opt.step(_concave(w))  # a new measurement: concave -> fails
    opt.step(_concave(w))
    assert opt.last_fit["accepted"] is False and opt.update_step == kept
    direction = -2 * base
    torch.testing.assert_close(w.detach(), base - kept * direction / direction.norm(), rtol=1e-12, atol=1e-12)


def test_trusted_measurements_are_averaged_over_the_last_ones():
    w = nn.Parameter(START.clone())
    opt = LABPAL([w], approx_batches=1, reuse_steps=1, untrusted_updates=3, average_over=2)
    records = []
    for c in _centres(20, seed=3):
        updates_before = opt.global_state["step"]
        machine = opt.global_state["labpal"]
        was_measurement = machine.measuring or updates_before >= machine.next_measure_update
        opt.step(_quadratic(w, c))
        if was_measurement:
            records.append((updates_before, opt.last_fit["measured_step"], opt.update_step))
    trusted = []
    for updates_before, measured, used in records:
        if updates_before >= 3:
            trusted.append(measured)
            assert used == pytest.approx(np.mean(trusted[-2:]), rel=1e-12)
        else:
            assert used == measured
    assert len(trusted) >= 3


def _dropout_bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


def _batches(n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, 4, generator=g)
    return [(xi, xi.sum(1, keepdim=True)) for xi in x]


def _run(model, opt, batches):
    losses = []
    for x, y in batches:
        losses.append(opt.step(lambda x=x, y=y: ((model(x) - y) ** 2).mean()))
    return torch.stack(losses)


@pytest.mark.parametrize("mode", ["nsgd", "sgd"])
def test_state_dict_round_trip_mid_measurement_continues_bit_identically(mode):
    model = _dropout_bn_model()
    batches = _batches(30)
    opt = LABPAL(model.parameters(), mode=mode, approx_batches=4, reuse_steps=3, total_steps=24, untrusted_updates=6,
                 average_over=2, momentum=0.5)
    _run(model, opt, batches[:9])
    assert opt.measuring
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    expected_losses = _run(model, opt, batches[9:])
    expected_params = [p.detach().clone() for p in model.parameters()]
    expected_cost = opt.cost

    model.load_state_dict(saved_model)
    resumed = LABPAL(model.parameters(), mode=mode, approx_batches=4, reuse_steps=3, total_steps=24,
                     untrusted_updates=6, average_over=2, momentum=0.5)
    resumed.load_state_dict(saved_opt)
    torch.set_rng_state(rng)
    losses = _run(model, resumed, batches[9:])
    assert torch.equal(losses, expected_losses)
    assert all(torch.equal(a, p) for a, p in zip(expected_params, model.parameters()))
    assert resumed.cost == expected_cost and resumed.global_state["step"] > 4


@pytest.mark.parametrize("mode", ["nsgd", "sgd"])
def test_a_checkpoint_mid_measurement_loads_weights_only_and_resumes_bit_identically(mode):
    model = _dropout_bn_model()
    batches = _batches(16)
    kwargs = dict(mode=mode, approx_batches=4, reuse_steps=3, momentum=0.5)
    opt = LABPAL(model.parameters(), **kwargs)
    _run(model, opt, batches[:9])  # a measurement (4 calls), 3 updates, 2 calls of the next measurement
    assert opt.measuring and opt.global_state["labpal"].measurement.index == 2
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "model": model.state_dict()}, buffer)
    rng = torch.get_rng_state()
    expected = _run(model, opt, batches[9:])
    expected_params = [p.detach().clone() for p in model.parameters()]

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain tensors and python values only
    model.load_state_dict(saved["model"])
    resumed = LABPAL(model.parameters(), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.load_state_dict(saved["opt"])
    torch.set_rng_state(rng)
    assert torch.equal(_run(model, resumed, batches[9:]), expected)
    assert all(torch.equal(a, p) for a, p in zip(expected_params, model.parameters()))
    assert resumed.global_state["step"] == opt.global_state["step"] > 4


def test_a_checkpoint_within_the_direction_batches_restarts_that_measurement_with_a_warning():
    # k = 2 (batch_size 64): the first 2 calls of a measurement give the direction; after
    # the first, its closure is needed at the second and cannot be checkpointed
    model = _dropout_bn_model()
    batches = _batches(8)
    opt = LABPAL(model.parameters(), approx_batches=2, batch_size=64)
    _run(model, opt, batches[:1])
    assert opt.batch_inferences == 2 and opt.measuring
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed = LABPAL(model.parameters(), approx_batches=2, batch_size=64)
    with pytest.warns(RuntimeWarning, match="measurement restarts"):
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert not resumed.measuring and resumed.global_state["labpal"].measuring
    _run(model, resumed, batches[1:5])  # a whole new measurement of 2 * 2 batches
    assert resumed.global_state["step"] == 1 and not resumed.measuring


def test_a_state_mid_measurement_loaded_with_fewer_approx_batches_resumes_its_own_measurement():
    w = nn.Parameter(START.clone())
    centres = _centres(4)
    opt = LABPAL([w], **_small(approx_batches=4))
    for c in centres[:3]:
        opt.step(_quadratic(w, c))
    assert opt.global_state["labpal"].measurement.index == 3
    smaller = LABPAL([w], **_small(approx_batches=2))
    smaller.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert smaller.approx_batches == 4  # the checkpoint's settings, as torch restores them
    smaller.step(_quadratic(w, centres[3]))  # the 4th batch ends the measurement
    assert not smaller.measuring and smaller.global_state["step"] == 1
    reference = LABPAL([nn.Parameter(START.clone())], **_small(approx_batches=4))
    v = reference.param_groups[0]["params"][0]
    for c in centres:
        reference.step(_quadratic(v, c))
    assert smaller.update_step == reference.update_step
    assert torch.equal(w.detach(), v.detach())


def test_a_measurement_already_longer_than_approx_batches_ends_at_the_next_call():
    # e.g. approx_batches lowered by hand in the param groups mid-measurement: ">=", not "=="
    w = nn.Parameter(START.clone())
    centres = _centres(4)
    opt = LABPAL([w], **_small(approx_batches=4))
    for c in centres[:3]:
        opt.step(_quadratic(w, c))
    for group in opt.param_groups:
        group["approx_batches"] = 2
    opt.step(_quadratic(w, centres[3]))
    assert not opt.measuring and opt.global_state["step"] == 1


def test_torch_save_between_measurements_resumes_exactly():
    model = _dropout_bn_model()
    batches = _batches(12)
    kwargs = dict(approx_batches=2, reuse_steps=4)
    opt = LABPAL(model.parameters(), **kwargs)
    _run(model, opt, batches[:4])
    assert not opt.measuring
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    saved_model, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    expected = _run(model, opt, batches[4:])
    model.load_state_dict(saved_model)
    buffer.seek(0)
    resumed = LABPAL(model.parameters(), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.load_state_dict(torch.load(buffer, weights_only=False))
    torch.set_rng_state(rng)
    assert torch.equal(_run(model, resumed, batches[4:]), expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="adam"), "mode must be one of"),
    (dict(fit="cubic"), "fit must be one of"),
    (dict(approx_batches=0), "approx_batches must be an integer >= 1"),
    (dict(approx_batches=2.5), "approx_batches must be an integer"),
    (dict(reuse_steps=0), "reuse_steps must be an integer >= 1"),
    (dict(alpha=0.0), "alpha must be a finite number > 0"),
    (dict(max_step=-1.0), "max_step must be a finite number > 0"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(measure_points=(0.0, 1e-2, 1e-4)), "0 < x1 < x2"),
    (dict(measure_points=(1e-4, 1e-3, 1e-2)), "starting at 0"),
    (dict(measure_points=(0.0, 1e-2)), "three finite distances"),
    (dict(total_steps=0), "total_steps must be an integer >= 1"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(dataset_size=-5), "dataset_size must be an integer >= 1"),
    (dict(batch_schedule=((0.5, 2),)), "batch_schedule must be"),
    (dict(batch_schedule=((0.0, 1), (0.5, 0))), "batch_schedule must be"),
    (dict(untrusted_updates=-1), "untrusted_updates must be an integer >= 0"),
    (dict(average_over=0), "average_over must be an integer >= 1"),
])
def test_bad_hyperparameters_raise_errors_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LABPAL([nn.Parameter(START.clone())], **kwargs)


def test_param_group_overrides_are_rejected():
    with pytest.raises(ValueError, match="alpha cannot be set per group"):
        LABPAL([{"params": [nn.Parameter(START.clone())], "alpha": 2.0}])


def test_bad_closures_raise_the_contract_error():
    w = nn.Parameter(START.clone())
    opt = LABPAL([w])
    with pytest.raises(ClosureError, match="needs a closure"):
        opt.step()

    def calls_backward():
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    with pytest.raises(ClosureError, match="calls backward"):
        opt.step(calls_backward)
    assert opt.global_state["labpal"].batches == 0  # a rejected batch is not consumed


def test_registry_entries():
    for mode in ("sgd", "nsgd"):
        spec = polyak.get_spec(f"labpal-{mode}")
        assert spec.needs == {"probe_closure"}
        assert spec.context == {"total_steps", "batch_size", "dataset_size"}
        opt = spec.create([nn.Parameter(START.clone())], total_steps=100, batch_size=128, dataset_size=40000)
        assert isinstance(opt, LABPAL) and opt.mode == mode
        forward, backward = spec.passes
        assert forward == pytest.approx(1030 / 1001) and backward == 1.0


# ----------------------------------------------------------------------------- raising closures
@pytest.mark.parametrize("batch_size, failing_call, fail_at", [
    (128, 1, 2),   # k = 1: the direction batch raises at x1 (its 2nd evaluation)
    (128, 3, 3),   # k = 1: a later batch raises at x2
    (128, 4, 2),   # k = 1: the last batch of the measurement raises before the fit
    (64, 2, 2),    # k = 2: the 1st direction batch's kept closure raises when re-evaluated at x2
    (128, 6, 1),   # a training call raises at its only evaluation
])
def test_a_raising_closure_restores_parameters_and_state_and_keeps_no_closure(batch_size, failing_call, fail_at):
    from helpers import RaisesOnCall, assert_same_state

    batches = _batches(14)
    kwargs = dict(approx_batches=2 if batch_size == 64 else 4, reuse_steps=3, momentum=0.5, batch_size=batch_size)

    def run(with_failure):
        model = _dropout_bn_model()
        opt = LABPAL(model.parameters(), **kwargs)
        closures = [lambda x=x, y=y: ((model(x) - y) ** 2).mean() for x, y in batches]
        torch.manual_seed(3)
        for closure in closures[:failing_call - 1]:
            opt.step(closure)
        if with_failure:
            params_before = [p.detach().clone() for p in model.parameters()]
            state_before = copy.deepcopy(opt.state_dict())
            held_before = [p.closure for p in opt._direction_probes]
            rng = torch.get_rng_state()
            failing = closures[failing_call - 1]
            if batch_size == 64:  # the closure that raises is the one kept from call 1
                kept = opt._direction_probes[0]
                kept.closure = raising = RaisesOnCall(kept.closure, fail_at=fail_at)
            else:
                failing = raising = RaisesOnCall(failing, fail_at=fail_at)
            with pytest.raises(RaisesOnCall.Failure):
                opt.step(failing)
            assert raising.calls == fail_at
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params_before))
            assert_same_state(opt.state_dict(), state_before)
            if batch_size == 64:
                kept.closure = raising.loss_fn
            assert [p.closure for p in opt._direction_probes] == held_before  # nothing new kept
            torch.set_rng_state(rng)
        for closure in closures[failing_call:]:  # not stuck: as if the failed call never happened
            opt.step(closure)
        return model, opt

    failed_model, failed_opt = run(with_failure=True)
    model, opt = run(with_failure=False)
    assert all(torch.equal(p, q) for p, q in zip(failed_model.parameters(), model.parameters()))
    assert_same_state(failed_opt.state_dict(), opt.state_dict())
    assert opt.global_state["step"] >= 2


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_are_refused_instead_of_standing_still(dtype):
    with pytest.raises(ValueError, match="autocast"):
        LABPAL([nn.Parameter(START.clone().to(dtype))])
    opt = LABPAL([nn.Parameter(START.clone().float())])
    with pytest.raises(ValueError, match=str(dtype)):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2, dtype=dtype))]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("mode", ["nsgd", "sgd"])
def test_a_complex_parameter_steps_as_its_real_view(mode):
    from complex_problem import assert_same_trajectory, loss_of_complex, loss_of_real, pair

    z, w = pair()
    kwargs = dict(mode=mode, approx_batches=2, reuse_steps=3, momentum=0.5, batch_size=64)  # k = 2
    on_complex, on_real = LABPAL([z], **kwargs), LABPAL([w], **kwargs)
    for i in range(12):
        on_complex.step(lambda i=i: loss_of_complex(z, i))
        on_real.step(lambda i=i: loss_of_real(w, i))
    assert on_real.global_state["step"] >= 3
    assert_same_trajectory(z, w)
    assert on_complex.state[z]["momentum_buffer"].dtype == z.dtype  # shaped like the parameter


@pytest.mark.parametrize("mode", ["nsgd", "sgd"])
def test_the_foreach_path_matches_the_per_tensor_loop_in_float64(mode):
    trained = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 1)).double()
        opt = LABPAL(model.parameters(), mode=mode, approx_batches=2, reuse_steps=3, momentum=0.5, batch_size=64,
                     foreach=foreach)
        batches = [(x.double(), y.double()) for x, y in _batches(20)]
        torch.manual_seed(1)
        _run(model, opt, batches)
        assert opt.global_state["step"] >= 5 and opt.global_state["labpal"].measurements >= 2
        trained.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*trained):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)

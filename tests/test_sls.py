"""SLS: float64 reference loops written from ALGORITHMS.md and the paper (Armijo,
Goldstein, heavy-ball momentum) over two param groups, the reference's edge rules,
BatchNorm and cost accounting, resume, and bad input."""
import copy
import io
import math

import pytest
import torch

import polyak
from polyak import NonFiniteError
from polyak._closure import ClosureError
from polyak.sls import SLS


@pytest.fixture(autouse=True)
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ----------------------------------------------------------------------------- reference
def reference_sls(params0, batches, loss_fn, *, condition, init_step_size=1.0, c=0.1, beta=0.9, gamma=2.0,
                  reset=1, eta_max=10.0, n_batches_per_epoch=500, momentum=0.0, grow_factor=2.0, max_tries=100):
    """One global search per step over the concatenation of all parameters."""
    w = [p.clone() for p in params0]
    previous = [p.clone() for p in w]
    eta = init_step_size
    applied, forwards, shrinks, grows = [], 0, 0, 0
    for batch in batches:
        leaves = [p.clone().requires_grad_(True) for p in w]
        loss_t = loss_fn(leaves, batch)
        grads = torch.autograd.grad(loss_t, leaves)
        loss, forwards = loss_t.item(), forwards + 1
        grad_sq = sum(float((g * g).sum()) for g in grads)
        if reset == 1:
            eta = eta * gamma ** (1 / n_batches_per_epoch)
        elif reset == 2:
            eta = init_step_size
        if eta_max is not None:
            eta = min(eta, eta_max)
        new = [p.clone() for p in w]
        used = 0.0
        if math.sqrt(grad_sq) >= 1e-8:
            found = False
            for _ in range(max_tries):
                trial = [p - eta * g for p, g in zip(w, grads)]
                trial_loss, forwards = loss_fn(trial, batch).item(), forwards + 1
                armijo = trial_loss <= loss - c * eta * grad_sq
                if condition == "armijo":
                    if armijo:
                        found = True
                        break
                    eta, shrinks = eta * beta, shrinks + 1
                else:
                    upper = trial_loss >= loss - (1 - c) * eta * grad_sq
                    if armijo and upper:
                        found = True
                        break
                    if armijo:
                        grown = eta * grow_factor if eta_max is None else min(eta * grow_factor, eta_max)
                        if grown == eta:
                            found = True
                            break
                        eta, grows = grown, grows + 1
                    else:
                        eta, shrinks = max(eta * beta, 1e-8), shrinks + 1
            if found:
                new, used = trial, eta
            elif condition == "armijo":
                new, used = [p - 1e-6 * g for p, g in zip(w, grads)], 1e-6
        new = [n + momentum * (p - q) for n, p, q in zip(new, w, previous)]
        previous, w = w, new
        applied.append(used)
    return w, applied, forwards, shrinks, grows


def regression_problem(seed=0, n_steps=24):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([4.0, 1.0, 0.3, 2.0, 0.1])  # ill-conditioned: eta = 1 is far too long
    batches = []
    for _ in range(n_steps):
        x = torch.randn(12, 5, generator=gen) * scales
        y = torch.tanh(x @ torch.tensor([0.5, -1.0, 2.0, 0.3, 1.0])) + 0.05 * torch.randn(12, generator=gen)
        batches.append((x, y))
    weight0 = 0.1 * torch.randn(5, generator=gen)
    bias0 = torch.tensor([0.2])
    return [weight0, bias0], batches


def regression_loss(params, batch):
    weight, bias = params
    x, y = batch
    return ((torch.tanh(x @ weight + bias) - y) ** 2).mean()


CASES = {
    "armijo": dict(condition="armijo", reset=1, n_batches_per_epoch=4),
    "armijo-reset2": dict(condition="armijo", reset=2, init_step_size=3.0),
    "goldstein": dict(condition="goldstein", reset=0, init_step_size=1e-3, c=0.2, eta_max=10.0),
    "goldstein-reset1": dict(condition="goldstein", reset=1, n_batches_per_epoch=3, init_step_size=0.05),
    "polyak-momentum": dict(condition="armijo", reset=0, momentum=0.6),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_matches_the_reference_loop_over_two_param_groups(case):
    kwargs = CASES[case]
    params0, batches = regression_problem()
    expected, expected_steps, expected_forwards, shrinks, grows = reference_sls(params0, batches, regression_loss, **kwargs)
    assert shrinks > 0  # the trajectory exercises backtracking
    if kwargs["condition"] == "goldstein":
        assert grows > 0

    weight, bias = (p.clone().requires_grad_(True) for p in params0)
    opt = SLS([{"params": [weight]}, {"params": [bias]}], **kwargs)
    applied = []
    for batch in batches:
        opt.step(lambda: regression_loss([weight, bias], batch))
        applied.append(opt.param_groups[0]["step_size"])
        assert opt.param_groups[1]["step_size"] == opt.param_groups[0]["step_size"]
    # The multi-tensor kernels may round p - eta*g once (fused) where the loop rounds twice;
    # 24 steps through tanh amplify those last-bit differences to ~1e-11. The decisions
    # (every accepted step size, every trial forward) must still agree.
    torch.testing.assert_close(weight.detach(), expected[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bias.detach(), expected[1], rtol=1e-10, atol=1e-12)
    assert applied == pytest.approx(expected_steps, rel=1e-10)
    assert opt.cost == {"forward": expected_forwards, "backward": len(batches)}


# ----------------------------------------------------------------------------- edge rules
def test_goldstein_on_a_line_grows_to_eta_max_and_stops_there():
    # linear loss: the decrease is exactly eta*||g||^2, so only the Armijo side ever holds
    c_vec = torch.tensor([1.0, -2.0])
    w0 = torch.tensor([0.3, 0.4])
    w = w0.clone().requires_grad_(True)
    opt = SLS([w], condition="goldstein", reset=0, init_step_size=1.0, eta_max=10.0)
    opt.step(lambda: c_vec @ w)
    # trials at 1, 2, 4, 8, 10; the reference would repeat 10 until 100 trials, same result
    assert opt.global_state["trials"] == 5
    assert opt.cost == {"forward": 6, "backward": 1}
    torch.testing.assert_close(w.detach(), w0 - 10.0 * c_vec, rtol=0, atol=1e-14)
    assert opt.global_state["search_step_size"] == 10.0


def test_failed_armijo_search_takes_the_reference_fallback_step():
    w0 = torch.tensor([1.0, -1.0])
    w = w0.clone().requires_grad_(True)
    opt = SLS([w], reset=0, init_step_size=1e3, max_tries=3, eta_max=None)
    opt.step(lambda: (w ** 4).sum())  # steps of 1e3, 900, 810 all overshoot
    g = 4 * w0 ** 3
    torch.testing.assert_close(w.detach(), w0 - 1e-6 * g, rtol=0, atol=1e-15)
    assert opt.param_groups[0]["step_size"] == 1e-6
    assert opt.global_state["search_step_size"] == pytest.approx(1e3 * 0.9 ** 3, rel=1e-15)
    assert opt.cost == {"forward": 4, "backward": 1}


def test_tiny_gradient_runs_no_trial_but_still_resets_the_step_size():
    w = torch.tensor([1.0], requires_grad=True)
    opt = SLS([w], reset=1, n_batches_per_epoch=2)
    opt.step(lambda: 1e-10 * w.sum())
    assert torch.equal(w.detach(), torch.tensor([1.0]))
    assert opt.cost == {"forward": 1, "backward": 1}
    assert opt.global_state["search_step_size"] == pytest.approx(2 ** 0.5)


def test_eta_max_caps_the_reset_growth_and_none_lifts_it():
    w = torch.tensor([1.0], requires_grad=True)
    capped = SLS([w], reset=1, n_batches_per_epoch=1, init_step_size=8.0, eta_max=10.0)
    capped.step(lambda: 1e-10 * w.sum())
    assert capped.global_state["search_step_size"] == 10.0
    free = SLS([w], reset=1, n_batches_per_epoch=1, init_step_size=8.0, eta_max=None)
    free.step(lambda: 1e-10 * w.sum())
    assert free.global_state["search_step_size"] == 16.0


def test_trials_leave_batchnorm_statistics_as_one_training_forward_moves_them():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 1))
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    weight0, bias0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    mean_before = model[1].running_mean.clone()
    opt = SLS(model.parameters(), init_step_size=50.0, reset=0)  # forces several trials
    opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
    assert opt.global_state["trials"] > 1
    expected_mean = 0.9 * mean_before + 0.1 * (x @ weight0.T + bias0).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean, rtol=1e-12, atol=1e-14)
    assert int(model[1].num_batches_tracked) == 1


def test_every_trial_sees_the_dropout_mask_of_its_step():
    params0, batches = regression_problem(seed=3, n_steps=3)
    # Each step's first forward draws the next mask from the global stream; trials replay it.
    torch.manual_seed(5)
    masks = [torch.nn.functional.dropout(torch.ones(12), 0.5) for _ in batches]
    masked = [((x, y, m)) for (x, y), m in zip(batches, masks)]

    def masked_loss(params, batch):
        weight, bias = params
        x, y, mask = batch
        return (mask * (torch.tanh(x @ weight + bias) - y) ** 2).mean()

    expected, *_ = reference_sls(params0, masked, masked_loss, condition="armijo", reset=0)
    weight, bias = (p.clone().requires_grad_(True) for p in params0)
    opt = SLS([weight, bias], reset=0)
    torch.manual_seed(5)
    for x, y in batches:
        opt.step(lambda: (torch.nn.functional.dropout(torch.ones(12), 0.5)
                          * (torch.tanh(x @ weight + bias) - y) ** 2).mean())
    torch.testing.assert_close(weight.detach(), expected[0], rtol=1e-10, atol=1e-12)
    assert opt.cost["forward"] > 2 * len(batches) - 1


# ----------------------------------------------------------------------------- resume
def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))


def train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen) * 3
        y = torch.randint(0, 3, (16,), generator=gen)
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("kwargs", [
    dict(condition="armijo", momentum=0.6, reset=1, n_batches_per_epoch=3, init_step_size=5.0),
    dict(condition="goldstein", reset=0),
], ids=["armijo-momentum", "goldstein"])
def test_state_dict_round_trip_mid_training_continues_bit_identically(kwargs):
    model = make_model()
    groups = lambda m: [{"params": m[0].parameters()}, {"params": m[3].parameters()}]
    opt = SLS(groups(model), **kwargs)
    torch.manual_seed(1)
    train(model, opt, 4, seed=10)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    rng = torch.get_rng_state()
    train(model, opt, 5, seed=11)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = make_model()
    resumed.load_state_dict(saved["model"])
    resumed_opt = SLS(groups(resumed), **kwargs)
    resumed_opt.load_state_dict(saved["opt"])
    torch.set_rng_state(rng)
    train(resumed, resumed_opt, 5, seed=11)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert resumed_opt.cost == opt.cost
    assert resumed_opt.global_state["search_step_size"] == opt.global_state["search_step_size"]


@pytest.mark.parametrize("momentum", [0.0, 0.6])
def test_per_tensor_loop_matches_the_foreach_path(momentum):
    trained = []
    for foreach in (True, False):
        model = make_model()
        opt = SLS(model.parameters(), momentum=momentum, init_step_size=5.0, foreach=foreach)
        torch.manual_seed(1)
        train(model, opt, 5, seed=10)
        trained.append(list(model.parameters()))
    for p, q in zip(*trained):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- non-finite
def test_non_finite_loss_skips_with_parameters_and_step_size_untouched():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = SLS([w], reset=1, n_batches_per_epoch=2)
    opt.step(lambda: (w * w).sum() * float("nan"))
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))
    assert opt.global_state["search_step_size"] == 1.0 and opt.skipped_steps == 1
    with pytest.raises(NonFiniteError):
        SLS([w], nonfinite="raise").step(lambda: (w * w).sum() * float("inf"))


def test_nan_trial_loss_backtracks():
    w0 = torch.tensor([0.5, 0.5])
    w = w0.clone().requires_grad_(True)
    opt = SLS([w], reset=0, init_step_size=1.0, eta_max=None)
    # log(1 - |w|^2) is NaN past the unit ball: eta = 1 and 0.9 land outside, 0.81 inside
    opt.step(lambda: -torch.log(1 - (w * w).sum()) + (w * w).sum())
    assert opt.global_state["trials"] > 1 and torch.isfinite(w).all()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, name", [
    ({"condition": "wolfe"}, "condition"),
    ({"init_step_size": 0.0}, "init_step_size"),
    ({"c": 0.0}, "c must"),
    ({"c": 1.0}, "c must"),
    ({"condition": "goldstein", "c": 0.5}, "c must"),
    ({"beta": 0.0}, "beta"),
    ({"beta": 1.0}, "beta"),
    ({"gamma": 0.5}, "gamma"),
    ({"reset": 3}, "reset"),
    ({"reset": True}, "reset"),
    ({"eta_max": -1.0}, "eta_max"),
    ({"n_batches_per_epoch": 0}, "n_batches_per_epoch"),
    ({"n_batches_per_epoch": 2.5}, "n_batches_per_epoch"),
    ({"momentum": 1.0}, "momentum"),
    ({"grow_factor": 1.0}, "grow_factor"),
    ({"max_tries": 0}, "max_tries"),
    ({"nonfinite": "ignore"}, "nonfinite"),
])
def test_bad_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SLS([torch.zeros(2, requires_grad=True)], **kwargs)


def test_per_group_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="c cannot be set per group"):
        SLS([{"params": [torch.zeros(2, requires_grad=True)], "c": 0.2}])


def test_bad_closures_raise_closure_error():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = SLS([w])
    with pytest.raises(ClosureError, match="closure"):
        opt.step()
    with pytest.raises(ClosureError, match="closure"):
        opt.step(loss=(w * w).sum())

    def calls_backward():
        loss = (w * w).sum()
        loss.backward()
        return loss

    with pytest.raises(ClosureError, match="backward"):
        opt.step(calls_backward)
    with pytest.raises(ClosureError, match="mean"):
        opt.step(lambda: w * w)
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))


def test_registry_names_and_their_defaults():
    p = [torch.zeros(2, requires_grad=True)]
    for name in ("sls-armijo", "sls-goldstein", "sls-polyak"):
        spec = polyak.get_spec(name)
        assert spec.needs == frozenset({"probe_closure"})
        assert spec.context == frozenset({"n_batches_per_epoch"})
    assert polyak.create("sls-armijo", p, n_batches_per_epoch=7).n_batches_per_epoch == 7
    goldstein = polyak.create("sls-goldstein", p)
    assert goldstein.condition == "goldstein" and goldstein.reset == 0
    heavy_ball = polyak.create("sls-polyak", p)
    assert heavy_ball.condition == "armijo" and heavy_ball.momentum == 0.6 and heavy_ball.reset == 0


# ----------------------------------------------------------------------------- raising closure
@pytest.mark.parametrize("fail_at", [2, 4], ids=["first-trial", "third-trial"])
@pytest.mark.parametrize("kwargs", [dict(momentum=0.6, reset=1, n_batches_per_epoch=3, init_step_size=50.0, eta_max=None),
                                    dict(condition="goldstein", reset=0, init_step_size=50.0, eta_max=None)], ids=["armijo-momentum", "goldstein"])
def test_a_closure_raising_mid_search_restores_parameters_and_state_and_re_raises(kwargs, fail_at):
    from helpers import RaisesOnCall, assert_same_state

    model = make_model()
    opt = SLS(model.parameters(), **kwargs)
    torch.manual_seed(1)
    train(model, opt, 3, seed=10)
    params_before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(16, 4) * 3, torch.randint(0, 3, (16,))
    opt.global_state["search_step_size"] = 1e5  # the next search starts far too long: several trials
    state_before = copy.deepcopy(opt.state_dict())
    closure = RaisesOnCall(lambda: torch.nn.functional.cross_entropy(model(x), y), fail_at=fail_at)
    with pytest.raises(RaisesOnCall.Failure):
        opt.step(closure)
    assert closure.calls == fail_at
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params_before))
    assert_same_state(opt.state_dict(), state_before)


@pytest.mark.parametrize("kwargs", [dict(), dict(condition="goldstein", reset=0), dict(momentum=0.6, reset=0)])
def test_a_complex_parameter_steps_as_its_real_view(kwargs):
    from complex_problem import assert_same_trajectory, loss_of_complex, loss_of_real, pair

    z, w = pair()
    on_complex, on_real = SLS([z], **kwargs), SLS([w], **kwargs)
    for i in range(10):
        on_complex.step(lambda: loss_of_complex(z, i))
        on_real.step(lambda: loss_of_real(w, i))
    assert_same_trajectory(z, w)
    assert all(t.dtype == z.dtype for t in on_complex.state[z].values())  # shaped like the parameter

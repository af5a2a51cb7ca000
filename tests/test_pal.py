"""PAL: closed-form line minima on quadratics, the three branches of the update rule,
the non-finite guard, one global direction, resume, and bad input."""
import copy
import io

import pytest
import torch

import polyak
from polyak import NonFiniteError
from polyak._closure import ClosureError
from polyak.pal import PAL


@pytest.fixture(autouse=True)
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


A = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.5]], dtype=torch.float64)
B = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)


def quadratic(w):
    return 0.5 * w @ A @ w - B @ w


def exact_line_minimiser(w, d):
    """argmin_t f(w - t d) of the quadratic: t = (g.d) / (d A d)."""
    g = A @ w - B
    return w - (g @ d) / (d @ A @ d) * d


# ----------------------------------------------------------------------------- closed forms
def test_lands_on_the_exact_line_minimiser_in_one_step_for_two_forwards_and_one_backward():
    w0 = torch.tensor([2.0, -3.0, 1.0])
    w = w0.clone().requires_grad_(True)
    opt = PAL([w], update_factor=1.0, max_step=1e9, momentum=0.0)
    opt.step(lambda: quadratic(w))
    g = A @ w0 - B
    torch.testing.assert_close(w.detach(), exact_line_minimiser(w0, g), rtol=0, atol=1e-12)
    assert opt.cost == {"forward": 2, "backward": 1}
    # step_size is the learning rate on g; update_step the distance along g/||g||
    t = (g @ g) / (g @ A @ g)
    assert float(opt.param_groups[0]["step_size"]) == pytest.approx(float(t), rel=1e-12)
    assert float(opt.param_groups[0]["update_step"]) == pytest.approx(float(t * g.norm()), rel=1e-12)


def test_one_global_direction_over_two_param_groups():
    w0 = torch.tensor([2.0, -3.0, 1.0])
    head = w0[:1].clone().requires_grad_(True)
    tail = w0[1:].clone().requires_grad_(True)
    opt = PAL([{"params": [head]}, {"params": [tail]}], update_factor=1.0, max_step=1e9, momentum=0.0)
    opt.step(lambda: quadratic(torch.cat([head, tail])))
    expected = exact_line_minimiser(w0, A @ w0 - B)
    torch.testing.assert_close(torch.cat([head, tail]).detach(), expected, rtol=0, atol=1e-12)
    assert float(opt.param_groups[0]["step_size"]) == float(opt.param_groups[1]["step_size"])


def test_direction_adaptation_searches_along_beta_d_plus_g():
    beta = 0.4
    w0 = torch.tensor([2.0, -3.0, 1.0])
    w = w0.clone().requires_grad_(True)
    opt = PAL([w], update_factor=1.0, max_step=1e9, momentum=beta)
    opt.step(lambda: quadratic(w))
    d1 = A @ w0 - B  # the first direction is the gradient
    w1 = exact_line_minimiser(w0, d1)
    opt.step(lambda: quadratic(w))
    d2 = beta * d1 + (A @ w1 - B)
    torch.testing.assert_close(w.detach(), exact_line_minimiser(w1, d2), rtol=0, atol=1e-12)


def test_update_factor_multiplies_and_max_step_clips_after_it():
    w0 = torch.tensor([2.0, -3.0, 1.0])
    g = A @ w0 - B
    minimum_distance = float((g @ g) / (g @ A @ g) * g.norm())  # s* along the unit direction
    factor = 1 / 0.6
    # s* < max_step < factor * s*: clipping BEFORE the factor would move factor * s*.
    max_step = 1.2 * minimum_distance
    w = w0.clone().requires_grad_(True)
    opt = PAL([w], update_factor=factor, max_step=max_step, momentum=0.0)
    opt.step(lambda: quadratic(w))
    torch.testing.assert_close(w.detach(), w0 - max_step * g / g.norm(), rtol=0, atol=1e-12)
    group = opt.param_groups[0]
    assert bool(group["clipped"]) is True
    assert float(group["update_step"]) == pytest.approx(max_step, rel=1e-14)
    assert float(group["unclipped_step_size"]) * float(g.norm()) == pytest.approx(factor * minimum_distance, rel=1e-12)

    w2 = w0.clone().requires_grad_(True)
    PAL([w2], update_factor=factor, max_step=10 * minimum_distance, momentum=0.0).step(lambda: quadratic(w2))
    torch.testing.assert_close(w2.detach(), w0 - factor * minimum_distance * g / g.norm(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("loss_fn", [lambda w: -(w @ w), lambda w: -(B @ w)], ids=["concave", "linear"])
def test_non_positive_curvature_moves_the_measuring_step(loss_fn):
    w0 = torch.tensor([2.0, -3.0, 1.0])
    mu = 0.3
    w = w0.clone().requires_grad_(True)
    opt = PAL([w], measuring_step=mu, momentum=0.0)
    opt.step(lambda: loss_fn(w))
    g = torch.func.grad(loss_fn)(w0)
    torch.testing.assert_close(w.detach(), w0 - mu * g / g.norm(), rtol=0, atol=1e-14)
    assert float(opt.global_state["parabola"]["curvature"]) <= 1e-12


def test_negative_curvature_step_is_clipped_by_max_step():
    w0 = torch.tensor([2.0, -3.0, 1.0])
    w = w0.clone().requires_grad_(True)
    opt = PAL([w], measuring_step=2.0, max_step=0.5, momentum=0.0)
    opt.step(lambda: -(w @ w))
    g = -2 * w0
    torch.testing.assert_close(w.detach(), w0 - 0.5 * g / g.norm(), rtol=0, atol=1e-14)


def test_no_move_when_the_adapted_direction_is_not_a_descent_direction():
    c1 = torch.tensor([1.0, 2.0, -1.0])
    w = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    opt = PAL([w], momentum=0.4)
    opt.step(lambda: c1 @ w)  # linear: moves mu along -c1; direction buffer d1 = c1
    before = w.detach().clone()
    # g2 = -0.1 c1 gives d2 = 0.4 c1 - 0.1 c1 = 0.3 c1, so g2.d2 < 0 and the slope b > 0
    opt.step(lambda: (-0.1 * c1) @ w)
    assert float(opt.global_state["parabola"]["slope"]) > 0
    assert torch.equal(w.detach(), before)
    assert float(opt.param_groups[0]["step_size"]) == 0.0
    assert opt.global_state["step"] == 2 and opt.skipped_steps == 0


def test_zero_gradient_is_a_step_that_moves_nothing():
    w = torch.tensor([0.5, -0.5], requires_grad=True)
    before = w.detach().clone()
    opt = PAL([w], momentum=0.0)
    opt.step(lambda: (w * 0.0).sum() + 3.0)
    assert torch.equal(w.detach(), before)
    assert opt.skipped_steps == 0 and opt.global_state["step"] == 1


# ----------------------------------------------------------------------------- non-finite
def nan_at_measuring_point(w):
    calls = []

    def closure():
        calls.append(None)
        loss = quadratic(w)
        return loss if len(calls) == 1 else loss * float("nan")

    return closure


def test_non_finite_parabola_restores_parameters_and_state_bit_identically():
    w = torch.tensor([2.0, -3.0, 1.0], requires_grad=True)
    opt = PAL([w], momentum=0.4)
    opt.step(lambda: quadratic(w))  # a good step first, so a direction buffer exists
    before_w = w.detach().clone()
    before_state = copy.deepcopy(opt.state_dict())
    opt.step(nan_at_measuring_point(w))
    assert torch.equal(w.detach(), before_w)
    after_state = opt.state_dict()
    assert torch.equal(after_state["state"][0]["direction"], before_state["state"][0]["direction"])
    assert opt.skipped_steps == 1 and opt.global_state["step"] == 1
    assert opt.cost == {"forward": 4, "backward": 2}  # the failed step's passes were spent


def test_non_finite_parabola_raises_when_asked_after_restoring():
    w = torch.tensor([2.0, -3.0, 1.0], requires_grad=True)
    before = w.detach().clone()
    opt = PAL([w], nonfinite="raise")
    with pytest.raises(NonFiniteError):
        opt.step(nan_at_measuring_point(w))
    assert torch.equal(w.detach(), before)


def test_non_finite_start_loss_skips_before_measuring():
    w = torch.tensor([2.0, -3.0, 1.0], requires_grad=True)
    before = w.detach().clone()
    opt = PAL([w])
    opt.step(lambda: quadratic(w) * float("inf"))
    assert torch.equal(w.detach(), before)
    assert opt.skipped_steps == 1 and opt.cost == {"forward": 1, "backward": 1}


# ----------------------------------------------------------------------------- resume
def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))


def train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))


def test_state_dict_round_trip_mid_training_continues_bit_identically():
    model = make_model()
    groups = lambda m: [{"params": m[0].parameters()}, {"params": m[3].parameters()}]
    opt = PAL(groups(model), momentum=0.4)
    torch.manual_seed(1)
    train(model, opt, 4, seed=10)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    rng = torch.get_rng_state()
    train(model, opt, 4, seed=11)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = make_model()
    resumed.load_state_dict(saved["model"])
    resumed_opt = PAL(groups(resumed), momentum=0.4)
    resumed_opt.load_state_dict(saved["opt"])
    torch.set_rng_state(rng)
    train(resumed, resumed_opt, 4, seed=11)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert resumed_opt.cost == opt.cost and resumed_opt.global_state["step"] == 8


@pytest.mark.parametrize("momentum", [0.0, 0.4])
def test_per_tensor_loop_matches_the_foreach_path(momentum):
    trained = []
    for foreach in (True, False):
        model = make_model()
        opt = PAL(model.parameters(), momentum=momentum, foreach=foreach)
        torch.manual_seed(1)
        train(model, opt, 5, seed=10)
        trained.append(list(model.parameters()))
    for p, q in zip(*trained):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_unchecked_mode_makes_no_move_on_a_non_finite_parabola_without_reading_flags():
    w = torch.tensor([2.0, -3.0, 1.0], requires_grad=True)
    before = w.detach().clone()
    opt = PAL([w], momentum=0.0, nonfinite="unchecked")
    opt.step(nan_at_measuring_point(w))
    assert torch.equal(w.detach(), before)  # s = 0 from the branch-free rule
    assert opt.skipped_steps == 0


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, name", [
    ({"measuring_step": 0.0}, "measuring_step"),
    ({"measuring_step": float("nan")}, "measuring_step"),
    ({"update_factor": -1.0}, "update_factor"),
    ({"max_step": 0.0}, "max_step"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"nonfinite": "ignore"}, "nonfinite"),
])
def test_bad_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PAL([torch.zeros(2, requires_grad=True)], **kwargs)


def test_per_group_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="measuring_step.*constructor"):
        PAL([{"params": [torch.zeros(2, requires_grad=True)], "measuring_step": 0.1}])


def test_max_step_none_disables_the_clip():
    w0 = torch.tensor([2.0, -3.0, 1.0])
    w = w0.clone().requires_grad_(True)
    PAL([w], update_factor=1.0, max_step=None, momentum=0.0).step(lambda: quadratic(w))
    torch.testing.assert_close(w.detach(), exact_line_minimiser(w0, A @ w0 - B), rtol=0, atol=1e-12)


def test_bad_closures_raise_closure_error():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = PAL([w])
    with pytest.raises(ClosureError, match="closure"):
        opt.step()
    with pytest.raises(ClosureError, match="closure"):
        opt.step(loss=(w * w).sum())
    with pytest.raises(ClosureError, match="callable"):
        opt.step(3.0)

    def calls_backward():
        loss = (w * w).sum()
        loss.backward()
        return loss

    with pytest.raises(ClosureError, match="backward"):
        opt.step(calls_backward)
    with pytest.raises(ClosureError, match="item"):
        opt.step(lambda: (w * w).sum().detach().item())
    with pytest.raises(ClosureError, match="mean"):
        opt.step(lambda: w * w)
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))


def test_registered_with_its_needs():
    spec = polyak.get_spec("pal")
    assert spec.needs == frozenset({"probe_closure"}) and spec.passes == (2, 1)
    opt = polyak.create("pal", [torch.zeros(2, requires_grad=True)])
    assert isinstance(opt, PAL) and opt.momentum == 0.4 and opt.max_step == 3.16


# ----------------------------------------------------------------------------- raising closure
def test_a_closure_raising_at_the_measuring_point_restores_parameters_and_state_and_re_raises():
    from helpers import RaisesOnCall, assert_same_state

    model = make_model()
    opt = PAL(model.parameters(), momentum=0.4)
    torch.manual_seed(1)
    train(model, opt, 3, seed=10)  # a direction buffer and a parabola exist
    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(opt.state_dict())
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    closure = RaisesOnCall(lambda: torch.nn.functional.cross_entropy(model(x), y), fail_at=2)
    with pytest.raises(RaisesOnCall.Failure):
        opt.step(closure)
    assert closure.calls == 2
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params_before))
    assert_same_state(opt.state_dict(), state_before)
    # and the optimizer carries on as if the failed step never happened
    twin = make_model()
    twin.load_state_dict(model.state_dict())
    twin_opt = PAL(twin.parameters(), momentum=0.4)
    twin_opt.load_state_dict(state_before)
    rng = torch.get_rng_state()
    train(model, opt, 2, seed=11)
    torch.set_rng_state(rng)
    train(twin, twin_opt, 2, seed=11)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_a_complex_parameter_steps_as_its_real_view():
    from complex_problem import assert_same_trajectory, loss_of_complex, loss_of_real, pair

    z, w = pair()
    on_complex, on_real = PAL([z], momentum=0.4), PAL([w], momentum=0.4)
    for i in range(10):
        on_complex.step(lambda: loss_of_complex(z, i))
        on_real.step(lambda: loss_of_real(w, i))
    assert_same_trajectory(z, w)
    assert on_complex.state[z]["direction"].dtype == z.dtype  # state shaped like the parameter, as in torch

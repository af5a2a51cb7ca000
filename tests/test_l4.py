"""L4Adam and L4Mom: a float64 reference loop written from ALGORITHMS.md and the authors'
TensorFlow code (order of the L_min updates, bias corrections, Adam eps 1e-4), resume,
negative and non-finite losses, bad input."""
import copy

import pytest
import torch

import polyak
from polyak import NonFiniteError
from polyak.l4 import L4

from helpers import through_torch_save  # tests/helpers.py


# float64 everywhere (tests/conftest.py); one intra-op thread comes from there too
pytestmark = pytest.mark.usefixtures("float64")


# ----------------------------------------------------------------------------- closed forms
def test_first_momentum_step_aims_at_fraction_of_the_way_to_the_target_loss():
    # Step 1: g_hat = g (bias correction), v = g, L_min = 0.75 l, so
    # eta = alpha (l - 0.9 * 0.75 l) / ||g||^2: the linearised loss drops by alpha (1 - 0.675) l.
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    opt = L4([w], base="momentum", fraction=0.15, eps=1e-300)
    loss = w.norm()  # ||g|| = 1
    loss.backward()
    opt.step(loss=loss)
    eta = 0.15 * (5.0 - 0.9 * 0.75 * 5.0)
    assert float(opt.param_groups[0]["step_size"]) == pytest.approx(eta, rel=1e-14)
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) * (1 - eta / 5.0), atol=1e-14)
    # L_min after the step: 0.75 l_0, then forgotten by the factor 1.001
    assert float(opt.global_state["min_loss"]) == pytest.approx(0.75 * 5.0 * 1.001, rel=1e-14)


def test_first_adam_step_uses_the_sign_like_direction_with_eps_1e_4():
    w = torch.tensor([3.0, -4.0], requires_grad=True)
    opt = L4([w], base="adam")
    loss = 0.5 * (w ** 2).sum()  # g = w
    loss.backward()
    opt.step(loss=loss)
    g = torch.tensor([3.0, -4.0])
    v = g / (g.abs() + 1e-4)  # bias-corrected moments of one gradient: m_hat = g, s_hat = g^2
    eta = 0.15 * (12.5 - 0.9 * 0.75 * 12.5) / (float(v @ g) + 1e-12)
    assert torch.allclose(w.detach(), g - eta * v, atol=1e-13)


# ----------------------------------------------------------------------- reference trajectory
def reference_l4(params0, batches, loss_fn, base, fractions, gamma=0.9, init_factor=0.75, forget_time=1000.0,
                 betas=(0.9, 0.999), adam_eps=1e-4, eps=1e-12):
    """Readable L4 (one loop over tensors); params0 is a list of groups (lists of tensors)."""
    groups = [[p.clone() for p in g] for g in params0]
    m = [[torch.zeros_like(p) for p in g] for g in groups]
    s = [[torch.zeros_like(p) for p in g] for g in groups]
    min_loss = None
    for t, batch in enumerate(batches, start=1):
        leaves = [[p.clone().requires_grad_(True) for p in g] for g in groups]
        loss = loss_fn([p for g in leaves for p in g], batch)
        flat_grads = torch.autograd.grad(loss, [p for g in leaves for p in g])
        loss = float(loss.detach())
        it = iter(flat_grads)
        grads = [[next(it) for _ in g] for g in groups]
        # 1. L_min: 0.75 l_0 on the first step, then the running minimum
        min_loss = init_factor * loss if min_loss is None else min(min_loss, loss)
        # 2. moments, bias corrections, directions
        directions, estimates = [], []
        for gi in range(len(groups)):
            for k, g in enumerate(grads[gi]):
                m[gi][k] = betas[0] * m[gi][k] + (1 - betas[0]) * g
                s[gi][k] = betas[1] * s[gi][k] + (1 - betas[1]) * g * g
            g_hat = [mk / (1 - betas[0] ** t) for mk in m[gi]]
            if base == "adam":
                v = [gh / (torch.sqrt(sk / (1 - betas[1] ** t)) + adam_eps) for gh, sk in zip(g_hat, s[gi])]
            else:
                v = g_hat
            directions.append(v)
            estimates.append(g_hat)
        inner = sum(float((v * gh).sum()) for vs, ghs in zip(directions, estimates) for v, gh in zip(vs, ghs))
        # 3. the step, one inner product over all groups, each group's own fraction
        for gi, g in enumerate(groups):
            eta = fractions[gi] * (loss - gamma * min_loss) / (inner + eps)
            for p, v in zip(g, directions[gi]):
                p -= eta * v
        # 4. forget the minimum slowly
        min_loss *= 1.0 + 1.0 / forget_time
    return groups


def make_problem(seed=0, n_batches=24):
    gen = torch.Generator().manual_seed(seed)
    W0 = torch.randn(5, 4, generator=gen)
    b0 = torch.randn(5, generator=gen)
    X = torch.randn(n_batches, 8, 4, generator=gen)
    Y = torch.randint(0, 5, (n_batches, 8), generator=gen)

    def loss_fn(params, i):
        W, b = params
        return torch.nn.functional.cross_entropy(X[i] @ W.T + b, Y[i])

    return [W0, b0], loss_fn, list(range(n_batches))


def run_ours(params0, batches, loss_fn, two_groups, fractions, **kwargs):
    W = params0[0].clone().requires_grad_(True)
    b = params0[1].clone().requires_grad_(True)
    if two_groups:
        groups = [{"params": [W], "fraction": fractions[0]}, {"params": [b], "fraction": fractions[1]}]
    else:
        groups = [W, b]
    opt = L4(groups, fraction=fractions[0], **kwargs)
    for i in batches:
        opt.zero_grad()
        loss = loss_fn([W, b], i)
        loss.backward()
        opt.step(loss=loss)
    return [W.detach(), b.detach()], opt


@pytest.mark.parametrize("base", ["adam", "momentum"])
@pytest.mark.parametrize("two_groups,foreach", [(False, True), (True, True), (True, False)])
def test_trajectory_matches_reference_loop(base, two_groups, foreach):
    params0, loss_fn, batches = make_problem()
    fractions = (0.15, 0.3) if two_groups else (0.15,)
    ref = reference_l4([[params0[0]], [params0[1]]] if two_groups else [params0], batches, loss_fn, base, fractions)
    ours, opt = run_ours(params0, batches, loss_fn, two_groups, fractions, base=base, foreach=foreach)
    ref_flat = [p for g in ref for p in g]
    for a, b in zip(ours, ref_flat):
        assert (a - b).abs().max().item() < 1e-10
    assert not torch.equal(ours[0], params0[0])
    assert opt.global_state["step"] == len(batches)
    assert opt.cost == {"forward": len(batches), "backward": len(batches)}


def test_non_default_hyperparameters_match_reference_loop():
    params0, loss_fn, batches = make_problem(seed=1)
    kwargs = dict(gamma=0.5, init_factor=0.2, betas=(0.8, 0.99), adam_eps=1e-3, eps=1e-9)
    ref = reference_l4([params0], batches, loss_fn, "adam", (0.1,), forget_time=50.0, **kwargs)
    ours, _ = run_ours(params0, batches, loss_fn, False, (0.1,), base="adam", min_loss_forget_time=50.0, **kwargs)
    for a, b in zip(ours, ref[0]):
        assert (a - b).abs().max().item() < 1e-10


# ---------------------------------------------------------------------------- state_dict resume
@pytest.mark.parametrize("base", ["adam", "momentum"])
def test_state_dict_round_trip_continues_bit_identically(base):
    params0, loss_fn, batches = make_problem(n_batches=24)

    def fresh():
        W = params0[0].clone().requires_grad_(True)
        b = params0[1].clone().requires_grad_(True)
        return [W, b], L4([W, b], base=base)

    def train(params, opt, idx):
        for i in idx:
            opt.zero_grad()
            loss = loss_fn(params, i)
            loss.backward()
            opt.step(loss=loss)

    p_full, o_full = fresh()
    train(p_full, o_full, batches)
    p_half, o_half = fresh()
    train(p_half, o_half, batches[:11])
    saved = through_torch_save({"params": [p.detach().clone() for p in p_half], "opt": o_half.state_dict()})
    # every piece of L4's state is in the state_dict
    assert {"exp_avg"} | ({"exp_avg_sq"} if base == "adam" else set()) == set(saved["opt"]["state"][0])
    assert "min_loss" in saved["opt"]["state"]["global"]
    p_res, o_res = fresh()
    with torch.no_grad():
        for p, s in zip(p_res, saved["params"]):
            p.copy_(s)
    o_res.load_state_dict(saved["opt"])
    train(p_res, o_res, batches[11:])
    for a, b in zip(p_full, p_res):
        assert torch.equal(a, b)


# -------------------------------------------------------------------------------- bad input
def _trained_one_step(base="adam", **kwargs):
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = L4([w], base=base, **kwargs)
    loss = (w ** 2).sum()
    loss.backward()
    opt.step(loss=loss)
    return w, opt


@pytest.mark.parametrize("base", ["adam", "momentum"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_loss_leaves_parameters_and_state_bit_identical(base, bad):
    w, opt = _trained_one_step(base)
    before_w = w.detach().clone()
    before = copy.deepcopy(opt.state_dict())
    opt.step(loss=torch.tensor(bad))
    assert torch.equal(w.detach(), before_w)
    after = opt.state_dict()
    for key, value in before["state"][0].items():
        assert torch.equal(after["state"][0][key], value)
    assert torch.equal(after["state"]["global"]["min_loss"], before["state"]["global"]["min_loss"])
    assert after["state"]["global"]["step"] == before["state"]["global"]["step"]
    assert opt.skipped_steps == 1


def test_nan_gradient_on_the_first_step_leaves_no_state():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = L4([w])
    w.grad = torch.tensor([float("nan"), 1.0])
    opt.step(loss=1.0)
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))
    assert "min_loss" not in opt.global_state and len(opt.state[w]) == 0


def test_nonfinite_raise_option():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = L4([w], nonfinite="raise")
    w.grad = torch.ones(2)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        opt.step(loss=float("nan"))


@pytest.mark.parametrize("base", ["adam", "momentum"])
def test_negative_loss_raises_and_changes_nothing(base):
    w, opt = _trained_one_step(base)
    before_w = w.detach().clone()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="non-negative loss"):
        opt.step(loss=-0.5)
    assert torch.equal(w.detach(), before_w)
    for key, value in before["state"][0].items():
        assert torch.equal(opt.state_dict()["state"][0][key], value)


def test_zero_loss_takes_no_step():
    w, opt = _trained_one_step("momentum")
    before = w.detach().clone()
    opt.step(loss=0.0)  # L_min becomes 0: eta = alpha (0 - 0) / (...) = 0
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize("kwargs,match", [
    ({"base": "sgd"}, "base"),
    ({"fraction": 0.0}, "fraction"),
    ({"fraction": float("nan")}, "fraction"),
    ({"gamma": 1.0}, "gamma"),
    ({"gamma": -0.1}, "gamma"),
    ({"init_factor": 1.5}, "init_factor"),
    ({"min_loss_forget_time": 0.0}, "min_loss_forget_time"),
    ({"betas": (0.9,)}, "betas"),
    ({"betas": (1.0, 0.999)}, r"betas\[0\]"),
    ({"betas": (0.9, -0.1)}, r"betas\[1\]"),
    ({"adam_eps": 0.0}, "adam_eps"),
    ({"eps": 0.0}, "eps"),
    ({"nonfinite": "ignore"}, "nonfinite"),
])
def test_bad_hyperparameters_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        L4([torch.zeros(2, requires_grad=True)], **kwargs)


def test_bad_group_fraction_raises():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"fraction \(param group\)"):
        L4([{"params": [w], "fraction": -1.0}])


def test_registry_entries():
    w = torch.zeros(2, requires_grad=True)
    assert polyak.create("l4-adam", [w]).base == "adam"
    assert polyak.create("l4-mom", [w]).base == "momentum"
    for name in ("l4-adam", "l4-mom"):
        spec = polyak.get_spec(name)
        assert spec.needs == frozenset({"loss"}) and spec.step_size_param == "fraction"


def test_unchecked_mode_takes_the_same_steps_on_finite_input():
    params0, loss_fn, batches = make_problem(n_batches=8)
    checked, _ = run_ours(params0, batches, loss_fn, False, (0.15,), base="adam")
    unchecked, _ = run_ours(params0, batches, loss_fn, False, (0.15,), base="adam", nonfinite="unchecked")
    for a, b in zip(checked, unchecked):
        assert torch.equal(a, b)


@pytest.mark.parametrize("base", ["adam", "momentum"])
def test_a_complex_parameter_steps_as_its_real_view(base):
    from complex_problem import assert_same_trajectory, loss_of_complex, loss_of_real, pair

    z, w = pair()
    on_complex, on_real = L4([z], base=base), L4([w], base=base)
    for i in range(10):
        for opt, p, loss_fn in ((on_complex, z, loss_of_complex), (on_real, w, loss_of_real)):
            opt.zero_grad()
            loss = loss_fn(p, i)
            loss.backward()
            opt.step(loss=loss)
    assert_same_trajectory(z, w)
    assert on_complex.state[z]["exp_avg"].dtype == z.dtype  # state shaped like the parameter, as in torch


def test_foreach_moments_and_directions_match_a_per_tensor_loop_in_float64():
    gen = torch.Generator().manual_seed(4)
    shapes = [(3, 4), (5,), (2, 2, 2), ()]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    beta1, beta2, step, adam_eps = 0.8, 0.99, 3, 1e-4
    m0 = [torch.randn(s, generator=gen) for s in shapes]
    s0 = [torch.rand(s, generator=gen) for s in shapes]
    # the readable loop, written out
    expected_m = [beta1 * m + (1 - beta1) * g for m, g in zip(m0, grads)]
    expected_s = [beta2 * s + (1 - beta2) * g * g for s, g in zip(s0, grads)]
    expected_g_hat = [m / (1 - beta1 ** step) for m in expected_m]
    expected_v = [gh / (torch.sqrt(s / (1 - beta2 ** step)) + adam_eps) for gh, s in zip(expected_g_hat, expected_s)]
    from polyak.l4 import l4_directions, l4_update_moments_

    for foreach in (True, False):
        m, s = [t.clone() for t in m0], [t.clone() for t in s0]
        l4_update_moments_(grads, m, s, beta1, beta2, foreach=foreach)
        v, g_hat = l4_directions(m, s, step, beta1, beta2, adam_eps, foreach=foreach)
        for got, want in zip(m + s + g_hat + v, expected_m + expected_s + expected_g_hat + expected_v):
            torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)
        momentum_v, momentum_g_hat = l4_directions(m, [], step, beta1, beta2, adam_eps, foreach=foreach)
        assert momentum_v is momentum_g_hat
        for got, want in zip(momentum_v, expected_g_hat):
            torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)

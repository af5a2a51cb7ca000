"""DFW: the multi-class hinge loss against a direct computation, and DFW = ALI-G on it, shown
twice: against ALIG itself, and against a readable loop of DFW's own update (Frank-Wolfe
line search gamma in [0, 1], step eta * gamma), written from the DFW paper."""
import pytest
import torch

import polyak
from polyak import ALIG
from polyak.dfw import DFW, multiclass_hinge_loss

from helpers import linear_classification_problem  # tests/helpers.py


# float64 everywhere (tests/conftest.py); one intra-op thread comes from there too
pytestmark = pytest.mark.usefixtures("float64")


# ------------------------------------------------------------------------------------- loss
def direct_hinge(scores, targets, margin):
    """Per sample, with plain Python loops: max_j (s_j + margin [j != y]) - s_y."""
    out = []
    for row, y in zip(scores.tolist(), targets.tolist()):
        out.append(max(s + (margin if j != y else 0.0) for j, s in enumerate(row)) - row[y])
    return torch.tensor(out)


def direct_smooth_hinge(scores, targets, margin):
    """The authors' smoothing, per sample: the softmax-weighted augmented score if >= 0, else the max."""
    out = []
    for row, y in zip(scores.tolist(), targets.tolist()):
        augmented = [s + (margin if j != y else 0.0) - row[y] for j, s in enumerate(row)]
        weights = torch.softmax(torch.tensor(row), 0).tolist()
        smoothed = sum(w * a for w, a in zip(weights, augmented))
        out.append(smoothed if smoothed >= 0 else max(augmented))
    return torch.tensor(out)


@pytest.mark.parametrize("margin", [1.0, 0.5, 0.0])
def test_hinge_loss_matches_direct_computation(margin):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 7, generator=gen) * 2
    targets = torch.randint(0, 7, (40,), generator=gen)
    expected = direct_hinge(scores, targets, margin)
    assert torch.allclose(multiclass_hinge_loss(scores, targets, margin, reduction="none"), expected, atol=1e-14)
    assert multiclass_hinge_loss(scores, targets, margin).item() == pytest.approx(expected.mean().item(), abs=1e-14)
    assert multiclass_hinge_loss(scores, targets, margin, reduction="sum").item() == pytest.approx(
        expected.sum().item(), abs=1e-12)
    assert (expected >= 0).all() and (expected == 0).any()  # the data reach both branches of the max


def test_hinge_gradient_is_the_one_hot_difference_at_the_maximiser():
    scores = torch.tensor([[2.0, 0.5, 1.8], [3.0, 0.0, 0.0], [0.0, 0.2, 0.1]], requires_grad=True)
    targets = torch.tensor([0, 0, 2])
    multiclass_hinge_loss(scores, targets, reduction="sum").backward()
    # row 0: augmented (2, 1.5, 2.8) -> class 2; row 1: margin met, loss 0; row 2: (1, 1.2, 0.1) -> class 1
    expected = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    assert torch.equal(scores.grad, expected)


def test_smoothed_hinge_matches_direct_computation_and_stays_non_negative():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(50, 5, generator=gen) * 3
    targets = torch.randint(0, 5, (50,), generator=gen)
    expected = direct_smooth_hinge(scores, targets, 1.0)
    got = multiclass_hinge_loss(scores, targets, reduction="none", smooth=True)
    assert torch.allclose(got, expected, atol=1e-14)
    assert (got >= 0).all()
    assert (got <= direct_hinge(scores, targets, 1.0) + 1e-14).all()


@pytest.mark.parametrize("args,kwargs,match", [
    ((torch.zeros(4), torch.zeros(4, dtype=torch.long)), {}, "scores must"),
    ((torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)), {}, "scores must"),
    ((torch.zeros(4, 3), torch.zeros(5, dtype=torch.long)), {}, "targets must"),
    ((torch.zeros(4, 3), torch.zeros(4)), {}, "integer class indices"),
    ((torch.zeros(4, 3), torch.tensor([0, 1, 2, 3])), {}, r"\[0, 3\)"),
    ((torch.zeros(4, 3), torch.tensor([0, -1, 2, 1])), {}, r"\[0, 3\)"),
    ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), {"margin": -1.0}, "margin"),
    ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), {"reduction": "avg"}, "reduction"),
    ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), {"smooth": 1}, "smooth"),
])
def test_hinge_bad_input_raises(args, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        multiclass_hinge_loss(*args, **kwargs)


# ----------------------------------------------------------------------------- DFW = ALI-G
def make_problem(seed=0, n_batches=30):
    return linear_classification_problem(seed, n_batches, n_classes=4, n_features=6, batch=16,
                                         loss=multiclass_hinge_loss)


def reference_dfw(params0, batches, loss_fn, eta, momentum, eps):
    """DFW without regularisation, in the paper's form: Frank-Wolfe line search, then step."""
    params = [p.clone() for p in params0]
    buffers = [torch.zeros_like(p) for p in params]
    for batch in batches:
        leaves = [p.clone().requires_grad_(True) for p in params]
        loss = loss_fn(leaves, batch)
        grads = torch.autograd.grad(loss, leaves)
        grad_sq = sum(float((g * g).sum()) for g in grads)
        gamma_fw = min(max(float(loss.detach()) / (eta * grad_sq + eps), 0.0), 1.0)
        for p, g, z in zip(params, grads, buffers):
            p -= eta * gamma_fw * g
            if momentum:
                z.copy_(momentum * z - eta * gamma_fw * g)
                p += momentum * z
    return params


def run(opt_class, params0, batches, loss_fn, two_groups=False, **kwargs):
    W = params0[0].clone().requires_grad_(True)
    b = params0[1].clone().requires_grad_(True)
    opt = opt_class([{"params": [W]}, {"params": [b]}] if two_groups else [W, b], **kwargs)
    losses = []
    for i in batches:
        opt.zero_grad()
        loss = loss_fn([W, b], i)
        loss.backward()
        opt.step(loss=loss)
        losses.append(loss.item())
    return [W.detach(), b.detach()], opt, losses


@pytest.mark.parametrize("eta,momentum", [(0.5, 0.0), (0.5, 0.9), (5.0, 0.9)])
def test_dfw_equals_alig_on_the_hinge_loss_step_for_step(eta, momentum):
    params0, loss_fn, batches = make_problem()
    ours, opt, _ = run(DFW, params0, batches, loss_fn, eta=eta, momentum=momentum)
    alig, _, _ = run(ALIG, params0, batches, loss_fn, max_lr=eta, momentum=momentum, delta=1e-5 / eta)
    for a, b in zip(ours, alig):
        assert torch.equal(a, b)
    assert isinstance(opt, ALIG) and opt.param_groups[0]["max_lr"] == eta


@pytest.mark.parametrize("eta,momentum,two_groups", [(0.5, 0.0, False), (0.5, 0.9, False), (5.0, 0.9, True)])
def test_dfw_matches_the_frank_wolfe_form_of_its_update(eta, momentum, two_groups):
    params0, loss_fn, batches = make_problem()
    ours, _, _ = run(DFW, params0, batches, loss_fn, two_groups, eta=eta, momentum=momentum)
    ref = reference_dfw(params0, batches, loss_fn, eta, momentum, 1e-5)
    for a, b in zip(ours, ref):
        assert (a - b).abs().max().item() < 1e-10


def test_the_authors_closure_convention_works():
    # their README: loss.backward(); optimizer.step(lambda: float(loss)), a closure that
    # returns the loss as a number without running backward again
    params0, loss_fn, batches = make_problem(n_batches=5)
    ours, _, _ = run(DFW, params0, batches, loss_fn, eta=0.5, momentum=0.9)
    W = params0[0].clone().requires_grad_(True)
    b = params0[1].clone().requires_grad_(True)
    opt = DFW([W, b], eta=0.5, momentum=0.9)
    for i in batches:
        opt.zero_grad()
        loss = loss_fn([W, b], i)
        loss.backward()
        opt.step(lambda: loss.item())
    assert torch.equal(W.detach(), ours[0]) and torch.equal(b.detach(), ours[1])


@pytest.mark.parametrize("kwargs,match", [
    ({}, "DFW needs eta"),
    ({"eta": 0.0}, "eta"),
    ({"eta": float("inf")}, "eta"),
    ({"eta": 0.1, "momentum": 1.0}, "momentum"),
    ({"eta": 0.1, "eps": 0.0}, "eps"),
    ({"eta": 0.1, "weight_decay": 1e-4}, "weight_decay"),
])
def test_bad_hyperparameters_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DFW([torch.zeros(2, requires_grad=True)], **kwargs)


def test_per_group_eta_is_refused():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="one eta for all parameters"):
        DFW([{"params": [w], "eta": 1.0}], eta=0.1)


def test_single_tensor_params_is_refused():
    with pytest.raises(TypeError, match=r"\[tensor\]"):
        DFW(torch.zeros(2, requires_grad=True), eta=0.1)


def test_registry_entry():
    opt = polyak.create("dfw", [torch.zeros(2, requires_grad=True)])
    assert (opt.eta, opt.param_groups[0]["momentum"]) == (0.1, 0.9)
    spec = polyak.get_spec("dfw")
    assert spec.needs == frozenset({"loss"}) and spec.step_size_param == "eta"

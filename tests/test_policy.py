"""The hyperparameter policy and the step opening shared by the Polyak-step optimizers
(issue 7 items 1, 2 and 5): every case here failed before the policy existed."""
import copy
import io
import pickle

import pytest
import torch

from polyak import ALIG, ALIGPlus, DFW, SPS, NonFiniteError

pytestmark = pytest.mark.usefixtures("float64")


def _quadratic(seed=0, n=3):
    """w, and a function that sets w.grad and returns the per-sample losses 0.5 (A w - b)^2."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(8, n, generator=gen)
    b = torch.randn(8, generator=gen)
    w = torch.randn(n, generator=gen).requires_grad_()
    return w, _loss_and_grad(w, A, b)


def _loss_and_grad(w, A, b):
    def loss_and_grad(rows=slice(None)):
        w.grad = None
        with torch.enable_grad():
            losses = 0.5 * (A[rows] @ w - b[rows]) ** 2
            losses.mean().backward()
        return losses.detach()

    loss_and_grad.data = (A, b)
    return loss_and_grad


BUILDERS = {
    "alig": lambda ps, **kw: ALIG(ps, max_lr=10.0, **kw),
    "sps": lambda ps, **kw: SPS(ps, mode="constant", eta_max=10.0, **kw),
    "dfw": lambda ps, **kw: DFW(ps, eta=10.0, **kw),
    "alig-plus": lambda ps, **kw: ALIGPlus(ps, max_lr=10.0, num_samples=8, epochs=5, momentum=0.0, **kw),
}


def _step(name, opt, loss_and_grad, rows=slice(None)):
    losses = loss_and_grad(rows)
    if name == "alig-plus":
        return opt.step(loss=losses, index=torch.arange(8)[rows])
    return opt.step(loss=losses.mean())


# ------------------------------------------------------------------ lr key
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_lr_multiplies_the_final_step(name):
    w1, f1 = _quadratic()
    w2, f2 = _quadratic()
    start = w1.detach().clone()
    o1, o2 = BUILDERS[name]([w1]), BUILDERS[name]([w2], lr=0.25)
    _step(name, o1, f1)
    _step(name, o2, f2)
    assert torch.allclose(w2.detach() - start, 0.25 * (w1.detach() - start), rtol=1e-12, atol=0)
    assert o2.param_groups[0]["step_size"] == pytest.approx(0.25 * o1.param_groups[0]["step_size"], rel=1e-12)


def test_lr_applies_after_the_clip():
    w, f = _quadratic()
    opt = ALIG([w], max_lr=1e-3, lr=0.5)   # a tiny max_lr: the clip is active
    opt.step(loss=f().mean())
    group = opt.param_groups[0]
    assert bool(group["clipped"]) and group["step_size"] == pytest.approx(0.5e-3, rel=1e-12)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_steplr_halves_the_step(name):
    w, f = _quadratic()
    opt = BUILDERS[name]([w])
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for expected in (1.0, 0.5, 0.25):
        assert opt.param_groups[0]["lr"] == expected
        _step(name, opt, f)
        scheduler.step()


# --------------------------------------------------------------- group keys
@pytest.mark.parametrize("build,group,match", [
    (lambda g: SPS(g), {"c": 123.0}, "c cannot be set per group"),
    (lambda g: ALIG(g, max_lr=0.1), {"delta": 1.0}, "delta cannot be set per group"),
    (lambda g: ALIG(g, max_lr=0.1), {"max_lr_typo": 1.0}, "unknown param group key 'max_lr_typo'"),
    (lambda g: DFW(g, eta=0.1), {"weight_decay": 0.1}, "weight_decay cannot be set per group"),
    (lambda g: ALIGPlus(g, max_lr=0.1, num_samples=4, epochs=5), {"K": 2}, "K cannot be set per group"),
])
def test_group_keys_outside_the_declared_ones_are_refused(build, group, match):
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        build([dict(group, params=[w])])


def test_group_may_repeat_an_optimizer_wide_value():
    w = torch.zeros(2, requires_grad=True)
    assert SPS([{"params": [w], "c": 0.5}], c=0.5).param_groups[0]["c"] == 0.5


@pytest.mark.parametrize("group,match", [({"max_lr": -1.0}, "max_lr"), ({"momentum": 2.0}, "momentum"),
                                         ({"lr": -1.0}, "lr"), ({"delta": 3.0}, "delta")])
def test_add_param_group_runs_the_constructor_checks(group, match):
    w, v = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = ALIG([w], max_lr=0.1)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group(dict(group, params=[v]))
    assert len(opt.param_groups) == 1   # nothing half-added


def test_per_group_max_lr_and_weight_decay_are_used():
    w1, f1 = _quadratic()
    w2 = torch.ones(2, requires_grad=True)
    opt = ALIG([{"params": [w1]}, {"params": [w2], "max_lr": 1e-3, "weight_decay": 0.5}], max_lr=10.0)
    f1()
    w2.grad = torch.tensor([1.0, -1.0])
    opt.step(loss=1.0)
    step = opt.param_groups[1]["step_size"]
    assert step == 1e-3
    # w <- w - gamma (g + lambda w), lambda = 0.5
    assert torch.allclose(w2.detach(), torch.ones(2) - 1e-3 * (torch.tensor([1.0, -1.0]) + 0.5 * torch.ones(2)))


def test_sps_weight_decay_closed_form():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = SPS([w], c=0.5, mode="constant", weight_decay=0.1)
    w.grad = torch.tensor([1.0, 1.0])
    opt.step(loss=1.0)
    gamma = 1.0 / (0.5 * 2.0 + 1e-8)
    assert torch.allclose(w.detach(), torch.tensor([1.0, 2.0]) - gamma * (torch.ones(2) + 0.1 * torch.tensor([1.0, 2.0])))


def test_dfw_refuses_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        DFW([torch.zeros(2, requires_grad=True)], eta=0.1, weight_decay=1e-4)


# ------------------------------------------------------------ state dicts
def test_load_state_dict_restores_every_hyperparameter():
    w = torch.zeros(2, requires_grad=True)
    saved = ALIG([w], max_lr=0.5, delta=0.25, max_norm=3.0).state_dict()
    opt = ALIG([w], max_lr=0.1)
    opt.load_state_dict(saved)
    assert (opt.delta, opt.max_norm, opt.param_groups[0]["max_lr"]) == (0.25, 3.0, 0.5)
    opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)]})
    assert opt.param_groups[1]["max_lr"] == 0.1   # per-group keys keep the constructor's default


@pytest.mark.parametrize("saved,build,match", [
    (lambda w: SPS([w], mode="smooth_iter"), lambda w: SPS([w], mode="constant"), "mode='smooth_iter'"),
    (lambda w: ALIG([w], max_lr=0.1), lambda w: SPS([w]), "saved by ALIG, not SPS"),
    (lambda w: DFW([w], eta=0.1), lambda w: ALIG([w], max_lr=0.1), "saved by DFW"),
    (lambda w: torch.optim.SGD([w], lr=0.1), lambda w: ALIG([w], max_lr=0.1), "not the state of a polyak optimizer"),
    (lambda w: ALIGPlus([w], max_lr=0.1, num_samples=4, epochs=5, loss_record="best_epoch"),
     lambda w: ALIGPlus([w], max_lr=0.1, num_samples=4, epochs=5), "loss_record='best_epoch'"),
])
def test_foreign_state_is_refused_naming_what_differs(saved, build, match):
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        build(w).load_state_dict(saved(w).state_dict())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_state_dict_loads_with_weights_only(name):
    w, f = _quadratic()
    opt = BUILDERS[name]([w], foreach=False)
    _step(name, opt, f)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    BUILDERS[name]([w]).load_state_dict(torch.load(buffer, weights_only=True))


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_copies_step_identically(name, copier):
    w, f = _quadratic()
    opt = BUILDERS[name]([w], momentum=0.9) if name in ("alig", "dfw") else BUILDERS[name]([w])
    _step(name, opt, f)
    if copier == "deepcopy":
        w2, opt2 = copy.deepcopy((w, opt))
    else:
        w2, opt2 = pickle.loads(pickle.dumps((w, opt)))
    f2 = _loss_and_grad(w2, *f.data)
    for _ in range(3):
        _step(name, opt, f)
        _step(name, opt2, f2)
    assert torch.equal(w.detach(), w2.detach())


# ------------------------------------------------------------- loss channel
@pytest.mark.parametrize("name", ["alig", "sps", "dfw"])
def test_add_loss_steps_on_the_mean_of_the_hand_overs(name):
    w1, f1 = _quadratic()
    w2, f2 = _quadratic()
    o1, o2 = BUILDERS[name]([w1]), BUILDERS[name]([w2])
    l1 = f1().mean()
    o1.add_loss(l1)
    o1.add_loss(3.0 * l1)
    o1.step()
    o2.step(loss=f2().mean() * 2.0)
    assert torch.equal(w1.detach(), w2.detach())
    assert o1.cost == {"forward": 2, "backward": 2}


def test_alig_plus_add_loss_concatenates_per_sample_losses_and_indices():
    w1, f1 = _quadratic()
    w2, f2 = _quadratic()
    o1, o2 = BUILDERS["alig-plus"]([w1]), BUILDERS["alig-plus"]([w2])
    losses = f1()
    f2()
    o1.add_loss(losses[:3], torch.arange(3))
    o1.add_loss(losses[3:], torch.arange(3, 8))
    o1.step()
    o2.step(loss=losses, index=torch.arange(8))
    assert torch.equal(w1.detach(), w2.detach())
    assert torch.equal(o1.tables["loss_record"], o2.tables["loss_record"])


def test_alig_plus_closure_may_return_losses_and_index():
    w1, f1 = _quadratic()
    w2, f2 = _quadratic()
    o1, o2 = BUILDERS["alig-plus"]([w1]), BUILDERS["alig-plus"]([w2])
    o1.step(lambda: (f1(), torch.arange(8)))
    o2.step(loss=f2(), index=torch.arange(8))
    assert torch.equal(w1.detach(), w2.detach())


def test_loss_channel_errors():
    w, f = _quadratic()
    opt = ALIG([w], max_lr=0.1)
    f()
    with pytest.raises(ValueError, match="add_loss"):
        opt.step()
    opt.add_loss(1.0)
    with pytest.raises(ValueError, match="one channel"):
        opt.step(loss=1.0)
    with pytest.raises(ValueError, match="scalar"):
        opt.add_loss(torch.ones(3))
    with pytest.raises(TypeError, match="index"):
        opt.add_loss(1.0, index=torch.arange(1))
    plus = ALIGPlus([w], max_lr=0.1, num_samples=8, epochs=5)
    with pytest.raises(ValueError, match="per-sample"):
        plus.add_loss(torch.tensor(1.0))


# -------------------------------------------------------------- empty batch
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_empty_batch_is_a_counted_skip(name):
    w, f = _quadratic()
    opt = BUILDERS[name]([w])
    _step(name, opt, f)
    before = w.detach().clone()
    _step(name, opt, f, rows=slice(0, 0))
    assert torch.equal(w.detach(), before) and opt.skipped_steps == 1
    assert not torch.isnan(w).any()


def test_empty_batch_raises_under_nonfinite_raise():
    w, f = _quadratic()
    opt = ALIGPlus([w], max_lr=0.1, num_samples=8, epochs=5, nonfinite="raise")
    f()
    with pytest.raises(NonFiniteError, match="empty"):
        opt.step(loss=torch.zeros(0), index=torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("build", [lambda ps: ALIG(ps, max_lr=0.1, lower_bound=0.7),
                                   lambda ps: ALIGPlus(ps, max_lr=0.1, num_samples=4, epochs=5, lower_bound=0.7)])
def test_a_float32_loss_equal_to_the_rounded_lower_bound_is_not_below_it(build):
    # float32(0.7) < 0.7 in float64: the host path compares in the losses' dtype, as the tensor path does
    w = torch.zeros(2, dtype=torch.float32, requires_grad=True)
    w.grad = torch.ones(2, dtype=torch.float32)
    opt = build([w])
    losses = torch.full((4,), 0.7, dtype=torch.float32)
    if isinstance(opt, ALIGPlus):
        opt.step(loss=losses, index=torch.arange(4))
    else:
        opt.step(loss=losses[0])
    with pytest.raises(ValueError, match="below lower_bound"):
        opt.step(loss=torch.tensor(0.5, dtype=torch.float32)) if not isinstance(opt, ALIGPlus) else \
            opt.step(loss=torch.tensor([0.8, 0.5, 0.9, 0.8], dtype=torch.float32), index=torch.arange(4))

"""The line-search closure contract: replayed randomness, untouched BatchNorm
statistics, an undisturbed global RNG stream, and clear errors for bad closures."""
import copy
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from polyak._closure import ClosureError, ProbeClosure


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))


def _batch():
    g = torch.Generator().manual_seed(123)
    return torch.randn(16, 5, generator=g), torch.randn(16, 1, generator=g)


def _closure(model, x, y):
    return lambda: ((model(x) - y) ** 2).mean()


def _move(params, amount):
    with torch.no_grad():
        for p in params:
            p.add_(amount)


def test_batchnorm_running_stats_after_reevaluations_equal_one_plain_forward():
    x, y = _batch()
    plain = _net()
    torch.manual_seed(7)
    _closure(plain, x, y)()

    probed = _net()
    params = list(probed.parameters())
    torch.manual_seed(7)
    probe = ProbeClosure(_closure(probed, x, y), "Test", params)
    probe.loss_and_grad()
    _move(params, 0.1)
    probe.loss()
    probe.loss()
    bn_plain, bn_probed = plain[1], probed[1]
    assert torch.equal(bn_plain.running_mean, bn_probed.running_mean)
    assert torch.equal(bn_plain.running_var, bn_probed.running_var)
    assert int(bn_probed.num_batches_tracked) == int(bn_plain.num_batches_tracked) == 1


def test_reevaluation_replays_dropout_masks():
    x, _ = _batch()
    drop = nn.Dropout(0.5)
    weight = nn.Parameter(torch.ones(5))
    masks = []

    def closure():
        out = drop(x * weight)
        masks.append(out != 0)
        return out.sum()

    torch.manual_seed(3)
    probe = ProbeClosure(closure, "Test", [weight])
    probe.loss_and_grad()
    probe.loss()
    _move([weight], 0.5)  # a moved point: different loss, same mask
    probe.loss()
    assert not masks[0].all() and masks[0].any()
    assert all(torch.equal(masks[0], m) for m in masks[1:])
    # Same parameters and same mask: the re-evaluation reproduces the first loss.
    weight2 = nn.Parameter(torch.ones(5))
    torch.manual_seed(3)
    probe2 = ProbeClosure(lambda: drop(x * weight2).sum(), "Test", [weight2])
    assert torch.equal(probe2.loss_and_grad(), probe2.loss())


def test_global_rng_streams_after_probe_equal_after_one_plain_forward():
    x, y = _batch()

    def draws():
        return torch.rand(3), random.random(), np.random.rand()

    def seed_all():
        torch.manual_seed(11)
        random.seed(11)
        np.random.seed(11)

    def noisy(model):
        # A closure that draws from every global generator (augmentation-like).
        def closure():
            noise = torch.randn_like(x) * 0.01 + random.random() * 0 + float(np.random.rand()) * 0
            return ((model(x + noise) - y) ** 2).mean()
        return closure

    plain = _net()
    seed_all()
    noisy(plain)()
    expected = draws()

    model = _net()
    seed_all()
    probe = ProbeClosure(noisy(model), "Test", list(model.parameters()))
    probe.loss_and_grad()
    for _ in range(3):
        probe.loss()
    got = draws()
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_reevaluation_later_leaves_intermediate_draws_alone():
    # LABPAL re-evaluates a batch's probe many steps after its first evaluation:
    # the draws made in between must neither repeat nor be skipped.
    x, y = _batch()
    plain, probed = _net(), _net()
    torch.manual_seed(2)
    _closure(plain, x, y)()
    expected = (torch.rand(4), torch.rand(4))

    torch.manual_seed(2)
    probe = ProbeClosure(_closure(probed, x, y), "Test", list(probed.parameters()))
    probe.loss_and_grad()
    first = torch.rand(4)
    probe.loss()
    second = torch.rand(4)
    assert torch.equal(first, expected[0]) and torch.equal(second, expected[1])


def test_loss_and_grad_fills_gradients_like_a_plain_backward():
    x, y = _batch()
    model = _net()
    torch.manual_seed(5)
    loss = _closure(model, x, y)()
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]

    model2 = _net()
    for p in model2.parameters():
        p.grad = torch.full_like(p, 9.0)  # stale gradients must not accumulate
    torch.manual_seed(5)
    calls = []
    probe = ProbeClosure(_closure(model2, x, y), "Test", list(model2.parameters()), on_pass=lambda f, b: calls.append((f, b)))
    got = probe.loss_and_grad()
    assert torch.equal(got, loss.detach()) and not got.requires_grad and got.dim() == 0
    assert all(torch.equal(a, p.grad) for a, p in zip(expected, model2.parameters()))
    probe.loss()
    assert calls == [(1, 1), (1, 0)] and (probe.forward_passes, probe.backward_passes) == (2, 1)


def _bad_closures():
    w = nn.Parameter(torch.ones(3))

    def calls_backward():
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    return w, {
        "not a tensor": (lambda: float((w ** 2).sum().detach()), "not a tensor"),
        "not a scalar": (lambda: w ** 2, "not a scalar"),
        "calls backward": (calls_backward, "calls backward"),
        "no grad": (lambda: (w.detach() ** 2).sum(), "does not require grad"),
        "integer": (lambda: torch.tensor(3), "floating point"),
    }


@pytest.mark.parametrize("case", ["not a tensor", "not a scalar", "calls backward", "no grad", "integer"])
def test_bad_closures_raise_closure_error_naming_the_contract(case):
    w, cases = _bad_closures()
    closure, message = cases[case]
    with pytest.raises(ClosureError, match=message) as info:
        ProbeClosure(closure, "Owner", [w]).loss_and_grad()
    assert "Owner.step" in str(info.value) and "WITHOUT calling backward" in str(info.value)
    assert isinstance(info.value, TypeError)


def test_non_callable_closure_and_wrong_order_are_rejected():
    w = nn.Parameter(torch.ones(3))
    with pytest.raises(ClosureError, match="needs a closure"):
        ProbeClosure(None, "Owner", [w])
    with pytest.raises(ClosureError, match="callable"):
        ProbeClosure(3.0, "Owner", [w])
    probe = ProbeClosure(lambda: (w ** 2).sum(), "Owner", [w])
    with pytest.raises(RuntimeError, match="before loss"):
        probe.loss()
    probe.loss_and_grad()
    with pytest.raises(RuntimeError, match="runs once per probe"):
        probe.loss_and_grad()


def test_reevaluation_validates_the_returned_loss():
    w = nn.Parameter(torch.ones(3))
    outputs = iter([(w ** 2).sum(), w ** 2])
    probe = ProbeClosure(lambda: next(outputs), "Owner", [w])
    probe.loss_and_grad()
    with pytest.raises(ClosureError, match="not a scalar"):
        probe.loss()


def test_deepcopy_shares_the_closure_and_pickle_drops_it():
    w = nn.Parameter(torch.ones(3))
    probe = ProbeClosure(lambda: (w ** 2).sum(), "Owner", [w])
    probe.loss_and_grad()
    clone = copy.deepcopy({"probes": [probe]})["probes"][0]
    with torch.no_grad():
        w.mul_(2)
    assert float(clone.loss()) == 12.0  # evaluates the live parameter
    restored = pickle.loads(pickle.dumps(probe))
    assert not restored.available and restored.evaluated
    with pytest.raises(ClosureError, match="restored from a pickle"):
        restored.loss()


def test_first_loss_is_a_plain_forward_without_gradients():
    x, y = _batch()
    plain, probed = _net(), _net()
    torch.manual_seed(4)
    expected = _closure(plain, x, y)()
    torch.manual_seed(4)
    probe = ProbeClosure(_closure(probed, x, y), "Test", list(probed.parameters()))
    with torch.no_grad():  # optimizers call it from a no_grad step()
        got = probe.first_loss()
        again = probe.loss()
    assert torch.equal(got, expected.detach()) and torch.equal(again, got)
    assert all(p.grad is None for p in probed.parameters())
    assert torch.equal(plain[1].running_mean, probed[1].running_mean)


def test_loss_and_grad_works_inside_no_grad():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    probe = ProbeClosure(lambda: (w ** 2).sum(), "Test", [w])
    with torch.no_grad():
        assert float(probe.loss_and_grad()) == 5.0
    assert torch.equal(w.grad, torch.tensor([2.0, 4.0]))

"""The pieces every integration shares: unwrapping framework wrappers, a closure that
hands its own loss over, what a step needs. No framework needed."""
import copy

import pytest
import torch

import polyak
from polyak.integrations import add_loss, step_needs, unwrap, without_zero_weight_decay


def problem():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4))
    x = torch.randn(8, 4)
    return w, x


def loss_of(w, x):
    return (x @ w).pow(2).mean()


class Wrapper:
    """accelerate's AcceleratedOptimizer keeps the optimizer in ``.optimizer``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer


class ShallowCopy(polyak.ALIG):
    """What Lightning's LightningOptimizer is: an instance of the optimizer's class over a
    shallow copy of its __dict__, keeping the original in ``_optimizer``."""

    def __init__(self, optimizer):
        self.__dict__ = dict(optimizer.__dict__, _pending=[])
        self._optimizer = optimizer


def test_unwrap_reaches_the_optimizer_that_steps():
    w, _ = problem()
    optimizer = polyak.ALIG([w], max_lr=1.0)
    assert unwrap(optimizer) is optimizer
    assert unwrap(Wrapper(Wrapper(optimizer))) is optimizer
    assert unwrap(ShallowCopy(optimizer)) is optimizer  # not the copy, although it passes isinstance
    with pytest.raises(TypeError, match="SGD"):
        unwrap(Wrapper(torch.optim.SGD([w], lr=0.1)))


def test_add_loss_through_a_wrapper_equals_step_loss():
    w, x = problem()
    w2 = copy.deepcopy(w)
    a, b = polyak.ALIG([w], max_lr=None), polyak.ALIG([w2], max_lr=None)
    loss = loss_of(w, x)
    loss.backward()
    add_loss(ShallowCopy(a), loss)
    a.step()
    loss2 = loss_of(w2, x)
    loss2.backward()
    b.step(loss=loss2)
    assert torch.equal(w, w2)


def test_a_closure_that_hands_its_loss_over_steps_on_the_hand_overs():
    """Lightning's closure returns loss / window of the LAST micro-batch; the hand-overs
    (the mean of the window) must be what the step uses."""
    w, x = problem()
    w2 = copy.deepcopy(w)
    a, b = polyak.ALIG([w], max_lr=None), polyak.ALIG([w2], max_lr=None)
    halves = (x[:4], x[4:])
    first = loss_of(w, halves[0])
    (first / 2).backward()
    a.add_loss(first)

    def closure():
        last = loss_of(w, halves[1])
        (last / 2).backward()
        a.add_loss(last)
        return last / 2  # what Lightning's closure returns

    a.step(closure)
    losses = [loss_of(w2, h) for h in halves]
    (sum(losses) / 2).backward()
    b.step(loss=(losses[0].detach() + losses[1].detach()) / 2)
    assert torch.allclose(w, w2, rtol=0, atol=1e-6)  # float32: two half backwards vs one
    assert a.param_groups[0]["step_size"] == pytest.approx(b.param_groups[0]["step_size"], rel=1e-6)


def test_a_closure_returning_its_loss_after_hand_overs_is_still_refused():
    w, x = problem()
    optimizer = polyak.ALIG([w], max_lr=1.0)
    loss = loss_of(w, x)
    loss.backward()
    optimizer.add_loss(loss)
    with pytest.raises(ValueError, match="one channel"):
        optimizer.step(lambda: loss_of(w, x))


def test_step_needs_come_from_the_registry():
    w, _ = problem()
    assert "loss" in step_needs(polyak.SPS([w]))
    assert {"per_sample_loss", "index"} <= step_needs(Wrapper(polyak.ALIGPlus([w], max_lr=1.0, num_samples=4, epochs=5)))
    assert "probe_closure" in step_needs(polyak.PAL([w]))


def test_zero_weight_decay_groups_lose_the_key_and_a_nonzero_one_is_refused():
    w, _ = problem()
    groups = without_zero_weight_decay([{"params": [w], "weight_decay": 0.0}], "test", polyak.DFW)
    assert groups == [{"params": [w]}]
    with pytest.raises(ValueError, match="weight_decay=0.05"):
        without_zero_weight_decay([{"params": [w], "weight_decay": 0.05}], "test", polyak.DFW)


def test_importing_polyak_and_its_integrations_package_needs_torch_alone():
    import subprocess
    import sys

    code = ("import sys, polyak, polyak.integrations, polyak.integrations.timm; "
            "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'transformers', 'accelerate', 'timm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"

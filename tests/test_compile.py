"""The Polyak steps on the tensor path (accelerators, compiled steps), issue 7 item 3:
no host read in step() under nonfinite="skip" (the skip is branch-free), and
``torch.compile(opt.step, fullgraph=True)`` captures the whole step of ALIG, SPS and
ALIGPlus (zero graph breaks, eager backend: no compiler needed) with the eager
trajectory, NaN skips included."""
import math
from unittest import mock

import pytest
import torch

from polyak import ALIG, ALIGPlus, SPS
from polyak._base import PolyakBase

pytestmark = pytest.mark.usefixtures("float64")

BUILD = {
    "alig": lambda ps, **kw: ALIG(ps, max_lr=1.0, momentum=0.9, weight_decay=0.01, **kw),
    "sps": lambda ps, **kw: SPS(ps, n_batches_per_epoch=3, **kw),
    "alig-plus": lambda ps, **kw: ALIGPlus(ps, max_lr=1.0, num_samples=16, epochs=5, weight_decay=0.01, **kw),
}
NAN_AT = 3


def _run(name, step_fn=None, steps=6, **kw):
    """``steps`` steps on fixed random gradients and losses (fresh gradient tensors every
    step, as zero_grad(set_to_none=True) gives), a NaN loss at step NAN_AT."""
    torch.manual_seed(0)
    ps = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    opt = BUILD[name](ps, **kw)
    gen = torch.Generator().manual_seed(1)

    def step(losses, index):
        if name == "alig-plus":
            return opt.step(loss=losses, index=index)
        return opt.step(loss=losses.mean())

    run = step if step_fn is None else step_fn(step)
    for t in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        losses = torch.rand(8, generator=gen) + 0.5
        if t == NAN_AT:
            losses = losses * math.nan
        run(losses, torch.arange(8) + 8 * (t % 2))
        if name == "alig-plus" and t % 2 == 1:
            opt.end_epoch()
    return ps, opt


def _tensor_path():
    return mock.patch.object(PolyakBase, "_on_host", lambda self, device: False)


@pytest.mark.parametrize("name", sorted(BUILD))
def test_whole_step_is_one_graph(name):
    torch._dynamo.reset()
    ps, opt = _run(name, steps=1)   # state exists: the steady-state step
    losses, index = torch.rand(8) + 0.5, torch.arange(8)
    if name == "alig-plus":
        explained = torch._dynamo.explain(lambda: opt.step(loss=losses, index=index))()
    else:
        explained = torch._dynamo.explain(lambda: opt.step(loss=losses.mean()))()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("name", sorted(BUILD))
def test_compiled_step_follows_the_eager_trajectory_and_skips_nan(name):
    torch._dynamo.reset()
    with _tensor_path():
        eager_params, eager = _run(name)
    # at most 4 compilations in 6 steps (the first step creates the state, the group's step
    # statistics turn from floats into tensors, ALIGPlus's epoch sum appears): none per step
    with mock.patch.object(torch._dynamo.config, "recompile_limit", 4):
        compiled_params, compiled = _run(name, lambda f: torch.compile(f, backend="eager", fullgraph=True))
    for a, b in zip(eager_params, compiled_params):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert compiled.skipped_steps == eager.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in compiled_params)


@pytest.mark.parametrize("name", sorted(BUILD))
def test_tensor_path_skip_reads_nothing_back_and_matches_the_host_path(name):
    def no_host_read(*args, **kwargs):
        raise AssertionError("step() read a tensor back to the host")

    host_params, host = _run(name)
    with _tensor_path(), mock.patch.object(torch.Tensor, "item", no_host_read), \
            mock.patch.object(torch.Tensor, "tolist", no_host_read), \
            mock.patch.object(torch.Tensor, "__bool__", no_host_read):
        device_params, device = _run(name)
    for a, b in zip(host_params, device_params):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert device.skipped_steps == host.skipped_steps == 1   # read only when asked

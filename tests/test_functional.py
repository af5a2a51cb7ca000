"""The shared math: foreach paths against the readable per-tensor loop, in float64."""
import pytest
import torch

from polyak import functional as F


def _tensors(seed, dtype=torch.float64, shapes=((3, 4), (5,), (2, 2, 2))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


def test_global_sq_norm_is_the_sum_of_all_squares():
    ts = _tensors(0)
    expected = sum(float((t * t).sum()) for t in ts)
    for foreach in (True, False):
        assert float(F.global_sq_norm(ts, foreach=foreach)) == pytest.approx(expected, rel=1e-14)


def test_global_sq_norm_accumulates_half_precision_in_float32():
    ts = [torch.full((1000,), 0.01, dtype=torch.bfloat16), torch.ones(3, dtype=torch.float32)]
    out = F.global_sq_norm(ts)
    assert out.dtype == torch.float32
    expected = 1000 * float(torch.tensor(0.01, dtype=torch.bfloat16).float()) ** 2 + 3
    assert float(out) == pytest.approx(expected, rel=1e-5)


def test_polyak_step_size_clamps_both_ways():
    step, unclipped, clipped = F.polyak_step_size(torch.tensor(-1.0), torch.tensor(2.0), 0.0, 1.0)
    assert float(step) == 0.0 and not bool(clipped)
    step, unclipped, clipped = F.polyak_step_size(torch.tensor(8.0), torch.tensor(2.0), 0.0, 1.0)
    assert float(step) == 1.0 and float(unclipped) == 4.0 and bool(clipped)
    step, unclipped, clipped = F.polyak_step_size(torch.tensor(8.0), torch.tensor(2.0), 0.0, None)
    assert float(step) == 4.0 and not bool(clipped)


@pytest.mark.parametrize("tensor_step", [False, True])
def test_sgd_step_paths_agree(tensor_step):
    step = torch.tensor(0.37, dtype=torch.float64) if tensor_step else 0.37
    ps_a, ds = _tensors(1), _tensors(2)
    ps_b = [p.clone() for p in ps_a]
    expected = [p - 0.37 * d for p, d in zip(ps_a, ds)]
    F.sgd_step_(ps_a, ds, step, foreach=True)
    F.sgd_step_(ps_b, ds, step, foreach=False)
    for a, b, e in zip(ps_a, ps_b, expected):
        assert (a - e).abs().max() < 1e-15 and (b - e).abs().max() < 1e-15


@pytest.mark.parametrize("adjusted", [False, True])
@pytest.mark.parametrize("tensor_step", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_alig_momentum_paths_agree_with_the_formula(adjusted, tensor_step, foreach):
    gamma, mu = 0.3, 0.9
    step = torch.tensor(gamma, dtype=torch.float64) if tensor_step else gamma
    ps, gs, bs = _tensors(3), _tensors(4), _tensors(5)
    exp_p, exp_b = [], []
    for p, g, b in zip(ps, gs, bs):
        if adjusted:
            nb = mu * b - g
            exp_p.append(p - gamma * g + gamma * mu * nb)
        else:
            nb = mu * b - gamma * g
            exp_p.append(p - gamma * g + mu * nb)
        exp_b.append(nb)
    F.alig_momentum_step_(ps, gs, bs, step, mu, adjusted=adjusted, foreach=foreach)
    for p, e in zip(ps, exp_p):
        assert (p - e).abs().max() < 1e-14
    for b, e in zip(bs, exp_b):
        assert (b - e).abs().max() < 1e-14


@pytest.mark.parametrize("foreach", [False, True])
def test_projection_onto_the_global_ball(foreach):
    ps = [torch.full((3,), 2.0, dtype=torch.float64), torch.full((1,), 2.0, dtype=torch.float64)]
    F.project_l2_ball_(ps, 2.0, foreach=foreach)
    assert float(F.global_sq_norm(ps).sqrt()) == pytest.approx(2.0, rel=1e-15)
    inside = [torch.tensor([0.1, 0.2], dtype=torch.float64)]
    before = inside[0].clone()
    F.project_l2_ball_(inside, 2.0, foreach=foreach)
    assert torch.equal(inside[0], before)


def test_group_by_device_and_dtype_keeps_lists_aligned():
    a = [torch.zeros(1, dtype=torch.float32), torch.zeros(2, dtype=torch.float64), torch.zeros(3, dtype=torch.float32)]
    b = [torch.ones(1), torch.ones(2), torch.ones(3)]
    buckets = F.group_by_device_and_dtype(a, b)
    f32 = buckets[(torch.device("cpu"), torch.float32)]
    assert [t.numel() for t in f32[0]] == [1, 3] and [t.numel() for t in f32[1]] == [1, 3]

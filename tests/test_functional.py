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


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_global_sq_norm_large_cpu_tensors_take_the_blas_dot_and_agree(dtype, rel):
    # Large contiguous CPU tensors are summed by torch.vdot, the rest (small, or a
    # transposed view) by one foreach call: every entry counted once, in either route.
    big = F._BLAS_DOT_MIN_NUMEL
    gen = torch.Generator().manual_seed(3)
    large = torch.randn(big + 7, generator=gen, dtype=dtype)
    transposed = torch.randn(400, big // 200, generator=gen, dtype=dtype).t()
    assert not transposed.is_contiguous() and transposed.numel() >= big
    ts = [large, torch.randn(5, 3, generator=gen, dtype=dtype), transposed]
    expected = sum(float((t.double() * t.double()).sum()) for t in ts)
    assert float(F.global_sq_norm(ts)) == pytest.approx(expected, rel=rel)
    assert float(F.global_sq_norm([large])) == pytest.approx(float((large.double() ** 2).sum()), rel=rel)
    # float32 in, float32 out, as the foreach route gives
    assert F.global_sq_norm(ts).dtype == dtype


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


def test_global_dot_foreach_matches_the_per_tensor_loop_and_the_formula():
    xs, ys = _tensors(3), _tensors(4)
    expected = sum(float((x * y).sum()) for x, y in zip(xs, ys))
    fast, loop = F.global_dot(xs, ys, foreach=True), F.global_dot(xs, ys, foreach=False)
    assert fast.dtype == loop.dtype == torch.float64 and fast.dim() == 0
    torch.testing.assert_close(fast, loop, rtol=1e-14, atol=0)
    assert float(loop) == pytest.approx(expected, rel=1e-14)


def test_global_dot_of_a_list_with_itself_is_the_squared_norm():
    ts = _tensors(5)
    assert float(F.global_dot(ts, ts)) == pytest.approx(float(F.global_sq_norm(ts)), rel=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_global_dot_accumulates_half_precision_in_float32_across_dtypes(foreach):
    xs = [torch.full((1000,), 0.01, dtype=torch.bfloat16), torch.full((3,), 2.0, dtype=torch.float64)]
    ys = [torch.full((1000,), 0.01, dtype=torch.bfloat16), torch.full((3,), 0.5, dtype=torch.float64)]
    out = F.global_dot(xs, ys, foreach=foreach)
    assert out.dtype == torch.float64
    expected = 1000 * float(torch.tensor(0.01, dtype=torch.bfloat16).float()) ** 2 + 3.0
    assert float(out) == pytest.approx(expected, rel=1e-5)


def test_global_dot_rejects_empty_and_unequal_lists():
    with pytest.raises(ValueError, match="at least one tensor"):
        F.global_dot([], [])
    with pytest.raises(ValueError, match="equal length"):
        F.global_dot(_tensors(0), _tensors(1)[:2])


@pytest.mark.parametrize("foreach", [False, True])
def test_copy_all_copies_every_pair_bit_exactly(foreach):
    sources, destinations = _tensors(6), [torch.zeros(t.shape, dtype=torch.float64) for t in _tensors(6)]
    F.copy_all_(destinations, sources, foreach=foreach)
    for d, s in zip(destinations, sources):
        assert torch.equal(d, s) and d.data_ptr() != s.data_ptr()


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("step_kind", ["float", "tensor"])
def test_decoupled_weight_decay_is_the_lambda_p_part_of_the_step(foreach, step_kind):
    step = 0.3 if step_kind == "float" else torch.tensor(0.3)   # a tensor step is what accelerators pass
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([[4.0]])
    params = [a.clone(), b.clone()]
    F.decoupled_weight_decay_(params, step, 0.1, foreach=foreach)
    assert torch.allclose(params[0], a - 0.3 * 0.1 * a, rtol=0, atol=1e-15)
    assert torch.allclose(params[1], b - 0.3 * 0.1 * b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("foreach", [True, False])
def test_decoupled_weight_decay_in_float64_and_its_no_op_cases(foreach):
    ts = _tensors(7)
    params = [t.clone() for t in ts]
    F.decoupled_weight_decay_(params, 0.25, 1e-2, foreach=foreach)
    for p, t in zip(params, ts):
        torch.testing.assert_close(p, t * (1.0 - 0.25 * 1e-2), rtol=0, atol=0)
    for step, weight_decay in ((0.25, 0.0), (0.0, 1e-2)):   # nothing to decay: bit-identical
        untouched = [t.clone() for t in ts]
        F.decoupled_weight_decay_(untouched, step, weight_decay, foreach=foreach)
        assert all(torch.equal(u, t) for u, t in zip(untouched, ts))


def test_polyak_step_size_float_path_matches_the_tensor_path():
    for gap, sq, max_lr in [(8.0, 2.0, 1.0), (-1.0, 2.0, 1.0), (3.0, 4.0, None), (float("nan"), 1.0, 1.0)]:
        f_step, f_unclipped, f_clipped = F.polyak_step_size(gap, sq, 1e-5, max_lr)
        t_step, t_unclipped, t_clipped = F.polyak_step_size(torch.tensor(gap, dtype=torch.float64),
                                                            torch.tensor(sq, dtype=torch.float64), 1e-5, max_lr)
        assert torch.equal(torch.tensor(f_step, dtype=torch.float64), t_step) or (f_step != f_step and t_step.isnan())
        assert bool(f_clipped) == bool(t_clipped)

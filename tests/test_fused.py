"""The fused (compiled) updates against the foreach path of polyak.functional.

Several steps with a new step size each time: float64 must agree to 1e-12, float32
to a few ulps of each tensor's largest entry (the foreach path rounds ``p - s*g``
once, as a multiply-add; inductor's CPU code rounds the product and the sum). Each
compiled graph costs seconds on a small CPU, so the cases share one set of shapes.
"""
import pytest
import torch
from torch._dynamo.utils import counters

from polyak import _fused as X
from polyak import functional as F

pytestmark = pytest.mark.skipif(
    X.fused_unsupported_reason(torch.device("cpu")) is not None,
    reason=f"no compiler for torch.compile: {X.fused_unsupported_reason(torch.device('cpu'))}",
)

SHAPES = ((3, 4), (5,), (2, 2, 2), (257,))
STEPS = (0.3, 0.05, 1.7, 0.0, 0.8)   # 0.0: a loss at its lower bound


def _tensors(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def _assert_close(fused, foreach, dtype):
    for a, b in zip(fused, foreach):
        scale = float(b.abs().max())
        if dtype == torch.float64:
            assert float((a - b).abs().max()) <= 1e-12 * max(scale, 1.0)
        else:
            ulps = float((a - b).abs().max()) / (torch.finfo(dtype).eps * scale)
            assert ulps <= 4.0, f"{ulps:.1f} ulps apart"


def _assert_fused_matches_foreach(dtype, with_buffers, *args, **kwargs):
    """Run ``alig_update_(params, grads, buffers, step, *args, **kwargs)`` unfused and fused
    from the same start with the same gradients and step sizes, and compare."""
    params, buffers = _tensors(0, dtype), _tensors(1, dtype)
    fused_params, fused_buffers = [p.clone() for p in params], [b.clone() for b in buffers]
    for k, step in enumerate(STEPS):
        grads = _tensors(10 + k, dtype)
        F.alig_update_(params, grads, buffers if with_buffers else None, step, *args, **kwargs)
        F.alig_update_(fused_params, grads, fused_buffers if with_buffers else None, step, *args, fused=True, **kwargs)
    _assert_close(fused_params, params, dtype)
    _assert_close(fused_buffers, buffers, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_momentum_update_matches_foreach(dtype, weight_decay):
    # ALIG (weight_decay 0) and ALIGPlus: decoupled decay, then the reference momentum.
    _assert_fused_matches_foreach(dtype, True, 0.9, weight_decay)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fused_update_with_scaled_gradients_matches_foreach(momentum):
    # GradScaler: the gradients are g / grad_factor; every gradient term takes step * grad_factor
    _assert_fused_matches_foreach(torch.float64, True, momentum, 0.01, grad_factor=0.25)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_adjusted_momentum_update_matches_foreach(dtype):
    _assert_fused_matches_foreach(dtype, True, 0.8, adjusted=True)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_plain_update_matches_foreach(weight_decay):
    # plain ALI-G and SPS (weight_decay 0), ALIGPlus without momentum
    _assert_fused_matches_foreach(torch.float64, False, weight_decay=weight_decay)


def test_fused_update_follows_the_reference_formula():
    # Independent of functional.py: the momentum update written out per tensor.
    gamma, mu = 0.4, 0.9
    ps, gs, bs = _tensors(0, torch.float64), _tensors(1, torch.float64), _tensors(2, torch.float64)
    expected_b = [mu * b - gamma * g for g, b in zip(gs, bs)]
    expected_p = [p - gamma * g + mu * nb for p, g, nb in zip(ps, gs, expected_b)]
    F.alig_update_(ps, gs, bs, torch.tensor(gamma, dtype=torch.float64), mu, fused=True)
    _assert_close(ps, expected_p, torch.float64)
    _assert_close(bs, expected_b, torch.float64)


def test_keep_false_leaves_every_tensor_bit_identical_even_with_a_nan_step():
    ps, gs, bs = _tensors(0, torch.float64), _tensors(1, torch.float64), _tensors(2, torch.float64)
    before = [t.clone() for t in ps + bs]
    F.alig_update_(ps, gs, bs, torch.tensor(float("nan"), dtype=torch.float64), 0.9,
                   keep=torch.tensor(False), fused=True)
    assert all(torch.equal(a, b) for a, b in zip(ps + bs, before))
    # keep=True is the update itself
    F.alig_update_(ps, gs, bs, 0.3, 0.9, keep=torch.tensor(True), fused=True)
    ref_p, ref_b = [t.clone() for t in before[:len(ps)]], [t.clone() for t in before[len(ps):]]
    F.alig_update_(ref_p, gs, ref_b, 0.3, 0.9)
    _assert_close(ps, ref_p, torch.float64)
    _assert_close(bs, ref_b, torch.float64)


def test_a_new_step_size_does_not_recompile():
    ps, gs, bs = _tensors(0, torch.float64), _tensors(1, torch.float64), _tensors(2, torch.float64)
    F.alig_update_(ps, gs, bs, 0.1, 0.9, fused=True)   # compiled (or found) here
    graphs = counters["stats"]["unique_graphs"]
    for step in (0.2, 0.7, torch.tensor(1e-3, dtype=torch.float64), 0.0):
        F.alig_update_(ps, gs, bs, step, 0.9, fused=True)
    assert counters["stats"]["unique_graphs"] == graphs


def test_mixed_dtypes_update_each_bucket():
    # one compiled call per (device, dtype) bucket; the parameters keep their dtypes
    ps = [torch.ones(3, dtype=torch.float64), torch.ones(4, dtype=torch.float32)]
    gs = [torch.full((3,), 2.0, dtype=torch.float64), torch.full((4,), 2.0, dtype=torch.float32)]
    F.alig_update_(ps, gs, None, 0.25, fused=True)
    assert [p.dtype for p in ps] == [torch.float64, torch.float32]
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in ps)


def _no_compiler():
    import torch._inductor.config as inductor_config

    return inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)})


def test_reason_names_a_missing_compiler():
    with _no_compiler():
        reason = X.fused_unsupported_reason(torch.device("cpu"))
        assert reason is not None and "compiler" in reason
        with pytest.raises(RuntimeError, match="fused=True is not available here.*fused=False"):
            X.check_fused_supported("ALIG", [torch.zeros(2)])
    assert X.fused_unsupported_reason(torch.device("cpu")) is None
    assert X.fused_unsupported_reason(torch.device("meta")) is not None


def test_integer_parameters_are_refused():
    with pytest.raises(RuntimeError, match="floating-point parameters"):
        X.check_fused_supported("ALIG", [torch.zeros(2), torch.zeros(2, dtype=torch.int64)])


# ------------------------------------------------------------- the optimizers
import polyak  # noqa: E402
from helpers import linear_classification_problem  # noqa: E402

N_STEPS = 6
OPTIMIZERS = {
    "ALIG": (polyak.ALIG, dict(max_lr=0.5)),
    "ALIG momentum, weight decay": (polyak.ALIG, dict(max_lr=0.5, momentum=0.9, weight_decay=1e-2)),
    "ALIG adjusted momentum": (polyak.ALIG, dict(max_lr=0.5, momentum=0.9, adjusted_momentum=True)),
    "ALIGPlus": (polyak.ALIGPlus, dict(max_lr=0.5, num_samples=8 * N_STEPS, epochs=2, K=1, weight_decay=1e-2)),
    "SPS": (polyak.SPS, dict(c=0.5, n_batches_per_epoch=3)),
}


def _train(cls, kwargs, step=None, **options):
    """N_STEPS steps on a linear classifier (float64 under the fixture); the parameters
    and the step sizes."""
    params, loss_fn, batches = linear_classification_problem(
        seed=3, n_batches=N_STEPS, loss=lambda s, t: torch.nn.functional.cross_entropy(s, t, reduction="none"))
    params = [p.requires_grad_(True) for p in params]
    opt = cls(params, **kwargs, **options)
    step = step(opt) if step is not None else opt.step
    sizes = []
    for i in batches:
        losses = loss_fn(params, i)   # per sample
        opt.zero_grad()
        losses.mean().backward()
        if cls is polyak.ALIGPlus:
            step(loss=losses, index=torch.arange(8 * i, 8 * i + 8))
        else:
            step(loss=losses.mean())
        sizes.append(float(opt.param_groups[0]["step_size"]))
    return params, sizes, opt, step


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_optimizer_follows_the_foreach_trajectory(name):
    cls, kwargs = OPTIMIZERS[name]
    ref_params, ref_sizes, _, _ = _train(cls, kwargs)
    params, sizes, opt, _ = _train(cls, kwargs, fused=True)
    assert opt.defaults["fused"] and all(g["fused"] for g in opt.param_groups)
    assert opt.state_dict()["param_groups"][0]["fused"] is True
    assert sizes == pytest.approx(ref_sizes, rel=1e-12, abs=0.0) and max(ref_sizes) > 0
    _assert_close([p.detach() for p in params], [p.detach() for p in ref_params], torch.float64)


@pytest.mark.usefixtures("float64")
def test_a_fused_step_compiles_whole():
    # torch.compile(opt.step, fullgraph=True) inlines the fused update: one graph, no break,
    # the same trajectory as the eager foreach step, and the branch-free skip of a compiled
    # (tensor-path) step leaves a NaN step without a trace.
    cls, kwargs = OPTIMIZERS["ALIG momentum, weight decay"]
    ref_params, ref_sizes, _, _ = _train(cls, kwargs)
    params, sizes, opt, step = _train(cls, kwargs, step=lambda opt: torch.compile(opt.step, fullgraph=True), fused=True)
    assert sizes == pytest.approx(ref_sizes, rel=1e-12, abs=0.0)
    _assert_close([p.detach() for p in params], [p.detach() for p in ref_params], torch.float64)
    state = [t.clone() for t in params] + [opt.state[p]["momentum_buffer"].clone() for p in params]
    step(loss=torch.tensor(float("nan")))
    after = [t.detach() for t in params] + [opt.state[p]["momentum_buffer"] for p in params]
    assert all(torch.equal(a, b) for a, b in zip(after, state)) and opt.skipped_steps == 1


def test_fused_true_is_refused_where_it_cannot_compile():
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="fused"):
        polyak.ALIG([w], max_lr=0.1, fused="yes")
    with _no_compiler():
        for make in (lambda: polyak.ALIG([w], max_lr=0.1, fused=True), lambda: polyak.SPS([w], fused=True),
                     lambda: polyak.ALIGPlus([w], max_lr=0.1, num_samples=4, epochs=5, fused=True)):
            with pytest.raises(RuntimeError, match="fused=True is not available here"):
                make()
        # the default and fused=False never ask for the compiler
        assert polyak.ALIG([w], max_lr=0.1).defaults["fused"] is False
        assert polyak.SPS([w], fused=False).defaults["fused"] is False


def test_the_updates_have_no_graph_break():
    # torch.compile without fullgraph would silently split a broken update into pieces
    ps, gs, bs = _tensors(0, torch.float64), _tensors(1, torch.float64), _tensors(2, torch.float64)
    step, keep = torch.tensor(0.1, dtype=torch.float64), torch.tensor(True)
    grad_step = torch.tensor(0.2, dtype=torch.float64)
    for update, args in ((X._plain_update, (ps, gs, step, grad_step, 0.01, keep)),
                         (X._momentum_update, (ps, gs, bs, step, grad_step, 0.9, 0.01, keep)),
                         (X._adjusted_momentum_update, (ps, gs, bs, step, None, 0.9, 0.0, None))):
        explained = torch._dynamo.explain(update)(*args)
        assert explained.graph_count == 1 and explained.graph_break_count == 0


@pytest.mark.slow   # nine compilations: about a minute on 2 shared cores
def test_more_parameter_lists_than_dynamos_default_recompile_limit():
    # 9 param groups of different shapes: 9 compiled versions (dynamo's default limit is 8,
    # and under fullgraph=True the 9th raised FailOnRecompileLimitHit)
    for n in range(1, 10):
        p, g = [torch.ones(n, dtype=torch.float64)], [torch.ones(n, dtype=torch.float64)]
        F.alig_update_(p, g, None, 0.5, fused=True)
        assert torch.equal(p[0], torch.full((n,), 0.5, dtype=torch.float64))

"""The benchmark's optimizer records: the library's, the peers', availability, one step of every peer."""
import math

import pytest
import torch

import polyak
from polyak import OptimizerSpec
from polyak.bench.optimizers import (PEERS, PeerMissing, StepScheduleSGD, _LazyClass, all_optimizer_info,
                                     get_bench_spec, optimizer_info, regularisation_param)
from polyak.bench.feeding import Stepper as _Stepper

PEER_NAMES = [info.name for info in PEERS]


def test_every_library_record_is_in_the_bench_view_and_peers_stay_out_of_the_library():
    infos = all_optimizer_info()
    for spec in polyak.specs():
        assert infos[spec.name].spec is spec and infos[spec.name].source == "polyak"
    assert not set(PEER_NAMES) & set(polyak.available()), "peers must not leak into polyak's registry"
    assert set(PEER_NAMES) <= set(infos)


def test_peer_records_are_complete():
    expected = {"sgd", "sgd-step", "adam", "adamw", "amsgrad", "adamp", "adabound", "yogi", "cocob", "prodigy",
                "dadapt-sgd", "dadapt-adam", "schedulefree-sgd", "schedulefree-adamw", "dog", "momo"}
    assert set(PEER_NAMES) == expected
    for info in PEERS:
        spec = info.spec
        assert isinstance(spec, OptimizerSpec) and spec.passes == (1, 1)
        for value in spec.step_size_grid:  # powers of ten
            assert math.log10(value) == pytest.approx(round(math.log10(value)))
        assert bool(spec.step_size_grid) == bool(spec.step_size_param)
    assert get_bench_spec("schedulefree-sgd").needs == {"gradient", "train_eval"}
    assert get_bench_spec("momo").needs == {"loss"}
    for learning_rate_free in ("prodigy", "cocob", "dog", "dadapt-sgd", "dadapt-adam"):
        assert get_bench_spec(learning_rate_free).step_size_grid == ()


def test_missing_package_is_listed_as_unavailable_with_the_pip_command():
    info = optimizer_info("prodigy")
    ghost = type(info)(OptimizerSpec(name="ghost", factory=_LazyClass("ghost-opt", "no_such_module_xyz", "Ghost"),
                                     needs=frozenset({"gradient"}), passes=(1, 1)), "ghost-opt", "no_such_module_xyz")
    assert not ghost.available and ghost.install_hint == "pip install ghost-opt" and ghost.version is None
    with pytest.raises(PeerMissing, match="pip install ghost-opt"):
        ghost.spec.create([torch.nn.Parameter(torch.zeros(1))])
    assert regularisation_param(ghost.spec) is None


def test_regularisation_param_is_read_from_the_constructor():
    assert regularisation_param(get_bench_spec("alig")) == "max_norm"
    assert regularisation_param(get_bench_spec("sgd")) == "weight_decay"


def test_unknown_optimizer_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown optimizer 'nope'.*alig"):
        optimizer_info("nope")


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = StepScheduleSGD([p], lr=1.0, total_steps=8)
    lrs = []
    for _ in range(8):
        p.grad = torch.ones(1)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.01])
    assert p.item() == pytest.approx(-(4 * 1.0 + 2 * 0.1 + 2 * 0.01))  # lr before each step
    with pytest.raises(ValueError, match="total_steps"):
        StepScheduleSGD([p], total_steps=0)


@pytest.mark.parametrize("name", PEER_NAMES)
def test_each_peer_takes_one_step_on_a_tiny_model(name):
    info = optimizer_info(name)
    if not info.available:
        pytest.skip(f"{name}: {info.install_hint} to test it")
    spec = info.spec
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    context = {"total_steps": 10}
    opt = spec.create(model.parameters(), **{k: context[k] for k in spec.context})
    if "train_eval" in spec.needs:
        opt.train()
    before = [p.detach().clone() for p in model.parameters()]
    loss_fn = lambda out, target: torch.nn.functional.cross_entropy(out, target, reduction="none")
    stepper = _Stepper(spec.needs, opt, model, loss_fn)
    for _ in range(2):  # Prodigy/D-Adaptation start from a tiny d: two steps make the move visible
        loss = stepper.step(None, x, y)
    assert math.isfinite(float(loss))
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), f"{name} did not move the weights"
    assert info.version is not None

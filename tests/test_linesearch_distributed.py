"""PAL, SLS, LABPAL and L4 under torch.distributed (2 gloo ranks spawned inside the
test, each run bounded by a timeout): with different data per rank every probe loss
is averaged over the ranks, so both replicas take the same decisions and stay
identical (a NaN on one rank skips the step on both); under FSDP2 (fully_shard) a PAL run equals one process on the global batch."""
import torch
from torch import nn

import polyak

from dist_helpers import spawn  # tests/dist_helpers.py
from helpers import line_search_step  # tests/helpers.py

STEPS = 32


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _batch(step, rank, size=16):
    gen = torch.Generator().manual_seed(1000 * step + rank)  # different data on every rank
    return torch.randn(size, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (size,), generator=gen)


BUILDERS = {
    "pal": lambda ps: polyak.PAL(ps, momentum=0.4),
    "sls": lambda ps: polyak.SLS(ps, init_step_size=5.0, n_batches_per_epoch=4),
    "labpal": lambda ps: polyak.LABPAL(ps, approx_batches=2, reuse_steps=3, batch_size=64, momentum=0.5),
    "l4": lambda ps: polyak.L4(ps, base="adam"),
}


def _replicas(rank, world):
    runs = {name: _replica(rank, name) for name in sorted(BUILDERS)}
    runs.update({f"{name}-nan": _replica(rank, name, nan_at=3) for name in sorted(BUILDERS)})
    return runs


def _replica(rank, name, nan_at=None):
    model = nn.parallel.DistributedDataParallel(_model())
    opt = BUILDERS[name](model.parameters())
    calls = 0
    for step in range(STEPS):
        x, y = _batch(step, rank)

        def closure(x=x, y=y):
            nonlocal calls
            calls += 1
            loss = nn.functional.cross_entropy(model(x), y)
            return loss * float("nan") if step == nan_at and rank == 1 else loss  # one rank's loss only

        line_search_step(opt, closure)
    return {"params": [p.detach().clone() for p in model.parameters()], "calls": calls, "updates": opt.global_state["step"],
            "skipped": opt.skipped_steps}


def test_replicas_stay_identical_with_different_data_per_rank():
    # one spawn for the four optimizers: starting ranks is the expensive part
    ranks = spawn(_replicas, timeout_s=240)
    start = [p.detach() for p in _model().parameters()]
    for name in sorted(ranks[0]):
        first, second = ranks[0][name], ranks[1][name]
        assert first["calls"] == second["calls"] and first["updates"] == second["updates"] > 5, name
        # a NaN on one rank makes both ranks skip that step, and nobody hangs
        assert first["skipped"] == second["skipped"] == (1 if name.endswith("-nan") else 0), name
        for p, q in zip(first["params"], second["params"]):
            assert torch.equal(p, q), name
        assert any(not torch.equal(p, s) for p, s in zip(first["params"], start)), name


def _fsdp_pal(rank, world):
    from torch.distributed.fsdp import fully_shard

    model = _model()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    opt = polyak.PAL(model.parameters(), momentum=0.4)
    for step in range(20):
        x, y = _batch(step, 0, size=32)
        half = slice(16 * rank, 16 * (rank + 1))  # each rank half of the global batch
        opt.step(lambda x=x[half], y=y[half]: nn.functional.cross_entropy(model(x), y))
    directions = [opt.state[p]["direction"] for p in model.parameters()]
    # the state is sharded like the parameters (what torch.distributed.checkpoint expects)
    assert all(d.placements == p.placements and d.shape == p.shape for d, p in zip(directions, model.parameters()))
    return [p.full_tensor().detach().clone() for p in model.parameters()]


def test_fsdp2_pal_equals_one_process_on_the_global_batch():
    first, second = spawn(_fsdp_pal, timeout_s=120)
    model = _model()
    opt = polyak.PAL(model.parameters(), momentum=0.4)
    for step in range(20):
        x, y = _batch(step, 0, size=32)
        opt.step(lambda x=x, y=y: nn.functional.cross_entropy(model(x), y))
    for p, q, expected in zip(first, second, model.parameters()):
        assert torch.equal(p, q)
        torch.testing.assert_close(p, expected.detach(), rtol=1e-10, atol=1e-12)

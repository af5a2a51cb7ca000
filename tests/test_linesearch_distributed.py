"""PAL, SLS, LABPAL and L4 under torch.distributed (2 gloo ranks spawned inside the
test, each run bounded by a timeout): with different data per rank every probe loss
is averaged over the ranks, so both replicas take the same decisions and stay
identical; under FSDP2 (fully_shard) a PAL run equals one process on the global batch."""
import io
import multiprocessing
import os
import socket
import traceback

import pytest
import torch
from torch import nn

import polyak

STEPS = 32


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, fn, args, results):
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        try:
            value = fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
        buffer = io.BytesIO()
        torch.save(value, buffer)
        results.put((rank, True, buffer.getvalue()))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def _spawn(fn, args=(), world=2, timeout_s=120):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    procs = [context.Process(target=_rank_main, args=(r, world, port, fn, args, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    try:
        values = {}
        for _ in range(world):
            rank, ok, value = results.get(timeout=timeout_s)  # queue.Empty after the timeout: a hang
            assert ok, f"rank {rank} raised:\n{value}"
            values[rank] = torch.load(io.BytesIO(value), weights_only=False)
        return [values[r] for r in range(world)]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()


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
    return {name: _replica(rank, name) for name in sorted(BUILDERS)}


def _replica(rank, name):
    model = nn.parallel.DistributedDataParallel(_model())
    opt = BUILDERS[name](model.parameters())
    calls = 0
    for step in range(STEPS):
        x, y = _batch(step, rank)

        def closure(x=x, y=y):
            nonlocal calls
            calls += 1
            return nn.functional.cross_entropy(model(x), y)

        if name == "l4":
            opt.zero_grad()
            loss = closure()
            loss.backward()
            opt.step(loss=loss)
        else:
            opt.step(closure)
    return {"params": [p.detach().clone() for p in model.parameters()], "calls": calls, "updates": opt.global_state["step"]}


def test_replicas_stay_identical_with_different_data_per_rank():
    # one spawn for the four optimizers: starting ranks is the expensive part
    ranks = _spawn(_replicas, timeout_s=240)
    start = [p.detach() for p in _model().parameters()]
    for name in sorted(BUILDERS):
        first, second = ranks[0][name], ranks[1][name]
        assert first["calls"] == second["calls"] and first["updates"] == second["updates"] > 5, name
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
    return [p.full_tensor().detach().clone() for p in model.parameters()]


def test_fsdp2_pal_equals_one_process_on_the_global_batch():
    first, second = _spawn(_fsdp_pal)
    model = _model()
    opt = polyak.PAL(model.parameters(), momentum=0.4)
    for step in range(20):
        x, y = _batch(step, 0, size=32)
        opt.step(lambda x=x, y=y: nn.functional.cross_entropy(model(x), y))
    for p, q, expected in zip(first, second, model.parameters()):
        assert torch.equal(p, q)
        torch.testing.assert_close(p, expected.detach(), rtol=1e-10, atol=1e-12)

"""What the distributed Polyak step costs under DDP (issue 8, "Cost").

2 CPU ranks (gloo, one thread each), an MLP of about 1M parameters, 64 samples per
rank and step: the time of one whole training step (forward, backward with DDP's
gradient all-reduce, optimizer step) of ALIG, ALIGPlus and SPS against torch's
SGD(momentum=0.9) in the same run, and the collectives each optimizer issues per
step (counted by wrapping polyak._distributed's two entry points). ALIG and SPS
issue one all-reduce of a packed tensor of 7 scalars; ALIGPlus with per-sample
AOVs one all-reduce and one all-gather of the (index, loss) pairs.

Usage: python benchmarks/distributed_overhead.py [--steps 40] [--out benchmarks/results/distributed_overhead.md]
The machine is shared (other jobs run at the same time): read the ratios of one run.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, steps, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from polyak import ALIG, ALIGPlus, SPS
    from polyak import _distributed as D

    calls = {"n": 0}
    for name in ("all_reduce_sum_", "all_gather_rows"):
        original = getattr(D, name)

        def counted(*args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(*args, **kwargs)

        setattr(D, name, counted)

    n_samples, batch = 4096, 64
    gen = torch.Generator().manual_seed(rank)
    X = torch.randn(n_samples, 512, generator=gen)
    y = torch.randint(0, 10, (n_samples,), generator=gen)
    build = {
        "SGD(momentum=0.9)": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
        "ALIG(momentum=0.9)": lambda ps: ALIG(ps, max_lr=0.1, momentum=0.9),
        "SPS": lambda ps: SPS(ps, n_batches_per_epoch=64),
        "ALIGPlus": lambda ps: ALIGPlus(ps, max_lr=0.1, num_samples=n_samples * world, epochs=5),
    }
    rows = []
    for name, make in build.items():
        torch.manual_seed(0)
        model = DDP(nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10)))
        opt = make(model.parameters())
        times = []
        calls["n"] = 0
        for t in range(steps + 5):
            local = torch.arange(batch) + (t * batch) % (n_samples - batch)
            dist.barrier()
            start = time.perf_counter()
            losses = nn.functional.cross_entropy(model(X[local]), y[local], reduction="none")
            opt.zero_grad()
            losses.mean().backward()
            if isinstance(opt, ALIGPlus):
                opt.step(loss=losses.detach(), index=local + rank * n_samples)
            elif isinstance(opt, torch.optim.SGD):
                opt.step()
            else:
                opt.step(loss=losses.detach().mean())
            if t >= 5:
                times.append(time.perf_counter() - start)
        rows.append((name, statistics.median(times), calls["n"] / (steps + 5)))
    # the collective alone: one all-reduce of 7 float64 scalars
    packed = torch.zeros(7, dtype=torch.float64)
    lat = []
    for _ in range(200):
        start = time.perf_counter()
        dist.all_reduce(packed)
        lat.append(time.perf_counter() - start)
    if rank == 0:
        queue.put((rows, statistics.median(lat)))
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    world = 2
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, args.steps, queue)) for r in range(world)]
    for p in procs:
        p.start()
    rows, latency = queue.get(timeout=900)
    for p in procs:
        p.join(timeout=60)
    sgd = rows[0][1]
    params = 512 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10
    lines = [
        "# Distributed overhead of the Polyak steps under DDP",
        "",
        f"torch {torch.__version__}, 2 CPU ranks (gloo, 1 thread each), MLP of {params / 1e6:.2f}M parameters, "
        f"64 samples per rank, median of {args.steps} steps. Shared, noisy machine: compare within this run.",
        "",
        "| optimizer | ms per training step | / SGD | polyak collectives per step |",
        "|---|---|---|---|",
    ]
    for name, seconds, collectives in rows:
        lines.append(f"| {name} | {seconds * 1e3:.2f} | {seconds / sgd:.3f} | {collectives:.0f} |")
    lines += [
        "",
        f"One all-reduce of the packed 7 float64 scalars alone: {latency * 1e6:.0f} us "
        f"({latency / sgd * 100:.1f}% of SGD's training step).",
    ]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    main()

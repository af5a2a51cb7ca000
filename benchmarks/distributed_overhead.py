"""What the distributed reduction costs: DDP training steps on 2 CPU ranks (gloo).

Every variant trains its own copy of the same ~1M-parameter MLP under
DistributedDataParallel on the same batches; rounds alternate between the
variants so drift of a noisy machine hits all alike. Reported: the median time of
a whole training step (forward, backward with DDP's gradient all-reduce, step)
against torch SGD(momentum=0.9) in the same rounds, and the collectives the
OPTIMIZER issues per step (counted at torch.distributed's Python API, which DDP's
own bucketed all-reduce does not go through), with the elements they carry.
Each Polyak variant also runs with a process group of its own rank only: the same
arithmetic without any collective. The price of the collectives is also timed alone: one all_reduce of the packed
step scalars, and ALI-G+'s all-gather of its per-sample losses and indices, each
against SGD's whole training step. (``loss_is_global=True`` does not remove the
collective: the non-finite flag and the hyperparameter check stay global.)

    torchrun --nproc_per_node=2 benchmarks/distributed_overhead.py   # writes benchmarks/results/distributed_overhead.{json,md}
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import polyak

BATCH, FEATURES, CLASSES = 64, 784, 10
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter_tensor",
               "all_gather_object", "broadcast_object_list", "reduce")


class CollectiveCounter:
    """Counts the calls (and tensor elements) of torch.distributed's collectives while on."""

    def __init__(self):
        self.on, self.calls, self.elements = False, 0, 0
        for name in COLLECTIVES:
            setattr(dist, name, self._wrap(getattr(dist, name)))

    def _wrap(self, function):
        @functools.wraps(function)
        def counted(*args, **kwargs):
            if self.on:
                self.calls += 1
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                tensors += [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
                self.elements += sum(t.numel() for t in tensors)
            return function(*args, **kwargs)
        return counted


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, CLASSES))


def variants(steps_per_epoch: int, alone):
    """name -> (optimizer factory, whether the step reads per-sample losses). ``alone``:
    a process group of this rank only, where the optimizer communicates nothing (same
    arithmetic, no collective): the difference to it is the collective's price."""
    alig_plus = dict(max_lr=0.1, num_samples=100_000, epochs=10, K=5, weight_decay=1e-4, momentum=0.9)
    out = {"sgd-momentum (baseline)": (lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), False)}
    for name, make, per_sample in (
        ("alig (momentum 0.9)", lambda p, **kw: polyak.ALIG(p, max_lr=0.1, momentum=0.9, **kw), False),
        ("alig-plus (momentum 0.9, wd 1e-4)", lambda p, **kw: polyak.ALIGPlus(p, **alig_plus, **kw), True),
        ("sps (smooth_iter)", lambda p, **kw: polyak.SPS(p, c=0.2, n_batches_per_epoch=steps_per_epoch, **kw), False),
    ):
        out[name] = (make, per_sample)
        out[f"{name.split(' ')[0]}, no collective (1-rank group)"] = (
            functools.partial(make, process_group=alone), per_sample)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "distributed_overhead"))
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)  # 2 ranks on 2 cores
    counter = CollectiveCounter()
    gen = torch.Generator().manual_seed(1 + rank)  # different data on each rank
    total_steps = (args.rounds + 1) * args.steps
    xs = torch.randn(total_steps, BATCH, FEATURES, generator=gen)
    ys = torch.randint(0, CLASSES, (total_steps, BATCH), generator=gen)
    index = torch.arange(total_steps * BATCH).reshape(total_steps, BATCH) * world + rank

    runs = {}
    groups = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
    for name, (make, per_sample) in variants(args.steps * (args.rounds + 1), groups[rank]).items():
        net = DistributedDataParallel(model())
        runs[name] = dict(net=net, opt=make(net.parameters()), per_sample=per_sample, times=[], position=0)
    print_rank0 = print if rank == 0 else (lambda *a, **k: None)
    print_rank0(f"{world} ranks, {sum(p.numel() for p in model().parameters()):,} parameters, batch {BATCH} per rank")

    def train(run, steps):
        net, opt = run["net"], run["opt"]
        for _ in range(steps):
            i = run["position"] % total_steps
            run["position"] += 1
            losses = F.cross_entropy(net(xs[i]), ys[i], reduction="none")
            opt.zero_grad()
            losses.mean().backward()
            if isinstance(opt, torch.optim.SGD):
                opt.step()
            elif run["per_sample"]:
                opt.step(loss=losses.detach(), index=index[i])
            else:
                opt.step(loss=losses.mean().detach())

    collectives = {}
    for name, run in runs.items():  # warm-up, and the collectives of a step
        train(run, 2)
        counter.calls = counter.elements = 0
        counter.on = True
        train(run, args.steps)
        counter.on = False
        collectives[name] = (counter.calls / args.steps, counter.elements / args.steps)
    for _ in range(args.rounds):
        for name, run in runs.items():
            dist.barrier()
            start = time.perf_counter()
            train(run, args.steps)
            dist.barrier()
            run["times"].append((time.perf_counter() - start) / args.steps)

    baseline = statistics.median(runs["sgd-momentum (baseline)"]["times"])
    alone = {}
    for name, numel in (("all_reduce of 7 float64 (the packed step scalars)", 7),
                        ("all_gather of 2 x 64 float64 per rank (ALI-G+ losses and indices)", 2 * BATCH)):
        calls = []
        for _ in range(9):
            probe = torch.zeros(numel, dtype=torch.float64)
            dist.barrier()
            start = time.perf_counter()
            for _ in range(50):
                if numel == 7:
                    dist.all_reduce(probe)
                else:
                    dist.all_gather_into_tensor(torch.empty(numel * world, dtype=torch.float64), probe)
            calls.append((time.perf_counter() - start) / 50)
        alone[name] = statistics.median(calls)
    rows = []
    for name, run in runs.items():
        median = statistics.median(run["times"])
        calls, elements = collectives[name]
        rows.append(dict(optimizer=name, median_step_ms=1e3 * median, ratio=median / baseline,
                         collectives_per_step=calls, elements_per_step=elements))
    if rank == 0:
        header = (f"# DDP training step on {world} CPU ranks (gloo), relative to SGD(momentum=0.9)\n\n"
                  f"{platform.machine()}, torch {torch.__version__}, 1 thread per rank, "
                  f"{sum(p.numel() for p in model().parameters()):,}-parameter MLP, batch {BATCH} per rank, "
                  f"median of {args.rounds} alternating rounds of {args.steps} steps. The machine is shared with "
                  "other jobs (noisy): compare ratios within this run only.\n\n"
                  "Collectives: those the optimizer issues per step (DDP's gradient all-reduce excluded).\n\n"
                  "| optimizer | median step (ms) | ratio vs SGD | optimizer collectives / step | elements / step |\n"
                  "|---|---:|---:|---:|---:|\n")
        table = "".join(f"| {r['optimizer']} | {r['median_step_ms']:.2f} | {r['ratio']:.3f} | "
                        f"{r['collectives_per_step']:g} | {r['elements_per_step']:g} |\n" for r in rows)
        table += ("\nOne collective alone, against SGD's whole training step:\n\n"
                  "| collective | median (ms) | fraction of SGD's step |\n|---|---:|---:|\n")
        table += "".join(f"| {name} | {1e3 * t:.3f} | {t / baseline:.3%} |\n" for name, t in alone.items())
        print(header + table)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(header + table)
        out.with_suffix(".json").write_text(json.dumps(dict(world=world, batch=BATCH, rounds=args.rounds,
                                                            steps=args.steps, torch=torch.__version__, rows=rows,
                                                            collective_alone_s=alone),
                                                       indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

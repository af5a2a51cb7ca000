"""DDP with polyak: the README usage, unchanged, on 2 CPU processes.

    torchrun --nproc_per_node=2 examples/ddp.py [--optimizer alig|alig-plus|sps] [--epochs 3]

Each rank reads a different half of a synthetic classification set
(DistributedSampler); DDP averages the gradients, and the optimizer averages what
it reads from the loss over the ranks (one collective per step), so every rank
takes the same step. At the end every rank's parameters are compared with rank
0's: the largest difference printed is 0. Uses gloo, so it runs on any CPU.
"""
from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import polyak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="alig", choices=["alig", "alig-plus", "sps"])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same model and data set on every rank
    x = torch.randn(1024, 20)
    y = (x @ torch.randn(20, 4)).argmax(dim=1)  # a linear teacher: the labels can be fitted
    train = polyak.IndexedDataset(TensorDataset(x, y))  # yields (index, (x, y)); ALI-G+ reads the index
    sampler = DistributedSampler(train, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=32, sampler=sampler)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4)))
    if args.optimizer == "alig":
        opt = polyak.ALIG(model.parameters(), max_lr=1.0, momentum=0.9)
    elif args.optimizer == "sps":
        opt = polyak.SPS(model.parameters(), c=0.2, n_batches_per_epoch=len(loader))
    else:
        opt = polyak.ALIGPlus(model.parameters(), max_lr=1.0, num_samples=len(train), epochs=args.epochs, K=args.epochs)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = 0.0
        for index, (xb, yb) in loader:
            losses = F.cross_entropy(model(xb), yb, reduction="none")
            opt.zero_grad()
            losses.mean().backward()
            if args.optimizer == "alig-plus":
                opt.step(loss=losses, index=index)  # per-sample losses of THIS rank's batch
            else:
                opt.step(loss=losses.mean())       # THIS rank's loss: the step averages it over ranks
            total += float(losses.mean())
        if args.optimizer == "alig-plus":
            opt.end_epoch()
        if rank == 0:
            print(f"epoch {epoch}: mean training loss on rank 0 {total / len(loader):.4f}, "
                  f"last step size {float(opt.param_groups[0]['step_size']):.4g}")
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    difference = torch.tensor([(flat - reference).abs().max().item()])
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(f"{world} ranks, {args.optimizer}: largest parameter difference from rank 0: {difference.item():.3g}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Every registered optimizer under DDP: 2 gloo ranks on CPU, different data on each
rank, 40 steps over 5 epochs; afterwards the parameters (and every tensor of the
optimizer-wide state, e.g. ALI-G+'s AOV tables) are identical on both ranks.

Without the reduction of issue 8 the loss is rank-local, the step sizes differ and
the replicas drift apart silently (ALI-G by 4.5 after 30 steps). The two ranks run
in processes spawned here, all optimizers in one pair (one start-up cost), bounded
by a timeout so a deadlock fails instead of hanging."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import polyak

from dist_helpers import spawn

WORLD, SAMPLES, BATCH, EPOCHS = 2, 128, 8, 5  # 40 steps; ALI-G+ needs epochs >= K (5)
STEPS_PER_EPOCH = SAMPLES // WORLD // BATCH
TIMEOUT_S = 240
# What a harness fills from the run (the registry's CONTEXT), for this run.
CONTEXT = {"num_samples": SAMPLES, "epochs": EPOCHS, "n_batches_per_epoch": STEPS_PER_EPOCH,
           "total_steps": EPOCHS * STEPS_PER_EPOCH, "batch_size": BATCH, "dataset_size": SAMPLES // WORLD}


def train_one(spec, rank):
    """40 DDP steps of ``spec``, fed what its record says it needs; returns the
    parameters and the optimizer-wide state tensors."""
    torch.manual_seed(0)  # the same initial model on every rank
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    initial = [p.detach().clone() for p in net.parameters()]
    model = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = spec.create(model.parameters(), **{k: CONTEXT[k] for k in spec.context})
    data = torch.Generator().manual_seed(1)  # one global data set ...
    x_all, y_all = torch.randn(SAMPLES, 5, generator=data), torch.randint(0, 3, (SAMPLES,), generator=data)
    mine = torch.arange(rank, SAMPLES, WORLD)  # ... split as DistributedSampler(shuffle=False) does
    for epoch in range(EPOCHS):
        for step in range(STEPS_PER_EPOCH):
            index = mine[step * BATCH:(step + 1) * BATCH]
            x, y = x_all[index], y_all[index]
            extra = {"index": index} if "index" in spec.needs else {}
            if "probe_closure" in spec.needs:
                optimizer.zero_grad()
                optimizer.step(lambda x=x, y=y: F.cross_entropy(model(x), y), **extra)
                continue
            losses = F.cross_entropy(model(x), y, reduction="none")
            optimizer.zero_grad()
            losses.mean().backward()
            loss = losses.detach() if "per_sample_loss" in spec.needs else losses.mean().detach()
            optimizer.step(loss=loss, **extra)
        if "end_epoch" in spec.needs:
            optimizer.end_epoch()
    state = optimizer.state_dict()["state"].get("global", {})
    tensors = {}
    stack = [("global", state)]
    while stack:  # every tensor of the optimizer-wide state, nested dicts included
        prefix, node = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict):
                stack.append((f"{prefix}.{key}", value))
            elif isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{key}"] = value.detach().clone()
    moved = max((p - p0).abs().max().item() for p, p0 in zip(net.parameters(), initial))
    return {"params": [p.detach().clone() for p in net.parameters()], "state": tensors, "moved": moved}


def every_optimizer(rank, world_size):
    torch.set_default_dtype(torch.float64)
    results = {}
    for spec in polyak.specs():
        try:
            results[spec.name] = train_one(spec, rank)
        except Exception as error:  # reported per optimizer by the test
            results[spec.name] = {"error": f"{type(error).__name__}: {error}"}
            dist.barrier()  # a rank that failed must not leave the other waiting in a collective
    return results


@pytest.fixture(scope="module")
def ranks():
    return spawn(every_optimizer, world_size=WORLD, timeout_s=TIMEOUT_S)


@pytest.mark.parametrize("name", polyak.available())
def test_replicas_identical_after_40_ddp_steps(ranks, name):
    first, second = ranks[0][name], ranks[1][name]
    assert "error" not in first and "error" not in second, (first.get("error"), second.get("error"))
    difference = max((p - q).abs().max().item() for p, q in zip(first["params"], second["params"]))
    assert difference <= 1e-7, f"{name}: the replicas differ by {difference:.3g}"
    assert first["state"].keys() == second["state"].keys()
    for key, value in first["state"].items():
        assert torch.allclose(value.double(), second["state"][key].double(), rtol=0, atol=1e-7), f"{name}: {key}"
    assert first["moved"] > 0, f"{name} never moved: the comparison would be empty"

"""ALIG, SPS, ALIGPlus and DFW under torch.distributed (2 CPU ranks, gloo), issue 8 item 1.

Each rank trains on its own half of every global batch (different data per rank, as
DistributedSampler gives). The README usage is unchanged (``opt.step(loss=loss)``), and:

- the parameters are identical on both ranks after 32 steps (exactly: the step's
  scalars are all-reduced, so both ranks compute the same step);
- the trajectory equals a single-process run on the concatenated batch to 1e-6 in
  float64 (DDP and FSDP2 ``fully_shard``), and ALIGPlus's AOV tables too;
- a NaN loss on one rank makes both ranks skip, without a hang;
- different hyperparameters on the ranks raise on both at the first step.

Two spawns of 2 processes (one DDP suite, one FSDP2 suite), each bounded by a timeout.
"""
import math
from unittest import mock

import pytest
import torch
from torch import nn

from polyak import ALIG, ALIGPlus, DFW, SPS
from polyak._base import PolyakBase

from dist_helpers import spawn  # tests/dist_helpers.py

N, B, EPOCHS = 64, 8, 8          # 2 ranks x 8 samples per step: 4 steps per epoch, 32 steps
STEPS_PER_EPOCH = N // (2 * B)

BUILD = {
    # max_lr=10 keeps most steps unclipped: the step depends on the loss, as under DDP it must
    "alig": lambda ps, **kw: ALIG(ps, max_lr=10.0, momentum=0.9, **kw),
    "dfw": lambda ps, **kw: DFW(ps, eta=10.0, momentum=0.9, **kw),
    "sps": lambda ps, **kw: SPS(ps, c=0.5, n_batches_per_epoch=STEPS_PER_EPOCH, **kw),
    "alig-plus": lambda ps, **kw: ALIGPlus(ps, max_lr=10.0, num_samples=N, epochs=EPOCHS, K=4, **kw),
}


def _data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, 5, generator=gen, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1.0).long()
    return X, y


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _global_batches():
    """The global batches of every step: 2B dataset indices each."""
    out = []
    for epoch in range(EPOCHS):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(epoch))
        out.extend(order[s * 2 * B:(s + 1) * 2 * B] for s in range(STEPS_PER_EPOCH))
    return out


def _train(name, model, opt, rank, world, *, nan_at=None, steps=None, hand_reduced=False):
    """The README loop on this rank's share of every global batch; returns the step sizes."""
    X, y = _data()
    taken = []
    for t, idx in enumerate(_global_batches()[:steps]):
        local = idx[rank * B:(rank + 1) * B] if world > 1 else idx
        losses = nn.functional.cross_entropy(model(X[local]), y[local], reduction="none")
        opt.zero_grad()
        losses.mean().backward()
        if name == "alig-plus":
            opt.step(loss=losses.detach(), index=local)
        else:
            loss = losses.detach().mean()
            if nan_at == t:
                loss = loss * math.nan
            if hand_reduced:   # what a loss_is_global=True user does
                torch.distributed.all_reduce(loss)
                loss = loss / world
            opt.step(loss=loss)
        taken.append(float(opt.param_groups[0]["step_size"]))
        if name == "alig-plus" and (t + 1) % STEPS_PER_EPOCH == 0:
            opt.end_epoch()
    return taken


def _snapshot(name, model, opt, taken):
    params = [p.detach().clone() for p in model.parameters()]
    out = {"params": params, "steps": taken, "skipped": opt.skipped_steps}
    if name == "alig-plus":
        out["tables"] = {k: v.clone() for k, v in opt.tables.items()}
    return out


# ---------------------------------------------------------------- rank workers
def ddp_suite(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP

    results = {}
    for name in BUILD:
        model = DDP(_model())
        opt = BUILD[name](model.module.parameters())
        results[name] = _snapshot(name, model.module, opt, _train(name, model, opt, rank, world))

    # loss_is_global=True with a loss the user all-reduced: the same run as the default
    model = DDP(_model())
    opt = BUILD["alig"](model.module.parameters(), loss_is_global=True)
    results["alig-global-loss"] = _snapshot("alig", model.module, opt,
                                            _train("alig", model, opt, rank, world, hand_reduced=True))

    # an explicit process_group (a group of both ranks): the same run as the default group
    model = DDP(_model())
    opt = BUILD["sps"](model.module.parameters(), process_group=torch.distributed.new_group([0, 1]))
    results["sps-process-group"] = _snapshot("sps", model.module, opt, _train("sps", model, opt, rank, world))

    # a NaN loss on rank 1 only, at step 5: both ranks skip it
    model = DDP(_model())
    opt = BUILD["alig"](model.module.parameters())
    results["nan-on-one-rank"] = _snapshot("alig", model.module, opt,
                                           _train("alig", model, opt, rank, world, nan_at=5 if rank == 1 else None,
                                                  steps=10))

    # different hyperparameters on the ranks: both raise at the first step
    model = DDP(_model())
    opt = ALIG(model.module.parameters(), max_lr=0.1 if rank == 0 else 0.2)
    try:
        _train("alig", model, opt, rank, world, steps=1)
        results["mismatch"] = None
    except ValueError as error:
        results["mismatch"] = str(error)
    return results


def fsdp_suite(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    results = {}
    for name in ("alig", "sps", "alig-plus"):
        model = _model()
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = BUILD[name](model.parameters())
        taken = _train(name, model, opt, rank, world)
        full = [p.full_tensor().detach().clone() for p in model.parameters()]
        out = {"params": full, "steps": taken}
        if name == "alig-plus":
            out["tables"] = {k: v.clone() for k, v in opt.tables.items()}
        results[name] = out
    # the tensor path (what accelerators run: no host read, branch-free skip) on DTensors
    model = _model()
    fully_shard(model, mesh=mesh)
    opt = BUILD["alig"](model.parameters())
    with mock.patch.object(PolyakBase, "_on_host", lambda self, device: False):
        _train("alig", model, opt, rank, world)
    results["alig-tensor-path"] = [p.full_tensor().detach().clone() for p in model.parameters()]
    # ALIG's L2 ball over sharded parameters: one global norm, not a per-shard one
    model = _model()
    fully_shard(model, mesh=mesh)
    opt = ALIG(model.parameters(), max_lr=10.0, max_norm=1.0)
    results["ball"] = math.sqrt(sum(float((p.full_tensor() ** 2).sum()) for p in model.parameters()))
    return results


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ddp():
    return spawn(ddp_suite, world_size=2, timeout_s=120)


@pytest.fixture(scope="module")
def fsdp():
    return spawn(fsdp_suite, world_size=2, timeout_s=120)


def _single_process(name):
    model = _model()
    opt = BUILD[name](model.parameters())
    return _snapshot(name, model, opt, _train(name, model, opt, 0, 1))


def _assert_close(ours, reference, tol=1e-6):
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, rtol=0, atol=tol), (a - b).abs().max()


# ------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", sorted(BUILD))
def test_ddp_replicas_stay_identical(ddp, name):
    r0, r1 = ddp[0][name], ddp[1][name]
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))
    assert r0["steps"] == r1["steps"]
    if name == "alig-plus":
        assert all(torch.equal(r0["tables"][k], r1["tables"][k]) for k in r0["tables"])


@pytest.mark.parametrize("name", sorted(BUILD))
def test_ddp_equals_single_process_on_the_global_batch(ddp, name):
    reference = _single_process(name)
    ours = ddp[0][name]
    _assert_close(ours["params"], reference["params"])
    assert ours["steps"] == pytest.approx(reference["steps"], abs=1e-6)
    # the steps were loss-dependent (not all clipped): a rank-local loss would have drifted
    assert len(set(round(s, 6) for s in ours["steps"])) > len(ours["steps"]) // 4
    if name == "alig-plus":
        for key, table in reference["tables"].items():
            assert torch.allclose(ours["tables"][key], table, rtol=0, atol=1e-6), key
        assert ours["tables"]["loss_record"].ne(0).all()   # every index recorded: each rank saw all


def test_loss_is_global_opt_out_takes_the_same_steps(ddp):
    _assert_close(ddp[0]["alig-global-loss"]["params"], ddp[0]["alig"]["params"], tol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(ddp[0]["alig-global-loss"]["params"], ddp[1]["alig-global-loss"]["params"]))


def test_explicit_process_group_takes_the_same_steps(ddp):
    for rank in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(ddp[rank]["sps-process-group"]["params"], ddp[rank]["sps"]["params"]))


def test_nan_on_one_rank_skips_on_both(ddp):
    r0, r1 = ddp[0]["nan-on-one-rank"], ddp[1]["nan-on-one-rank"]
    assert r0["skipped"] == r1["skipped"] == 1
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))


def test_different_hyperparameters_raise_on_every_rank(ddp):
    for rank in (0, 1):
        assert ddp[rank]["mismatch"] is not None and "different hyperparameters" in ddp[rank]["mismatch"]


@pytest.mark.parametrize("name", ["alig", "sps", "alig-plus"])
def test_fsdp2_equals_single_process_on_the_global_batch(fsdp, name):
    reference = _single_process(name)
    for rank in (0, 1):
        _assert_close(fsdp[rank][name]["params"], reference["params"])
        assert fsdp[rank][name]["steps"] == pytest.approx(reference["steps"], abs=1e-6)
    if name == "alig-plus":
        for key, table in reference["tables"].items():
            assert torch.equal(fsdp[0][name]["tables"][key], fsdp[1][name]["tables"][key])
            assert torch.allclose(fsdp[0][name]["tables"][key], table, rtol=0, atol=1e-6), key


def test_fsdp2_tensor_path_takes_the_host_path_steps(fsdp):
    for rank in (0, 1):
        _assert_close(fsdp[rank]["alig-tensor-path"], fsdp[rank]["alig"]["params"], tol=1e-10)


def test_fsdp2_projection_uses_the_global_norm(fsdp):
    assert fsdp[0]["ball"] == pytest.approx(1.0, abs=1e-12) and fsdp[1]["ball"] == fsdp[0]["ball"]


# --------------------------------------------------- in-process rules (no spawn)
class _Mesh:
    def __init__(self, *sizes):
        self.sizes = sizes

    def size(self, dim=None):
        return math.prod(self.sizes) if dim is None else self.sizes[dim]


class _Sharded:
    def __init__(self, mesh, *placements):
        self.device_mesh, self.placements = mesh, placements


def test_replication_factor_counts_only_the_replicated_mesh_dimensions():
    from torch.distributed.tensor import Partial, Replicate, Shard

    from polyak._distributed import replication_factor

    assert replication_factor(_Sharded(_Mesh(4), Shard(0)), 4) == 1                    # FSDP2
    assert replication_factor(_Sharded(_Mesh(2, 3), Replicate(), Shard(0)), 6) == 2    # HSDP: 2 replicas of 3 shards
    with pytest.raises(ValueError, match="Partial"):
        replication_factor(_Sharded(_Mesh(2), Partial()), 2)
    with pytest.raises(ValueError, match="process_group"):
        replication_factor(_Sharded(_Mesh(2), Shard(0)), 4)


def test_fingerprint_check_raises_only_when_ranks_differ():
    from polyak._distributed import check_fingerprints, fingerprint

    a, b = fingerprint([("max_lr", "0.1")]), fingerprint([("max_lr", "0.2")])
    assert a != b and 1 <= a <= 2 ** 20
    check_fingerprints(2 * a, 2 * a * a, 2, "ALIG")          # equal on both ranks
    check_fingerprints(0.0, 0.0, 2, "ALIG")                  # not the first step
    with pytest.raises(ValueError, match="different hyperparameters"):
        check_fingerprints(a + b, a * a + b * b, 2, "ALIG")


def test_nothing_is_reduced_without_torch_distributed():
    from polyak._distributed import active_group

    assert not torch.distributed.is_initialized()
    assert active_group(None, False) is None

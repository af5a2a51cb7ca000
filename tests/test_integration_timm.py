"""timm registration. timm needs a torchvision built for the installed torch, which
the CPU machines here lack: the logic is tested through a stand-in of timm's
registry that passes arguments the way timm's create_optimizer documents, and the
real create_optimizer_v2 runs where timm imports."""
from dataclasses import dataclass
from typing import Any, Dict, Optional

import pytest
import torch

import polyak
from polyak.integrations import takes_group_weight_decay
from polyak.integrations.timm import register_timm, timm_records

from integration_helpers import tiny_model

CONTEXT = {"num_samples": 64, "epochs": 5, "n_batches_per_epoch": 8, "total_steps": 40, "batch_size": 8,
           "dataset_size": 64}


@dataclass(frozen=True)
class OptimInfo:  # the fields of timm's record
    name: str
    opt_class: Any
    description: str = ""
    has_eps: bool = True
    has_momentum: bool = False
    has_betas: bool = False
    num_betas: int = 2
    second_order: bool = False
    defaults: Optional[Dict[str, Any]] = None


class Registry:
    """A stand-in for timm's OptimizerRegistry: register, list, and create as timm does
    (decayed / not decayed groups, weight_decay=0 passed after the split, lr when
    given, momentum 0.9 by default where the optimizer has one)."""

    def __init__(self):
        self.infos = {}

    def register(self, info):
        self.infos[info.name] = info

    def list_optimizers(self):
        return sorted(self.infos)

    def get_optimizer_info(self, name):
        return self.infos[name]

    def create(self, model, name, lr=None, weight_decay=0.0, **kwargs):
        info = self.infos[name]
        params = model.parameters()
        if weight_decay:
            decay = [p for p in model.parameters() if p.ndim > 1]
            no_decay = [p for p in model.parameters() if p.ndim <= 1]
            params = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
            weight_decay = 0.0
        args = {"weight_decay": weight_decay, **kwargs}
        if lr is not None:
            args["lr"] = lr
        if info.has_momentum:
            args.setdefault("momentum", 0.9)
        return info.opt_class(params, **args)


@pytest.fixture
def registry():
    registry = Registry()
    assert register_timm(registry, OptimInfo) == polyak.available()
    return registry


@pytest.mark.parametrize("name", polyak.available())
def test_every_optimizer_builds_with_timm_weight_decay_where_supported(registry, name):
    spec = polyak.get_spec(name)
    decays = takes_group_weight_decay(spec.factory)
    model = tiny_model()
    optimizer = registry.create(model, name, weight_decay=0.05 if decays else 0.0,
                                **{k: CONTEXT[k] for k in spec.context})
    assert type(optimizer) is spec.factory
    if decays:
        by_shape = {tuple(p.shape): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
        assert by_shape[(8, 6)] == 0.05 and by_shape[(8,)] == 0.0  # weights decayed, biases not


def test_timm_groups_give_the_step_of_the_same_groups_built_directly(registry):
    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    models = [tiny_model(), tiny_model()]
    via_timm = registry.create(models[0], "alig", weight_decay=0.05, max_lr=1.0)
    decay = [p for p in models[1].parameters() if p.ndim > 1]
    no_decay = [p for p in models[1].parameters() if p.ndim <= 1]
    direct = polyak.ALIG([{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.05}],
                         max_lr=1.0, momentum=0.9)
    for model, optimizer in zip(models, (via_timm, direct)):
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step(loss=loss)
    for p, q in zip(*(m.parameters() for m in models)):
        assert torch.equal(p, q)
    undecayed = tiny_model()
    plain = polyak.ALIG(undecayed.parameters(), max_lr=1.0, momentum=0.9)
    for _ in range(3):
        plain.zero_grad()
        loss = torch.nn.functional.cross_entropy(undecayed(x), y)
        loss.backward()
        plain.step(loss=loss)
    assert any(not torch.equal(p, q) for p, q in zip(models[0].parameters(), undecayed.parameters()))


def test_what_an_optimizer_cannot_honour_is_refused(registry):
    with pytest.raises(ValueError, match="weight_decay=0.05"):
        registry.create(tiny_model(), "dfw", weight_decay=0.05)
    optimizer = registry.create(tiny_model(), "pal", lr=0.5)  # the step multiplier, which timm schedules
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_records_describe_the_constructor():
    records = {r["name"]: r for r in timm_records()}
    assert records["alig"]["has_momentum"] and not records["alig"]["has_betas"]
    assert records["l4-adam"]["has_betas"]
    assert not records["alig-inf"]["has_eps"]


def test_a_name_timm_uses_is_not_replaced():
    registry = Registry()
    registry.register(OptimInfo(name="sps", opt_class=torch.optim.SGD))
    with pytest.raises(ValueError, match="'sps'"):
        register_timm(registry, OptimInfo)


def test_real_timm_create_optimizer_v2():
    timm = pytest.importorskip(
        "timm", reason="timm is not installed (it needs a torchvision matching this torch); the registration logic "
                       "is tested above through a stand-in registry")
    register_timm()
    model = tiny_model()
    optimizer = timm.optim.create_optimizer_v2(model, "alig", weight_decay=0.05, max_lr=1.0)
    assert isinstance(optimizer, polyak.ALIG)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.05]

"""The hyperparameter policy on PAL, SLS, LABPAL and L4: lr multiplies the final
step, weight_decay is decoupled and per group (timm's no-decay groups), StepLR works,
every search constant is one value for the whole optimizer, a foreign state is
refused, and deepcopy and pickle step exactly as the original."""
import copy
import pickle

import pytest
import torch
from torch import nn

from polyak import L4, LABPAL, PAL, SLS

from helpers import line_search_step  # tests/helpers.py

pytestmark = pytest.mark.usefixtures("float64")

_gen = torch.Generator().manual_seed(0)
MATRIX = torch.randn(8, 5, generator=_gen, dtype=torch.float64)
TARGET = torch.randn(8, generator=_gen, dtype=torch.float64)
START = torch.randn(5, generator=_gen, dtype=torch.float64)


def _loss(a, b):
    return ((MATRIX @ torch.cat([a, b]) - TARGET) ** 2).mean()


BUILDERS = {
    "pal": lambda groups: PAL(groups, momentum=0.0, update_factor=1.0, max_step=None),
    "sls": lambda groups: SLS(groups, init_step_size=3.0, reset=0),
    "labpal": lambda groups: LABPAL(groups, approx_batches=1, reuse_steps=3),
    "l4": lambda groups: L4(groups, base="momentum"),
}


def _one_step(name, group_settings):
    a, b = nn.Parameter(START[:3].clone()), nn.Parameter(START[3:].clone())
    opt = BUILDERS[name]([dict({"params": [a]}, **group_settings), {"params": [b]}])
    line_search_step(opt, lambda: _loss(a, b))
    return a.detach(), b.detach(), opt


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_lr_and_decoupled_weight_decay_change_the_final_update_of_their_group_only(name):
    plain_a, plain_b, plain = _one_step(name, {})
    a, b, opt = _one_step(name, {"lr": 0.5, "weight_decay": 0.1})
    rate = float(plain.param_groups[0]["step_size"])  # the rate the search applied to the direction
    assert rate > 0
    direction = (START[:3] - plain_a) / rate
    # w <- w0 - lr * rate * (d + weight_decay * w0), the other group as without them
    torch.testing.assert_close(a, START[:3] - 0.5 * rate * (direction + 0.1 * START[:3]), rtol=1e-12, atol=1e-14)
    assert torch.equal(b, plain_b)
    assert float(opt.param_groups[0]["step_size"]) == pytest.approx(0.5 * rate, rel=1e-12)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_steplr_scales_the_step(name):
    a, b = nn.Parameter(START[:3].clone()), nn.Parameter(START[3:].clone())
    opt = BUILDERS[name]([a, b])
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for expected in (1.0, 0.5, 0.25):
        assert opt.param_groups[0]["lr"] == expected
        line_search_step(opt, lambda: _loss(a, b))
        scheduler.step()


@pytest.mark.parametrize("name, key, value", [
    ("pal", "measuring_step", 0.5), ("sls", "c", 0.2), ("labpal", "alpha", 2.0), ("l4", "gamma", 0.5),
])
def test_a_search_constant_set_per_group_is_refused(name, key, value):
    with pytest.raises(ValueError, match=f"{key} cannot be set per group"):
        BUILDERS[name]([{"params": [nn.Parameter(START.clone())], key: value}])
    opt = BUILDERS[name]([nn.Parameter(START.clone())])
    with pytest.raises(ValueError, match="weight_decay"):
        opt.add_param_group({"params": [nn.Parameter(START.clone())], "weight_decay": -1.0})


def test_the_state_of_another_line_search_is_refused():
    w = nn.Parameter(START.clone())
    pal = PAL([w])
    pal.step(lambda: (w ** 2).sum())
    with pytest.raises(ValueError, match="saved by PAL"):
        SLS([w]).load_state_dict(pal.state_dict())
    with pytest.raises(ValueError, match="condition"):
        SLS([w], condition="goldstein").load_state_dict(SLS([w]).state_dict())


def _train(model, opt, batches):
    for x, y in batches:
        line_search_step(opt, lambda x=x, y=y: nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))], ids=["deepcopy", "pickle"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_copy_steps_exactly_as_the_original(name, copier):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opt = {"pal": lambda ps: PAL(ps), "sls": lambda ps: SLS(ps, momentum=0.5), "l4": lambda ps: L4(ps),
           "labpal": lambda ps: LABPAL(ps, approx_batches=2, reuse_steps=2, momentum=0.5)}[name](model.parameters())
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(12)]
    _train(model, opt, batches[:5])
    model_copy, opt_copy = copier((model, opt))  # together: the copy's optimizer holds the copy's parameters
    _train(model, opt, batches[5:])
    _train(model_copy, opt_copy, batches[5:])
    for p, q in zip(model.parameters(), model_copy.parameters()):
        assert torch.equal(p, q)
    assert opt_copy.global_state["step"] == opt.global_state["step"] > 5

"""GradScaler with the Polyak steps (issue 8 item 3), on CPU.

``scaler.step(opt, loss=loss)`` with the UNSCALED loss: ALIG, SPS and ALIGPlus declare
torch's ``_step_supports_amp_scaling``, so GradScaler does not unscale the gradients;
the step divides its squared norm by scale^2 and its gradient term by scale (one pass
fewer: benchmarks/results/amp_unscale_pass.md) and skips on ``found_inf``. The
trajectory equals the loop without a scaler. Handing over the SCALED loss
(``scaler.scale(loss)``) multiplies every Polyak step by the scale; it is not detected
(nothing tells a scaled loss from a large one): PolyakBase's docstring says to pass the loss.
"""
import pytest
import torch
from torch import nn

from polyak import ALIG, ALIGPlus, SPS

BUILD = {
    "alig": lambda ps: ALIG(ps, max_lr=1.0, momentum=0.9, weight_decay=1e-3),
    "alig-adjusted": lambda ps: ALIG(ps, max_lr=1.0, momentum=0.9, adjusted_momentum=True),
    "sps": lambda ps: SPS(ps, n_batches_per_epoch=4),
    "alig-plus": lambda ps: ALIGPlus(ps, max_lr=1.0, num_samples=64, epochs=5),
}


def _run(name, scaler=None, inf_at=None, unscale_first=False, steps=8):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = BUILD[name](model.parameters())
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(64, 5, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    scaled_grads_seen = []
    for t in range(steps):
        idx = torch.arange(8) + 8 * t
        losses = nn.functional.cross_entropy(model(X[idx]), y[idx], reduction="none")
        opt.zero_grad()
        kwargs = {"loss": losses.detach(), "index": idx} if name == "alig-plus" else {"loss": losses.detach().mean()}
        if scaler is None:
            losses.mean().backward()
            opt.step(**kwargs)
            continue
        scaler.scale(losses.mean()).backward()
        if t == inf_at:
            model[0].weight.grad[0, 0] = float("inf")
        if unscale_first:
            scaler.unscale_(opt)
        grad_before = model[0].weight.grad.clone()
        scaler.step(opt, **kwargs)
        scaled_grads_seen.append(torch.equal(grad_before, model[0].weight.grad))
        scaler.update()
    return model, opt, scaled_grads_seen


@pytest.mark.parametrize("name", sorted(BUILD))
@pytest.mark.parametrize("unscale_first", [False, True])
def test_grad_scaler_step_equals_the_unscaled_loop(name, unscale_first):
    plain, _, _ = _run(name)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    scaled, opt, untouched = _run(name, scaler, unscale_first=unscale_first)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    if not unscale_first:
        # the protocol: GradScaler left the gradients scaled (no unscale pass), except where
        # the optimizer cannot fold the scale in (adjusted momentum: GradScaler unscales)
        assert all(untouched) == opt._step_supports_amp_scaling


@pytest.mark.parametrize("name", sorted(BUILD))
def test_found_inf_skips_the_step_and_lowers_the_scale(name):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    model, opt, _ = _run(name, scaler, inf_at=2, steps=3)
    # under the protocol the optimizer skips (and counts); otherwise GradScaler skips the call
    assert opt.skipped_steps == (1 if opt._step_supports_amp_scaling else 0)
    assert scaler.get_scale() == 2.0 ** 9
    assert all(torch.isfinite(p).all() for p in model.parameters())

"""Mixed precision: GradScaler (loss= and the hand-over), bf16 autocast, bf16/fp16 parameters.

GradScaler multiplies the loss by a power of two before backward and divides the
gradients by it before the step, so the unscaled gradients equal the unscaled
backward bit for bit: a scaled step must equal the plain step exactly."""

import pytest
import torch
import torch.nn.functional as F

import polyak

from integration_helpers import batches, max_difference, tiny_data, tiny_model

MAKERS = {
    "alig": lambda p: polyak.ALIG(p, max_lr=None),
    "sps": lambda p: polyak.SPS(p, mode="constant", eta_max=10.0),
    "alig-momentum": lambda p: polyak.ALIG(p, max_lr=1.0, momentum=0.9),
}


def plain_run(make, data):
    model = tiny_model()
    optimizer = make(model.parameters())
    for x, y in data:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step(loss=loss)
    return model, optimizer


@pytest.mark.parametrize("hand_over", [False, True], ids=["step-loss", "add_loss"])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_grad_scaler_step_equals_unscaled_step(name, hand_over):
    data = batches(tiny_data(), 8)
    reference, plain = plain_run(MAKERS[name], data)
    model = tiny_model()
    optimizer = MAKERS[name](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=2)  # the scale changes mid-run
    for x, y in data:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if hand_over:
            optimizer.add_loss(loss.detach())
            scaler.step(optimizer)
        else:
            scaler.step(optimizer, loss=loss)  # the UNscaled loss
        scaler.update()
    assert scaler.get_scale() > 2.0 ** 12
    assert max_difference(model, reference) == 0.0
    assert optimizer.param_groups[0]["step_size"] == plain.param_groups[0]["step_size"]


def test_grad_scaler_skipped_step_leaves_no_stale_loss():
    """An overflow makes GradScaler skip the step; the losses handed over for that
    window must not leak into the next step (the optimizer takes GradScaler's found_inf
    itself: a counted skip that drops the hand-overs)."""
    data = batches(tiny_data(), 8)
    reference, _ = plain_run(MAKERS["alig"], data[1:])
    model = tiny_model()
    optimizer = MAKERS["alig"](model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    for step, (x, y) in enumerate(data):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss * (float("inf") if step == 0 else 1.0)).backward()
        optimizer.add_loss(loss.detach())
        scaler.step(optimizer)
        scaler.update()
    assert optimizer.skipped_steps == 1
    assert max_difference(model, reference) == 0.0


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_bf16_autocast_step_reads_the_float32_loss(name):
    """Under CPU bf16 autocast the loss (cross-entropy autocasts to float32) and the
    float32 gradients give the same step as the plain loop run under the same autocast."""
    data = batches(tiny_data(), 8)
    models = []
    for route in ("loss=", "closure"):
        model = tiny_model()
        optimizer = MAKERS[name](model.parameters())
        for x, y in data:
            def closure(x=x, y=y):
                optimizer.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            if route == "closure":
                optimizer.step(closure)
            else:
                loss = closure()
                assert loss.dtype == torch.float32
                optimizer.step(loss=loss)
        models.append(model)
    assert max_difference(*models) == 0.0
    reference, _ = plain_run(MAKERS[name], data)
    assert 0 < max_difference(models[0], reference) < 0.05  # bf16 forward: close, not equal


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_take_the_polyak_step(dtype):
    """ALI-G on bf16/fp16 parameters: one step equals the rule computed by hand in
    float64 from the same loss and gradients, rounded once to the parameters' dtype."""
    x, y = batches(tiny_data(), 16)[0]
    model = tiny_model().to(dtype)
    optimizer = polyak.ALIG(model.parameters(), max_lr=None)
    loss = F.cross_entropy(model(x.to(dtype)), y)
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.detach().clone() for p in model.parameters()]
    optimizer.step(loss=loss)
    sq_norm = sum(float(g.double().pow(2).sum()) for g in grads)
    gamma = float(loss.detach()) / (sq_norm + 1e-5)
    assert optimizer.param_groups[0]["step_size"] == pytest.approx(gamma, rel=1e-2)
    for p, p0, g in zip(model.parameters(), before, grads):
        assert p.dtype == dtype
        expected = (p0.double() - gamma * g.double()).to(dtype)
        # the roundings of a product and a sum in the parameters' dtype: a few ulps of the inputs
        bound = 2 * torch.finfo(dtype).eps * (p0.double().abs() + gamma * g.double().abs())
        assert torch.all((p.detach().double() - expected.double()).abs() <= bound)

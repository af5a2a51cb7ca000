"""accelerate: Accelerator.prepare(opt) with accumulate() equals the plain loop."""
import pytest
import torch
import torch.nn.functional as F

import polyak

accelerate = pytest.importorskip("accelerate", reason="accelerate is a test extra: pip install -e '.[test]'")

from polyak.integrations.accelerate import add_loss  # noqa: E402

from integration_helpers import batches, max_difference, plain_accumulation_loop, tiny_data, tiny_model  # noqa: E402

WINDOW, BATCH = 2, 4

MAKERS = {
    "alig": lambda p, n: polyak.ALIG(p, max_lr=10.0, momentum=0.9),
    "alig-plus": lambda p, n: polyak.ALIGPlus(p, max_lr=1.0, num_samples=n, epochs=1, K=1),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_prepared_optimizer_with_accumulate_equals_plain_loop(name):
    from accelerate.state import AcceleratorState, GradientState

    per_sample = name == "alig-plus"
    dataset = tiny_data()
    model = tiny_model()
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=WINDOW)
    data = polyak.IndexedDataset(dataset) if per_sample else dataset
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, MAKERS[name](model.parameters(), len(dataset)), loader)
    try:
        for batch in loader:
            with accelerator.accumulate(model):
                if per_sample:
                    index, (x, y) = batch
                    losses = F.cross_entropy(model(x), y, reduction="none")
                    accelerator.backward(losses.mean())
                    add_loss(optimizer, losses.detach(), index=index)
                else:
                    x, y = batch
                    loss = F.cross_entropy(model(x), y)
                    accelerator.backward(loss)
                    add_loss(optimizer, loss.detach())
                optimizer.step()
                optimizer.zero_grad()
    finally:  # accelerate keeps process-wide singletons
        AcceleratorState._reset_state()
        GradientState._reset_state()
    reference = tiny_model()
    plain = MAKERS[name](reference.parameters(), len(dataset))
    plain_accumulation_loop(reference, plain, batches(dataset, BATCH, indexed=per_sample), WINDOW, per_sample=per_sample)
    assert max_difference(accelerator.unwrap_model(model), reference) == 0.0
    assert plain.param_groups[0]["step_size"] > 0

"""PyTorch Lightning: every trajectory equals the plain PyTorch loop written in
tests/integration_helpers.py (bit-identical where the arithmetic is the same)."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import polyak

pl = pytest.importorskip("pytorch_lightning", reason="pytorch-lightning is a test extra: pip install -e '.[test]'")

from polyak.integrations import add_loss  # noqa: E402
from polyak.integrations.lightning import LineSearchModule, PolyakCallback  # noqa: E402
from pytorch_lightning.plugins.precision import MixedPrecision  # noqa: E402

from integration_helpers import batches, max_difference, plain_accumulation_loop, tiny_data, tiny_model  # noqa: E402

BATCH = 4


class Classifier(pl.LightningModule):
    def __init__(self, make_optimizer, per_sample=False, epoch_hook=False):
        super().__init__()
        self.net = tiny_model()
        self.make_optimizer = make_optimizer
        self.per_sample = per_sample
        self.epoch_hook = epoch_hook

    def training_step(self, batch, batch_idx):
        if self.per_sample:
            index, (x, y) = batch
            losses = F.cross_entropy(self.net(x), y, reduction="none")
            add_loss(self.optimizers(), losses.detach(), index=index)
            return losses.mean()
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_train_epoch_end(self):
        if self.epoch_hook:
            self.optimizers().optimizer.end_epoch()

    def configure_optimizers(self):
        return self.make_optimizer(self.net.parameters())


def trainer(**kwargs):
    options = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=[PolyakCallback()])
    options.update(kwargs)
    return pl.Trainer(**options)


def fit(module, dataset, indexed=False, **kwargs):
    data = polyak.IndexedDataset(dataset) if indexed else dataset
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False)
    t = trainer(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers and similar advice
        t.fit(module, loader)
    return t


MAKERS = {
    "alig": lambda p: polyak.ALIG(p, max_lr=10.0, momentum=0.9),
    "sps": lambda p: polyak.SPS(p, c=0.5, mode="constant", eta_max=10.0),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_accumulate_grad_batches_4_equals_plain_loop(name, precision):
    dataset = tiny_data()
    module = Classifier(MAKERS[name])
    t = fit(module, dataset, accumulate_grad_batches=4, precision=precision)
    reference = tiny_model()
    optimizer = MAKERS[name](reference.parameters())
    autocast = torch.bfloat16 if precision == "bf16-mixed" else None
    plain_accumulation_loop(reference, optimizer, batches(dataset, BATCH), 4, autocast_dtype=autocast)
    assert t.global_step == len(dataset) // BATCH // 4
    assert max_difference(module.net, reference) == 0.0
    # the steps were not 4 x too small: a window of 4 gives the same step size as the plain loop
    assert module.optimizers().optimizer.param_groups[0]["step_size"] == optimizer.param_groups[0]["step_size"]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_without_the_callback_no_accumulation_still_equals_the_closure_loop(precision):
    """What worked before the integration keeps working: Lightning's closure feeds ALIG."""
    dataset = tiny_data()
    module = Classifier(MAKERS["alig"])
    fit(module, dataset, precision=precision, callbacks=[])
    reference = tiny_model()
    optimizer = MAKERS["alig"](reference.parameters())
    for x, y in batches(dataset, BATCH):
        def closure(x=x, y=y):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss = F.cross_entropy(reference(x), y)
            loss.backward()
            return loss
        optimizer.step(closure)
    assert max_difference(module.net, reference) == 0.0


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_grad_scaler_precision_plugin_equals_plain_loop(name):
    dataset = tiny_data()
    module = Classifier(MAKERS[name])
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    fit(module, dataset, accumulate_grad_batches=4, plugins=[plugin])
    reference = tiny_model()
    optimizer = MAKERS[name](reference.parameters())
    plain_accumulation_loop(reference, optimizer, batches(dataset, BATCH), 4, autocast_dtype=torch.float16,
                            scaler=torch.amp.GradScaler("cpu"))
    assert max_difference(module.net, reference) == 0.0


def test_alig_plus_per_sample_losses_from_training_step():
    dataset = tiny_data()
    make = lambda p: polyak.ALIGPlus(p, max_lr=1.0, num_samples=len(dataset), epochs=2, K=2)
    module = Classifier(make, per_sample=True, epoch_hook=True)
    fit(module, dataset, indexed=True, accumulate_grad_batches=2, max_epochs=2)
    reference = tiny_model()
    optimizer = make(reference.parameters())
    for _ in range(2):
        plain_accumulation_loop(reference, optimizer, batches(dataset, BATCH, indexed=True), 2, per_sample=True)
        optimizer.end_epoch()
    assert max_difference(module.net, reference) == 0.0
    saved = module.optimizers().optimizer.state_dict()["state"]["global"]["tables"]
    for key, table in optimizer.state_dict()["state"]["global"]["tables"].items():
        assert torch.equal(saved[key], table), key


def test_step_counter_lr_monitor_and_scheduler(tmp_path):
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import CSVLogger

    class Scheduled(Classifier):
        def configure_optimizers(self):
            optimizer = self.make_optimizer(self.net.parameters())
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    dataset = tiny_data()
    module = Scheduled(MAKERS["alig"])
    monitor = LearningRateMonitor(logging_interval="step")
    t = fit(module, dataset, accumulate_grad_batches=2, logger=CSVLogger(save_dir=tmp_path), log_every_n_steps=1,
            callbacks=[PolyakCallback(), monitor])
    assert t.global_step == 8
    assert module.optimizers().optimizer.param_groups[0]["lr"] == 0.5 ** 4
    reference = tiny_model()
    optimizer = MAKERS["alig"](reference.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    plain_accumulation_loop(reference, optimizer, batches(dataset, BATCH), 2, after_step=scheduler.step)
    assert max_difference(module.net, reference) == 0.0
    # logged at every batch: 2 batches per optimizer step, the rate halves every 2 steps
    assert monitor.lrs == {"lr-ALIG": [0.5 ** (batch // 4) for batch in range(16)]}


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader Lightning can checkpoint mid-epoch (its _Stateful protocol): the
    resumed epoch skips the batches the interrupted one had already yielded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded, self._skip = 0, 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for position, batch in enumerate(super().__iter__()):
            if position >= skip:
                self._yielded += 1
                yield batch

    def state_dict(self):
        return {"yielded": self._yielded}

    def load_state_dict(self, state):
        self._skip = state["yielded"]


def test_alig_plus_checkpoint_resume_mid_epoch_is_bit_identical(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    dataset = tiny_data()
    make = lambda p: polyak.ALIGPlus(p, max_lr=1.0, num_samples=len(dataset), epochs=2, K=2)
    straight = Classifier(make, per_sample=True, epoch_hook=True)
    fit(straight, dataset, indexed=True, max_epochs=2)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=22, save_top_k=-1)
    first = Classifier(make, per_sample=True, epoch_hook=True)
    t = trainer(max_epochs=2, max_steps=22, enable_checkpointing=True, callbacks=[PolyakCallback(), checkpoints])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(first, ResumableLoader(polyak.IndexedDataset(dataset), batch_size=BATCH, shuffle=False))
    (path,) = list(tmp_path.glob("*.ckpt"))
    resumed = Classifier(make, per_sample=True, epoch_hook=True)
    data = polyak.IndexedDataset(dataset)
    t = trainer(max_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(resumed, ResumableLoader(data, batch_size=BATCH, shuffle=False), ckpt_path=str(path))
    assert t.global_step == 32
    assert max_difference(straight.net, resumed.net) == 0.0


class LinearLineSearch(LineSearchModule):
    def __init__(self, make_optimizer):
        super().__init__()
        self.net = tiny_model()
        self.make_optimizer = make_optimizer

    def line_search_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return self.make_optimizer(self.net.parameters())


@pytest.mark.parametrize("make", [
    lambda p: polyak.PAL(p),
    lambda p: polyak.SLS(p, n_batches_per_epoch=16),
    lambda p: polyak.LABPAL(p, total_steps=16, batch_size=BATCH, dataset_size=64, approx_batches=2, reuse_steps=3),
], ids=["pal", "sls", "labpal"])
def test_line_search_module_equals_plain_loop(make):
    dataset = tiny_data()
    module = LinearLineSearch(make)
    t = fit(module, dataset, callbacks=[])
    reference = tiny_model()
    optimizer = make(reference.parameters())
    for x, y in batches(dataset, BATCH):
        optimizer.step(lambda x=x, y=y: F.cross_entropy(reference(x), y))
    assert t.global_step == len(dataset) // BATCH
    assert max_difference(module.net, reference) == 0.0

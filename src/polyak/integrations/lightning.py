"""PyTorch Lightning: polyak optimizers in automatic and manual optimization.

Lightning runs ``training_step`` and backward inside its own closure and divides
the loss by ``accumulate_grad_batches`` before backward, so the closure's return
value is the LAST micro-batch loss divided by the window length. Stepping on it
would make every accumulated step too small. :class:`PolyakCallback` instead hands
each micro-batch loss over as it reaches backward, undoing Lightning's division
and any GradScaler scale, so the step sees the mean loss of the window::

    trainer = pl.Trainer(callbacks=[PolyakCallback()], accumulate_grad_batches=4, precision="bf16-mixed")

ALI-G+ needs per-sample losses and dataset indices, which backward never sees:
hand them over in ``training_step`` (the callback then leaves ALI-G+ alone)::

    def training_step(self, batch, batch_idx):
        index, (x, y) = batch
        losses = F.cross_entropy(self(x), y, reduction="none")
        add_loss(self.optimizers(), losses, index=index)
        return losses.mean()

and call ``opt.end_epoch()`` in ``on_train_epoch_end``.

Line searches (PAL, LABPAL, SLS) evaluate the loss WITHOUT backward several
times, which automatic optimization (its closure runs backward) cannot express:
derive from :class:`LineSearchModule` and implement ``line_search_loss(batch)``.
"""
from __future__ import annotations

from typing import Any

import torch

try:  # the unified package first, then the standalone one
    import lightning.pytorch as pl
except ImportError:
    import pytorch_lightning as pl

from . import add_loss, step_needs, unwrap

__all__ = ["PolyakCallback", "LineSearchModule", "add_loss"]


class PolyakCallback(pl.Callback):
    """Hands every micro-batch loss to the polyak optimizer as it reaches backward.

    In automatic optimization Lightning backpropagates ``loss / accumulate_grad_batches``
    (GradScaler-scaled under "16-mixed" or a ``MixedPrecision(..., scaler=...)`` plugin):
    the callback multiplies the window length back and divides the scale out
    (both exact for powers of two), so ``k`` micro-batches give the step the mean
    of their ``k`` losses, which is the loss whose gradient Lightning accumulated.

    The last window of an epoch whose batch count is not a multiple of
    ``accumulate_grad_batches`` is shorter: Lightning still divides by the full
    window length, so its gradient is ``k'/k`` of the mean gradient while the step
    sees the mean loss of the ``k'`` micro-batches. Choose a batch count divisible
    by the window (or ``drop_last``) where that matters.
    """

    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: torch.Tensor) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise RuntimeError(
                f"PolyakCallback supports one optimizer, the module configured {len(optimizers)}; hand the losses over "
                "yourself with polyak.integrations.add_loss(optimizer, loss) in manual optimization"
            )
        optimizer = unwrap(optimizers[0])
        if "loss" not in step_needs(optimizer):
            return  # ALI-G+: training_step hands over the per-sample losses and indices
        loss = loss.detach()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            # pre_backward scaled the loss before this hook ran; the scale is a power of two
            loss = loss / scaler.get_scale()
        if pl_module.automatic_optimization:
            loss = loss * trainer.accumulate_grad_batches
        add_loss(optimizer, loss)


class LineSearchModule(pl.LightningModule):
    """A LightningModule for the line searches (PAL, LABPAL, SLS): manual optimization
    with the probe closure built from :meth:`line_search_loss`.

    Implement ``line_search_loss(batch)``: the mean loss of ``batch`` WITHOUT backward
    (polyak's closure contract). Steps go through Lightning's optimizer, so the step
    counter, checkpoints and loggers work; Lightning runs ``on_before_optimizer_step``
    and gradient clipping after EVERY evaluation of the closure (its design for
    closures), so keep ``gradient_clip_val`` unset with a line search. LR schedulers
    are stepped here once per optimizer step, as Lightning does in automatic
    optimization with ``interval="step"``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def line_search_loss(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError("implement line_search_loss(batch): the mean loss of the batch, without backward")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        loss = optimizer.step(closure=lambda: self.line_search_loss(batch))
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()
        self.log("train_loss", loss, prog_bar=True)
        return loss

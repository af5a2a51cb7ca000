"""Hugging Face Trainer: :class:`PolyakTrainer`, a Trainer that feeds polyak's step.

The Trainer calls ``optimizer.step()`` without arguments, so the loss of every
micro-batch is handed over from ``training_step``. The one line a user changes::

    trainer = PolyakTrainer(model=model, args=args, train_dataset=train,
                            optimizer_cls_and_kwargs=(ALIG, {"max_lr": 1.0, "momentum": 0.9}))

- Accumulation (``gradient_accumulation_steps``): the Trainer backpropagates each
  micro-batch loss divided by the window length, or, for models that take
  ``num_items_in_batch``, the micro-batch SUM divided by the token count of the
  whole window. Either way the loss whose gradient the window accumulates is the
  sum of what was backpropagated; each micro-batch hands over that times the
  window length, so the step (the mean of the window's hand-overs) sees exactly it.
  A model that ignores ``num_items_in_batch`` (its loss is a per-micro-batch mean)
  is covered by the first case: the window loss is the mean of the micro-batch means.
- ``max_grad_norm`` (default 1.0) clips the gradient before the step; the Polyak
  step is then computed from the clipped gradient (consistently: the step moves
  along the clipped direction by loss / ||clipped g||^2, clipped at ``max_lr``), which
  is not the paper's algorithm. Pass ``max_grad_norm=0`` to train with plain ALI-G.
- The default linear scheduler multiplies polyak's ``lr`` (1.0, a multiplier on
  the step): it decays the Polyak step to 0, which re-introduces the schedule
  ALI-G removes; ``lr_scheduler_type="constant"`` keeps the step as the paper's.
  ``learning_rate`` of the TrainingArguments is not used by polyak's optimizers.
- ALI-G+ (per-sample losses and dataset indices): each example carries its
  dataset index under the key ``"index"`` (e.g. from ``IndexedDataset``-style
  datasets returning dicts), and ``per_sample_loss(outputs, labels)`` gives the
  per-sample losses (default: cross-entropy per example, averaged over tokens
  for token-level logits, labels -100 ignored; pass your own for a causal LM,
  whose labels must be shifted).
- ``weight_decay`` of the TrainingArguments goes to the optimizer's param groups
  where it has weight decay (all but DFW); for DFW it must be 0 (an error
  otherwise, never silently ignored).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
import transformers

from .._base import PolyakBase
from . import add_loss, step_needs, takes_group_weight_decay, unwrap, without_zero_weight_decay

__all__ = ["PolyakTrainer", "per_example_cross_entropy"]


def per_example_cross_entropy(outputs: Any, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy: logits (batch, classes) against labels (batch,), or
    token logits (batch, tokens, classes) averaged over each example's tokens whose
    label is not -100."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), labels, reduction="none")
    per_token = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none", ignore_index=-100)
    counted = (labels != -100).sum(dim=1).clamp(min=1)
    return per_token.sum(dim=1) / counted


class PolyakTrainer(transformers.Trainer):
    """``transformers.Trainer`` that hands every micro-batch loss to a polyak optimizer.

    Args: those of ``transformers.Trainer``, plus ``per_sample_loss`` (ALI-G+ only):
    ``callable(outputs, labels) -> per-sample losses``, default
    :func:`per_example_cross_entropy`. With an optimizer that is not polyak's it
    behaves exactly as ``Trainer``.
    """

    def __init__(self, *args: Any, per_sample_loss: Optional[Callable] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_sample_loss = per_sample_loss or per_example_cross_entropy

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_cls_and_kwargs is not None:
            cls, kwargs = self.optimizer_cls_and_kwargs
            if isinstance(cls, type) and issubclass(cls, PolyakBase) and not takes_group_weight_decay(cls):
                params = [p for p in (model or self.model).parameters() if p.requires_grad]
                # one group in place of the Trainer's (decayed, not decayed) pair: no weight decay here
                groups = without_zero_weight_decay(
                    [{"params": params, "weight_decay": self.args.weight_decay}], "PolyakTrainer (weight_decay)", cls
                )
                self.optimizer = cls(groups, **kwargs)
        return super().create_optimizer(model)

    def _polyak_needs(self) -> frozenset:
        try:
            return step_needs(self.optimizer)
        except TypeError:  # not a polyak optimizer: plain Trainer behaviour
            return frozenset()

    def training_step(self, model, inputs, num_items_in_batch=None):
        needs = self._polyak_needs()
        if "per_sample_loss" in needs:
            # compute_loss returns the mean of the per-sample losses: let the Trainer divide
            # it by the window length like any per-micro-batch mean
            self.loss_is_scaled_for_ga = False
        loss = super().training_step(model, inputs, num_items_in_batch)
        if "loss" in needs:
            # ``loss`` is what was backpropagated (the window's loss is their sum): times the
            # window length, the mean of the window's hand-overs is that sum
            add_loss(self.optimizer, loss * self.current_gradient_accumulation_steps)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training and "index" in inputs:  # evaluation: nothing is handed over
            inputs = {k: v for k, v in inputs.items() if k != "index"}
        if "per_sample_loss" not in self._polyak_needs() or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        if "index" not in inputs:
            raise KeyError(
                f"{type(unwrap(self.optimizer)).__name__} needs the dataset index of every example: make the dataset "
                "return it under the key 'index' (and keep it: remove_unused_columns=False for a datasets.Dataset)"
            )
        index = inputs.pop("index")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        losses = self.per_sample_loss(outputs, labels)
        add_loss(self.optimizer, losses.detach(), index=index)
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss

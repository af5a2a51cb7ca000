"""Hugging Face accelerate: a prepared polyak optimizer inside ``accumulate()``.

``Accelerator.prepare(opt)`` returns an ``AcceleratedOptimizer`` whose ``step()``
takes no loss and does nothing until the accumulation window is complete. Hand
each micro-batch loss over with :func:`add_loss` (it reaches the polyak optimizer
through the wrapper); the step at the end of the window uses their mean::

    model, opt, loader = accelerator.prepare(model, ALIG(model.parameters(), max_lr=1.0), loader)
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = criterion(model(x), y)
            accelerator.backward(loss)          # divides by the window length itself
            add_loss(opt, loss)                 # the undivided micro-batch loss
            opt.step(); opt.zero_grad()

With ``mixed_precision="fp16"`` accelerate steps through its GradScaler, which
calls ``step()`` without arguments: the handed-over losses are used there too.
"""
from __future__ import annotations

import accelerate  # noqa: F401  (fails early, with the package name, when accelerate is absent)

from . import add_loss

__all__ = ["add_loss"]

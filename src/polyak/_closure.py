"""The loss-closure contract shared by the line searches (PAL, SLS, LABPAL).

A line search must evaluate the loss of ONE batch at several points along a
direction. The user gives ``opt.step(closure)`` where::

    def closure():
        return criterion(model(x), y)      # the mean loss of THIS step's batch

``closure()`` computes the loss and returns it as a scalar floating-point tensor;
it must NOT call ``backward()`` (the optimizer does, once) and must not draw a new
batch (each ``step`` call gets its own closure). A closure may be re-evaluated
after the training loop has moved on (LABPAL with k > 1 batches per update keeps
the closures of a measurement's first k - 1 calls until its k-th), so it must
hold its own batch: ``lambda x=x, y=y: ...`` or ``functools.partial``, never a
lambda that reads the loop variables later. :class:`ProbeClosure` wraps such a
closure and enforces the contract with :class:`ClosureError`.

What a re-evaluation guarantees, so that the loss along the line differs only
because the parameters moved:

- randomness: the global random generators (torch CPU, the accelerators holding
  the parameters, Python's ``random``, and numpy's legacy global generator when
  numpy was imported before the first evaluation) are put back to their state
  before the FIRST evaluation, so dropout masks and random augmentation repeat;
  afterwards they are put back to where they were before the re-evaluation, so
  one step of a line search advances the global streams exactly as one plain
  training forward does. Generators are forked and restored locally, never
  reseeded. Private ``torch.Generator`` objects and ``numpy.random.Generator``
  instances are not global and are not replayed: a closure that uses them must
  reset them itself.
- BatchNorm: the first evaluation is a normal training forward (running
  statistics updated once); re-evaluations leave ``running_mean``,
  ``running_var`` and ``num_batches_tracked`` (all buffers of any module that has
  running statistics) as they were. The optimizer does not know the modules, so
  during a re-evaluation a temporary global forward pre-hook snapshots those
  buffers the first time each such module runs, and restores them afterwards.
  Modules called outside ``Module.__call__`` (functional calls, some compiled
  graphs) are not seen by the hook.

Pickling (``torch.save`` of an optimizer state that holds probes): a probe is
stored WITHOUT its closure and parameters, since both are live references to the
user's model and data that a copy could not faithfully recreate; an unpickled
probe reports ``available == False`` and raises :class:`ClosureError` when
evaluated. ``copy.deepcopy`` shares the closure and parameters (a state-dict copy
taken in one process keeps working).
"""
from __future__ import annotations

import random
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.modules.module import register_module_forward_pre_hook

__all__ = ["ClosureError", "ProbeClosure", "CONTRACT"]

CONTRACT = (
    "line-search closure contract: closure() computes the mean loss of THIS step's batch and returns it "
    "as a scalar floating-point tensor WITHOUT calling backward(), e.g. "
    "opt.step(lambda: criterion(model(x), y))"
)


class ClosureError(TypeError):
    """A closure given to a line search breaks the contract (see :data:`CONTRACT`)."""


# --------------------------------------------------------------------- random state
class _RngState:
    """The states of the global generators a forward pass may draw from."""

    def __init__(self, devices: Sequence[torch.device], with_numpy: bool):
        self.devices = list(devices)
        self.with_numpy = with_numpy
        self.torch_cpu = torch.get_rng_state()
        self.accelerators = [(d, _device_module(d).get_rng_state(*_device_args(d))) for d in self.devices]
        self.python = random.getstate()
        self.numpy = sys.modules["numpy"].random.get_state() if with_numpy else None

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        for device, state in self.accelerators:
            _device_module(device).set_rng_state(state, *_device_args(device))
        random.setstate(self.python)
        if self.with_numpy:
            sys.modules["numpy"].random.set_state(self.numpy)


def _device_module(device: torch.device):
    return getattr(torch, device.type)


def _device_args(device: torch.device) -> Tuple[Any, ...]:
    # torch.mps keeps one generator and takes no device argument; cuda and xpu take one.
    return () if device.type == "mps" else (device,)


def _generator_devices(params: Sequence[Tensor]) -> List[torch.device]:
    devices = []
    for p in params:
        d = p.device
        if d.type in ("cpu", "meta") or d in devices:
            continue
        module = getattr(torch, d.type, None)
        if module is not None and hasattr(module, "get_rng_state") and hasattr(module, "set_rng_state"):
            devices.append(d)
    return devices


# --------------------------------------------------------------------- BatchNorm
def _has_running_stats(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "running_mean", None), Tensor) or isinstance(
        getattr(module, "running_var", None), Tensor
    )


class _FrozenRunningStats:
    """Context manager: modules with running statistics keep their buffers unchanged."""

    def __enter__(self):
        self._saved: Dict[int, Tuple[torch.nn.Module, List[Tuple[str, Tensor]]]] = {}

        def snapshot(module, _inputs):
            if id(module) not in self._saved and _has_running_stats(module):
                buffers = [(name, b.clone()) for name, b in module.named_buffers(recurse=False) if b is not None]
                self._saved[id(module)] = (module, buffers)

        self._handle = register_module_forward_pre_hook(snapshot)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        with torch.no_grad():
            for module, buffers in self._saved.values():
                for name, saved in buffers:
                    getattr(module, name).copy_(saved)
        self._saved.clear()
        return False


# --------------------------------------------------------------------- the probe
class ProbeClosure:
    """One batch's loss closure for line searches.

    ``closure()`` computes the mean loss of THIS step's batch and returns it
    WITHOUT calling backward. The RNG state is captured at construction, so build
    the probe right before its first evaluation.

    Args:
        closure: the user's closure (see :data:`CONTRACT`).
        owner: name used in error messages (e.g. ``"PAL"``).
        params: the optimizer's parameters: their gradients are filled by
            :meth:`loss_and_grad`, their devices name the generators to replay.
        on_pass: optional ``callable(forward, backward)`` called after every
            evaluation with the passes it consumed (e.g. ``opt._count_passes``).

    ``forward_passes`` and ``backward_passes`` count this probe's passes.
    """

    def __init__(self, closure: Callable[[], Tensor], owner: str, params: List[Tensor], *,
                 on_pass: Optional[Callable[[int, int], None]] = None, replayable: bool = True):
        if closure is None:
            raise ClosureError(f"{owner}.step needs a closure ({CONTRACT})")
        if not callable(closure):
            raise ClosureError(f"{owner}.step: closure must be callable, got {type(closure).__name__} ({CONTRACT})")
        self.closure = closure
        self.owner = owner
        self.params = list(params)
        self.on_pass = on_pass
        self.forward_passes = 0
        self.backward_passes = 0
        self.evaluated = False
        # Capturing every generator's state costs more than a small step: skipped for
        # probes that are evaluated once (LABPAL's training calls), which cannot replay.
        self._rng_before = (
            _RngState(_generator_devices(self.params), with_numpy="numpy" in sys.modules) if replayable else None
        )

    @property
    def available(self) -> bool:
        """False for a probe restored from a pickle: its closure could not be stored."""
        return self.closure is not None

    # ------------------------------------------------------------ evaluations
    def loss_and_grad(self) -> Tensor:
        """First evaluation: a normal training forward (live RNG, BatchNorm
        statistics updated), then backward into ``p.grad`` of ``params`` (set to
        None first). Returns the detached scalar loss."""
        self._require_closure()
        if self.evaluated:
            raise RuntimeError(f"{self.owner}: the first evaluation runs once per probe; use loss() to re-evaluate")
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            loss = self.closure()
        if any(p.grad is not None for p in self.params):
            raise ClosureError(
                f"{self.owner}.step: the closure calls backward() itself; the optimizer runs backward once and "
                f"re-evaluates the closure without gradients, so remove backward() from it ({CONTRACT})"
            )
        self._check_loss(loss)
        if not loss.requires_grad:
            raise ClosureError(
                f"{self.owner}.step: the closure returned a loss that does not require grad (computed under "
                f"torch.no_grad(), detached, or from no trainable parameter); return the loss tensor itself ({CONTRACT})"
            )
        self.evaluated = True
        with torch.enable_grad():  # the caller is usually a no_grad step()
            loss.backward()
        self._passes(1, 1)
        return loss.detach().reshape(())

    def first_loss(self) -> Tensor:
        """First evaluation WITHOUT gradients, for a batch that only contributes
        its loss (LABPAL's loss-approximation batches): a normal training forward
        (live RNG, BatchNorm statistics updated) under ``no_grad``. Returns the
        detached scalar loss; :meth:`loss` re-evaluates it later."""
        self._require_closure()
        if self.evaluated:
            raise RuntimeError(f"{self.owner}: the first evaluation runs once per probe; use loss() to re-evaluate")
        with torch.no_grad():
            loss = self.closure()
        self._check_loss(loss)
        self.evaluated = True
        self._passes(1, 0)
        return loss.detach().reshape(())

    def loss(self) -> Tensor:
        """A re-evaluation without gradients: same random draws as the first
        evaluation, BatchNorm running statistics untouched, global generators
        left where they were before this call. Returns the detached scalar loss."""
        self._require_closure()
        if not self.evaluated:
            raise RuntimeError(
                f"{self.owner}: call loss_and_grad() or first_loss() (the first evaluation) before loss()"
            )
        if self._rng_before is None:
            raise RuntimeError(f"{self.owner}: this probe was built with replayable=False and cannot be re-evaluated")
        rng_now = _RngState(self._rng_before.devices, self._rng_before.with_numpy)
        try:
            self._rng_before.restore()
            with torch.no_grad(), _FrozenRunningStats():
                loss = self.closure()
        finally:
            rng_now.restore()
        self._check_loss(loss)
        self._passes(1, 0)
        return loss.detach().reshape(())

    # ---------------------------------------------------------------- helpers
    def _check_loss(self, loss: Any) -> None:
        if not isinstance(loss, Tensor):
            raise ClosureError(
                f"{self.owner}.step: the closure returned {type(loss).__name__}, not a tensor; return the loss "
                f"tensor, not loss.item() ({CONTRACT})"
            )
        if loss.numel() != 1:
            raise ClosureError(
                f"{self.owner}.step: the closure returned a loss of shape {tuple(loss.shape)}, not a scalar; "
                f"reduce it with .mean() ({CONTRACT})"
            )
        if not loss.is_floating_point():
            raise ClosureError(f"{self.owner}.step: the closure returned a {loss.dtype} loss; it must be floating point ({CONTRACT})")

    def _require_closure(self) -> None:
        if self.closure is None:
            raise ClosureError(
                f"{self.owner}: this probe was restored from a pickle and has no closure (closures are live "
                "references to the model and batch and are not saved)"
            )

    def _passes(self, forward: int, backward: int) -> None:
        self.forward_passes += forward
        self.backward_passes += backward
        if self.on_pass is not None:
            self.on_pass(forward, backward)

    # ------------------------------------------------------------ copy/pickle
    def __deepcopy__(self, memo):
        # The closure and parameters are live references: a copy shares them.
        # (copy.copy would go through __getstate__ and drop them.)
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        memo[id(self)] = clone
        return clone

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(closure=None, params=[], on_pass=None)
        return state

    def __repr__(self) -> str:
        status = "evaluated" if self.evaluated else "fresh"
        if not self.available:
            status = "unavailable (restored from a pickle)"
        return f"ProbeClosure(owner={self.owner!r}, {status}, passes=({self.forward_passes}, {self.backward_passes}))"

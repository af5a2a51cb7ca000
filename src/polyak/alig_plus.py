r"""ALI-G+: ALI-G with approximate optimal values (AOVs) learned during training.

Paren, Poudel, Kumar. "Faking Interpolation Until You Make It", TMLR 2022.

ALI-G assumes interpolation: every sample's loss can reach the lower bound
:math:`B`. ALI-G+ replaces :math:`B` by a per-sample estimate :math:`a_z` of the
loss each sample :math:`z` can actually reach, refined a few times during training.

Step, with per-sample losses :math:`\ell_i` and dataset indices :math:`i` of the batch,
:math:`\|g\|^2` ONE squared norm over all parameters of all groups:

.. math::
    \gamma = \mathrm{clamp}\Big(\frac{\mathrm{mean}_i(\ell_i - a_i)}{\|g\|^2 + \delta}, 0, \eta_{max}\Big)

    w \leftarrow w - \gamma (g + \lambda w)

The weight decay :math:`\lambda` enters only there (not :math:`\|g\|^2`, not the
loss). Momentum is ALI-G's reference form fed with the raw gradient:
``b <- mu b - gamma g; w <- w + mu b`` after the step above. Each step records
:math:`\bar\ell_i \leftarrow \ell_i`.

Sections: the ``epochs`` = E epochs are split into ``K`` sections; at the end of
epochs :math:`k \lfloor E/K \rfloor - 1` (0-based, k = 1..K) every AOV updates,
with ``reached`` = :math:`\bar\ell_z \le a_z`:

- not reached: :math:`d_z \leftarrow \max(0, (\bar\ell_z - a_z)/2)`,
  :math:`a_z \leftarrow (a_z + \bar\ell_z)/2`
- reached: :math:`d_z` kept, :math:`a_z \leftarrow \max(B, a_z - d_z/2)`

All :math:`a_z = B` and :math:`d_z = 0` until the first update, so the first section
is plain ALI-G (with weight decay).

Options (each a named switch; the defaults reproduce the authors' code):

- ``loss_record="last"`` (reference behaviour): :math:`\bar\ell_z` is each sample's
  LAST online training loss. ``loss_record="best_epoch"`` (the paper's text: the loss
  at the best iterate): the per-sample losses recorded by the end of the epoch with
  the lowest mean online loss so far (one more float per sample).
- ``aov="per_sample"`` (ALI-G+): one AOV per dataset index, 3 floats per sample.
  ``aov="global_batch"`` (GALIG2+, appendix D): ONE scalar AOV, numerator =
  batch mean loss - AOV. ``aov="global_running"`` (GALIG1+, appendix D): ONE scalar
  AOV, numerator = running mean of the current epoch's online losses (an estimate
  of the full loss f(w_t), this batch included) - AOV. Both global variants update
  their AOV by the same rule on means: :math:`\bar\ell` is the last epoch's mean
  online loss (``"last"``) or the lowest epoch mean so far (``"best_epoch"``).
  They need no ``index`` and no ``num_samples``.

Deviations from the authors' code, on purpose: E < K raises (the reference divides
by zero); the AOV tables, the epoch counter and every running statistic live in
the optimizer state, so ``state_dict()`` resumes bit-identically in mid-section (the
reference loses them); a sample never seen keeps :math:`\bar\ell_z = B` so its AOV
stays :math:`B` (the reference starts the record at 1e6). Epochs past E run with
the last AOVs; no further update happens.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from . import functional as F
from ._base import (
    GLOBAL_STATE, MISSING, PolyakBase, check_choice, check_in_range, check_int, check_positive, require,
)
from ._registry import OptimizerSpec, register

__all__ = ["ALIGPlus", "aov_update_"]


AOV_MODES = ("per_sample", "global_batch", "global_running")
LOSS_RECORDS = ("last", "best_epoch")


# ------------------------------------------------------------------ shared math
def aov_update_(aov: Tensor, increment: Tensor, loss_record: Tensor, lower_bound: float) -> Tensor:
    """The ALI-G+ AOV update, element-wise and in place; returns the ``reached`` mask.

    reached = (lbar <= a). Not reached: d <- max(0, (lbar - a)/2), a <- (a + lbar)/2.
    Reached: d kept, a <- max(B, a - d/2). Works on per-sample tables and on the
    0-dim tensors of the global variants alike.
    """
    reached = loss_record <= aov
    lowered = torch.clamp(aov - increment / 2, min=lower_bound)
    raised = (aov + loss_record) / 2
    new_increment = torch.where(reached, increment, torch.clamp((loss_record - aov) / 2, min=0.0))
    aov.copy_(torch.where(reached, lowered, raised))
    increment.copy_(new_increment)
    return reached


# -------------------------------------------------------------------- optimizer
class ALIGPlus(PolyakBase):
    """ALI-G+ optimizer (and its global variants GALIG1+ / GALIG2+).

    Args:
        params: parameters or param groups (groups may override ``max_lr``,
            ``momentum`` and ``weight_decay``).
        max_lr: largest step size (paper grid 0.01 to 10), or None for no clip. Required.
        num_samples: number of training samples, i.e. the range of the dataset
            indices passed to ``step`` (``len(train_set)``). Required for ``aov="per_sample"``.
        epochs: the number E of training epochs planned (sets the section length E // K).
        K: number of sections (AOV updates), default 5; needs ``epochs >= K``.
        weight_decay: lambda of ``p <- p - gamma*(g + lambda*p)``.
        momentum: mu of ALI-G's reference momentum (default 0.9); 0 disables it.
        lower_bound: B, a known lower bound of every per-sample loss (0 for
            cross-entropy, hinge, squared loss); the initial AOV.
        delta: small constant added to ||g||^2 (1e-9 as in the paper).
        aov: "per_sample" (ALI-G+), "global_batch" (GALIG2+) or "global_running"
            (GALIG1+); see the module docstring.
        loss_record: "last" (reference: last online loss) or "best_epoch" (losses of
            the epoch with the lowest mean loss).
        nonfinite, foreach: see :class:`polyak._base.PolyakBase`.

    Observability: ``param_groups[i]["step_size" | "unclipped_step_size" | "clipped"]``,
    ``opt.aov_mean``, ``opt.last_loss_gap`` (mean of loss - AOV at the last step),
    ``opt.aov_reached_fraction`` (at the last AOV update), ``opt.epoch``.

    Example::

        train = IndexedDataset(train_set)            # yields (index, sample)
        opt = ALIGPlus(model.parameters(), max_lr=0.1, num_samples=len(train),
                       epochs=200, K=5, weight_decay=1e-4, momentum=0.9)
        for epoch in range(200):
            for idx, (x, y) in loader:
                losses = F.cross_entropy(model(x), y, reduction="none")
                opt.zero_grad(); losses.mean().backward()
                opt.step(loss=losses, index=idx)
            opt.end_epoch()
    """

    def __init__(
        self,
        params,
        max_lr=MISSING,
        num_samples: Optional[int] = None,
        epochs: Optional[int] = None,
        K: int = 5,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lower_bound: float = 0.0,
        delta: float = 1e-9,
        aov: str = "per_sample",
        loss_record: str = "last",
        *,
        nonfinite: str = "skip",
        foreach: bool = True,
    ):
        require("ALIGPlus", "max_lr", max_lr,
                "a positive float (the paper's grid is 0.01, 0.1, 1, 10) or max_lr=None for no clip")
        check_positive("max_lr", max_lr, allow_none=True, fix="Use None for no clip.")
        check_choice("aov", aov, AOV_MODES)
        check_choice("loss_record", loss_record, LOSS_RECORDS)
        if aov == "per_sample" or num_samples is not None:
            # Not check_int: the message leads with the fix, which tests pin.
            if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
                raise ValueError(
                    f"num_samples must be a positive integer, got {num_samples!r}: pass "
                    "num_samples=len(train_set), the number of dataset indices step() will see"
                )
        check_int("K", K, 1, "It is the number of AOV sections (paper: 5).")
        check_int("epochs", epochs, 1, "It is the number of training epochs planned.")
        if epochs < K:
            raise ValueError(
                f"epochs={epochs} is smaller than K={K}: each of the K sections needs at least one epoch; "
                f"lower K to at most {epochs} or train for more epochs"
            )
        check_positive("weight_decay", weight_decay, allow_zero=True)
        check_in_range("momentum", momentum, 0.0, 1.0)
        check_positive("delta", delta, fix="It keeps the step finite when the gradient vanishes.")
        if not isinstance(lower_bound, (int, float)) or isinstance(lower_bound, bool) or not math.isfinite(lower_bound):
            raise ValueError(f"lower_bound must be a finite number, got {lower_bound!r}")
        defaults = dict(max_lr=max_lr, momentum=momentum, weight_decay=weight_decay)
        super().__init__(params, defaults, nonfinite=nonfinite, foreach=foreach)
        for group in self.param_groups:
            check_positive("max_lr (param group)", group["max_lr"], allow_none=True)
            check_in_range("momentum (param group)", group["momentum"], 0.0, 1.0)
            check_positive("weight_decay (param group)", group["weight_decay"], allow_zero=True)
        self.num_samples = num_samples
        self.epochs = epochs
        self.K = K
        self.section_length = epochs // K
        self.lower_bound = float(lower_bound)
        self.delta = float(delta)
        self.aov = aov
        self.loss_record = loss_record
        self._lower_bound_by_dtype: Dict[torch.dtype, float] = {}
        self.global_state.update(
            aov_mode=aov,
            epoch=0,                # epochs completed (end_epoch calls)
            aov_updates=0,
            epoch_loss_sum=None,    # running sum and count of this epoch's online losses
            epoch_loss_count=0,
            last_loss_gap=None,
            aov_reached_fraction=None,
            tables=None,            # created on the first applied step, on the losses' device
        )

    # ----------------------------------------------------------------- views
    @property
    def epoch(self) -> int:
        """Epochs completed so far (calls of :meth:`end_epoch`)."""
        return self.global_state["epoch"]

    @property
    def aov_mean(self):
        """Mean AOV over all samples (a 0-dim tensor; ``lower_bound`` before the first step)."""
        tables = self.global_state["tables"]
        if tables is None:
            return self.lower_bound
        return tables["aov"].mean()

    @property
    def last_loss_gap(self) -> Optional[Tensor]:
        """mean(loss - AOV) that set the last applied step (the Polyak numerator), or None."""
        return self.global_state["last_loss_gap"]

    @property
    def aov_reached_fraction(self) -> Optional[Tensor]:
        """Fraction of samples whose AOV was reached at the last AOV update, or None."""
        return self.global_state["aov_reached_fraction"]

    @property
    def tables(self) -> Optional[Dict[str, Tensor]]:
        """The AOV state: ``aov`` (a), ``aov_increment`` (d), ``loss_record`` (lbar, per
        sample, or the epoch-mean record of the global variants) and, for
        ``loss_record="best_epoch"``, ``best_epoch_mean_loss`` (and per sample
        ``best_loss_record``). None before the first applied step."""
        return self.global_state["tables"]

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None, *, loss=None, index=None):
        """One ALI-G+ step.

        ``loss``: the per-sample losses of the batch (``reduction="none"``), after
        ``losses.mean().backward()``; or a torch-style closure that computes them,
        calls backward on their mean and returns them. ``index``: the dataset indices
        of the batch (same length, integer; see :class:`polyak.data.IndexedDataset`).
        The global variants also take a scalar batch-mean loss and need no index.
        An index repeated in one batch (two views of a sample) records one of its losses.
        """
        name = type(self).__name__
        per_sample_table = self.aov == "per_sample"
        if per_sample_table and index is None:
            self._check_index(None, None, required=True)   # raise before a closure runs forward and backward
        if per_sample_table:
            losses = self._loss_tensor(loss, closure, per_sample=True)
        else:
            if closure is not None and loss is None:
                if not callable(closure):
                    raise TypeError(f"{name}.step: closure must be callable, got {type(closure).__name__}")
                with torch.enable_grad():
                    loss = closure()
                closure = None
            is_vector = isinstance(loss, Tensor) and loss.dim() == 1
            losses = self._loss_tensor(loss, closure, per_sample=is_vector)
        index = self._check_index(index, losses, required=per_sample_table)
        self._count_passes(1, 1)
        groups = self._params_with_grad()
        grads = [p.grad for ps in groups for p in ps]
        if not grads:
            return losses
        grad_sq_norm = F.global_sq_norm(grads, foreach=self.foreach)
        # On CPU a host read is free: the guard and the step size then run on Python
        # floats instead of a dozen tiny kernels. An empty batch keeps the tensor path.
        on_host = grad_sq_norm.device.type == "cpu" and losses.device.type == "cpu" and losses.numel() > 0
        # Decides skip before any state changes: tables are created and written only below.
        if on_host:
            grad_sq_norm_value = grad_sq_norm.item()
            if self.nonfinite != "unchecked" and self._guard(
                self._guard_probe(losses), grad_sq_norm_value, self._lower_bound_in(losses.dtype)
            ):
                return losses
        elif self._guard(losses, grad_sq_norm, self.lower_bound):
            return losses

        tables = self._tables(losses)
        # The casts are checked first: even a no-op .to() costs a dispatch per step.
        if losses.dtype != tables["aov"].dtype:
            losses = losses.to(tables["aov"].dtype)
        gap = self._loss_gap_and_record(losses, index, tables)
        if gap.dtype != grad_sq_norm.dtype or gap.device != grad_sq_norm.device:
            gap = gap.to(grad_sq_norm.device, grad_sq_norm.dtype)
        self.global_state["last_loss_gap"] = gap
        if on_host:
            gap, grad_sq_norm = gap.item(), grad_sq_norm_value

        for group, params in zip(self.param_groups, groups):
            step, unclipped, clipped = F.polyak_step_size(gap, grad_sq_norm, self.delta, group["max_lr"])
            self._set_step_stats(group, step, unclipped, clipped)
            if not params:
                continue
            group_grads = [p.grad for p in params]
            scalar_step = F.as_scalar(step)
            # p - gamma*(g + lambda*p): the decay uses the pre-step weights, so it goes first.
            F.decoupled_weight_decay_(params, scalar_step, group["weight_decay"], foreach=self.foreach)
            if group["momentum"] > 0:
                buffers = [self._momentum_buffer(p) for p in params]
                F.alig_momentum_step_(params, group_grads, buffers, scalar_step, group["momentum"], foreach=self.foreach)
            else:
                F.sgd_step_(params, group_grads, scalar_step, foreach=self.foreach)
        self.global_state["step"] += 1
        return losses

    @staticmethod
    def _guard_probe(losses: Tensor) -> float:
        """One float that the guard judges exactly as it judges the whole CPU batch: the
        smallest loss when every loss is finite, else a non-finite one (NaN propagates
        through min and max). One pass over the batch, one host read."""
        if losses.numel() == 1:
            return losses.item()
        low, high = torch.aminmax(losses)
        high = high.item()
        return low.item() if math.isfinite(high) else high

    def _lower_bound_in(self, dtype: torch.dtype) -> float:
        """B rounded to ``dtype``: comparing a loss with it in float64 gives the answer
        of the tensor comparison ``losses < B`` (done in the losses' dtype)."""
        bound = self._lower_bound_by_dtype.get(dtype)
        if bound is None:
            bound = float(torch.tensor(self.lower_bound, dtype=dtype))
            self._lower_bound_by_dtype[dtype] = bound
        return bound

    def _loss_gap_and_record(self, losses: Tensor, index: Optional[Tensor], tables: Dict[str, Tensor]) -> Tensor:
        """The Polyak numerator of this step; records the losses for the AOV updates."""
        state = self.global_state
        batch_sum = losses.sum()
        running_sum = batch_sum if state["epoch_loss_sum"] is None else state["epoch_loss_sum"] + batch_sum
        running_count = state["epoch_loss_count"] + losses.numel()
        state["epoch_loss_sum"] = running_sum
        state["epoch_loss_count"] = running_count
        if self.aov == "per_sample":
            if index.device != losses.device:
                index = index.to(losses.device)
            # index_select / index_put_: the kernels of aov[index] and record[index] = losses,
            # without the Python indexing machinery.
            gap = (losses - tables["aov"].index_select(0, index)).mean()
            tables["loss_record"].index_put_((index,), losses)
            return gap
        if self.aov == "global_batch":
            return losses.mean() - tables["aov"]
        return running_sum / running_count - tables["aov"]

    # ----------------------------------------------------------------- epoch
    @torch.no_grad()
    def end_epoch(self) -> None:
        """Call once at the end of every epoch: updates the loss records and, at the end
        of epochs k*(epochs//K) - 1 (0-based, k = 1..K), the AOVs."""
        state = self.global_state
        finished = state["epoch"]
        tables = state["tables"]
        if tables is not None and state["epoch_loss_count"] > 0:
            epoch_mean = state["epoch_loss_sum"] / state["epoch_loss_count"]
            self._record_epoch(tables, epoch_mean)
        state["epoch_loss_sum"] = None
        state["epoch_loss_count"] = 0
        section = (finished + 1) // self.section_length
        if (finished + 1) % self.section_length == 0 and section <= self.K:
            if tables is None:
                # No step yet: every lbar is B, so every AOV is reached and stays B.
                state["aov_reached_fraction"] = torch.ones((), dtype=torch.float64)
            else:
                lbar = tables["best_loss_record"] if "best_loss_record" in tables else tables["loss_record"]
                reached = aov_update_(tables["aov"], tables["aov_increment"], lbar, self.lower_bound)
                state["aov_reached_fraction"] = reached.to(tables["aov"].dtype).mean()
            state["aov_updates"] += 1
        state["epoch"] = finished + 1

    def _record_epoch(self, tables: Dict[str, Tensor], epoch_mean: Tensor) -> None:
        # torch.where instead of an `if`: no device-to-host read once per epoch either.
        if self.loss_record == "best_epoch":
            better = epoch_mean < tables["best_epoch_mean_loss"]
            tables["best_epoch_mean_loss"] = torch.where(better, epoch_mean, tables["best_epoch_mean_loss"])
            key = "best_loss_record" if self.aov == "per_sample" else "loss_record"
            source = tables["loss_record"] if self.aov == "per_sample" else epoch_mean
            tables[key] = torch.where(better, source, tables[key])
        elif self.aov != "per_sample":
            tables["loss_record"] = epoch_mean.clone()

    # ----------------------------------------------------------------- state
    def _tables(self, losses: Tensor) -> Dict[str, Tensor]:
        """The AOV tables, created at B on the losses' device, moved there if it changed."""
        state = self.global_state
        tables = state["tables"]
        device = losses.device
        if tables is None:
            dtype = torch.promote_types(losses.dtype, torch.float32)
            shape = (self.num_samples,) if self.aov == "per_sample" else ()
            bound = torch.full(shape, self.lower_bound, dtype=dtype, device=device)
            tables = {"aov": bound.clone(), "aov_increment": torch.zeros_like(bound), "loss_record": bound.clone()}
            if self.loss_record == "best_epoch":
                tables["best_epoch_mean_loss"] = torch.full((), math.inf, dtype=dtype, device=device)
                if self.aov == "per_sample":
                    tables["best_loss_record"] = bound.clone()
            state["tables"] = tables
        elif tables["aov"].device != device:
            for key in list(tables):
                tables[key] = tables[key].to(device)
            if state["epoch_loss_sum"] is not None:
                state["epoch_loss_sum"] = state["epoch_loss_sum"].to(device)
        return tables

    def _check_index(self, index: Any, losses: Tensor, *, required: bool) -> Optional[Tensor]:
        name = type(self).__name__
        if index is None:
            if required:
                raise ValueError(
                    f"{name}.step needs index=: the dataset indices of the batch, one per per-sample loss "
                    "(wrap the training set in polyak.data.IndexedDataset to get them from the DataLoader)"
                )
            return None
        if not isinstance(index, Tensor):
            try:
                index = torch.as_tensor(index)
            except (TypeError, ValueError, RuntimeError) as error:
                raise TypeError(f"{name}.step: index must be an integer tensor of dataset indices, got {type(index).__name__}") from error
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(
                f"{name}.step: index must hold integer dataset indices (torch.long), got dtype {index.dtype}; "
                "pass the indices from IndexedDataset, or convert with index.long()"
            )
        if index.dim() != 1 or losses.dim() != 1 or index.numel() != losses.numel():
            raise ValueError(
                f"{name}.step: index must be 1-D with one dataset index per per-sample loss; got index shape "
                f"{tuple(index.shape)} for loss shape {tuple(losses.shape)} (use reduction='none' for the losses)"
            )
        if index.dtype not in (torch.int64, torch.int32):
            # index_put_ would read a uint8 index as a mask; the smaller ints are not
            # accepted as indices at all.
            index = index.long()
        if self.num_samples is not None:
            if index.device.type == "cpu":
                if index.numel():
                    low, high = torch.aminmax(index)   # one pass for both ends
                    low, high = int(low), int(high)
                    if low < 0 or high >= self.num_samples:
                        raise IndexError(
                            f"{name}.step: index out of range: indices must be in [0, num_samples={self.num_samples}), "
                            f"got min {low}, max {high}; set num_samples=len(train_set)"
                        )
            else:
                # On an accelerator a host check would stall the stream; assert on the device instead.
                torch._assert_async(
                    ((index >= 0) & (index < self.num_samples)).all(),
                    f"{name}.step: index out of range [0, num_samples={self.num_samples})",
                )
        return index

    def _momentum_buffer(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved = state_dict["state"].get(GLOBAL_STATE, {})
        mode = saved.get("aov_mode", self.aov)
        if mode != self.aov:
            raise ValueError(f"this state_dict was saved with aov={mode!r}; build the optimizer with aov={mode!r} to load it")
        tables = saved.get("tables")
        if tables is not None and self.aov == "per_sample" and tuple(tables["aov"].shape) != (self.num_samples,):
            raise ValueError(
                f"this state_dict holds AOVs for {tables['aov'].shape[0]} samples but num_samples={self.num_samples}; "
                "build the optimizer with the num_samples it was saved with"
            )
        super().load_state_dict(state_dict)


_SPEC_COMMON = dict(
    factory=ALIGPlus,
    passes=(1, 1),
    step_size_param="max_lr",
    step_size_grid=(0.01, 0.1, 1.0, 10.0),
)
register(OptimizerSpec(
    name="alig-plus",
    needs=frozenset({"per_sample_loss", "index", "end_epoch"}),
    defaults={"max_lr": 0.1},
    context=frozenset({"num_samples", "epochs"}),
    summary="ALI-G+: ALI-G with per-sample approximate optimal values (Paren et al., TMLR 2022)",
    **_SPEC_COMMON,
))
register(OptimizerSpec(
    name="galig1-plus",
    needs=frozenset({"per_sample_loss", "end_epoch"}),
    defaults={"max_lr": 0.1, "aov": "global_running"},
    context=frozenset({"epochs"}),
    summary="GALIG1+: one global AOV against the epoch's running mean loss (ALI-G+ appendix D)",
    **_SPEC_COMMON,
))
register(OptimizerSpec(
    name="galig2-plus",
    needs=frozenset({"per_sample_loss", "end_epoch"}),
    defaults={"max_lr": 0.1, "aov": "global_batch"},
    context=frozenset({"epochs"}),
    summary="GALIG2+: one global AOV against the batch mean loss (ALI-G+ appendix D)",
    **_SPEC_COMMON,
))

r"""ALI-G+: ALI-G with approximate optimal values (AOVs) learned during training.

Paren, Poudel, Kumar. "Faking Interpolation Until You Make It", TMLR 2022.

ALI-G assumes interpolation: every sample's loss can reach the lower bound
:math:`B`. ALI-G+ replaces :math:`B` by a per-sample estimate :math:`a_z` of the
loss each sample :math:`z` can actually reach, refined a few times during training.

Step, with per-sample losses :math:`\ell_i` and dataset indices :math:`i` of the batch,
:math:`\|g\|^2` ONE squared norm over all parameters of all groups:

.. math::
    \gamma = \mathrm{clamp}\Big(\frac{\mathrm{mean}_i(\ell_i - a_i)}{\|g\|^2 + \delta}, 0, \eta_{max}\Big)

    w \leftarrow w - \mathrm{lr}\,\gamma\,(g + \lambda w)

``lr`` (the group's ``"lr"``, 1.0: a torch.optim convention, not in the paper)
multiplies the step after the clip. The weight decay :math:`\lambda` enters only there (not :math:`\|g\|^2`, not the
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

Deviations from the authors' code, on purpose: ``K="auto"`` (the default) is the
paper's 5 when E >= 5 and E otherwise; an explicit K > E raises (the reference divides
by zero); the AOV tables, the epoch counter and every running statistic live in
the optimizer state, so ``state_dict()`` resumes bit-identically in mid-section (the
reference loses them); a sample never seen keeps :math:`\bar\ell_z = B` so its AOV
stays :math:`B` (the reference starts the record at 1e6). Epochs past E run with
the last AOVs; no further update happens.

Under torch.distributed every rank gathers the (index, per-sample loss) pairs of
all ranks each step, so the numerator is the mean over the global batch and the
AOV tables and loss records are identical on every rank (any rank's
``state_dict`` resumes the job); :math:`\|g\|^2` sums the shards of sharded
(FSDP2) gradients.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from . import _distributed as D
from ._base import (
    GLOBAL_STATE, MISSING, PolyakBase, add_to_counter, check_bool, check_choice, check_finite, check_in_range,
    check_int, check_positive, require,
)
from ._registry import OptimizerSpec, register

__all__ = ["ALIGPlus", "aov_update_", "resolve_sections"]


AOV_MODES = ("per_sample", "global_batch", "global_running")
LOSS_RECORDS = ("last", "best_epoch")
PAPER_SECTIONS = 5  # the paper's K


def resolve_sections(K, epochs: int) -> int:
    """The number of AOV sections for ``K`` (an int, or "auto") over ``epochs`` epochs.

    "auto": the paper's K = 5 whenever at least 5 epochs are planned (every run the
    papers describe), else one section per epoch, so a short run still updates its
    AOVs instead of refusing to start. The choice lives here, not in each training
    script or benchmark workload; an explicit K is kept as given.
    """
    if isinstance(K, str):
        if K != "auto":
            raise ValueError(f"K must be a positive integer or 'auto', got {K!r}")
        return min(PAPER_SECTIONS, epochs)
    return K


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
        K: number of sections (AOV updates): an integer with ``epochs >= K``, or "auto"
            (default): the paper's 5, or ``epochs`` when fewer than 5 are planned
            (:func:`resolve_sections`). ``opt.K`` and ``state_dict`` hold the integer.
            Each section must be long enough for the loss to level off: an AOV
            update on a loss still falling leaves most samples' AOV above their
            next losses, and those samples' steps are exactly 0.
        weight_decay: lambda of ``p <- p - gamma*(g + lambda*p)``.
        momentum: mu of ALI-G's reference momentum (default 0.9); 0 disables it.
        lower_bound: B, a known lower bound of every per-sample loss (0 for
            cross-entropy, hinge, squared loss); the initial AOV.
        delta: small constant added to ||g||^2 (1e-9 as in the paper).
        aov: "per_sample" (ALI-G+), "global_batch" (GALIG2+) or "global_running"
            (GALIG1+); see the module docstring.
        loss_record: "last" (reference: last online loss) or "best_epoch" (losses of
            the epoch with the lowest mean loss).
        lr, nonfinite, foreach, process_group, loss_is_global: see :class:`polyak._base.PolyakBase`.
        fused: True: the parameter update as one compiled loop per tensor (see
            :mod:`polyak._fused`; torch.compile must work here, else RuntimeError);
            ``foreach`` still chooses how ||g||^2 is summed. Worth it on large models only
            (about 0.1 ms of compile bookkeeping a call). None (default) or False: unfused.

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

    group_keys = frozenset({"max_lr", "momentum", "weight_decay"})
    mode_keys = frozenset({"aov", "loss_record"})
    _step_supports_amp_scaling = True   # see PolyakBase._amp_scale

    def __init__(
        self,
        params,
        max_lr=MISSING,
        num_samples: Optional[int] = None,
        epochs: Optional[int] = None,
        K="auto",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lower_bound: float = 0.0,
        delta: float = 1e-9,
        aov: str = "per_sample",
        loss_record: str = "last",
        *,
        lr: float = 1.0,
        nonfinite: str = "skip",
        foreach: bool = True,
        fused: Optional[bool] = None,
        process_group=None,
        loss_is_global: bool = False,
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
        check_int("epochs", epochs, 1, "It is the number of training epochs planned.")
        K = resolve_sections(K, epochs)
        check_int("K", K, 1, "It is the number of AOV sections (paper: 5), or 'auto'.")
        if epochs < K:
            raise ValueError(
                f"epochs={epochs} is smaller than K={K}: each of the K sections needs at least one epoch; "
                f"lower K to at most {epochs} or train for more epochs"
            )
        check_positive("weight_decay", weight_decay, allow_zero=True)
        check_in_range("momentum", momentum, 0.0, 1.0)
        check_positive("delta", delta, fix="It keeps the step finite when the gradient vanishes.")
        check_finite("lower_bound", lower_bound)
        defaults = dict(
            max_lr=max_lr, momentum=momentum, weight_decay=weight_decay, num_samples=num_samples, epochs=epochs,
            K=K, lower_bound=float(lower_bound), delta=float(delta), aov=aov, loss_record=loss_record,
        )
        if fused is not None:
            check_bool("fused", fused)
        defaults["fused"] = bool(fused)
        super().__init__(params, defaults, lr=lr, nonfinite=nonfinite, foreach=foreach,
                         process_group=process_group, loss_is_global=loss_is_global)
        self.global_state.update(
            epoch=0,                # epochs completed (end_epoch calls)
            aov_updates=0,
            epoch_loss_sum=None,    # running sum and count of this epoch's online losses
            epoch_loss_count=0,
            last_loss_gap=None,
            aov_reached_fraction=None,
            tables=None,            # created on the first applied step, on the losses' device
        )

    def _check_group(self, group):
        super()._check_group(group)
        check_positive("max_lr (param group)", group["max_lr"], allow_none=True)
        check_in_range("momentum (param group)", group["momentum"], 0.0, 1.0)

    num_samples = property(lambda self: self._setting("num_samples"))
    epochs = property(lambda self: self._setting("epochs"))
    K = property(lambda self: self._setting("K"))
    lower_bound = property(lambda self: self._setting("lower_bound"))
    delta = property(lambda self: self._setting("delta"))
    aov = property(lambda self: self._setting("aov"))
    loss_record = property(lambda self: self._setting("loss_record"))

    @property
    def section_length(self) -> int:
        """Epochs per AOV section, E // K."""
        return self.epochs // self.K

    @property
    def loss_kind(self) -> str:
        return "per_sample" if self.aov == "per_sample" else "either"

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
        calls backward on their mean and returns them (or ``(losses, index)``); or
        nothing after :meth:`add_loss` (per-sample losses and indices concatenate).
        ``index``: the dataset indices of the batch (same length, integer; see
        :class:`polyak.data.IndexedDataset`). The global variants also take a scalar
        batch-mean loss and need no index. An index repeated in one batch (two views
        of a sample) records one of its losses. Under torch.distributed every rank
        gathers every rank's (index, loss) pairs, so the AOV tables and loss records
        are identical on every rank and the numerator is the mean over the global batch.
        """
        batch, groups, grads = self._open_step(closure, loss, index)
        if not grads:
            return batch.result()
        per_sample_table = self.aov == "per_sample"
        scalars = self._step_scalars(
            batch, grads, lower_bound=self.lower_bound,
            rank_counts=per_sample_table and not self._setting("loss_is_global"),
        )
        # Decides skip before any state changes: tables are created and written only below.
        if self._skip_step(scalars):
            return batch.result()
        keep = self._keep_mask(scalars)
        losses, index = batch.values, batch.index
        if scalars.rank_counts is not None:
            losses, index = self._gather_pairs(losses, index, scalars.rank_counts)
        tables = self._tables(losses)
        # The casts are checked first: even a no-op .to() costs a dispatch per step.
        if losses.dtype != tables["aov"].dtype:
            losses = losses.to(tables["aov"].dtype)
        gap = self._loss_gap_and_record(losses, index, tables, scalars, keep)
        self.global_state["last_loss_gap"] = gap
        grad_sq_norm = scalars.grad_sq_norm
        if scalars.on_host:
            gap = gap.item()
        elif gap.dtype != grad_sq_norm.dtype or gap.device != grad_sq_norm.device:
            gap = gap.to(grad_sq_norm.device, grad_sq_norm.dtype)
        self._polyak_update(groups, gap, grad_sq_norm, self.delta, keep, max_lr=lambda group: group["max_lr"],
                            grad_factor=scalars.grad_factor)
        add_to_counter(self.global_state, "step")
        return batch.result()

    def _gather_pairs(self, losses: Tensor, index: Tensor, counts) -> tuple:
        """Every rank's (index, loss) pairs, in rank order: the global batch."""
        group = D.active_group(self._process_group, False)
        rows = torch.stack([index.to(losses.device, torch.float64), losses.to(torch.float64)])
        rows = D.all_gather_rows(rows, counts, group)
        return rows[1].to(losses.dtype), rows[0].to(torch.int64)

    def _loss_gap_and_record(self, losses: Tensor, index: Optional[Tensor], tables: Dict[str, Tensor],
                             scalars, keep: Optional[Tensor]) -> Tensor:
        """The Polyak numerator of this step (a 0-dim tensor); records the losses for the
        AOV updates. ``scalars``: the global loss sum and count of the step; ``keep``:
        the branch-free skip mask of the tensor path (None: the step applies)."""
        state = self.global_state
        batch_sum = torch.as_tensor(scalars.loss_sum, dtype=tables["aov"].dtype, device=tables["aov"].device)
        count = scalars.count
        count = int(count) if isinstance(count, float) else count.to(torch.int64)
        previous_sum = state["epoch_loss_sum"]
        running_sum = batch_sum if previous_sum is None else previous_sum + batch_sum
        if keep is not None:
            count = keep.to(torch.int64) * count
            running_sum = torch.where(keep, running_sum, torch.zeros_like(running_sum) if previous_sum is None else previous_sum)
        state["epoch_loss_sum"] = running_sum
        add_to_counter(state, "epoch_loss_count", count)
        running_count = state["epoch_loss_count"]
        if self.aov == "per_sample":
            if index.device != losses.device:
                index = index.to(losses.device)
            # index_select / index_put_: the kernels of aov[index] and record[index] = losses,
            # without the Python indexing machinery.
            gap = (losses - tables["aov"].index_select(0, index)).mean()
            record = losses if keep is None else torch.where(keep, losses, tables["loss_record"].index_select(0, index))
            tables["loss_record"].index_put_((index,), record)
            return gap
        if self.aov == "global_batch":
            return batch_sum / scalars.count - tables["aov"]
        return running_sum / running_count - tables["aov"]

    # ----------------------------------------------------------------- epoch
    @torch.no_grad()
    def end_epoch(self) -> None:
        """Call once at the end of every epoch: updates the loss records and, at the end
        of epochs k*(epochs//K) - 1 (0-based, k = 1..K), the AOVs."""
        state = self.global_state
        finished = state["epoch"]
        tables = state["tables"]
        count, total = state["epoch_loss_count"], state["epoch_loss_sum"]
        if tables is not None and isinstance(count, Tensor):
            # the count of the tensor path: decide on the device (no host read)
            self._record_epoch(tables, total / count.clamp(min=1), seen=count > 0)
        elif tables is not None and count > 0:
            self._record_epoch(tables, total / count)
        # a zero tensor once the tables exist (a compiled step then keeps one graph)
        state["epoch_loss_sum"] = None if total is None else torch.zeros_like(total)
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

    def _record_epoch(self, tables: Dict[str, Tensor], epoch_mean: Tensor, seen: Optional[Tensor] = None) -> None:
        """``seen``: a 0-dim bool tensor, False when no loss was recorded this epoch."""
        # torch.where instead of an `if`: no device-to-host read once per epoch either.
        if self.loss_record == "best_epoch":
            better = epoch_mean < tables["best_epoch_mean_loss"]
            if seen is not None:
                better = better & seen
            tables["best_epoch_mean_loss"] = torch.where(better, epoch_mean, tables["best_epoch_mean_loss"])
            key = "best_loss_record" if self.aov == "per_sample" else "loss_record"
            source = tables["loss_record"] if self.aov == "per_sample" else epoch_mean
            tables[key] = torch.where(better, source, tables[key])
        elif self.aov != "per_sample":
            tables["loss_record"] = epoch_mean.clone() if seen is None else torch.where(seen, epoch_mean, tables["loss_record"])

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

    def _check_index(self, index: Any, losses: Tensor, per_sample: bool) -> Optional[Tensor]:
        name = type(self).__name__
        required = self.aov == "per_sample"
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
            if self._on_host(index.device):
                if index.numel():
                    low, high = torch.aminmax(index)   # one pass for both ends
                    low, high = int(low), int(high)
                    if low < 0 or high >= self.num_samples:
                        raise IndexError(
                            f"{name}.step: index out of range: indices must be in [0, num_samples={self.num_samples}), "
                            f"got min {low}, max {high}; set num_samples=len(train_set)"
                        )
            else:
                # On an accelerator (or in a compiled step) a host check would stall the stream
                # (break the graph); assert on the device instead.
                torch._assert_async(
                    ((index >= 0) & (index < self.num_samples)).all(),
                    f"{name}.step: index out of range [0, num_samples={self.num_samples})",
                )
        return index

    def _check_loaded_state(self, state_dict: Dict[str, Any]) -> None:
        tables = state_dict["state"][GLOBAL_STATE].get("tables")
        if tables is not None and self.aov == "per_sample" and tuple(tables["aov"].shape) != (self.num_samples,):
            raise ValueError(
                f"this state_dict holds AOVs for {tables['aov'].shape[0]} samples but num_samples={self.num_samples}; "
                "build the optimizer with the num_samples it was saved with"
            )


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

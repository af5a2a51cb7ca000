"""The selection protocol, stated once: which epoch of a run counts, which
hyperparameter setting of an optimizer is reported, and how ties are broken.

Two rules (every table names the one it follows):

- ``validation`` (the ALI-G+ paper's protocol): a run scores its best validation
  metric over epochs 1..E; within the run, equal validation metrics are broken
  by the lower validation loss, then by the LATER epoch (more training, never
  "the first epoch that reached the maximum"). The test metric is read at that epoch.
- ``final`` (DeepOBS ranks settings by final performance): a run scores its
  validation metric at its last epoch; the test metric is read there too.

A setting (one hyperparameter choice, all its seeds) scores the mean of its
runs' scores on the seeds that EVERY setting of the optimizer has (the sweep's
seeds); a setting with a diverged seed there ranks below every complete one. The
chosen setting is then reported over all its seeds. This matters after DeepOBS's
second stage, which reruns only the chosen setting on more seeds: scoring on all
seeds would set that setting's 3-seed mean against its rivals' single best seed
and could move the choice to a setting with one seed (the winner's curse).
Ties between settings (equal mean score, common on small validation sets where
accuracy moves in steps of 1/n) are flagged in the tables and broken by, in
order: the lower mean validation loss at the scored epochs, the LARGER step
size, the smaller regularisation, then the setting's text (so the choice never
depends on hash or file order). A selection at the smallest or largest step size
of the grid actually tried is flagged as at the grid's edge: the best value may
lie outside the grid.

For workloads whose metric is the loss (matrix factorisation), settings are
selected on validation loss and the table reports the final training loss.

Also here: the share of Polyak-type steps clipped at ``max_lr`` and of steps
exactly 0, and the parsing of the CLI's ``--set`` and ``--grid``.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .records import Metric

__all__ = ["RULES", "DEFAULT_RULE", "RunScore", "Selection", "run_score", "select", "reported_value", "epochs_trained",
           "step_shares", "parse_set", "parse_grid", "check_overrides"]

RULES: Dict[str, str] = {
    "validation": ("selection on validation (ALI-G+ paper): per run the epoch with the best validation metric "
                   "(ties: lower validation loss, then the later epoch); per optimizer the setting with the best "
                   "mean over seeds (ties flagged †, broken by validation loss, then the larger step size)"),
    "final": ("selection on final performance (DeepOBS): per run the last epoch's validation metric; per "
              "optimizer the setting with the best mean over seeds (ties flagged †, broken by validation loss, "
              "then the larger step size)"),
}
DEFAULT_RULE = "validation"


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"selection rule must be one of {sorted(RULES)}, got {rule!r}")


def _finite(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


@dataclass(frozen=True)
class RunScore:
    """One run under a rule: its score, the validation loss there, and the epoch read."""

    score: Optional[float]
    val_loss: Optional[float]
    epoch: Optional[int]


def run_score(record: Mapping[str, Any], metric: Metric, rule: str = DEFAULT_RULE) -> RunScore:
    """The epoch a rule reads in one run (None score: diverged or never evaluated)."""
    _check_rule(rule)
    if record.get("diverged"):
        return RunScore(None, None, None)
    entries = [e for e in record.get("epochs") or [] if e.get("epoch", 0) >= 1]
    if rule == "final":
        entries = entries[-1:]
    best: Optional[Tuple[Tuple[float, float, int], Dict[str, Any]]] = None
    for entry in entries:
        val = entry.get("val") or {}
        score = _finite(val.get(metric.key))
        if score is None:
            continue
        loss = _finite(val.get("loss"))
        # larger key is better: the metric, then the lower loss, then the later epoch
        key = (metric.sort_key(score), -loss if loss is not None else -math.inf, entry["epoch"])
        if best is None or key > best[0]:
            best = (key, entry)
    if best is None:
        return RunScore(None, None, None)
    entry = best[1]
    return RunScore(_finite((entry.get("val") or {}).get(metric.key)), _finite((entry.get("val") or {}).get("loss")),
                    entry["epoch"])


def reported_value(record: Mapping[str, Any], metric: Metric, epoch: Optional[int]) -> Optional[float]:
    """The reported number of one run read at ``epoch``, in the table's unit (accuracy in %):
    the test metric there, or for metrics reported on training (matrix factorisation)
    the final training loss (None: diverged or absent)."""
    if record.get("diverged"):
        return None
    entries = [e for e in record.get("epochs") or [] if e.get("epoch", 0) >= 1]
    if metric.reported != "test":
        losses = [_finite(e.get("train_loss")) for e in entries]
        return losses[-1] if losses and losses[-1] is not None else None
    entry = next((e for e in entries if e["epoch"] == epoch), None)
    value = _finite(((entry or {}).get("test") or {}).get(metric.key))
    return None if value is None else metric.scale * value


def epochs_trained(record: Mapping[str, Any]) -> int:
    """Epochs this run actually completed (fewer than planned when it diverged)."""
    return max([e.get("epoch", 0) for e in record.get("epochs") or []] + [0])


@dataclass
class Selection:
    """The chosen setting of one optimizer on one workload, and how it was chosen."""

    rule: str
    key: str                                   # the setting's key (hyperparameters + epochs)
    records: List[Dict[str, Any]]              # its runs, by seed
    score: Optional[float]                     # mean run score (None: a seed diverged)
    epochs: List[Optional[int]]                # the epoch read in each run
    tied: List[Dict[str, Any]] = field(default_factory=list)  # hyperparameters of settings tied on score
    edge: Optional[str] = None                 # "smallest" / "largest" step size of the grid tried
    step_param: Optional[str] = None
    step_grid: Tuple[float, ...] = ()

    @property
    def hyperparameters(self) -> Dict[str, Any]:
        return dict(self.records[0]["config"].get("hyperparameters") or {})


def _step_param(records: Sequence[Mapping[str, Any]]) -> Optional[str]:
    for record in records:
        param = (record.get("optimizer") or {}).get("step_size_param")
        if param:
            return param
    return None


def select(settings: Mapping[str, Sequence[Dict[str, Any]]], metric: Metric, rule: str = DEFAULT_RULE) -> Selection:
    """Pick one setting (see the module docstring for the rule and the tie-breaks).

    settings: setting key -> the finished records of that setting (one per seed).
    """
    _check_rule(rule)
    step_param = _step_param([r for group in settings.values() for r in group])
    grid = sorted({float(h[step_param]) for group in settings.values() for r in group
                   for h in [r["config"].get("hyperparameters") or {}] if step_param and _finite(h.get(step_param))})
    seed_sets = [{r["config"]["seed"] for r in group} for group in settings.values()]
    common = set.intersection(*seed_sets) if seed_sets else set()
    ranked = []
    for key, group in settings.items():
        group = sorted(group, key=lambda r: r["config"]["seed"])
        runs = [run_score(r, metric, rule) for r in group]
        # scored on the shared seeds (all of them when the settings share none)
        scored = [run for r, run in zip(group, runs) if r["config"]["seed"] in common] or runs
        complete = all(run.score is not None for run in scored)
        score = statistics.fmean(run.score for run in scored) if complete else None
        losses = [run.val_loss for run in scored]
        loss = statistics.fmean(losses) if complete and all(v is not None for v in losses) else math.inf
        hyper = group[0]["config"].get("hyperparameters") or {}
        step = _finite(hyper.get(step_param)) if step_param else None
        regularisation = next((_finite(hyper.get(p)) for p in ("max_norm", "weight_decay") if p in hyper), None)
        sort_key = (
            0 if score is None else 1,
            metric.sort_key(score) if score is not None else 0.0,
            -loss,
            step if step is not None else 0.0,
            -(regularisation if regularisation is not None else 0.0),
            # the last resort only has to be deterministic: the reversed text order
            [-ord(ch) for ch in key],
        )
        ranked.append((sort_key, key, group, runs, score))
    ranked.sort(key=lambda item: item[0], reverse=True)
    _, key, group, runs, score = ranked[0]
    tied = [other[2][0]["config"].get("hyperparameters") or {} for other in ranked[1:]
            if score is not None and other[4] is not None and other[4] == score]
    chosen_step = _finite((group[0]["config"].get("hyperparameters") or {}).get(step_param)) if step_param else None
    edge = None
    if chosen_step is not None and len(grid) >= 2:
        edge = "smallest" if chosen_step == grid[0] else "largest" if chosen_step == grid[-1] else None
    return Selection(rule, key, list(group), score, [run.epoch for run in runs], tied, edge, step_param, tuple(grid))


# ------------------------------------------------------------ Polyak steps
def step_shares(records: Sequence[Mapping[str, Any]]) -> Optional[Tuple[float, float, int]]:
    """(share of steps clipped at max_lr, share of steps exactly 0, steps counted) over
    ``records``; None when none of them recorded the counts (not a Polyak-type step)."""
    steps = clipped = zero = 0
    for record in records:
        counts = record.get("step_counts") or {}
        if counts.get("steps"):
            steps += counts["steps"]
            clipped += counts["clipped_at_max_lr"]
            zero += counts["zero"]
    return None if not steps else (clipped / steps, zero / steps, steps)


# ------------------------------------------------------------ CLI values
def _value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)  # ints, floats, lists such as [0.9,0.999]
    except ValueError:
        return text


def parse_set(texts: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """``["alig.momentum=0", "adam.betas=[0.9,0.99]"]`` -> ``{"alig": {"momentum": 0}, ...}``."""
    out: Dict[str, Dict[str, Any]] = {}
    for text in texts:
        target, sep, value = text.partition("=")
        optimizer, dot, param = target.partition(".")
        if not sep or not dot or not optimizer or not param:
            raise ValueError(f"--set takes OPTIMIZER.PARAMETER=VALUE, e.g. --set alig.momentum=0; got {text!r}")
        out.setdefault(optimizer.strip().lower(), {})[param.strip()] = _value(value)
    return out


def parse_grid(texts: Sequence[str]) -> Dict[str, Tuple[float, ...]]:
    """``["alig=0.01,0.1,1"]`` -> ``{"alig": (0.01, 0.1, 1.0)}`` (positive finite numbers)."""
    out: Dict[str, Tuple[float, ...]] = {}
    for text in texts:
        optimizer, sep, values = text.partition("=")
        try:
            grid = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            grid = ()
        if not sep or not optimizer.strip() or not grid or not all(math.isfinite(v) and v > 0 for v in grid):
            raise ValueError(f"--grid takes OPTIMIZER=V1,V2,... with positive finite step sizes, "
                             f"e.g. --grid alig=0.01,0.1,1; got {text!r}")
        out[optimizer.strip().lower()] = tuple(sorted(set(grid)))
    return out


def check_overrides(fixed: Mapping[str, Mapping[str, Any]], grids: Mapping[str, Sequence[float]],
                    optimizers: Sequence[str]) -> None:
    """ValueError naming the flag and the fix when ``--set``/``--grid`` name an optimizer
    not in the run, a parameter its constructor does not take, or (``--set``) its
    step-size parameter (that is what ``--grid`` is for)."""
    from .optimizers import accepts, get_bench_spec

    for flag, names in (("--set", fixed), ("--grid", grids)):
        for name in names:
            if name not in optimizers:
                raise ValueError(f"{flag} names optimizer {name!r}, which is not in this run "
                                 f"({', '.join(optimizers)}); add it with --optimizer {name} or drop the {flag}")
    for name, params in fixed.items():
        spec = get_bench_spec(name)
        for param in params:
            if param == spec.step_size_param:
                raise ValueError(f"--set {name}.{param}: {param} is {name}'s step-size hyperparameter, swept by the "
                                 f"grid; use --grid {name}={params[param]} to fix it")
            if param not in spec.defaults and not accepts(spec, param):
                raise ValueError(f"--set {name}.{param}: {name}'s constructor takes no argument {param!r}")
    for name in grids:
        if not get_bench_spec(name).step_size_param:
            raise ValueError(f"--grid {name}: {name} has no step-size hyperparameter to sweep (learning-rate free)")

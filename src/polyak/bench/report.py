"""Tables and plots from a results directory: ``polyak bench report``.

Main table, in the layout of Table 1 of the ALI-G+ paper: optimizers x workloads,
each cell the test metric of the hyperparameters selected on validation, mean ±
std over seeds. Selection: per (workload, optimizer), the hyperparameter setting
with the best mean validation score over its seeds (a diverged seed scores worst);
per trial the validation score is taken at its best epoch, and the test metric at
that same epoch. Workloads whose metric is "accuracy" report test accuracy (%);
those whose metric is "loss" report the final training loss (the papers' metric
for matrix factorisation), still selected on validation loss.

Also: time per step relative to SGD measured in the same results directory (the
median over all of an optimizer's trials on a workload, divided by SGD's),
forward/backward passes per step, and PNG plots: training curves and step-size
traces of the selected settings, and a Dolan-Moré performance profile over
workloads (cost = test error for accuracy workloads, final training loss for
loss workloads; ratio to the best optimizer on each workload).
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .protocol import DEFAULT_RULE, RULES, Selection, epochs_trained, run_score, select, step_shares, reported_value
from .records import Metric, divergence, get_metric, is_diverged
from .store import DONE_STATUSES, Store, check_writable

__all__ = ["Cell", "ReportData", "collect", "render_markdown", "write_report", "main_table", "summary_text", "verdict",
           "targets", "time_to_target", "standings", "step_size_windows", "time_to_target_ratios"]

#: time per step is reported relative to this optimizer unless the records name another (their suite's)
BASELINE = "sgd"


@dataclass
class Cell:
    """The selected setting of one optimizer on one workload."""

    hyperparameters: Dict[str, Any]
    values: List[float]          # reported metric per finished seed
    seeds: int                   # seeds run with this setting
    diverged: int                # of which diverged
    val_score: Optional[float]   # mean validation score (None: all diverged)
    records: List[Dict[str, Any]] = field(default_factory=list)
    #: the same runs read at their last epoch and at their best validation epoch
    #: (one of the two equals ``values``: the one the selection rule reads)
    final_values: List[float] = field(default_factory=list)
    best_values: List[float] = field(default_factory=list)
    selection: Optional[Selection] = None  # how it was chosen (rule, ties, grid edge)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else (0.0 if self.values else None)


@dataclass
class ReportData:
    columns: List[Tuple[str, str]]                    # (workload, size)
    metrics: Dict[Tuple[str, str], Metric]            # column -> its reported metric
    optimizers: List[str]
    cells: Dict[Tuple[Tuple[str, str], str], Cell]    # (column, optimizer) -> selected cell
    time_ratio: Dict[Tuple[Tuple[str, str], str], float]
    baseline_time: Dict[Tuple[str, str], float]
    passes: Dict[str, Tuple[float, float]]
    trials: int
    failures: List[Dict[str, Any]] = field(default_factory=list)  # records with status "error"
    max_jobs: int = 1  # most trials that ran at the same time (timing noise)
    rule: str = DEFAULT_RULE  # the selection rule of every table (polyak.bench.protocol.RULES)
    records: List[Dict[str, Any]] = field(default_factory=list)  # the finished records
    grid_sizes: Dict[Tuple[Tuple[str, str], str], int] = field(default_factory=dict)  # step sizes tried

    def label(self, column: Tuple[str, str]) -> str:
        sizes = {size for _, size in self.columns}
        return column[0] if len(sizes) == 1 else f"{column[0]} ({column[1]})"


def _reported(record: Dict[str, Any], metric: Metric) -> Optional[float]:
    """The table's value of one trial (None: diverged or missing), in the table's unit."""
    summary = record.get("summary") or {}
    if record.get("diverged"):
        return None
    if metric.reported == "test":
        value = (summary.get("test_at_best") or {}).get(metric.key)
    else:
        value = summary.get("final_train_loss")
    return metric.scale * value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _mark_divergence(record: Dict[str, Any]) -> Dict[str, Any]:
    """A record that crossed the loss threshold (records.divergence) counts as diverged,
    also when it ran before the threshold existed: no score, no reported value."""
    if record.get("diverged") or record.get("status") != "ok" or not is_diverged(record):
        return record
    crossed = divergence(record.get("epochs") or [])
    summary = dict(record.get("summary") or {}, val_score=None, final_train_loss=None)
    return dict(record, status="diverged", diverged=True, diverged_at=crossed, summary=summary)


def _setting_key(record: Dict[str, Any]) -> str:
    config = record["config"]
    return json.dumps({"h": config.get("hyperparameters") or {}, "e": config.get("epochs")}, sort_keys=True)


def _values(records: Sequence[Dict[str, Any]], metric: Metric, epochs: Sequence[Optional[int]]) -> List[float]:
    return [v for v in (reported_value(r, metric, e) for r, e in zip(records, epochs)) if v is not None]


def _cell(choice: Selection, metric: Metric) -> Cell:
    best = [run_score(r, metric, "validation").epoch for r in choice.records]
    final = [epochs_trained(r) for r in choice.records]
    return Cell(hyperparameters=choice.hyperparameters, values=_values(choice.records, metric, choice.epochs),
                seeds=len(choice.records), diverged=sum(bool(r.get("diverged")) for r in choice.records),
                val_score=choice.score, records=choice.records, final_values=_values(choice.records, metric, final),
                best_values=_values(choice.records, metric, best), selection=choice)


def recorded_rule(records: Sequence[Dict[str, Any]]) -> str:
    """The selection rule the records' suite asks for (``sweep.selection``), else the default."""
    named = [(r.get("sweep") or {}).get("selection") for r in records]
    return max(set(named) - {None}, key=named.count, default=DEFAULT_RULE)


def collect(records: Sequence[Dict[str, Any]], rule: Optional[str] = None) -> ReportData:
    """Select settings (``rule``: see polyak.bench.protocol; None: the records' suite's
    rule, else "validation") and gather everything the report shows."""
    failures = [r for r in records if r.get("status") not in DONE_STATUSES]
    records = [_mark_divergence(r) for r in records if r.get("status") in DONE_STATUSES]
    by_task: Dict[Tuple[Tuple[str, str], str], Dict[str, List[Dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    metrics: Dict[Tuple[str, str], Metric] = {}
    times: Dict[Tuple[Tuple[str, str], str], List[float]] = defaultdict(list)
    passes: Dict[str, List[Tuple[float, float]]] = defaultdict(list)
    for record in records:
        config = record["config"]
        column = (config["workload"], config["size"])
        metrics[column] = get_metric(record["workload"]["metric"])
        by_task[(column, config["optimizer"])][_setting_key(record)].append(record)
        if record.get("time_per_step_s"):
            times[(column, config["optimizer"])].append(record["time_per_step_s"])
        pps = record.get("passes_per_step") or {}
        if pps.get("forward") is not None:
            passes[config["optimizer"]].append((pps["forward"], pps["backward"]))

    rule = rule or recorded_rule(records)
    cells: Dict[Tuple[Tuple[str, str], str], Cell] = {
        (column, optimizer): _cell(select(settings, metrics[column], rule), metrics[column])
        for (column, optimizer), settings in by_task.items()
    }

    named = [(r.get("sweep") or {}).get("time_baseline") for r in records]
    baseline = max(set(named) - {None}, key=named.count, default=BASELINE)
    baseline_time = {column: statistics.median(ts) for (column, opt), ts in times.items() if opt == baseline and ts}
    time_ratio = {
        key: statistics.median(ts) / baseline_time[key[0]]
        for key, ts in times.items() if ts and key[0] in baseline_time
    }
    # workloads with a declared target (the main job's) first, then by name
    declared = {(r["config"]["workload"], r["config"]["size"]) for r in records
                if isinstance((r.get("workload") or {}).get("target"), (int, float))}
    columns = sorted(metrics, key=lambda c: (c not in declared, c))
    optimizers = sorted({opt for _, opt in cells}, key=lambda o: (o != baseline, o))
    mean_passes = {opt: (statistics.fmean(f for f, _ in ps), statistics.fmean(b for _, b in ps)) for opt, ps in passes.items()}
    max_jobs = max([int((r.get("sweep") or {}).get("jobs") or 1) for r in records] + [1])
    tried: Dict[Tuple[Tuple[str, str], str], set] = defaultdict(set)
    for record in records:
        config = record["config"]
        param = (record.get("optimizer") or {}).get("step_size_param")
        tried[((config["workload"], config["size"]), config["optimizer"])].add(
            (config.get("hyperparameters") or {}).get(param) if param else None)
    return ReportData(columns, metrics, optimizers, cells, time_ratio, baseline_time, mean_passes, len(records),
                      failures, max_jobs, rule, records, {key: len(values) for key, values in tried.items()})


# ----------------------------------------------------------------- analysis
#: where a workload without a declared target takes one from (AlgoPerf: the best tuned baseline)
TARGET_BASELINES = ("sgd", "sgd-step", "adam")
#: the step-size window: within this many points of the best accuracy, or this fraction of the best loss
WINDOW_POINTS, WINDOW_LOSS_FRACTION = 1.0, 0.01
#: the time-to-target performance profile stops here (ratio to the fastest optimizer)
TTT_TAU_MAX = 4.0


def _epoch_value(entry: Dict[str, Any], metric: Metric) -> Optional[float]:
    """One epoch's value of the reported metric, raw scale (test metric or training loss)."""
    value = (entry.get("test") or {}).get(metric.key) if metric.reported == "test" else entry.get("train_loss")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _reaches(value: float, target: float, metric: Metric) -> bool:
    return value >= target if metric.higher_is_better else value <= target


@dataclass
class Target:
    value: float   # raw scale (accuracy as a fraction)
    source: str    # "declared" or the baseline it came from


def targets(data: ReportData) -> Dict[Tuple[str, str], Target]:
    """Per workload: its declared target, else the best tuned baseline's reported mean (AlgoPerf's rule)."""
    out = {}
    for column in data.columns:
        metric = data.metrics[column]
        declared = [((r.get("workload") or {}).get("target")) for c in data.cells.values() for r in c.records
                    if r["config"]["workload"] == column[0] and r["config"]["size"] == column[1]]
        declared = [d for d in declared if isinstance(d, (int, float))]
        if declared:
            out[column] = Target(float(declared[0]), "declared")
            continue
        baselines = [(data.cells[(column, o)].mean, o) for o in TARGET_BASELINES
                     if (column, o) in data.cells and data.cells[(column, o)].mean is not None]
        if baselines:
            value, name = max(baselines, key=lambda b: metric.sort_key(b[0]))
            out[column] = Target(value / metric.scale, f"best tuned baseline ({name})")
    return out


@dataclass
class TargetHit:
    """Time to target of a selected setting: seeds that reached it, and the means over those."""

    reached: int
    seeds: int
    epoch: Optional[float] = None
    updates: Optional[float] = None
    seconds: Optional[float] = None
    best: Optional[float] = None  # best value seen (raw), for "not reached (best ...)"

    @property
    def all_reached(self) -> bool:
        return self.seeds > 0 and self.reached == self.seeds


def time_to_target(data: ReportData) -> Dict[Tuple[Tuple[str, str], str], TargetHit]:
    """Updates and training seconds until the reported metric first reaches the target
    (checked once an epoch, as evaluated: the first epoch at or past it)."""
    hits = {}
    for column, target in targets(data).items():
        metric = data.metrics[column]
        for optimizer in data.optimizers:
            cell = data.cells.get((column, optimizer))
            if cell is None:
                continue
            found, best = [], None
            for record in cell.records:
                per_epoch = (record.get("workload") or {}).get("n_batches_per_epoch") or 0
                for entry in record.get("epochs") or []:
                    value = _epoch_value(entry, metric)
                    if value is None or entry.get("epoch", 0) < 1:
                        continue
                    best = value if best is None or metric.better(value, best) else best
                    if not record.get("diverged") and _reaches(value, target.value, metric):
                        found.append((entry["epoch"], entry["epoch"] * per_epoch, entry.get("elapsed_s")))
                        break
            mean = lambda xs: statistics.fmean(xs) if xs else None  # noqa: E731
            hits[(column, optimizer)] = TargetHit(
                len(found), len(cell.records), mean([f[0] for f in found]), mean([f[1] for f in found]),
                mean([f[2] for f in found if f[2] is not None]), best)
    return hits


@dataclass
class Standing:
    """Who leads a workload and by how much."""

    best: str
    value: float
    runner_up: Optional[str] = None
    margin: Optional[float] = None       # in the table's unit, >= 0
    spread: Optional[float] = None       # the larger seed std of the two (None: a single seed)
    tied: Tuple[str, ...] = ()           # optimizers with exactly the best's numbers

    @property
    def significant(self) -> Optional[bool]:
        """The lead exceeds the seeds' spread (None: not measurable with one seed)."""
        if self.margin is None or self.spread is None:
            return None
        return self.margin > self.spread


def _curve(record: Dict[str, Any]) -> List[Optional[float]]:
    return [entry.get("train_loss") for entry in record.get("epochs") or []] + [
        (entry.get("val") or {}).get("loss") for entry in record.get("epochs") or []]


def _same(a: Cell, b: Cell) -> bool:
    """The same numbers: equal reported values AND equal per-epoch training and validation
    losses in every seed (a discrete accuracy alone can coincide by chance)."""
    close = lambda x, y: x is y or (x is not None and y is not None  # noqa: E731
                                    and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12))
    return (len(a.values) == len(b.values) == len(a.records) == len(b.records) and a.values
            and all(close(x, y) for x, y in zip(a.values, b.values))
            and all(len(_curve(r)) == len(_curve(q)) and all(close(x, y) for x, y in zip(_curve(r), _curve(q)))
                    for r, q in zip(a.records, b.records)))


def standings(data: ReportData) -> Dict[Tuple[str, str], Standing]:
    out = {}
    for column in data.columns:
        metric = data.metrics[column]
        ranked = sorted(((data.cells[(column, o)], o) for o in data.optimizers
                         if (column, o) in data.cells and data.cells[(column, o)].mean is not None),
                        key=lambda c: (-metric.sort_key(c[0].mean), c[1]))
        if not ranked:
            continue
        best_cell, best = ranked[0]
        tied = tuple(o for c, o in ranked[1:] if _same(c, best_cell))
        rest = [(c, o) for c, o in ranked[1:] if o not in tied]
        standing = Standing(best, best_cell.mean, tied=tied)
        if rest:
            cell, name = rest[0]
            standing.runner_up, standing.margin = name, abs(best_cell.mean - cell.mean)
            if len(best_cell.values) > 1 and len(cell.values) > 1:
                standing.spread = max(best_cell.std, cell.std)
        out[column] = standing
    return out


def identical_rows(data: ReportData) -> List[Tuple[str, str]]:
    """Pairs of optimizers whose selected cells hold the same numbers on every workload both ran."""
    pairs = []
    for i, a in enumerate(data.optimizers):
        for b in data.optimizers[i + 1:]:
            shared = [c for c in data.columns if (c, a) in data.cells and (c, b) in data.cells]
            if shared and all(_same(data.cells[(c, a)], data.cells[(c, b)]) for c in shared):
                pairs.append((a, b))
    return pairs


@dataclass
class Window:
    """The step sizes whose result is within the tolerance of the optimizer's best."""

    param: str
    low: float
    high: float
    points: int                 # grid values tried
    per_decade: float           # grid density
    at_edge: bool               # the window touches the grid's end: it may be wider

    @property
    def ratio(self) -> float:
        return self.high / self.low


def step_size_windows(records: Sequence[Dict[str, Any]], metrics: Dict[Tuple[str, str], Metric]
                      ) -> Dict[Tuple[Tuple[str, str], str], Window]:
    """Per (workload, optimizer) with a step-size hyperparameter tried at >= 2 values: the
    multiplicative range of contiguous grid values whose result (best over the other
    hyperparameters, mean over seeds, a diverged seed disqualifies) is within 1 point of
    the best accuracy, or 1% of the best loss."""
    grouped: Dict[Tuple[Tuple[str, str], str], Dict[float, Dict[str, List[Optional[float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    params: Dict[Tuple[Tuple[str, str], str], str] = {}
    for record in records:
        config = record["config"]
        column, optimizer = (config["workload"], config["size"]), config["optimizer"]
        param = (record.get("optimizer") or {}).get("step_size_param")
        hyper = config.get("hyperparameters") or {}
        if not param or not isinstance(hyper.get(param), (int, float)) or column not in metrics:
            continue
        params[(column, optimizer)] = param
        rest = json.dumps({k: v for k, v in hyper.items() if k != param}, sort_keys=True)
        grouped[(column, optimizer)][float(hyper[param])][rest].append(_reported(record, metrics[column]))
    windows = {}
    for key, by_lr in grouped.items():
        if len(by_lr) < 2:
            continue
        metric = metrics[key[0]]
        values: Dict[float, Optional[float]] = {}
        for lr, settings in by_lr.items():
            complete = [statistics.fmean(v) for v in settings.values() if v and all(x is not None for x in v)]
            values[lr] = max(complete, key=metric.sort_key) if complete else None
        finite = [v for v in values.values() if v is not None]
        if not finite:
            continue
        best = max(finite, key=metric.sort_key)
        ok = {lr: v is not None and (v >= best - WINDOW_POINTS if metric.higher_is_better
                                     else v <= best + WINDOW_LOSS_FRACTION * abs(best)) for lr, v in values.items()}
        grid = sorted(values)
        centre = grid.index(next(lr for lr in grid if values[lr] == best))
        lo = hi = centre
        while lo > 0 and ok[grid[lo - 1]]:
            lo -= 1
        while hi < len(grid) - 1 and ok[grid[hi + 1]]:
            hi += 1
        decades = math.log10(grid[-1] / grid[0]) if grid[-1] > grid[0] else 0.0
        windows[key] = Window(params[key], grid[lo], grid[hi], len(grid),
                              (len(grid) - 1) / decades if decades else float("inf"), lo == 0 or hi == len(grid) - 1)
    return windows


def time_to_target_ratios(data: ReportData) -> Dict[str, List[float]]:
    """Dolan-Moré ratios on updates to target: per workload with a target, each optimizer's
    mean updates (all seeds must reach it, else inf) over the fastest optimizer's."""
    hits = time_to_target(data)
    ratios: Dict[str, List[float]] = {o: [] for o in data.optimizers}
    for column in targets(data):
        costs = {o: (hits[(column, o)].updates if (column, o) in hits and hits[(column, o)].all_reached
                     and hits[(column, o)].updates else math.inf) for o in data.optimizers}
        finite = [c for c in costs.values() if math.isfinite(c)]
        if not finite:
            continue
        fastest = min(finite)
        for optimizer, cost in costs.items():
            ratios[optimizer].append(cost / fastest if math.isfinite(cost) else math.inf)
    return ratios


# --------------------------------------------------------------------- text
def _format_value(value: float, metric: Metric) -> str:
    return f"{value:.2f}" if metric.scale == 100.0 else f"{value:.4g}"


def _unit(metric: Metric) -> str:
    return " points" if metric.scale == 100.0 else ""


def _cell_text(cell: Optional[Cell], metric: Metric) -> str:
    if cell is None:
        return "-"
    if cell.mean is None:
        return "diverged"
    text = _format_value(cell.mean, metric)
    if len(cell.values) > 1:
        text += f" ± {_format_value(cell.std, metric)}"
    if cell.diverged:
        text += f" ({cell.diverged}/{cell.seeds} diverged)"
    return text


def _cell_notes(cell: Optional[Cell], metric: Metric) -> str:
    """After a cell's number: the same runs at the other epoch (best-validation or final),
    † a tie on validation, ‡ a step size at the grid's edge."""
    if cell is None or cell.mean is None:
        return ""
    text = ""
    label, other = ("final", cell.final_values) if rule_of(cell) == "validation" else ("best-val", cell.best_values)
    if metric.reported == "test" and other:
        text += f" ({label} {_format_value(statistics.fmean(other), metric)})"
    selection = cell.selection
    if selection is not None and selection.tied:
        text += " †"
    if selection is not None and selection.edge:
        text += " ‡"
    return text


def rule_of(cell: Cell) -> str:
    return cell.selection.rule if cell.selection is not None else DEFAULT_RULE


def plugin_marks(records: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, str], str]:
    """(kind, name) -> "plugin FILE sha256 PREFIX" for workloads and optimizers a plugin provided."""
    marks = {}
    for record in records:
        for kind, entry in (record.get("provenance") or {}).items():
            if isinstance(entry, dict) and entry.get("sha256"):
                name = record["config"][kind]
                marks[(kind, name)] = f"plugin {Path(str(entry['source'])).name} sha256 {entry['sha256'][:12]}"
    return marks


def _legend(data: ReportData) -> str:
    """What every table's cells mean: the rule, the other epoch, the flags."""
    other = "final-epoch" if data.rule == "validation" else "best-validation-epoch"
    return (f"Selection: {RULES[data.rule]}. Accuracy cells: test accuracy at the epoch the rule reads, "
            f"then in brackets the {other} test accuracy of the same runs. † the selected setting tied with "
            "others on validation (tie broken as stated; see the selected-hyperparameters table); ‡ the selected "
            "step size is the smallest or largest of the grid tried (the best may lie outside it).")


def _best_per_column(data: ReportData) -> Dict[Tuple[str, str], Optional[str]]:
    """The optimizer to bold per workload: the leader, when its lead over the runner-up
    exceeds the seeds' spread and no other optimizer has the very same numbers."""
    best: Dict[Tuple[str, str], Optional[str]] = {c: None for c in data.columns}
    for column, standing in standings(data).items():
        if standing.significant and not standing.tied:
            best[column] = standing.best
    return best


def main_table(data: ReportData) -> str:
    """The main table as GitHub markdown: the leader of a workload in bold only when its lead
    exceeds the seeds' spread (one seed: nothing is bold)."""
    best = _best_per_column(data)
    header = ["optimizer"] + [f"{data.label(c)} {data.metrics[c].label}" for c in data.columns]
    marks = plugin_marks(data.records)
    header = header[:1] + [h + (f" [{marks[('workload', c[0])]}]" if ("workload", c[0]) in marks else "")
                           for h, c in zip(header[1:], data.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for optimizer in data.optimizers:
        row = [optimizer + (f" [{marks[('optimizer', optimizer)]}]" if ("optimizer", optimizer) in marks else "")]
        for column in data.columns:
            cell, metric = data.cells.get((column, optimizer)), data.metrics[column]
            text = _cell_text(cell, metric)
            row.append((f"**{text}**" if best[column] == optimizer else text) + _cell_notes(cell, metric))
        lines.append("| " + " | ".join(row) + " |")
    return _legend(data) + "\n\n" + "\n".join(lines)


def _hyper_text(hyper: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(hyper.items())) or "defaults"


def _target_text(target: Target, metric: Metric) -> str:
    value = _format_value(target.value * metric.scale, metric) + ("%" if metric.scale == 100.0 else "")
    return value + ("" if target.source == "declared" else f", {target.source}")


def target_table(data: ReportData) -> str:
    """Who reached each workload's target, and when: epoch, updates and training seconds
    (means over the seeds that reached it)."""
    goal = targets(data)
    if not goal:
        return "No workload here has a target (none declared, no tuned baseline to derive one from)."
    hits = time_to_target(data)
    columns = [c for c in data.columns if c in goal]
    header = ["optimizer"] + [f"{data.label(c)} (target {_target_text(goal[c], data.metrics[c])})" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for optimizer in data.optimizers:
        row = [optimizer]
        for column in columns:
            hit = hits.get((column, optimizer))
            metric = data.metrics[column]
            if hit is None:
                row.append("-")
            elif hit.reached == 0:
                best = "" if hit.best is None else f" (best {_format_value(hit.best * metric.scale, metric)})"
                row.append(f"no{best}")
            else:
                share = "" if hit.all_reached else f" in {hit.reached}/{hit.seeds} seeds"
                seconds = "" if hit.seconds is None else f", {hit.seconds:.3g} s"
                row.append(f"epoch {hit.epoch:.3g}: {hit.updates:.0f} updates{seconds}{share}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def window_table(data: ReportData, windows: Dict[Tuple[Tuple[str, str], str], Window]) -> str:
    if not windows:
        return ("No optimizer was tried at two or more step sizes here: no step-size window to measure "
                "(the lite and paper suites sweep full grids).")
    lines = ["| workload | optimizer | parameter | window (within 1 point / 1% of its best) | width | grid |",
             "|---|---|---|---|---|---|"]
    for (column, optimizer), w in sorted(windows.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        width = f"{'≥ ' if w.at_edge else ''}{w.ratio:.3g}x"
        density = "" if math.isinf(w.per_decade) else f", {w.per_decade:.2g}/decade"
        lines.append(f"| {data.label(column)} | {optimizer} | {w.param} | [{w.low:g}, {w.high:g}] | {width} | "
                     f"{w.points} values{density} |")
    return "\n".join(lines) + ("\n\n'≥': the window reaches the end of the grid, so it may be wider.")


def deepobs_reference_table(data: ReportData) -> str:
    """Our selected settings beside DeepOBS's own baseline runs, at the epochs run here
    (DeepOBS's per-epoch curve) and at DeepOBS's end (its published 10-seed result)."""
    from .deepobs_baselines import PUBLISHED, SEEDS, SOURCE, curves_for

    lines = []
    for column in data.columns:
        curves, published = curves_for(column[0]), PUBLISHED.get(column[0], {})
        if not curves and not published:
            continue
        metric = data.metrics[column]
        epochs = max(int((r.get("workload") or {}).get("epochs") or 0)
                     for c in data.cells.values() for r in c.records if (r["config"]["workload"], r["config"]["size"]) == column)
        if not lines:
            lines = [f"| workload | run | test {metric.key} at epoch E (here) | at epoch 100 |", "|---|---|---|---|"]
        for optimizer in data.optimizers:
            cell = data.cells.get((column, optimizer))
            if cell is not None and cell.mean is not None:
                lines.append(f"| {data.label(column)} | ours: {optimizer} (E={epochs}) | {_cell_text(cell, metric)} | - |")
        for name in sorted(set(published) | {c.optimizer for c in curves}):
            curve = next((c for c in curves if c.optimizer == name), None)
            at_e = "-" if curve is None or epochs >= len(curve.values) else \
                _format_value(metric.scale * curve.values[epochs], metric) + (
                    "" if curve.spread is None else f" ± {_format_value(metric.scale * curve.spread[epochs], metric)}")
            final = published.get(name)
            end = "-" if final is None else _format_value(metric.scale * final[0], metric) + (
                "" if final[1] is None else f" ± {_format_value(metric.scale * final[1], metric)}") + " (paper)"
            run = f"DeepOBS {name}" + ("" if curve is None else f" (mean of {len(curve.seeds)} seeds)")
            lines.append(f"| {data.label(column)} | {run} | {at_e} | {end} |")
    if not lines:
        return ""
    return "\n".join(lines) + (
        f"\n\nDeepOBS rows: {SOURCE}; their tuned learning rate, TensorFlow, test set as DeepOBS splits it. "
        f"At epoch E: mean ± sample std over DeepOBS's seeds {SEEDS[0]}-{SEEDS[-1]}. At epoch 100: the DeepOBS "
        f"paper's number, which matches seeds {SEEDS[1]}-{SEEDS[-1]} (the re-runs of the tuned setting, without "
        f"the tuning sweep's seed {SEEDS[0]}).")


def _settings_table(data: ReportData) -> str:
    lines = [f"Selection: {RULES[data.rule]}.", "",
             "| workload | optimizer | selected hyperparameters | val score | epoch read (per seed) | "
             "epochs trained / planned | tied on validation with | grid edge | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for column in data.columns:
        for optimizer in data.optimizers:
            cell = data.cells.get((column, optimizer))
            if cell is None:
                continue
            val = "-" if cell.val_score is None else f"{cell.val_score:.4g}"
            selection = cell.selection
            read = ", ".join("-" if e is None else str(e) for e in selection.epochs) if selection else "-"
            trained = ", ".join(f"{epochs_trained(r)}/{(r.get('workload') or {}).get('epochs', '?')}"
                                for r in cell.records)
            tied = "; ".join(_hyper_text(h) for h in selection.tied) if selection and selection.tied else "-"
            edge = (f"{selection.edge} {selection.step_param} of {list(selection.step_grid)}"
                    if selection and selection.edge else "-")
            lines.append(f"| {data.label(column)} | {optimizer} | {_hyper_text(cell.hyperparameters)} | {val} | "
                         f"{read} | {trained} | {tied} | {edge} | {cell.seeds} |")
    return "\n".join(lines)


def _step_share_table(data: ReportData) -> str:
    """Polyak-type steps: share clipped at max_lr and share exactly 0, per workload,
    optimizer and step size (all seeds and regularisation values of that step size)."""
    groups: Dict[Tuple[Tuple[str, str], str, str, Any], List[Dict[str, Any]]] = defaultdict(list)
    for record in data.records:
        config = record["config"]
        param = (record.get("optimizer") or {}).get("step_size_param") or "-"
        step = (config.get("hyperparameters") or {}).get(param, "default")
        groups[((config["workload"], config["size"]), config["optimizer"], param, step)].append(record)
    lines = ["| workload | optimizer | step size | steps clipped at max_lr | steps exactly 0 | steps counted |",
             "|---|---|---|---|---|---|"]
    def order(key):  # numeric step sizes in increasing order, "default" (not swept) after them
        numeric = isinstance(key[3], (int, float))
        return key[0], key[1], key[2], not numeric, key[3] if numeric else 0

    for (column, optimizer, param, step), records in sorted(groups.items(), key=lambda kv: order(kv[0])):
        shares = step_shares(records)
        if shares is None:
            continue
        clipped, zero, steps = shares
        lines.append(f"| {data.label(column)} | {optimizer} | {param}={step} | {100 * clipped:.1f}% | "
                     f"{100 * zero:.1f}% | {steps} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _time_table(data: ReportData) -> str:
    header = ["optimizer"] + [data.label(c) for c in data.columns] + ["passes / step (fwd, bwd)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for optimizer in data.optimizers:
        row = [optimizer]
        for column in data.columns:
            ratio = data.time_ratio.get((column, optimizer))
            row.append("-" if ratio is None else f"{ratio:.2f}x")
        fwd_bwd = data.passes.get(optimizer)
        row.append("-" if fwd_bwd is None else f"{fwd_bwd[0]:.2f}, {fwd_bwd[1]:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    base = ", ".join(f"{data.label(c)}: {1e3 * t:.3g} ms" for c, t in sorted(data.baseline_time.items()))
    note = f"\nBaseline's time per step: {base}." if base else "\nNo baseline trials in these results: no time ratios."
    if data.max_jobs > 1:
        note += (f" Trials ran {data.max_jobs} at a time and shared the cores: these ratios are noisy; "
                 "rerun with `--jobs 1` on an idle machine to time.")
    return "\n".join(lines) + "\n" + note


def _paper_epochs(workload: str) -> Optional[int]:
    try:
        from .workloads import get_workload

        return get_workload(workload).budgets["paper"].epochs
    except (KeyError, ImportError):
        return None


def budget_line(data: ReportData) -> str:
    """The budget caveat: epochs against the papers', seeds, step sizes tried."""
    sizes = sorted({size for _, size in data.columns})
    parts = []
    for column in data.columns:
        records = [r for c in data.cells.values() for r in c.records
                   if (r["config"]["workload"], r["config"]["size"]) == column]
        if not records:
            continue
        epochs = max(int((r.get("workload") or {}).get("epochs") or 0) for r in records)
        paper = _paper_epochs(column[0])
        parts.append(f"{column[0]} {epochs}" + (f" of the full budget's {paper}" if paper and paper != epochs else "")
                     + " epochs")
    seeds = sorted({c.seeds for c in data.cells.values()})
    counts = set(data.grid_sizes.values()) or {1}
    tuned = "each optimizer at one step size (its default; no tuning)" if counts == {1} else \
        f"{min(counts)}-{max(counts)} step sizes per optimizer, selected on validation"
    text = (f"Budget (size {'/'.join(sizes)}): " + (", ".join(parts[:6]) + (", ..." if len(parts) > 6 else ""))
            + f"; {'/'.join(map(str, seeds))} seed(s); {tuned}.")
    if any(size != "paper" for size in sizes):
        text += " A ranking at this budget, not a test of the papers' claims (see docs/results.md)."
    return text


def verdict(data: ReportData) -> List[str]:
    """Three lines: who won, by how much, and the budget caveat."""
    if not data.columns:
        return ["No finished trials: no verdict.", "", ""]
    table = standings(data)
    hits = time_to_target(data)
    goal = targets(data)
    won, margins = [], []
    for column in data.columns:
        standing = table.get(column)
        if standing is None:
            won.append(f"{data.label(column)}: every trial diverged")
            continue
        metric = data.metrics[column]
        value = _format_value(standing.value, metric) + ("%" if metric.scale == 100.0 else "")
        hit = hits.get((column, standing.best))
        reach = ""
        if column in goal and goal[column].source == "declared" and hit is not None:
            reach = (f", target {_target_text(goal[column], metric)} reached at epoch {hit.epoch:.3g}"
                     if hit.reached else f", target {_target_text(goal[column], metric)} NOT reached")
        ties = f" (= {', '.join(standing.tied)}: identical numbers)" if standing.tied else ""
        won.append(f"{data.label(column)}: {standing.best} {value}{reach}{ties}")
        if standing.runner_up is None:
            margins.append(f"{data.label(column)}: no runner-up")
            continue
        lead = f"{_format_value(standing.margin, metric)}{_unit(metric)}"
        if standing.significant is None:
            judged = "1 seed: spread not measured"
        elif standing.significant:
            judged = f"larger than the seeds' spread ({_format_value(standing.spread, metric)})"
        else:
            judged = f"within the seeds' spread ({_format_value(standing.spread, metric)}): a tie"
        margins.append(f"{data.label(column)}: {lead} ahead of {standing.runner_up}, {judged}")
    if len(data.columns) > 4:  # a long suite: count instead of listing every workload
        wins = defaultdict(int)
        for standing in table.values():
            wins[standing.best] += 1
        order = sorted(wins.items(), key=lambda kv: (-kv[1], kv[0]))
        won = ["most workloads led: " + ", ".join(f"{o} {n}" for o, n in order) + f" of {len(data.columns)}"]
        clear = sum(1 for s in table.values() if s.significant)
        margins = [f"{clear} of {len(table)} leads exceed the seeds' spread; the others are ties or single-seed"]
    return ["Winner: " + "; ".join(won) + ".", "Margin: " + "; ".join(margins) + ".", budget_line(data)]


def summary_text(data: ReportData) -> str:
    """What the command line prints: the verdict, the main table, who reached the target."""
    parts = verdict(data) + ["", main_table(data)]
    note = _identical_note(data)
    if note:
        parts += ["", note]
    if targets(data):
        parts += ["", "Time to target:", "", target_table(data)]
    return "\n".join(parts)


def _identical_note(data: ReportData) -> str:
    notes = []
    for a, b in identical_rows(data):
        why = (" DFW's step is ALI-G's (Berrada et al., ICML 2020: the same update for the hinge and "
               "cross-entropy settings run here), so equal rows are expected, not a win to share."
               if {a, b} == {"alig", "dfw"} else "")
        notes.append(f"`{a}` and `{b}` give identical numbers on every workload they share.{why}")
    return " ".join(notes)


def render_markdown(data: ReportData, plots: Sequence[str] = (), records: Sequence[Dict[str, Any]] = ()) -> str:
    lines = verdict(data)
    windows = step_size_windows(records, data.metrics) if records else {}
    reference = deepobs_reference_table(data)
    diverged = sum(c.diverged for c in data.cells.values())
    parts = [
        "# polyak benchmark report",
        "",
        *[f"**{line.split(':', 1)[0]}:**{line.split(':', 1)[1]}" if ":" in line else line for line in lines],
        "",
        f"{data.trials} finished trials. Each cell: the reported metric of the setting the selection rule "
        "below picks (mean ± std over seeds): test accuracy (%) or test loss at the epoch the rule reads, or the "
        "final training loss (matrix factorisation). Bold: a lead larger than the seeds' spread (the larger "
        "std of leader and runner-up); with one seed nothing is bold. A trial diverged when its loss went "
        "non-finite or above 100 x its initial validation loss; diverged trials count as failures and stay out "
        "of the plots' scales.",
        "",
        main_table(data),
        "",
    ]
    note = _identical_note(data)
    if note:
        parts += [note, ""]
    if diverged:
        parts += [f"{diverged} selected-setting trial(s) diverged (marked in the table and with x in the plots).",
                  ""]
    parts += [
        *([] if not reference else ["## Against DeepOBS's published baselines", "", reference, ""]),
        "## Time to target",
        "",
        "The first evaluated epoch at which the reported test metric reaches the workload's target: its declared "
        "target (mnist-mlp: 97% test accuracy, AlgoPerf's MNIST target), else the best tuned baseline's final "
        "value (AlgoPerf's rule). Updates = epochs x batches per epoch; seconds = training time only.",
        f"Settings: those the main table selected ({data.rule} rule).",
        "",
        target_table(data),
        "",
        "## Step-size window",
        "",
        "How far the step-size hyperparameter can be off: the range of grid values around the best whose result "
        "stays within 1 point of the best accuracy (1% of the best loss), as a multiplicative width.",
        "Each step size's result: its best setting of the other hyperparameters, each run read at its best "
        "validation epoch.",
        "",
        window_table(data, windows),
        "",
        "## Time per step relative to the baseline and passes per step",
        "",
        "Median wall time of one step (forward, backward and update; no data loading, no evaluation) divided by "
        "the baseline's (the suite's time baseline, SGD unless it names another) on the same workload.",
        "",
        _time_table(data),
        "",
        "## Selected hyperparameters",
        "",
        _settings_table(data),
        "",
    ]
    shares = _step_share_table(data)
    if shares:
        parts += ["## Polyak steps: clipped at max_lr, exactly 0", "",
                  "Share of all steps (every step counted, first param group). Clipped at max_lr in nearly every "
                  "step: the method acted as SGD (with its momentum) at lr = max_lr. Exactly 0: the loss was at "
                  "or below its lower bound / estimated optimal value, so the step did not move.", "",
                  shares, ""]
    if data.failures:
        parts += ["## Failed trials", "", "Not in the tables; rerunning the sweep retries them.", "",
                  "| workload | optimizer | hyperparameters | seed | error |", "|---|---|---|---|---|"]
        for record in data.failures:
            config = record["config"]
            error = str(record.get("error") or "").replace("|", "\\|").replace("\n", " ")
            parts.append(f"| {config['workload']} | {config['optimizer']} | {config.get('hyperparameters')} | "
                         f"{config['seed']} | {error} |")
        parts.append("")
    if plots:
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(parts)


# --------------------------------------------------------------------- plots
#: optimizers per panel: one qualitative palette of 10 colours, never reused within a panel
PANEL_SIZE = 10


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")  # tight: legends outside the axes stay in
    _plt().close(fig)
    return name


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _mean_curve(records: List[Dict[str, Any]], key) -> Tuple[List[int], List[float]]:
    per_epoch: Dict[int, List[float]] = defaultdict(list)
    for record in records:
        for entry in record.get("epochs") or []:
            value = key(entry)
            if isinstance(value, (int, float)) and math.isfinite(value):
                per_epoch[entry["epoch"]].append(value)
    epochs = sorted(per_epoch)
    return epochs, [statistics.fmean(per_epoch[e]) for e in epochs]


def _panels(optimizers: Sequence[str]) -> List[List[str]]:
    """Optimizers split into panels of at most PANEL_SIZE (each panel its own 10 colours)."""
    return [list(optimizers[i:i + PANEL_SIZE]) for i in range(0, len(optimizers), PANEL_SIZE)] or [[]]


def _colour(plt, index: int):
    return plt.cm.tab10(index % 10)


def _legend_outside(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _limits(ax, values: List[float], log: bool) -> None:
    """Axis limits from the finite values of trials that did not diverge."""
    values = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not values:
        return
    low, high = min(values), max(values)
    if log:
        ax.set_ylim(low / 1.5, high * 1.5)
    else:
        pad = 0.05 * (high - low or abs(high) or 1.0)
        ax.set_ylim(low - pad, high + pad)


def plot_curves(data: ReportData, out_dir: Path) -> List[str]:
    """Training loss and validation metric per epoch of the selected settings (mean over seeds),
    one row of panels per group of at most 10 optimizers; diverged trials dashed, ending in x,
    and left out of the axis limits."""
    from .deepobs_baselines import curves_for

    plt = _plt()
    written = []
    for column in data.columns:
        metric = data.metrics[column]
        references = curves_for(column[0])
        # with DeepOBS reference curves (test metrics) the right panel shows our test metric too
        split = "test" if references else "val"
        groups = [[o for o in g if (column, o) in data.cells] for g in _panels(data.optimizers)]
        groups = [g for g in groups if g] or [[]]
        fig, axes = plt.subplots(len(groups), 2, figsize=(12, 3.8 * len(groups)), squeeze=False)
        for row, group in enumerate(groups):
            ax_loss, ax_val = axes[row]
            kept_loss, kept_val = [], []
            for index, optimizer in enumerate(group):
                cell = data.cells[(column, optimizer)]
                bad = cell.diverged > 0
                style = {"color": _colour(plt, index), "linestyle": "--" if bad else "-"}
                label = optimizer + (" (diverged)" if bad else "")
                for ax, key, kept in ((ax_loss, lambda e: e.get("train_loss"), kept_loss),
                                      (ax_val, lambda e: (e.get(split) or {}).get(metric.key), kept_val)):
                    epochs, values = _mean_curve(cell.records, key)
                    if not epochs:
                        continue
                    ax.plot(epochs, values, label=label, **style)
                    if bad:
                        ax.plot(epochs[-1:], values[-1:], marker="x", markersize=9, **style)
                    else:  # the scale follows training, not the untrained epoch 0
                        kept.extend(v for e, v in zip(epochs, values) if e >= 1)
            last = max((len(c.records[0].get("epochs") or []) for c in data.cells.values() if c.records), default=1)
            for ref, style in zip(references, (":", "-.", "--")):  # DeepOBS's own runs, in greys
                shown = list(ref.values[:last])
                ax_val.plot(range(len(shown)), shown, color="0.4", linestyle=style, linewidth=1.4,
                            label=f"DeepOBS {ref.optimizer} (mean of {len(ref.seeds)} seeds"
                            + (", band ± 1 std)" if ref.spread is not None else ")"))
                if ref.spread is not None:
                    spread = ref.spread[:last]
                    ax_val.fill_between(range(len(shown)), [m - s for m, s in zip(shown, spread)],
                                        [m + s for m, s in zip(shown, spread)], color="0.4", alpha=0.12, linewidth=0)
                kept_val.extend(shown[1:])  # the axis follows the means; a wide band may be cut
            ax_loss.set_yscale("log")
            _limits(ax_loss, kept_loss, log=True)
            if not metric.higher_is_better:  # a loss: log scale, so the floor region stays readable
                ax_val.set_yscale("log")
            _limits(ax_val, kept_val, log=not metric.higher_is_better)
            ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean, log)",
                        title=f"{data.label(column)}: training loss")
            where = "test" if references else "validation"
            ax_val.set(xlabel="epoch", ylabel=f"{where} {metric.key}", title=f"{data.label(column)}: {where} {metric.key}"
                       + (" (grey: DeepOBS's baselines)" if references else ""))
            _legend_outside(ax_val)
        written.append(_save(fig, out_dir, f"curves_{_safe(column[0])}_{_safe(column[1])}.png"))
    return written


def plot_step_sizes(data: ReportData, out_dir: Path) -> List[str]:
    """Step-size traces of the selected settings (first seed) on a symlog axis, so that
    steps of exactly 0 (a Polyak step at or below its lower bound) lie visibly on the 0
    line; the legend gives each optimizer's share of zero steps."""
    plt = _plt()
    written = []
    for column in data.columns:
        groups = [[o for o in g if (column, o) in data.cells and data.cells[(column, o)].records]
                  for g in _panels(data.optimizers)]
        groups = [g for g in groups if g] or [[]]
        fig, axes = plt.subplots(len(groups), 1, figsize=(9, 3.8 * len(groups)), squeeze=False)
        for row, group in enumerate(groups):
            ax = axes[row][0]
            positive = []
            for index, optimizer in enumerate(group):
                trace = data.cells[(column, optimizer)].records[0].get("step_size_trace") or {}
                points = [(s, v) for s, v in zip(trace.get("steps", []), trace.get("values", [])) if v is not None]
                if not points:
                    continue
                zeros = sum(v == 0 for _, v in points) / len(points)
                positive += [v for _, v in points if v > 0]
                label = optimizer + (f" ({100 * zeros:.0f}% zero)" if zeros else "")
                ax.plot([s for s, _ in points], [v for _, v in points], label=label, color=_colour(plt, index))
            linthresh = min(positive) if positive else 1e-6
            ax.set_yscale("symlog", linthresh=linthresh)
            ax.axhline(0.0, color="0.6", linewidth=0.8)
            ax.set(xlabel="step", ylabel=f"step size (symlog; linear below {linthresh:.2g})",
                   title=f"{data.label(column)}: step sizes (first seed; 0 = no step)")
            _legend_outside(ax)
        written.append(_save(fig, out_dir, f"step_sizes_{_safe(column[0])}_{_safe(column[1])}.png"))
    return written


def performance_ratios(data: ReportData) -> Dict[str, List[float]]:
    """Dolan-Moré ratios r[p, s] = cost[p, s] / min_s cost[p, s] per optimizer
    (inf where it diverged or did not run). Cost: test error (%) or the loss reported."""
    ratios: Dict[str, List[float]] = {o: [] for o in data.optimizers}
    for column in data.columns:
        metric = data.metrics[column]
        costs = {}
        for optimizer in data.optimizers:
            cell = data.cells.get((column, optimizer))
            mean = None if cell is None else cell.mean
            if mean is None:
                costs[optimizer] = math.inf
            else:
                costs[optimizer] = metric.scale - mean if metric.higher_is_better else mean
        finite = [c for c in costs.values() if math.isfinite(c)]
        if not finite:
            continue
        # a floor keeps ratios finite when the best cost is exactly 0 (perfect accuracy, zero loss)
        best = max(min(finite), 1e-12)
        for optimizer, cost in costs.items():
            ratios[optimizer].append(max(cost, 1e-12) / best if math.isfinite(cost) else math.inf)
    return ratios


#: the right end of the final-metric performance profile's axis
PROFILE_TAU_MAX = 100.0


def _profile(plt, ratios: Dict[str, List[float]], tau_max: float, xlabel: str, ylabel: str, title: str):
    taus = [tau_max ** (i / 200) for i in range(201)]
    fig, axes = plt.subplots(1, len(_panels(list(ratios))), figsize=(8 * len(_panels(list(ratios))), 4.5),
                             squeeze=False)
    for ax, group in zip(axes[0], _panels(list(ratios))):
        for index, optimizer in enumerate(group):
            rs = ratios[optimizer]
            if rs:
                # tied optimizers draw the same steps: a small offset each keeps every line visible
                offset = 0.008 * (index - (len(group) - 1) / 2)
                ax.step(taus, [sum(r <= t for r in rs) / len(rs) + offset for t in taus], where="post",
                        label=optimizer, color=_colour(plt, index))
        ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(-0.06, 1.06), xlim=(1.0, tau_max))
        ax.set_title(f"{title}\n(lines offset slightly so that ties stay visible)", fontsize=10)
        _legend_outside(ax)
    return fig


def plot_performance_profile(data: ReportData, out_dir: Path) -> List[str]:
    plt = _plt()
    written = []
    ratios = performance_ratios(data)
    finite = [r for rs in ratios.values() for r in rs if math.isfinite(r)]
    if finite:
        # Ratios past PROFILE_TAU_MAX count as "not solved": one diverged run (a loss ratio of
        # 1e30) must not stretch the axis until every other curve is a vertical line at 1.
        tau_max = min(PROFILE_TAU_MAX, max(2.0, max(finite) * 1.1))
        fig = _profile(plt, ratios, tau_max,
                       f"τ: the optimizer's cost ÷ the best optimizer's on the workload (cost: test error % or "
                       f"loss; beyond {tau_max:g}: not solved)",
                       "fraction of workloads with cost ≤ τ × best", "Performance profile: final result")
        written.append(_save(fig, out_dir, "performance_profile.png"))
    ttt = time_to_target_ratios(data)
    if any(math.isfinite(r) for rs in ttt.values() for r in rs):
        fig = _profile(plt, ttt, TTT_TAU_MAX,
                       f"τ: updates to reach the workload's target ÷ the fastest optimizer's (cut at {TTT_TAU_MAX:g})",
                       "fraction of workloads reached within τ × fastest", "Performance profile: time to target")
        written.append(_save(fig, out_dir, "time_to_target_profile.png"))
    return written


def write_report(results_dir: Union[str, Path] = "runs", *, plots: bool = True,
                 out_dir: Optional[Union[str, Path]] = None, rule: Optional[str] = None) -> Tuple[Path, ReportData]:
    """Write ``report.md`` and the PNGs into ``out_dir`` (default: ``results_dir``);
    returns the path and the data. Reads the JSON records without touching the results
    directory's index or files, so it is safe beside a running sweep and on a read-only disk.
    rule: the selection rule (polyak.bench.protocol.RULES; None: the records' suite's)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist; run `polyak bench run` first "
                                "or point --results to a results directory")
    out = Path(out_dir) if out_dir is not None else results_dir
    check_writable(out, "the report writes report.md and its plots there; pass --out DIR to write them elsewhere")
    with Store(results_dir, readonly=True) as store:
        records = store.records()
    data = collect(records, rule)
    written: List[str] = []
    if plots and data.columns:
        written += plot_curves(data, out)
        written += plot_step_sizes(data, out)
        written += plot_performance_profile(data, out)
    path = out / "report.md"
    done = [_mark_divergence(r) for r in records if r.get("status") in DONE_STATUSES]
    path.write_text(render_markdown(data, written, done), encoding="utf-8")
    return path, data

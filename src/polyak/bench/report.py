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
from .records import Metric, get_metric
from .store import DONE_STATUSES, Store, check_writable

__all__ = ["Cell", "ReportData", "collect", "render_markdown", "write_report", "main_table"]

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

    def label(self, column: Tuple[str, str]) -> str:
        sizes = {size for _, size in self.columns}
        return column[0] if len(sizes) == 1 else f"{column[0]} ({column[1]})"


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
    records = [r for r in records if r.get("status") in DONE_STATUSES]
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
    columns = sorted(metrics)
    optimizers = sorted({opt for _, opt in cells}, key=lambda o: (o != baseline, o))
    mean_passes = {opt: (statistics.fmean(f for f, _ in ps), statistics.fmean(b for _, b in ps)) for opt, ps in passes.items()}
    max_jobs = max([int((r.get("sweep") or {}).get("jobs") or 1) for r in records] + [1])
    return ReportData(columns, metrics, optimizers, cells, time_ratio, baseline_time, mean_passes, len(records),
                      failures, max_jobs, rule, records)


# --------------------------------------------------------------------- text
def _format_value(value: float, metric: Metric) -> str:
    return f"{value:.2f}" if metric.name == "accuracy" else f"{value:.3g}"


def _cell_text(cell: Optional[Cell], metric: Metric) -> str:
    if cell is None:
        return "-"
    if cell.mean is None:
        return "diverged"
    text = _format_value(cell.mean, metric)
    if len(cell.values) > 1:
        text += f" ± {_format_value(cell.std, metric)}"
    # accuracy workloads show the other epoch too: best-validation and final-epoch test accuracy
    label, other = ("final", cell.final_values) if rule_of(cell) == "validation" else ("best-val", cell.best_values)
    if metric.name == "accuracy" and other:
        text += f" ({label} {_format_value(statistics.fmean(other), metric)})"
    if cell.diverged:
        text += f" ({cell.diverged}/{cell.seeds} diverged)"
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
    best = {}
    for column in data.columns:
        candidates = [(data.cells[(column, o)].mean, o) for o in data.optimizers
                      if (column, o) in data.cells and data.cells[(column, o)].mean is not None]
        if not candidates:
            best[column] = None
            continue
        best[column] = max(candidates, key=lambda c: data.metrics[column].key(c[0]))[1]
    return best


def main_table(data: ReportData) -> str:
    """The main table as GitHub markdown (best per workload in bold)."""
    best = _best_per_column(data)
    header = ["optimizer"] + [
        f"{data.label(c)} {data.metrics[c].label}"
        for c in data.columns
    ]
    marks = plugin_marks(data.records)
    header = header[:1] + [h + (f" [{marks[('workload', c[0])]}]" if ("workload", c[0]) in marks else "")
                           for h, c in zip(header[1:], data.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for optimizer in data.optimizers:
        row = [optimizer + (f" [{marks[('optimizer', optimizer)]}]" if ("optimizer", optimizer) in marks else "")]
        for column in data.columns:
            text = _cell_text(data.cells.get((column, optimizer)), data.metrics[column])
            row.append(f"**{text}**" if best[column] == optimizer else text)
        lines.append("| " + " | ".join(row) + " |")
    return _legend(data) + "\n\n" + "\n".join(lines)


def _hyper_text(hyper: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(hyper.items())) or "defaults"


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
    groups: Dict[Tuple[Tuple[str, str], str, str], List[Dict[str, Any]]] = defaultdict(list)
    for record in data.records:
        config = record["config"]
        param = (record.get("optimizer") or {}).get("step_size_param")
        step = (config.get("hyperparameters") or {}).get(param, "default") if param else "-"
        label = f"{param}={step}" if param else "-"
        groups[((config["workload"], config["size"]), config["optimizer"], label)].append(record)
    lines = ["| workload | optimizer | step size | steps clipped at max_lr | steps exactly 0 | steps counted |",
             "|---|---|---|---|---|---|"]
    for (column, optimizer, step), records in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        shares = step_shares(records)
        if shares is None:
            continue
        clipped, zero, steps = shares
        lines.append(f"| {data.label(column)} | {optimizer} | {step} | {100 * clipped:.1f}% | {100 * zero:.1f}% | "
                     f"{steps} |")
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


def render_markdown(data: ReportData, plots: Sequence[str] = ()) -> str:
    parts = [
        "# polyak benchmark report",
        "",
        f"{data.trials} finished trials. Each cell: the test metric of the setting the selection rule picks "
        "(mean ± std over seeds); loss workloads give the final training loss. Best per workload in bold.",
        "",
        main_table(data),
        "",
        "## Time per step relative to SGD and passes per step",
        "",
        "Median wall time of one step (forward, backward and update; no data loading, no evaluation) divided by "
        "SGD's on the same workload in these results.",
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
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=100)
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


def _line_style(plt, index: int) -> Dict[str, Any]:
    """One look per optimizer, the same in every plot: 20 colours, then dashed."""
    return {"color": plt.cm.tab20(index % 20), "linestyle": "-" if index < 20 else "--"}


def plot_curves(data: ReportData, out_dir: Path) -> List[str]:
    plt = _plt()
    written = []
    for column in data.columns:
        metric = data.metrics[column].name
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
        for index, optimizer in enumerate(data.optimizers):
            cell = data.cells.get((column, optimizer))
            if cell is None:
                continue
            epochs, losses = _mean_curve(cell.records, lambda e: e.get("train_loss"))
            if epochs:
                ax_loss.plot(epochs, losses, label=optimizer, **_line_style(plt, index))
            epochs, vals = _mean_curve(cell.records, lambda e: (e.get("val") or {}).get(metric))
            if epochs:
                ax_val.plot(epochs, vals, label=optimizer, **_line_style(plt, index))
        ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean)", title=f"{data.label(column)}: training loss")
        ax_loss.set_yscale("log")
        ax_val.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"{data.label(column)}: validation {metric}")
        ax_val.legend(fontsize=6, ncol=2)
        written.append(_save(fig, out_dir, f"curves_{_safe(column[0])}_{_safe(column[1])}.png"))
    return written


def plot_step_sizes(data: ReportData, out_dir: Path) -> List[str]:
    """Step-size traces of the selected settings (first seed), log scale: a step of
    exactly 0 (a Polyak step at or below the lower bound) is not drawn."""
    plt = _plt()
    written = []
    for column in data.columns:
        fig, ax = plt.subplots(figsize=(7, 4))
        for index, optimizer in enumerate(data.optimizers):
            cell = data.cells.get((column, optimizer))
            if cell is None or not cell.records:
                continue
            trace = cell.records[0].get("step_size_trace") or {}
            points = [(s, v) for s, v in zip(trace.get("steps", []), trace.get("values", [])) if v is not None and v > 0]
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], label=optimizer, **_line_style(plt, index))
        ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="step size (first param group)", title=f"{data.label(column)}: step sizes")
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir, f"step_sizes_{_safe(column[0])}_{_safe(column[1])}.png"))
    return written


def performance_ratios(data: ReportData) -> Dict[str, List[float]]:
    """Dolan-Moré ratios r[p, s] = cost[p, s] / min_s cost[p, s] per optimizer
    (inf where it diverged or did not run). Cost: test error (%) or final training loss."""
    ratios: Dict[str, List[float]] = {o: [] for o in data.optimizers}
    for column in data.columns:
        costs = {}
        for optimizer in data.optimizers:
            cell = data.cells.get((column, optimizer))
            mean = None if cell is None else cell.mean
            if mean is None:
                costs[optimizer] = math.inf
            else:
                costs[optimizer] = 100.0 - mean if data.metrics[column].name == "accuracy" else mean
        finite = [c for c in costs.values() if math.isfinite(c)]
        if not finite:
            continue
        # a floor keeps ratios finite when the best cost is exactly 0 (perfect accuracy, zero loss)
        best = max(min(finite), 1e-12)
        for optimizer, cost in costs.items():
            ratios[optimizer].append(max(cost, 1e-12) / best if math.isfinite(cost) else math.inf)
    return ratios


#: the right end of the performance profile's axis
PROFILE_TAU_MAX = 100.0


def plot_performance_profile(data: ReportData, out_dir: Path) -> List[str]:
    plt = _plt()
    ratios = performance_ratios(data)
    finite = [r for rs in ratios.values() for r in rs if math.isfinite(r)]
    if not finite:
        return []
    # Ratios past PROFILE_TAU_MAX count as "not solved": one diverged run (a loss ratio of
    # 1e30) must not stretch the axis until every other curve is a vertical line at 1.
    tau_max = min(PROFILE_TAU_MAX, max(2.0, max(finite) * 1.1))
    taus = [tau_max ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, (optimizer, rs) in enumerate(ratios.items()):
        if not rs:
            continue
        ax.step(taus, [sum(r <= t for r in rs) / len(rs) for t in taus], where="post", label=optimizer,
                **_line_style(plt, index))
    ax.set_xscale("log")
    ax.set(xlabel=f"tau (ratio to the best optimizer on a workload; beyond {tau_max:g}: not solved)",
           ylabel="fraction of workloads", title="Performance profile (Dolan-Moré)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    return [_save(fig, out_dir, "performance_profile.png")]


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
        data = collect(store.records(), rule)
    results_dir = out
    written: List[str] = []
    if plots and data.columns:
        written += plot_curves(data, results_dir)
        written += plot_step_sizes(data, results_dir)
        written += plot_performance_profile(data, results_dir)
    path = results_dir / "report.md"
    path.write_text(render_markdown(data, written), encoding="utf-8")
    return path, data

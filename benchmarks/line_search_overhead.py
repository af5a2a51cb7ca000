"""Wall time per update of the line searches (PAL, LABPAL, SLS) against torch SGD, in one run.

Every optimizer trains its own copy of the same small CNN (BatchNorm and dropout,
so the closure's random-state replay and BatchNorm freezing are exercised) on the
same sequence of sklearn digits batches. Rounds alternate between optimizers so
drift of a shared, noisy machine hits all alike; each call is timed separately.

Reported per optimizer:
- time per update: the calls' total time / the updates they made, per round,
  median over rounds; ratio vs torch.optim.SGD (plain loop: zero_grad, forward,
  backward, step) measured in the same rounds;
- forward and backward passes per update, from ``opt.cost``;
- the "pass bound": what the passes alone would cost, (t_fb + (F - 1) t_f) / t_sgd
  with t_fb an SGD update and t_f a no-grad forward of the same batch, so that
  ratio / pass bound is the optimizer's own overhead;
- LABPAL measures once per ``reuse_steps`` (1000) updates plus once when the update
  count reaches ``untrusted_updates`` (400); a run of a few thousand calls sees more
  measurements per update than a long run, so the headline for LABPAL is the
  steady-state amortisation (reuse_steps x train call + one measurement cycle) /
  (reuse_steps + 1), next to the raw in-run figure.

    python benchmarks/line_search_overhead.py     # writes benchmarks/results/line_search_overhead.{json,md}
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import polyak
from polyak._base import PolyakBase


def load_digits_tensors():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.1), nn.Linear(16 * 16, 10),
    )


class Runner:
    """One optimizer on its own model copy; ``call(x, y)`` makes one step() call.

    style: "closure" (line searches), "loop" (torch: zero_grad, forward, backward,
    step), or the pass timers "forward+backward" and "no-grad forward" (no optimizer).
    """

    def __init__(self, name, model, build, style):
        self.name = name
        self.model = model
        self.opt = build(model.parameters()) if build is not None else None
        self.style = style
        self.calls = 0
        self.call_times = []     # (round, wall seconds, updates made, forwards, backwards, cpu seconds)

    def updates(self):
        if isinstance(self.opt, PolyakBase):
            return self.opt.global_state["step"]
        return self.calls

    def call(self, x, y, round_index):
        model, opt = self.model, self.opt
        before_updates = self.updates()
        before_cost = opt.cost if hasattr(opt, "cost") else None
        c0, t0 = time.thread_time(), time.perf_counter()
        if self.style == "closure":
            opt.step(lambda: F.cross_entropy(model(x), y))
        elif self.style == "loop":
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        elif self.style == "forward+backward":
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                F.cross_entropy(model(x), y)
        elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
        self.calls += 1
        made = self.updates() - before_updates
        if before_cost is None:
            fwd, bwd = 1, 1
        else:
            fwd = opt.cost["forward"] - before_cost["forward"]
            bwd = opt.cost["backward"] - before_cost["backward"]
        self.call_times.append((round_index, elapsed, made, fwd, bwd, cpu))


def builders(n_batches_per_epoch, total_calls):
    out = {
        "sgd (baseline)": (lambda p: torch.optim.SGD(p, lr=0.05), "loop"),
        "pal": (lambda p: polyak.PAL(p), "closure"),
        "sls-armijo": (lambda p: polyak.SLS(p, n_batches_per_epoch=n_batches_per_epoch), "closure"),
        "sls-goldstein": (lambda p: polyak.create("sls-goldstein", p, n_batches_per_epoch=n_batches_per_epoch), "closure"),
        "sls-polyak (momentum 0.6)": (
            lambda p: polyak.create("sls-polyak", p, n_batches_per_epoch=n_batches_per_epoch), "closure"),
        PASS_TIMERS[0]: (None, PASS_TIMERS[0]),
        PASS_TIMERS[1]: (None, PASS_TIMERS[1]),
    }
    if hasattr(polyak, "LABPAL"):
        # total_steps far beyond this run keeps k = 1 inference per update (the schedule's first phase).
        for mode in ("nsgd", "sgd"):
            out[f"labpal-{mode}"] = (
                lambda p, mode=mode: polyak.LABPAL(p, mode=mode, total_steps=100 * total_calls), "closure")
    return out


PASS_TIMERS = ("forward+backward", "no-grad forward")


def summarise(runner, rounds):
    per_round, per_round_cpu = [], []
    for r in range(rounds):
        rows = [c for c in runner.call_times if c[0] == r]
        updates = sum(c[2] for c in rows)
        if updates:
            per_round.append(sum(c[1] for c in rows) / updates)
            per_round_cpu.append(sum(c[5] for c in rows) / updates)
    all_rows = runner.call_times
    updates = sum(c[2] for c in all_rows)
    forwards = sum(c[3] for c in all_rows)
    backwards = sum(c[4] for c in all_rows)
    return {
        "calls": len(all_rows),
        "updates": updates,
        "seconds_per_update": statistics.median(per_round),
        "cpu_seconds_per_update": statistics.median(per_round_cpu),
        "forwards_per_update": forwards / updates,
        "backwards_per_update": backwards / updates,
    }


def labpal_steady_state(runner, rounds):
    """(reuse_steps x train-call time + one measurement cycle) / (reuse_steps + 1).

    The train-call time is the same statistic as every other row (median over rounds
    of the round's mean), taken over the calls that were plain updates.
    """
    opt = runner.opt
    is_train = lambda c: (c[2], c[3], c[4]) == (1, 1, 1)  # one update, one forward, one backward
    measurement_calls = [c for c in runner.call_times if not is_train(c)]
    cycles = sum(c[2] for c in measurement_calls)  # each measurement ends with exactly one update
    per_round, per_round_cpu = [], []
    for r in range(rounds):
        train = [c for c in runner.call_times if c[0] == r and is_train(c)]
        if train:
            per_round.append(sum(c[1] for c in train) / len(train))
            per_round_cpu.append(sum(c[5] for c in train) / len(train))
    if not per_round or cycles == 0:
        return None
    train_seconds, train_cpu = statistics.median(per_round), statistics.median(per_round_cpu)
    cycle_seconds = sum(c[1] for c in measurement_calls) / cycles
    cycle_cpu_seconds = sum(c[5] for c in measurement_calls) / cycles
    cycle_forwards = sum(c[3] for c in measurement_calls) / cycles
    cycle_backwards = sum(c[4] for c in measurement_calls) / cycles
    reuse = opt.reuse_steps
    return {
        "measurements_in_run": cycles,
        "train_call_seconds": train_seconds,
        "measurement_cycle_seconds": cycle_seconds,
        "calls_per_measurement": len(measurement_calls) / cycles,
        "seconds_per_update": (reuse * train_seconds + cycle_seconds) / (reuse + 1),
        "cpu_seconds_per_update": (reuse * train_cpu + cycle_cpu_seconds) / (reuse + 1),
        "forwards_per_update": (reuse + cycle_forwards) / (reuse + 1),
        "backwards_per_update": (reuse + cycle_backwards) / (reuse + 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--calls-per-round", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x_all, y_all = load_digits_tensors()
    n = len(y_all)
    total_calls = args.rounds * args.calls_per_round
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(total_calls + 20):
        idx = torch.randint(0, n, (args.batch_size,), generator=gen)
        batches.append((x_all[idx], y_all[idx]))
    n_batches_per_epoch = max(1, n // args.batch_size)

    base_model = make_model()
    runners = {name: Runner(name, copy.deepcopy(base_model), build, style)
               for name, (build, style) in builders(n_batches_per_epoch, total_calls).items()}
    for runner in runners.values():  # warm-up (allocator, lazy state); not timed
        for x, y in batches[:20]:
            runner.call(x, y, round_index=-1)
        runner.call_times.clear()

    for r in range(args.rounds):
        for runner in runners.values():
            torch.manual_seed(1000 + r)  # same dropout stream for every optimizer
            start = 20 + r * args.calls_per_round
            for x, y in batches[start:start + args.calls_per_round]:
                runner.call(x, y, r)

    fb_timer = summarise(runners.pop(PASS_TIMERS[0]), args.rounds)
    f_timer = summarise(runners.pop(PASS_TIMERS[1]), args.rounds)
    t_fb, t_f = fb_timer["seconds_per_update"], f_timer["seconds_per_update"]
    cpu_fb, cpu_f = fb_timer["cpu_seconds_per_update"], f_timer["cpu_seconds_per_update"]
    results = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "polyak": polyak.__version__,
        "model": "CNN conv8-BN-conv16-pool-dropout-linear on 8x8 digits",
        "n_params": sum(p.numel() for p in base_model.parameters()),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "calls_per_round": args.calls_per_round,
        "forward_backward_seconds": t_fb,
        "nograd_forward_seconds": t_f,
        "forward_backward_cpu_seconds": cpu_fb,
        "nograd_forward_cpu_seconds": cpu_f,
        "labpal_present": hasattr(polyak, "LABPAL"),
        "rows": [],
    }
    sgd = summarise(runners["sgd (baseline)"], args.rounds)
    for name, runner in runners.items():
        row = {"optimizer": name, **summarise(runner, args.rounds)}
        row["ratio_vs_sgd"] = row["seconds_per_update"] / sgd["seconds_per_update"]
        row["cpu_ratio_vs_sgd"] = row["cpu_seconds_per_update"] / sgd["cpu_seconds_per_update"]
        if name.startswith("labpal"):
            steady = labpal_steady_state(runner, args.rounds)
            row["in_run"] = {k: row[k] for k in ("seconds_per_update", "ratio_vs_sgd", "forwards_per_update", "backwards_per_update")}
            if steady is not None:
                row["steady_state"] = steady
                row["seconds_per_update"] = steady["seconds_per_update"]
                row["ratio_vs_sgd"] = steady["seconds_per_update"] / sgd["seconds_per_update"]
                row["cpu_seconds_per_update"] = steady["cpu_seconds_per_update"]
                row["cpu_ratio_vs_sgd"] = steady["cpu_seconds_per_update"] / sgd["cpu_seconds_per_update"]
                row["forwards_per_update"] = steady["forwards_per_update"]
                row["backwards_per_update"] = steady["backwards_per_update"]
        extra_forwards = row["forwards_per_update"] - 1
        # CPU time: on a shared machine it is not inflated by other processes' load
        row["pass_bound"] = (row["backwards_per_update"] * cpu_fb + extra_forwards * cpu_f) / sgd["cpu_seconds_per_update"]
        row["overhead_over_pass_bound"] = row["cpu_ratio_vs_sgd"] / row["pass_bound"]
        results["rows"].append(row)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "line_search_overhead.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Line-search wall time per update relative to torch SGD\n",
        f"{results['model']} ({results['n_params']:,} parameters), batch {args.batch_size}, CPU "
        f"({results['machine']}), torch {results['torch']}, {results['threads']} thread(s); "
        f"{args.rounds} alternating rounds of {args.calls_per_round} step() calls per optimizer, "
        f"median over rounds of (round time / updates). One SGD update (forward+backward+step): "
        f"{sgd['seconds_per_update'] * 1e3:.2f} ms wall, {sgd['cpu_seconds_per_update'] * 1e3:.2f} ms CPU; "
        f"forward+backward alone {cpu_fb * 1e3:.2f} ms CPU; no-grad forward {cpu_f * 1e3:.2f} ms CPU.\n",
        "CPU = this thread's CPU time (time.thread_time), which other processes on a shared machine do not "
        "inflate; wall = time.perf_counter. pass bound = (backwards x t_fb + (forwards - 1) x t_f) / t_sgd in "
        "CPU time: what the passes alone cost; overhead = CPU ratio / pass bound.\n",
        "| optimizer | ms / update (wall) | ratio vs SGD (wall) | ratio vs SGD (CPU) | forwards / update | backwards / update | pass bound | overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['optimizer']} | {row['seconds_per_update'] * 1e3:.2f} | {row['ratio_vs_sgd']:.2f} | "
            f"{row['cpu_ratio_vs_sgd']:.2f} | {row['forwards_per_update']:.2f} | {row['backwards_per_update']:.2f} | "
            f"{row['pass_bound']:.2f} | {row['overhead_over_pass_bound']:.2f} |"
        )
    labpal_rows = [r for r in results["rows"] if "in_run" in r]
    if labpal_rows:
        lines.append("\nLABPAL rows are steady state (one measurement per reuse_steps = 1000 updates). In this run:\n")
        lines.append("| optimizer | measurements | ms / update in run | ratio in run | forwards / update in run | train call (ms) | measurement cycle (ms) |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in labpal_rows:
            s = r.get("steady_state", {})
            lines.append(
                f"| {r['optimizer']} | {s.get('measurements_in_run', 0)} | {r['in_run']['seconds_per_update'] * 1e3:.2f} | "
                f"{r['in_run']['ratio_vs_sgd']:.2f} | {r['in_run']['forwards_per_update']:.2f} | "
                f"{s.get('train_call_seconds', float('nan')) * 1e3:.2f} | {s.get('measurement_cycle_seconds', float('nan')) * 1e3:.1f} |"
            )
    else:
        lines.append("\nLABPAL was not present when this ran (polyak.LABPAL missing).")
    text = "\n".join(lines) + "\n"
    (out / "line_search_overhead.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

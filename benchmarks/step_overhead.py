"""Step time of the Polyak-step optimizers against torch SGD, eager, compiled and fused, in one run.

For each model size every optimizer steps on the SAME parameters and gradients.
Each round times every candidate and both baselines, torch.optim.SGD(momentum=0.9)
with foreach=True and with fused=True, starting each round at a different candidate;
a candidate's ratio is the median over rounds of its time divided by the baseline's
time in the same round, so drift of a shared machine cancels in the ratio.

Routes per optimizer:
- eager:    the default multi-tensor (foreach) step;
- compiled: ``torch.compile(opt.step)`` of that step;
- fused:    ``fused=True``: the parameter update as one compiled loop per tensor
            (polyak._fused), the rest of the step eager.
ALI-G+ runs with the paper's weight decay 1e-4, which costs one more pass over the
weights in the unfused step: its rows are also divided by torch SGD doing the same work
(weight_decay=1e-4, the "same-work" columns). torch's foreach SGD pays more than that
for its coupled decay (a new gradient list each step); its fused SGD pays nothing.
"||g||^2 alone" times the one read of the gradients that every Polyak step needs
before it can update anything: fused SGD plus it is the floor of a fused Polyak step
with momentum; "fused momentum update alone" is the compiled update without it.

    python benchmarks/step_overhead.py                 # writes benchmarks/results/step_overhead.{json,md}
    python benchmarks/step_overhead.py --device cuda --tag h100
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import polyak
from polyak import functional as F
from polyak._fused import fused_unsupported_reason

SIZES = {
    # name: parameter shapes (a ResNet-like mix of weights and small vectors)
    "82K": [(64, 3, 3, 3), (64,), (64,), (128, 64, 3, 3), (128,), (128,), (10, 128), (10,)] + [(16, 16, 3, 3)] * 2,
    "12M": [(512, 512, 3, 3)] * 4 + [(256, 256, 3, 3)] * 4 + [(512,)] * 16 + [(1000, 512), (1000,)],
}
BASELINES = ("SGD momentum 0.9, foreach", "SGD momentum 0.9, fused")
WD = 1e-4   # ALI-G+'s weight decay (its paper's)
WD_BASELINES = ("SGD momentum 0.9, wd 1e-4, foreach", "SGD momentum 0.9, wd 1e-4, fused")
# fused/compiled against fused SGD, eager against foreach SGD (issue 7, item 4), at the large size
TARGETS = {"fused": (1.25, 1), "compiled": (1.25, 1), "eager": (1.5, 0)}


def make_params(shapes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
        p.grad = torch.randn(shape, generator=gen).to(device) * 1e-2
        params.append(p)
    return params


def polyak_optimizers(params, device):
    """(name, factory(**route options), step kwargs, weight decay) for each optimizer measured."""
    batch = 128
    loss = torch.tensor(1.0, device=device)
    per_sample = torch.rand(batch, device=device) + 0.5
    index = torch.arange(batch, device=device)
    return [
        ("ALI-G, no momentum", lambda **kw: polyak.ALIG(params, max_lr=1e-6, **kw), {"loss": loss}, 0.0),
        ("ALI-G, momentum 0.9", lambda **kw: polyak.ALIG(params, max_lr=1e-6, momentum=0.9, **kw), {"loss": loss},
         0.0),
        ("ALI-G+, momentum 0.9, wd 1e-4", lambda **kw: polyak.ALIGPlus(
            params, max_lr=1e-6, num_samples=batch * 10, epochs=10, K=5, weight_decay=WD, momentum=0.9, **kw),
         {"loss": per_sample, "index": index}, WD),
        ("SPS constant", lambda **kw: polyak.SPS(params, c=0.5, eta_max=1e-6, mode="constant", **kw), {"loss": loss},
         0.0),
    ]


def candidates(params, device):
    """name -> (route, zero-argument step, weight decay). All see the same gradients."""
    out = {}
    fused_sgd_ok = device.type == "cpu" or device.type == "cuda"
    for names, wd in ((BASELINES, 0.0), (WD_BASELINES, WD)):
        out[names[0]] = ("baseline", torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=wd,
                                                     foreach=True).step, wd)
        if fused_sgd_ok:
            out[names[1]] = ("baseline", torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=wd,
                                                         fused=True).step, wd)
    grads = [p.grad for p in params]
    out["||g||^2 alone"] = ("part", lambda: F.global_sq_norm(grads), 0.0)
    if hasattr(torch, "_foreach_powsum"):  # what global_sq_norm used before its BLAS-dot route
        out["||g||^2 by torch._foreach_powsum"] = (
            "part", lambda: torch.stack(torch._foreach_powsum(grads, 2)).sum(), 0.0)
    fused_reason = fused_unsupported_reason(device)
    if fused_reason is None:
        buffers = [torch.zeros_like(p) for p in params]
        out["fused momentum update alone"] = (
            "part", lambda: F.alig_update_(params, grads, buffers, 1e-6, 0.9, fused=True), 0.0)
    for name, factory, kwargs, wd in polyak_optimizers(params, device):
        routes = {"eager": factory(), "compiled": factory()}
        if fused_reason is None and "fused" in inspect.signature(type(routes["eager"])).parameters:
            routes["fused"] = factory(fused=True)
        for route, opt in routes.items():
            step = torch.compile(opt.step) if route == "compiled" else opt.step
            out[f"{name}, {route}"] = (route, lambda step=step, kwargs=kwargs: step(**kwargs), wd)
    return out, fused_reason


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(size, shapes, device, rounds, steps_per_round):
    params = make_params(shapes, device)
    steps, fused_reason = candidates(params, device)
    names = list(steps)
    t0 = time.perf_counter()
    for name in names:  # warm-up: state creation, compilation, allocator
        for _ in range(3):
            steps[name][1]()
    sync(device)
    warmup_s = time.perf_counter() - t0
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            for _ in range(steps_per_round):
                steps[name][1]()
            sync(device)
            times[name].append((time.perf_counter() - start) / steps_per_round)

    def ratio(name, baseline):
        if baseline not in times:
            return None
        return statistics.median(t / b for t, b in zip(times[name], times[baseline]))

    grads = [p.grad for p in params]
    exact = sum(float((g.double() ** 2).sum()) for g in grads)
    norm_error = {"polyak global_sq_norm": abs(float(F.global_sq_norm(grads)) - exact) / exact}
    if hasattr(torch, "_foreach_powsum"):
        norm_error["torch._foreach_powsum"] = abs(float(torch.stack(torch._foreach_powsum(grads, 2)).sum()) - exact) / exact
    return {
        "size": size,
        "norm_relative_error": norm_error,
        "n_params": sum(p.numel() for p in params),
        "n_tensors": len(params),
        "warmup_and_compile_s": round(warmup_s, 1),
        "fused_unsupported_reason": fused_reason,
        "rows": [
            {
                "optimizer": name,
                "route": steps[name][0],
                "median_ms": statistics.median(times[name]) * 1e3,
                "vs_sgd_foreach": ratio(name, BASELINES[0]),
                "vs_sgd_fused": ratio(name, BASELINES[1]),
                # against torch SGD with the same weight decay (equal to the above without one)
                "vs_same_work_sgd_foreach": ratio(name, (WD_BASELINES if steps[name][2] else BASELINES)[0]),
                "vs_same_work_sgd_fused": ratio(name, (WD_BASELINES if steps[name][2] else BASELINES)[1]),
            }
            for name in names
        ],
    }


def machine(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def verdicts(block):
    """The targets of issue 7 at this size: (row, route, ratio, bound, met, same-work ratio)."""
    out = []
    for row in block["rows"]:
        if row["route"] not in TARGETS:
            continue
        bound, baseline = TARGETS[row["route"]]
        kind = "fused" if baseline == 1 else "foreach"
        ratio, same = row[f"vs_sgd_{kind}"], row.get(f"vs_same_work_sgd_{kind}")
        if ratio is not None:
            out.append((row["optimizer"], BASELINES[baseline], ratio, bound, ratio <= bound, same))
    return out


def fmt(x):
    return "-" if x is None else f"{x:.2f}"


def markdown(results, args):
    lines = [
        "# Step time against torch SGD(momentum=0.9), foreach and fused\n",
        f"machine: {results['device']} ({args.device}); torch {results['torch']}, {results['threads']} thread(s); "
        f"load average {results['load_before']} before, {results['load_after']} after.",
        f"{results['note']}" if results["note"] else "",
        f"Each ratio: the median over {args.rounds} interleaved rounds of (candidate time / baseline time in the "
        "same round); each round starts at a different candidate.\n",
    ]
    for block in results["sizes"]:
        lines.append(f"\n## {block['size']} parameters ({block['n_params']:,} in {block['n_tensors']} tensors)\n")
        if block["fused_unsupported_reason"]:
            lines.append(f"No fused rows: {block['fused_unsupported_reason']}\n")
        lines.append("| step | median ms | / SGD foreach | / SGD fused | / same-work SGD foreach | / same-work SGD fused |"
                     "\n|---|---:|---:|---:|---:|---:|")
        for r in block["rows"]:
            lines.append(f"| {r['optimizer']} | {r['median_ms']:.3f} | {fmt(r['vs_sgd_foreach'])} | "
                         f"{fmt(r['vs_sgd_fused'])} | {fmt(r.get('vs_same_work_sgd_foreach'))} | "
                         f"{fmt(r.get('vs_same_work_sgd_fused'))} |")
        lines.append(f"\nwarm-up including compilation: {block['warmup_and_compile_s']} s")
        norm = next((r["vs_sgd_fused"] for r in block["rows"] if r["optimizer"] == "||g||^2 alone"), None)
        if norm is not None:
            lines.append(f"floor of a fused momentum step (fused SGD plus one read of the gradients): {1 + norm:.2f} x fused SGD\n")
        errors = ", ".join(f"{k} {v:.1e}" for k, v in block.get("norm_relative_error", {}).items())
        if errors:
            lines.append(f"relative error of ||g||^2 against a float64 sum: {errors}\n")
        lines.append("Targets (issue 7: fused and compiled <= 1.25 x fused SGD, eager <= 1.5 x foreach SGD):\n")
        for name, baseline, ratio, bound, met, same in verdicts(block):
            extra = f"; {same:.2f} x SGD with the same weight decay" if same is not None and same != ratio else ""
            lines.append(f"- {name}: {ratio:.2f} x {baseline} (target {bound}): {'met' if met else 'MISSED'}{extra}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: the figures of the README)")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated subset of {list(SIZES)}")
    ap.add_argument("--note", default="", help="a sentence about the machine's load, recorded with the figures")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--tag", default="", help="suffix of the output files, e.g. 'h100'")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # Every optimizer's step() is torch.optim's one wrapper function, so the compiled
    # steps of all the optimizers here share one dynamo cache; past its default limit
    # of 8 entries the later ones would silently run uncompiled.
    torch._dynamo.config.recompile_limit = 64
    device = torch.device(args.device)
    results = {
        "device": machine(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "polyak": polyak.__version__,
        "note": args.note,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "sizes": [],
    }
    for size in args.sizes.split(","):
        steps = 50 if size == "82K" else 3   # ~50 ms per timing at 82K: less at the mercy of time slices
        results["sizes"].append(measure(size, SIZES[size], device, args.rounds, steps))
    results["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "step_overhead" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    text = markdown(results, args)
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Step-time overhead of the Polyak-step optimizers against torch SGD, in one run.

For each model size, every optimizer steps on the SAME parameters and gradients;
rounds alternate between optimizers so drift of a noisy machine hits all alike,
and the reported figure is the median step time divided by the median step time
of torch.optim.SGD(momentum=0.9, foreach=True) measured in the same rounds.

    python benchmarks/step_overhead.py                 # writes benchmarks/results/step_overhead.{json,md}
    python benchmarks/step_overhead.py --device cuda   # on a GPU machine
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import polyak

SIZES = {
    # name: list of parameter shapes (a ResNet-like mix of weights and small vectors)
    "100K": [(64, 3, 3, 3), (64,), (64,), (128, 64, 3, 3), (128,), (128,), (10, 128), (10,)] + [(16, 16, 3, 3)] * 2,
    "11M": [(512, 512, 3, 3)] * 4 + [(256, 256, 3, 3)] * 4 + [(512,)] * 16 + [(1000, 512), (1000,)],
}


def make_params(shapes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.randn(s, generator=gen).to(device).requires_grad_(True)
        p.grad = torch.randn(s, generator=gen).to(device) * 1e-2
        params.append(p)
    return params


def optimizers(params, device):
    """name -> (optimizer, step function). All see the same gradients."""
    batch = 128
    loss = torch.tensor(1.0, device=device)
    per_sample = torch.rand(batch, device=device) + 0.5
    index = torch.arange(batch, device=device)
    out = {
        "sgd-momentum (baseline)": (torch.optim.SGD(params, lr=1e-6, momentum=0.9, foreach=True), None),
        "alig (momentum 0.9)": (polyak.ALIG(params, max_lr=1e-6, momentum=0.9), {"loss": loss}),
        "alig (no momentum)": (polyak.ALIG(params, max_lr=1e-6), {"loss": loss}),
        "alig (momentum, nonfinite=unchecked)": (polyak.ALIG(params, max_lr=1e-6, momentum=0.9, nonfinite="unchecked"), {"loss": loss}),
        "alig (momentum, per-tensor loop)": (polyak.ALIG(params, max_lr=1e-6, momentum=0.9, foreach=False), {"loss": loss}),
        "sgd (no momentum)": (torch.optim.SGD(params, lr=1e-6, foreach=True), None),
    }
    if hasattr(polyak, "ALIGPlus"):
        out["alig-plus (momentum 0.9, wd 1e-4)"] = (
            polyak.ALIGPlus(params, max_lr=1e-6, num_samples=batch * 10, epochs=10, K=5, weight_decay=1e-4, momentum=0.9),
            {"loss": per_sample, "index": index},
        )
    if hasattr(polyak, "SPS"):
        out["sps (constant)"] = (polyak.SPS(params, c=0.5, eta_max=1e-6, mode="constant"), {"loss": loss})
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(size, shapes, device, rounds, steps_per_round):
    params = make_params(shapes, device)
    opts = optimizers(params, device)
    times = {name: [] for name in opts}
    for name, (opt, kwargs) in opts.items():  # warm-up: state creation, allocator
        for _ in range(3):
            opt.step(**kwargs) if kwargs else opt.step()
    sync(device)
    for _ in range(rounds):
        for name, (opt, kwargs) in opts.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                opt.step(**kwargs) if kwargs else opt.step()
            sync(device)
            times[name].append((time.perf_counter() - t0) / steps_per_round)
    base = statistics.median(times["sgd-momentum (baseline)"])
    n_params = sum(p.numel() for p in params)
    return {
        "size": size,
        "n_params": n_params,
        "baseline_ms": base * 1e3,
        "rows": [
            {"optimizer": name, "median_ms": statistics.median(t) * 1e3, "ratio_vs_sgd_momentum": statistics.median(t) / base}
            for name, t in times.items()
        ],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--tag", default="", help="suffix of the output files, e.g. 'h100'")
    args = ap.parse_args()
    device = torch.device(args.device)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "polyak": polyak.__version__,
        "sizes": [],
    }
    for size, shapes in SIZES.items():
        steps = 20 if size == "100K" else 3
        results["sizes"].append(measure(size, shapes, device, args.rounds, steps))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "step_overhead" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    lines = ["# Step time relative to torch SGD(momentum=0.9, foreach=True)\n",
             f"device: {results['device']} ({args.device}), torch {results['torch']}, {results['threads']} threads, "
             f"median of {args.rounds} alternating rounds\n"]
    for block in results["sizes"]:
        lines.append(f"\n## {block['size']} parameters ({block['n_params']:,}); SGD-momentum step {block['baseline_ms']:.3f} ms\n")
        lines.append("| optimizer | median step (ms) | ratio vs SGD-momentum |\n|---|---:|---:|")
        for r in block["rows"]:
            lines.append(f"| {r['optimizer']} | {r['median_ms']:.3f} | {r['ratio_vs_sgd_momentum']:.2f} |")
    text = "\n".join(lines) + "\n"
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

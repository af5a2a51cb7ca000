"""Does the CPU float path of the Polyak steps pay? (issue 7 item 2)

On CPU in eager mode ``PolyakBase._on_host`` reads the step's scalars (loss, ||g||^2)
back as Python floats and computes the step size with floats; elsewhere every scalar
stays a 0-dim tensor. This script times ``step()`` both ways in one run, on the same
parameters and gradients, for ALIG (momentum 0.9), SPS and ALIGPlus:

- ``float``: the default on CPU;
- ``tensor, unchecked``: the tensor path with nonfinite="unchecked" (no skip at all);
- ``tensor, skip``: the tensor path with the branch-free skip (what accelerators run).

Usage: python benchmarks/host_float_path.py [--repeats 7] [--out benchmarks/results/host_float_path.md]
Median of ``repeats`` timings of ``steps`` steps each; one thread. The machine is shared
(other jobs run at the same time): ratios within one run are what to read.
"""
from __future__ import annotations

import argparse
from unittest import mock

import torch

from _timing import median_seconds, write_report  # benchmarks/_timing.py
from polyak import ALIG, ALIGPlus, SPS
from polyak._base import PolyakBase

SIZES = {"10k params (4 tensors)": [(50, 50), (50,), (100, 50), (100,) * 1],
         "1M params (4 tensors)": [(500, 500), (500,), (1000, 500), (1000,)]}


def _params(shapes):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(*s, generator=gen).requires_grad_() for s in shapes]
    for p in ps:
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    return ps


BUILD = {
    "ALIG": lambda ps, nf: ALIG(ps, max_lr=1e-6, momentum=0.9, nonfinite=nf),
    "SPS": lambda ps, nf: SPS(ps, mode="constant", eta_max=1e-6, nonfinite=nf),
    "ALIGPlus": lambda ps, nf: ALIGPlus(ps, max_lr=1e-6, num_samples=1024, epochs=5, nonfinite=nf),
}


def _time(name, shapes, on_host, nonfinite, steps, repeats):
    ps = _params(shapes)
    opt = BUILD[name](ps, nonfinite)
    losses = torch.rand(64) + 1.0
    index = torch.arange(64)

    def one():
        if name == "ALIGPlus":
            opt.step(loss=losses, index=index)
        else:
            opt.step(loss=losses.mean())

    with mock.patch.object(PolyakBase, "_on_host", lambda self, device: on_host):
        for _ in range(5):
            one()
        return median_seconds(one, repeats, calls_per_repeat=steps)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# CPU float path of the Polyak steps against the tensor path",
        "",
        f"torch {torch.__version__}, 1 thread, median of {args.repeats} runs. Shared, noisy machine "
        "(other jobs running): compare within a row.",
        "",
        "| optimizer | size | float (us/step) | tensor, unchecked | tensor, skip (branch-free) |",
        "|---|---|---|---|---|",
    ]
    for size, shapes in SIZES.items():
        steps = 200 if size.startswith("10k") else 20
        for name in BUILD:
            f = _time(name, shapes, True, "skip", steps, args.repeats)
            tu = _time(name, shapes, False, "unchecked", steps, args.repeats)
            ts = _time(name, shapes, False, "skip", steps, args.repeats)
            lines.append(f"| {name} | {size} | {f * 1e6:.1f} | {tu * 1e6:.1f} ({tu / f:.2f}x) | {ts * 1e6:.1f} ({ts / f:.2f}x) |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    write_report(text, args.out)


if __name__ == "__main__":
    main()

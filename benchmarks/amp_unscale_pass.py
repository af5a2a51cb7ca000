"""Would torch's ``_step_supports_amp_scaling`` protocol save GradScaler's unscale pass
for the Polyak steps? (issue 8 item 3)

With the protocol, ``GradScaler.step`` still runs ``_check_inf_per_device``, i.e. the
same ``torch._amp_foreach_non_finite_check_and_unscale_`` kernel over every gradient,
only with inv_scale = 1.0 instead of 1/scale. This script times that kernel both ways
on 12.6M float32 gradients (the size of benchmarks/step_overhead.py), one thread,
median of repeats. The check-only kernel skips the multiply and the write back, so the
protocol saves that half of the pass; ALIG, SPS and ALIGPlus declare it and fold 1/scale
into their norm and update instead (tests/test_amp.py).

Usage: python benchmarks/amp_unscale_pass.py [--out benchmarks/results/amp_unscale_pass.md]
"""
import argparse

import torch

from _timing import median_seconds, write_report  # benchmarks/_timing.py


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    grads = [torch.randn(2048, 2048) for _ in range(3)] + [torch.randn(1024, 256)]   # about 12.6M
    found_inf = torch.zeros(1)

    def timed(inv_scale):
        inv = torch.full((1,), inv_scale)
        return median_seconds(lambda: torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv), args.repeats)

    timed(1.0)
    unscale, check = timed(1.0 / 65536), timed(1.0)
    numel = sum(g.numel() for g in grads)
    text = (
        "# GradScaler: unscale pass against the protocol's check pass\n\n"
        f"torch {torch.__version__}, {numel / 1e6:.1f}M float32 gradients, 1 thread, median of {args.repeats}; "
        "shared noisy machine.\n\n"
        f"| kernel | ms |\n|---|---|\n| unscale (inv_scale = 1/65536), what GradScaler.step runs today | {unscale * 1e3:.2f} |\n"
        f"| check only (inv_scale = 1.0), what it runs under _step_supports_amp_scaling | {check * 1e3:.2f} |\n\n"
        f"ratio check / unscale: {check / unscale:.2f}: the protocol saves the multiply and the write back of "
        "every gradient, so ALIG, SPS and ALIGPlus declare `_step_supports_amp_scaling` and fold 1/scale into "
        "their step. Usage stays `scaler.step(opt, loss=loss)` with the unscaled loss.\n"
    )
    write_report(text, args.out)


if __name__ == "__main__":
    main()

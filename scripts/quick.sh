#!/usr/bin/env bash
# Set-up (if needed) and the main job: the quick benchmark, which prints a results table and writes plots.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/digits.py "$@"

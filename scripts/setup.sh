#!/usr/bin/env bash
# Creates .venv and installs polyak with its test and bench extras, from nothing.
# torch==2.13.0 first: on these machines that pin takes the CPU build on disk,
# while an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.polyak-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.13.0"
    # torch pinned on the same command line: the extras (lightning, transformers,
    # accelerate) must not make pip replace the CPU build
    .venv/bin/python -m pip install -q -e ".[test,bench]" "torch==2.13.0"
    echo "$want" > "$stamp"
fi

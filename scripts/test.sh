#!/usr/bin/env bash
# Set-up (if needed) and the test suite. Extra arguments go to pytest
# (e.g. `-m slow` for real training, `-m realdata` after `polyak data fetch`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$rc"

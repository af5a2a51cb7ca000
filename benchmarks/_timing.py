"""Timing and output shared by the benchmark scripts (run as ``python benchmarks/x.py``:
this directory is then on ``sys.path``)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional


def median_seconds(call: Callable[[], object], repeats: int, calls_per_repeat: int = 1) -> float:
    """Median over ``repeats`` timings of the seconds one ``call()`` takes, each timing
    the mean of ``calls_per_repeat`` calls in a row (the median resists the other jobs
    of a shared machine better than the mean)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls_per_repeat):
            call()
        times.append((time.perf_counter() - start) / calls_per_repeat)
    return statistics.median(times)


def write_report(text: str, out: Optional[str]) -> None:
    """Print ``text`` and, when ``out`` is given, write it there."""
    if out:
        with open(out, "w") as fh:
            fh.write(text)
    print(text)

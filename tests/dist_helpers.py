"""Run a function on N CPU ranks (gloo) from inside a test, bounded by a timeout.

    from dist_helpers import spawn
    results = spawn(my_module_level_fn, world_size=2, timeout_s=60, args=(3,))
    # results[r] is what my_module_level_fn(rank=r, world_size=2, *args) returned on rank r

``fn`` must be a module-level function of an importable module (a test module is:
the spawned interpreters get the parent's sys.path), its arguments and return value
picklable (tensors are). Each rank runs in a fresh interpreter (``spawn``: no fork
of a process whose thread pools are already running) with one intra-op thread and
``torch.distributed`` initialised (gloo, TCP on a free local port); the group is
destroyed afterwards. A rank that raises fails the call with its traceback; a rank
that hangs (a collective another rank never entered) fails it after ``timeout_s``,
and every rank still running is killed.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import queue as queue_module
import socket
import time
import traceback
from typing import Any, Callable, List, Sequence


class RankFailed(AssertionError):
    """A rank raised; the message carries its traceback."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_rank(rank: int, world_size: int, port: int, fn: Callable, args: Sequence[Any], results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # bytes, not tensors: a queued tensor is shared memory that dies with this process
        buffer = io.BytesIO()
        torch.save(value, buffer)
        results.put((rank, True, buffer.getvalue()))
    except BaseException:  # report everything, including a failed assert, to the parent
        results.put((rank, False, traceback.format_exc()))


def spawn(fn: Callable, world_size: int = 2, timeout_s: float = 60.0, args: Sequence[Any] = ()) -> List[Any]:
    """``[fn(rank, world_size, *args) for each rank]``, each on its own process."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    # the children need only a CPU; keep them from probing accelerators or spinning threads
    env_backup = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
    os.environ.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    try:
        procs = [context.Process(target=_run_rank, args=(r, world_size, port, fn, tuple(args), results), daemon=True)
                 for r in range(world_size)]
        for p in procs:
            p.start()
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    deadline = time.monotonic() + timeout_s
    values: dict = {}
    failures = []
    try:
        while len(values) + len(failures) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{fn.__name__} on {world_size} ranks did not finish within {timeout_s:.0f} s "
                    f"(finished: ranks {sorted(values)}); a rank is probably waiting in a collective"
                )
            try:
                rank, ok, value = results.get(timeout=min(remaining, 1.0))
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in values]
                if dead and not failures:
                    # a rank died without reporting (segfault, killed): the others may wait forever
                    time.sleep(0.5)
                    if results.empty():
                        raise RankFailed(f"rank(s) {dead} of {fn.__name__} died with exit codes "
                                         f"{[procs[r].exitcode for r in dead]}")
                continue
            if ok:
                import torch

                values[rank] = torch.load(io.BytesIO(value), weights_only=False)
            else:
                failures.append((rank, value))
                break   # the other ranks may now wait in a collective: do not wait for them
        if failures:
            rank, tb = failures[0]
            raise RankFailed(f"rank {rank} of {fn.__name__} raised:\n{tb}")
        return [values[r] for r in range(world_size)]
    finally:
        for p in procs:
            p.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

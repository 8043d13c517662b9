"""Pin a block (and the processes it starts) to cores and a thread count: one machine standing in for two boxes."""
from __future__ import annotations

import os
from contextlib import contextmanager

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def environment(env: dict[str, str]):
    """Run the block (and the processes it starts) with these environment variables set."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def pinned(cores: set[int], threads: int):
    """Run the block (and the children it starts) on ``cores`` with ``threads`` torch/OpenMP threads."""
    old_cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        with environment({k: str(threads) for k in THREAD_VARS}):
            yield
    finally:
        os.sched_setaffinity(0, old_cores)

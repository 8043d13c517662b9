"""Pin a block (and the processes it starts) to cores and a thread count: one machine standing in for two boxes."""
from __future__ import annotations

import os
from contextlib import contextmanager

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def pinned(cores: set[int], threads: int):
    """Run the block (and the children it starts) on ``cores`` with ``threads`` torch/OpenMP threads."""
    old_cores, old_env = os.sched_getaffinity(0), {k: os.environ.get(k) for k in THREAD_VARS}
    os.sched_setaffinity(0, cores)
    os.environ.update({k: str(threads) for k in THREAD_VARS})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old_cores)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

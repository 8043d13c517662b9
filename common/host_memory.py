"""Keep freed tensor memory in the process, instead of handing it back to the kernel every step.

glibc's malloc serves a block above its mmap threshold (128 KiB at first, sliding up to 32 MiB) with a
fresh mapping, which goes back to the kernel when the block is freed. It also gives the top of its heap
back once more than the trim threshold of it is free (twice the mmap threshold, as it slides). A training
step frees its activations and gradients and then allocates the same sizes again in the next step. So on
glibc's defaults, every step faults those pages in again, and the kernel zeroes each one first.

This module fixes the two thresholds, so the pages stay with the process: what PyTorch's caching
allocator does on the GPU, and jemalloc or tcmalloc when preloaded. On the 2-core VM (resnet8, batch 64,
150 steps) it cut a run's page faults from 275,000-615,000 to 161,000-178,000, nearly all left at start-up
(docs/benchmarks.md, "Where KD's slow runs came from").

A process-wide setting belongs to the program, not to a library: the trainer's entry point
(``python -m student_trainer``) calls ``keep_freed_memory``; the library does not. (The teacher server is
left alone: it cut the server's faults per call from about 190 to 5, but no time, measured.) The user's own
choice wins:
- ``UNIXKD_MALLOC=system`` leaves glibc as it is;
- so does setting ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc`` tunable, or
  preloading another allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
# Blocks below this come from the heap and are reused; larger ones are mapped. Above glibc's own 32 MiB
# ceiling for its sliding threshold, so blocks between the two, which glibc always maps afresh, are reused
# too. (Setting either value alone stops the sliding of both, which is worse than glibc's defaults: the trim
# threshold alone gave 12x the page faults.)
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top that is kept rather than given back
OPT_OUT = "UNIXKD_MALLOC"
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def reason_to_leave_alone(env=None) -> str | None:
    """Why malloc is left as it is (the user chose, or it is not glibc), or None to set it."""
    env = os.environ if env is None else env
    if env.get(OPT_OUT, "").strip().lower() == "system":
        return f"{OPT_OUT}=system"
    chosen = [name for name in USER_SETTINGS if name in env]
    if chosen:
        return f"{chosen[0]} is set"
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets malloc"
    preloaded = [name for name in OTHER_ALLOCATORS if name in env.get("LD_PRELOAD", "")]
    if preloaded:
        return f"{preloaded[0]} is preloaded"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    return None


def keep_freed_memory(env=None) -> bool:
    """Fix glibc's mmap and trim thresholds for this process, unless the user chose otherwise.

    Returns True if both were set. An error here would only cost speed, so a malloc that refuses leaves
    things as they were, and nothing is raised."""
    if reason_to_leave_alone(env) is not None:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mmap_set = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # both are called, whatever the first says
    trim_set = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_set and trim_set)

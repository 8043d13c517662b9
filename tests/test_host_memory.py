"""The trainer's entry point keeps freed tensor memory in the process (fewer page faults a step), unless
the user chose otherwise."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from common.host_memory import OPT_OUT, reason_to_leave_alone

ROOT = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Enter a program the way a user does (its --help exits before any work), then allocate a 40 MB tensor and
# free it, 20 times over, as a training step frees and reallocates its activations; print the page faults.
# glibc maps a block over 32 MiB afresh each time, however far its threshold has slid (20 x ~9,800 pages);
# kept, it is faulted in once. (Smaller blocks are no test: whether glibc trims them depends on what other
# threads have put above them in the heap, which differs from run to run.)
FAULTS = """
import resource, runpy, sys, torch
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.ones(10_000_000)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(program: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in (OPT_OUT, "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", FAULTS, program], cwd=ROOT, env=clean | env, check=True,
                         capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_the_trainer_keeps_freed_memory():
    kept, system = page_faults("student_trainer"), page_faults("student_trainer", **{OPT_OUT: "system"})
    assert system > 100_000, system
    assert kept < system / 5, (kept, system)


@pytest.mark.parametrize("env, reason", [
    ({OPT_OUT: "system"}, "UNIXKD_MALLOC=system"),
    ({OPT_OUT: " System "}, "UNIXKD_MALLOC=system"),
    ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "MALLOC_TRIM_THRESHOLD_ is set"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "GLIBC_TUNABLES sets malloc"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc is preloaded"),
])
def test_the_users_choice_wins(env, reason):
    assert reason_to_leave_alone(env) == reason


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_set_by_default_on_glibc():
    assert reason_to_leave_alone({OPT_OUT: "keep", "GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) is None

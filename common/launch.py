"""Start ``python -m teacher_server`` as a child process and learn its port.

Scripts (the demo, experiments, benchmarks) and tests run the teacher exactly
as a user does: its own process, on a port it reports via --port-file once it
is serving. In ``common`` because it imports nothing of the server: the
trainer's scripts start one without depending on the server package.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def start_teacher(*server_args: str, port_file: str | Path, timeout: float = 120.0, stdout=None,
                  cwd: str | Path | None = None, poll: float = 0.1) -> tuple[subprocess.Popen, int]:
    """Start a teacher server and return ``(process, port)`` once it serves.

    ``server_args`` are the server's flags, ``--port`` included (0: a free one).
    A server that exits or does not start within ``timeout`` is killed and
    raises ChildProcessError / TimeoutError.
    """
    port_file = Path(port_file)
    proc = subprocess.Popen([sys.executable, "-m", "teacher_server", *map(str, server_args),
                             "--port-file", str(port_file)], cwd=cwd, stdout=stdout,
                            stderr=subprocess.STDOUT if stdout is not None else None)
    deadline = time.monotonic() + timeout
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None:
            raise ChildProcessError(f"teacher_server exited with code {proc.returncode} before serving")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"teacher_server did not start within {timeout:g} s")
        time.sleep(poll)
    return proc, int(port_file.read_text())


def stop_teacher(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGTERM (a graceful drain), then a kill if it outlives ``timeout``; return the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@contextmanager
def served_teacher(*server_args: str, timeout: float = 120.0, log_file=None):
    """Yield ``(process, port)`` of a teacher server on a free port; stop it on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_teacher(*server_args, "--port", "0", port_file=Path(tmp) / "port",
                                   timeout=timeout, stdout=log_file)
        try:
            yield proc, port
        finally:
            stop_teacher(proc)

"""Start ``python -m teacher_server`` as a child process and learn its port.

Scripts (the demo, experiments) and tests run the teacher exactly as a user
does: its own process, a free port chosen by the OS, reported via --port-file.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def served_teacher(*server_args: str, timeout: float = 120.0, log_file=None):
    """Yield ``(process, port)`` of a teacher server; stop it (SIGTERM, then kill) on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen([sys.executable, "-m", "teacher_server", *server_args, "--port", "0",
                                 "--port-file", str(port_file)], stdout=log_file, stderr=log_file)
        try:
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None:
                    raise ChildProcessError(f"teacher_server exited with code {proc.returncode} before serving")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"teacher_server did not start within {timeout:g} s")
                time.sleep(0.1)
            yield proc, int(port_file.read_text())
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

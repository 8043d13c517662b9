"""What the clients of a teacher across the network share, so that each kind keeps only what differs.

A remote kind (``grpc://``, ``triton://``) is opened from its URL (``from_url``:
the kind's ``parse_url`` says where the URL points, the token is read from its
file), puts a deadline on every call and waits out an absent teacher within
the retry budget (``--teacher-max-wait``), reconnects often enough to find a
restarted teacher within seconds, asks the teacher what it is once, and marks
the server's counts where the server may have restarted since the previous
read (a restarted server counts from 0 again).
"""
from __future__ import annotations

import dataclasses
from abc import abstractmethod
from functools import cached_property
from urllib.parse import SplitResult

from common.tokens import read_token
from student_trainer.teachers.base import RetryPolicy, ServerStats, TeacherClient, TeacherInfo
from student_trainer.teachers.options import DEFAULTS


def has_host_and_port(parts: SplitResult) -> bool:
    """Whether a split URL names a host and a port (one that is not a number, or out of range, is none)."""
    try:
        return bool(parts.hostname and parts.port)
    except ValueError:
        return False


class RemoteTeacherClient(TeacherClient):
    """A teacher behind a network address. A kind implements ``parse_url``, ``_describe``, ``_counts``
    and ``_infer`` (through ``_retrying``), and says in ``_classify`` which errors are worth a retry."""
    max_in_flight = 4

    def __init__(self, *, wire_dtype: str = DEFAULTS.wire_dtype, timeout: float = DEFAULTS.timeout,
                 connect_timeout: float = DEFAULTS.connect_timeout, max_wait: float = DEFAULTS.max_wait,
                 retry: RetryPolicy | None = None):
        super().__init__(retry or RetryPolicy(max_wait=max_wait))
        if timeout <= 0 or connect_timeout <= 0 or max_wait < 0:
            raise ValueError("teacher timeouts must be > 0 seconds and --teacher-max-wait >= 0")
        self.wire_dtype, self.timeout, self.connect_timeout = wire_dtype, timeout, connect_timeout

    @classmethod
    def from_url(cls, url: str, *, token_file: str | None = None, device: str | None = None,
                 **options) -> RemoteTeacherClient:
        """The token comes from ``token_file``, never the URL (which is logged and written to summary.json).
        ``device``, where this process computes, is no concern of a teacher served elsewhere."""
        return cls(**cls.parse_url(url), token=read_token(token_file) if token_file else None, **options)

    @classmethod
    @abstractmethod
    def parse_url(cls, url: str) -> dict:
        """Where ``url`` points, as the constructor's arguments; a one-line ValueError where it points nowhere."""

    def channel_options(self) -> list[tuple[str, int]]:
        """Replies can carry feature maps: the server's own size limit is the only one. Reconnect attempts
        stay frequent, so a restarted teacher is found within seconds."""
        return [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                ("grpc.initial_reconnect_backoff_ms", int(self.retry.initial_backoff * 1000)),
                ("grpc.min_reconnect_backoff_ms", int(self.retry.initial_backoff * 1000)),
                ("grpc.max_reconnect_backoff_ms", int(self.retry.max_backoff * 1000))]

    @cached_property
    def info(self) -> TeacherInfo:
        return self._describe()

    def describe(self) -> TeacherInfo:
        """Asked of the teacher once (every chunk of every batch needs its max batch), then kept."""
        return self.info

    @abstractmethod
    def _describe(self) -> TeacherInfo: ...

    def server_stats(self) -> ServerStats:
        stats, restart = self._counts()
        return dataclasses.replace(stats, source=f"{stats.source} ({restart})") if restart else stats

    @abstractmethod
    def _counts(self) -> tuple[ServerStats, str | None]:
        """The server's counts and, where the server may have restarted since the previous read, why:
        the caveat ``server_stats`` adds to their ``source``."""

"""Requests whose bytes do not parse: refused by our code, all counted, logged in a few lines however many come.

grpcio parses a request before any servicer code runs, and a parse error there
is logged with a full traceback ("Exception deserializing message!") and
answered INTERNAL: whoever reaches the port could fill the log. So the Teacher
service parses with ``tolerant`` (a ``DecodeError`` becomes a ``Malformed``
marker, no traceback), and ``refusing_malformed`` answers such a call
INVALID_ARGUMENT, counts it on the metrics and hands it to ``MalformedLog``: at
most one line every few seconds, saying how many came since the previous line
and from which peers. The server's own errors keep their tracebacks.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import grpc
from google.protobuf.message import DecodeError

log = logging.getLogger("teacher_server")

MAX_PEERS = 100  # peers told apart between two lines; the rest are lumped, so a flood cannot grow memory
SHOWN_PEERS = 3  # peers named in a line, the most frequent first


@dataclass(frozen=True)
class Malformed:
    """What the deserializer hands the handler instead of a message: ``size`` bytes that are no ``type_name``."""
    type_name: str
    size: int


def tolerant(message_class) -> Callable[[bytes], object]:
    """``message_class.FromString``, but bytes that do not parse give a ``Malformed`` instead of an error."""
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError:
            return Malformed(message_class.DESCRIPTOR.full_name, len(data))

    return parse


class MalformedLog:
    """Counts every malformed call on ``counter`` (labelled by method) and logs them at most once every
    ``interval`` seconds: the first at once, the next ones together when the interval is up."""

    def __init__(self, counter, interval: float = 5.0):
        self.counter, self.interval = counter, interval
        self._lock = threading.Lock()
        self._peers: Counter[str] = Counter()  # calls not logged yet, by peer
        self._methods: Counter[str] = Counter()
        self._last_line: float | None = None  # monotonic time of the previous line
        self._timer: threading.Timer | None = None

    def seen(self, method: str, peer: str) -> None:
        """One malformed call to ``method`` from ``peer``."""
        self.counter.labels(method).inc()
        with self._lock:
            if peer not in self._peers and len(self._peers) >= MAX_PEERS:
                peer = "other peers"
            self._peers[peer] += 1
            self._methods[method] += 1
        self.flush()

    def flush(self, *, now_or_never: bool = False) -> None:
        """Log the calls not logged yet, if the interval since the previous line is up (or ``now_or_never``);
        else make sure a timer will."""
        with self._lock:
            if not self._peers:
                return
            now = time.monotonic()
            wait = 0.0 if self._last_line is None or now_or_never else self._last_line + self.interval - now
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._on_timer)
                    self._timer.daemon = True
                    self._timer.start()
                return
            line = self._line(now)
        log.warning(line)

    def close(self) -> None:
        """At the server's stop: no timer left behind, and what was not logged yet is logged now."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush(now_or_never=True)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()

    def _line(self, now: float) -> str:
        """The calls held so far, in one line (and forgotten): how many, since when, to what, from whom."""
        count = sum(self._peers.values())
        peers = ", ".join(f"{peer} ({n})" for peer, n in self._peers.most_common(SHOWN_PEERS))
        if len(self._peers) > SHOWN_PEERS:
            peers += f" and {len(self._peers) - SHOWN_PEERS} more"
        methods = ", ".join(f"{m} ({n})" for m, n in self._methods.most_common())
        since = "" if self._last_line is None else f" in the last {now - self._last_line:.1f} s"
        self._peers.clear()
        self._methods.clear()
        self._last_line = now
        return (f"{count} malformed request{'s' if count != 1 else ''}{since}, to {methods} from {peers}: bytes "
                f"that are no message of the method's request type, answered INVALID_ARGUMENT (all counted in "
                f"unixkd_teacher_malformed_requests_total; logged at most every {self.interval:g} s)")


def refusing_malformed(method: str, behaviour: Callable, malformed: MalformedLog) -> Callable:
    """The servicer's ``behaviour`` for ``method``, which first refuses a call whose request did not parse."""
    def handle(request, context: grpc.ServicerContext):
        if isinstance(request, Malformed):
            malformed.seen(method, context.peer())
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the request's {request.size} bytes are no {request.type_name} message")
        return behaviour(request, context)

    return handle

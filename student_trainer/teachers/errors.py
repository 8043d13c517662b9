"""How a teacher call fails, in one line: the teacher is away (``TeacherUnavailable``) or said no (``TeacherRefused``)."""
from __future__ import annotations

import re

import grpc


class TeacherUnavailable(ConnectionError):
    """The teacher could not be reached (within the total wait, where the client retries).

    The trainer catches it to save its progress before it stops.
    """


class TeacherRefused(grpc.RpcError):
    """The teacher answered a call with a final error (bad request, no access, unknown model): not retried.

    A ``grpc.RpcError`` with ``code()`` and ``details()`` whichever kind of teacher
    refused, and one line as text.
    """

    def __init__(self, url: str, what: str, code: grpc.StatusCode | None, details: str):
        self.url, self.what = url, what
        self._code = code or grpc.StatusCode.UNKNOWN
        self.full_details = details
        self._details = squeeze(details)
        super().__init__(f"teacher at {url} refused {what}: {self._code.name}: {self._details}")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt): \S")


def squeeze(text: str) -> str:
    """A message as one line: its first line and, where there are more, the last that names an
    exception (what a server-side traceback says went wrong), else the last."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    named = [line for line in lines[1:] if _EXCEPTION_LINE.match(line)]
    return f"{lines[0]} ... {(named or lines)[-1]}"


def one_line(error: BaseException) -> str:
    return squeeze(str(error)) or type(error).__name__

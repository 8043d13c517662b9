"""The trainer's teacher-connection flags: their defaults, written once here, and which of them a user gave.

The trainer's parser takes its defaults from ``DEFAULTS`` (so ``--help`` shows
them) and so do the clients, so a flag left at its default and an option not
passed mean the same connection.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionDefaults:
    """A teacher connection's settings unless told otherwise; named as ``connect``'s options."""
    wire_dtype: str = "float16"    # --wire-dtype: the images' dtype on the wire
    timeout: float = 60.0          # --teacher-timeout: seconds per teacher call
    connect_timeout: float = 30.0  # --connect-timeout: seconds to wait for the teacher at start
    max_wait: float = 600.0        # --teacher-max-wait: seconds a call keeps retrying while the teacher is away
    send: str = "pixels"           # --send: the images as pixels, or as view recipes the teacher renders


DEFAULTS = ConnectionDefaults()

# The options that some kinds of teacher do not use: connect's option (a field of the run's TeacherConfig of the
# same name) -> the trainer flag that sets it.
FLAGS = {"max_wait": "--teacher-max-wait", "tls_ca": "--tls-ca", "token_file": "--token-file",
         "client_id": "--client-id", "send": "--send"}
SENDS = ("pixels", "recipes")


def teacher_options(config) -> dict:
    """The connection options the user set (retry budget, TLS, token, client id, what is sent), from the run's
    ``TeacherConfig``, as ``connect`` options.

    One left at its default is not passed, so ``connect`` refuses only options that were asked for.
    """
    given = {}
    for option in FLAGS:
        value = getattr(config, option, None)
        if value is not None and value != getattr(DEFAULTS, option, None):
            given[option] = value
    return given

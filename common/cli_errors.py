"""Turn the errors a user can cause into one readable line and exit code 2."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

from common.checkpoint import CheckpointError

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, CheckpointError,
                                               OSError, KeyError)


WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"
"""What torch puts in the message of an error raised in a DataLoader process (a file it could not read)."""


class AlreadyReported(Exception):
    """An error a twin process has reported already (torchrun's rank 0): exit as it does, without a word."""


def _message(e: BaseException) -> str:
    # OSError's args[0] is the errno: its str() is the readable line ("[Errno 2] No such file ...: 'x'")
    msg = str(e) if isinstance(e, OSError) or not e.args else e.args[0]
    if isinstance(msg, str) and WORKER_TRACEBACK in msg:  # the worker's own line is the traceback's last
        msg = msg.rstrip().splitlines()[-1].partition(": ")[2]
    return msg


@contextmanager
def one_line_errors(prog: str, quiet: bool = False):
    """``quiet``: exit with the same code but print nothing (a process whose twin says it already)."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except AlreadyReported:
        sys.exit(2)
    except USER_ERRORS as e:
        if not quiet:
            print(f"{prog}: error: {_message(e)}", file=sys.stderr)
        sys.exit(2)


def parse_numbers(text: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5), for argparse (--mean, --std)."""
    import argparse

    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas like 0.485,0.456,0.406, "
                                         f"got {text!r}") from None


def parse_shape(text: str) -> tuple[int, int, int]:
    """'3,32,32' -> (3, 32, 32), for argparse."""
    import argparse

    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W like 3,32,32, got {text!r}")
    return shape


def renamed_flag(new: str, why: str = ""):
    """An argparse action for a flag that was renamed: using the old name is one line naming the new one."""

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{option_string} was renamed {new}{f' ({why})' if why else ''}")

    return Renamed

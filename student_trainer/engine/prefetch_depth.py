"""How many steps to choose and send ahead of the one being trained (``--prefetch``).

A fixed ``D`` is what the user asked for. ``auto`` (the default) keeps the result exact: a policy whose
choice reads the student's weights (UNIX's uncertainty pass) gets no steps ahead, since choosing ahead
would score with older weights; any other policy gets as many as hide the teacher, measured as the run
goes: the teacher's round trip over the time a step takes to train, with a quarter to spare, at least 1,
and at most what ``PREFETCH_MEMORY`` holds of the steps' images. A round trip is counted from when the
request was sent or the previous answer came, whichever is later: the time an answer spent queued
behind this run's own earlier requests grows with the depth itself, and counting it would deepen the
pipeline without end whenever the teacher is about as fast as the student.
"""
from __future__ import annotations

import math
import statistics
import time
from collections import deque

PREFETCH_MEMORY = 512 * 2**20  # bytes of images ``auto`` may keep in flight
MAX_AUTO_DEPTH = 8             # steps ahead ``auto`` never goes beyond, however cheap they are
WINDOW = 8                     # the last round trips and step times ``auto`` goes by
MARGIN = 1.25                  # round trips vary: send a quarter earlier than the median needs


class PrefetchDepth:
    """``depth``: the steps to keep chosen and sent beyond the one being trained, now.

    ``fixed``: ``--prefetch D``; None: ``auto``. ``reads_weights``: the policy's choice reads the student's
    weights (``auto`` is then 0). ``sent``/``answered`` and ``trained`` feed ``auto`` its measurements.
    """

    def __init__(self, fixed: int | None, reads_weights: bool):
        self.fixed, self.reads_weights = fixed, reads_weights
        self.round_trips: deque[float] = deque(maxlen=WINDOW)
        self.step_times: deque[float] = deque(maxlen=WINDOW)
        self.most = MAX_AUTO_DEPTH
        self._last_trained: float | None = None
        self._last_answered = 0.0
        self.deepest = 0  # the most steps ahead so far (the summary's prefetch_depth_max)

    @property
    def setting(self) -> str | int:
        return "auto" if self.auto else self.fixed

    @property
    def auto(self) -> bool:
        return self.fixed is None

    @property
    def bound(self) -> int:
        """The most steps ahead this run may ever hold (what a checkpoint may bring back)."""
        if not self.auto:
            return self.fixed
        return 0 if self.reads_weights else self.most

    def limit_memory(self, step_bytes: int) -> None:
        """Bound ``auto`` by the bytes one step's images take (known once the first batch is drawn)."""
        self.most = max(1, min(MAX_AUTO_DEPTH, PREFETCH_MEMORY // max(step_bytes, 1)))

    def depth(self) -> int:
        depth = self._depth()
        self.deepest = max(self.deepest, depth)
        return depth

    def _depth(self) -> int:
        if not self.auto:
            return self.fixed
        if self.reads_weights:
            return 0
        if not self.round_trips or not self.step_times:
            return 1
        needed = MARGIN * statistics.median(self.round_trips) / max(statistics.median(self.step_times), 1e-9)
        return max(1, min(self.most, math.ceil(needed)))

    def sent(self, answer) -> None:
        """Time ``answer`` (a future) from now until it is in."""
        if not self.auto or answer is None or answer.done():
            return
        sent = time.perf_counter()
        answer.add_done_callback(lambda _: self.answered(sent, time.perf_counter()))

    def answered(self, sent: float, now: float) -> None:
        """An answer sent at ``sent`` came at ``now``: its round trip, less any wait behind our own requests."""
        self.round_trips.append(now - max(sent, self._last_answered))
        self._last_answered = max(self._last_answered, now)

    def trained(self) -> None:
        """A step finished training: the time since the one before is a step's time."""
        now = time.perf_counter()
        if self._last_trained is not None:
            self.step_times.append(now - self._last_trained)
        self._last_trained = now

"""Progress of long work: a bar on a terminal, else at most one log line a minute.

(Minimal version written on branch s4/house for participant runs; the lane branch's
shared helper replaces it on merge if it offers the same ``Progress`` interface.)
"""

import logging
import sys
import time

LOGGER = logging.getLogger("deeplight_bids")

#: Seconds between two progress log lines when stderr is not a terminal.
LOG_INTERVAL = 60.0


class Progress:
    """Count units of work (e.g. volumes) and show how far a task is.

    On a terminal (``stream.isatty()``) a tqdm bar on ``stream``; otherwise (a batch
    job's log file) a log line at INFO at most every ``interval`` seconds, with the
    rate and the time left, and none for a task that ends before the first interval.

    Parameters
    ----------
    total : int
        Units of the whole task.
    desc : str
        What is counted, e.g. a run's label.
    unit : str
        Name of one unit, e.g. ``"volume"`` (plural: ``unit + "s"``).
    log : logging.Logger
    interval : float
        Seconds between log lines (no terminal).
    stream : file object or None
        Where a bar goes (default: ``sys.stderr``).
    clock : callable
        Returns seconds (``time.monotonic``; replaceable in tests).
    """

    def __init__(self, total, desc, unit="volume", log=LOGGER, interval=LOG_INTERVAL, stream=None, clock=None):
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.log = log
        self.interval = float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock or time.monotonic
        self.done = 0
        self._bar = None
        self._start = self._last = self.clock()
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True)

    def update(self, n=1):
        """``n`` more units done."""
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(int(n))
            return
        now = self.clock()
        if now - self._last >= self.interval and self.done < self.total:
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log.info(
                "%s: %d of %d %ss (%d%%), %.2f %ss/s, about %s left",
                self.desc,
                self.done,
                self.total,
                self.unit,
                100 * self.done // max(self.total, 1),
                rate,
                self.unit,
                _duration(left),
            )

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


def _duration(seconds):
    if seconds == float("inf"):
        return "an unknown time"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

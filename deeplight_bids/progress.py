"""Progress of long work: a bar on a terminal, else at most one line a minute.

The one place for progress (issue 17): participant runs (volumes), fine-tuning (epochs of
batches, the frozen-body feature pass) and HCP downloads (bytes) all use :class:`Progress`
or one of its two thin subclasses.  On a terminal (``stream.isatty()``) a tqdm bar is
redrawn in place on ``stream``; elsewhere (a batch job's log, CI) a line is written at most
every ``interval`` seconds, so long work is never silent for long and never floods a log.

- :class:`Progress`: one task of counted units; INFO lines with rate and time left.
- :class:`SegmentProgress`: several segments (epochs, passes), each with its own bar,
  lines throttled over all of them, with a status (e.g. the loss) beside the count.
- :class:`ByteProgress`: a download in bytes and files, thread-safe; status lines on
  ``stream`` (the command's own output), a first one at once and a last one on close.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Literal, Self

LOGGER = logging.getLogger("deeplight_bids")

#: Seconds between two progress lines when the stream is not a terminal.
LOG_INTERVAL = 60.0


class Progress:
    """Count units of work (e.g. volumes) and show how far a task is.

    On a terminal (``stream.isatty()``) a tqdm bar on ``stream``; otherwise a log line
    at INFO at most every ``interval`` seconds, with the rate and the time left, none
    for a task that ends before the first interval and none for the last unit (the
    caller's own closing line says it).

    Parameters
    ----------
    total : int or None
        Units of the whole task (None: unknown).
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
    enabled : bool
        False: count only, show nothing.
    """

    total: int | None
    _bar: Any  # a tqdm bar, or None
    _last: float | None
    _start: float

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "volume",
        log: logging.Logger = LOGGER,
        interval: float = LOG_INTERVAL,
        stream: IO[str] | None = None,
        clock: Callable[[], float] | None = None,
        enabled: bool = True,
    ) -> None:
        self.unit = unit
        self.log = log
        self.interval = float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock or time.monotonic
        self.enabled = enabled
        self.tty = enabled and _is_terminal(self.stream)
        self.total, self.desc, self.done = None, desc, 0
        self._bar = None
        self._last = None  # time of the last line; lines are throttled over all segments
        if total is not None:
            self.start(total, desc)

    def start(self, total: int | None, desc: str) -> None:
        """Begin a segment of ``total`` units (None: unknown) called ``desc``, with a bar of its own."""
        self._end_bar()
        self.total = None if total is None else int(total)
        self.desc, self.done, self._start = desc, 0, self.clock()
        if self._last is None:
            self._last = self._start
        if self.tty:
            self._bar = self._open_bar()

    def _open_bar(self, **options):
        from tqdm import tqdm

        settings = {"leave": False, "dynamic_ncols": True, **options}
        return tqdm(total=self.total, desc=self.desc, unit=self.unit, file=self.stream, **settings)

    def update(self, n: int = 1, **status: Any) -> None:
        """``n`` more units done; ``status`` (e.g. ``loss="0.1234"``) is shown beside the count."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if status:
                self._bar.set_postfix(status, refresh=False)
            return
        self._tick(status)

    def _tick(self, status=None):
        """Without a bar: a line when ``interval`` has passed since the last one."""
        if not self.enabled or self._bar is not None:
            return
        now = self.clock()
        if now - self._last >= self.interval and (self.total is None or self.done < self.total):
            self._last = now
            self._line(now, status or {})

    def _line(self, now, status):
        rate = self.done / max(now - self._start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 and self.total else None
        self.log.info(
            "%s: %d of %d %ss (%d%%), %.2f %ss/s, about %s left",
            self.desc,
            self.done,
            self.total or 0,
            self.unit,
            100 * self.done // max(self.total or 0, 1),
            rate,
            self.unit,
            format_duration(left),
        )

    def close(self) -> None:
        """End the segment (the bar shows its final count, then is cleared)."""
        self._end_bar()

    def _end_bar(self):
        if self._bar is not None:
            self._bar.refresh()  # the final count, whatever tqdm's redraw interval skipped
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False


class SegmentProgress(Progress):
    """Counted steps in segments (epochs of batches, passes over volumes), started with :meth:`start`.

    Log lines read ``"epoch 1/3, batch 30/100: loss 0.1234 (60 s)"``: the segment, the
    step count and the status passed to :meth:`update`, and the seconds of the segment.
    """

    def __init__(
        self,
        unit: str = "step",
        log: logging.Logger = LOGGER,
        interval: float = LOG_INTERVAL,
        stream: IO[str] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(None, "", unit, log, interval, stream, clock)

    def _line(self, now, status):
        shown = ", ".join(f"{k} {v}" for k, v in status.items())
        self.log.info(
            "%s, %s %d%s%s (%.0f s)",
            self.desc,
            self.unit,
            self.done,
            f"/{self.total}" if self.total else "",
            f": {shown}" if shown else "",
            now - self._start,
        )


class ByteProgress(Progress):
    """Thread-safe download progress: bytes, rate, ETA and files.

    Status lines (see :meth:`render`) go to ``stream``, the command's own output: one at
    the first bytes, then at most one every ``interval`` seconds, and a last one on
    :meth:`close`.

    Parameters
    ----------
    total_bytes, total_files : int
        What the download plan holds.
    stream : file-like, optional
        Where progress is shown (default: ``sys.stderr``).
    enabled : bool
        False: count only, show nothing.
    interval : float
        Seconds between two status lines when ``stream`` is not a terminal.
    clock : callable
        ``time.monotonic``; replaceable in tests.
    """

    total: int  # always known for a download

    def __init__(
        self,
        total_bytes: int,
        total_files: int,
        stream: IO[str] | None = None,
        enabled: bool = True,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.total_files = int(total_files)
        self.transferred = 0
        self.done_files = 0
        self._lock = threading.Lock()
        super().__init__(total_bytes, "download", "B", interval=interval, stream=stream, clock=clock, enabled=enabled)
        self._last = float("-inf")  # the first bytes are shown at once

    def _open_bar(self, **options):
        return super()._open_bar(unit_scale=True, unit_divisor=1024, leave=True, postfix=f"files 0/{self.total_files}")

    @property
    def done_bytes(self) -> int:
        """Bytes done (downloaded, or found on disk)."""
        return self.done

    def add(self, nbytes: int, transferred: bool = True) -> None:
        """Count ``nbytes`` more as done (``transferred=False``: found on disk, e.g. resumed)."""
        with self._lock:
            if transferred:
                self.transferred += nbytes
            self.update(nbytes)

    def rewind(self, nbytes: int) -> None:
        """Un-count ``nbytes`` (a temp file was discarded)."""
        with self._lock:
            self.update(-nbytes)

    def file_done(self) -> None:
        """Count one more file as complete."""
        with self._lock:
            self.done_files += 1
            if self._bar is not None:
                self._bar.set_postfix_str(f"files {self.done_files}/{self.total_files}", refresh=False)
            self._tick()

    def eta(self) -> float | None:
        """Seconds left at the rate of this session, or None when unknown."""
        elapsed = self.clock() - self._start
        if self.transferred <= 0 or elapsed <= 0:
            return None
        return max(self.total - self.done, 0) / (self.transferred / elapsed)

    def render(self, width: int = 24) -> str:
        """One status line: bar, percentage, bytes, rate, ETA, files."""
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(width * min(max(fraction, 0.0), 1.0)))
        elapsed = max(self.clock() - self._start, 1e-9)
        return (
            f"[{'#' * filled}{'-' * (width - filled)}] {100 * fraction:5.1f}% "
            f"{format_bytes(self.done)} / {format_bytes(self.total)} "
            f"{format_bytes(self.transferred / elapsed)}/s ETA {format_duration(self.eta())} "
            f"files {self.done_files}/{self.total_files}"
        )

    def _line(self, now, status):
        self.stream.write(self.render() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Show the final state (the bar closed, or a last status line)."""
        with self._lock:
            if not self.enabled:
                return
            if self._bar is not None:
                self._end_bar()
            else:
                self._line(self.clock(), {})


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``"0:01:15"`` (hours:minutes:seconds); None (unknown) -> ``"--:--"``."""
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False

"""What the user sees of a download: a progress bar on a terminal, a periodic line otherwise.

On a terminal (``stream.isatty()``) a tqdm bar shows bytes, rate, ETA and files and is
redrawn in place.  Elsewhere (a log file, CI, a batch job) one status line is written at
most every :data:`LOG_INTERVAL` seconds, so a long download never floods a log and never
stays silent for long.
"""

import sys
import threading
import time

#: Seconds between two status lines when the stream is not a terminal.
LOG_INTERVAL = 60.0


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``"0:01:15"``; None -> ``"--:--"``."""
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Thread-safe download progress: bytes, rate, ETA and files.

    Parameters
    ----------
    total_bytes, total_files : int
        What the download plan holds.
    stream : file-like, optional
        Where progress is shown (default: ``sys.stderr``).
    enabled : bool
        False: count only, show nothing.
    log_interval : float
        Seconds between two status lines when ``stream`` is not a terminal.
    clock : callable
        ``time.monotonic``; replaceable in tests.
    """

    def __init__(
        self, total_bytes, total_files, stream=None, enabled=True, log_interval=LOG_INTERVAL, clock=time.monotonic
    ):
        self.total_bytes = int(total_bytes)
        self.total_files = int(total_files)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_interval = log_interval
        self.done_bytes = 0
        self.transferred = 0
        self.done_files = 0
        self._start = clock()
        self._last_line = None
        self._lock = threading.Lock()
        self._bar = None
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream,
                dynamic_ncols=True,
                desc="download",
                postfix=f"files 0/{self.total_files}",
            )

    def add(self, nbytes, transferred=True):
        """Count ``nbytes`` more as done (``transferred=False``: found on disk, e.g. resumed)."""
        with self._lock:
            self.done_bytes += nbytes
            if transferred:
                self.transferred += nbytes
            self._show()

    def rewind(self, nbytes):
        """Un-count ``nbytes`` (a temp file was discarded)."""
        with self._lock:
            self.done_bytes -= nbytes
            self._show()

    def file_done(self):
        """Count one more file as complete."""
        with self._lock:
            self.done_files += 1
            if self._bar is not None:
                self._bar.set_postfix_str(f"files {self.done_files}/{self.total_files}", refresh=False)
            self._show()

    def eta(self):
        """Seconds left at the rate of this session, or None when unknown."""
        elapsed = self.clock() - self._start
        if self.transferred <= 0 or elapsed <= 0:
            return None
        rate = self.transferred / elapsed
        return max(self.total_bytes - self.done_bytes, 0) / rate

    def render(self, width=24):
        """One status line: bar, percentage, bytes, rate, ETA, files."""
        fraction = self.done_bytes / self.total_bytes if self.total_bytes else 1.0
        filled = int(round(width * min(max(fraction, 0.0), 1.0)))
        elapsed = max(self.clock() - self._start, 1e-9)
        return (
            f"[{'#' * filled}{'-' * (width - filled)}] {100 * fraction:5.1f}% "
            f"{format_bytes(self.done_bytes)} / {format_bytes(self.total_bytes)} "
            f"{format_bytes(self.transferred / elapsed)}/s ETA {format_duration(self.eta())} "
            f"files {self.done_files}/{self.total_files}"
        )

    def _show(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self.done_bytes - self._bar.n)  # negative after a rewind
            return
        now = self.clock()
        if self._last_line is None or now - self._last_line >= self.log_interval:
            self._last_line = now
            self._write_line()

    def _write_line(self):
        self.stream.write(self.render() + "\n")
        self.stream.flush()

    def close(self):
        """Show the final state (the bar closed, or a last status line)."""
        with self._lock:
            if not self.enabled:
                return
            if self._bar is not None:
                self._bar.update(self.done_bytes - self._bar.n)
                self._bar.close()
            else:
                self._write_line()

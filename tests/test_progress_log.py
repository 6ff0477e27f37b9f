"""Participant-run progress: at most one log line a minute off a terminal, a bar on one."""

import io
import logging

from deeplight_bids.progress import Progress


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_lines_at_most_one_a_minute(caplog):
    clock = _Clock()
    log = logging.getLogger("deeplight_bids.test_progress")
    with caplog.at_level(logging.INFO, logger=log.name):
        with Progress(100, "sub-01_task-motor", log=log, stream=io.StringIO(), clock=clock) as progress:
            for _ in range(50):  # 50 steps of 2 volumes, 5 s each: 250 s in all
                clock.now += 5.0
                progress.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # at 60, 120, 180 and 240 s; none at the end (the run's own line says it)
    assert lines[0].startswith("sub-01_task-motor: 24 of 100 volumes (24%), 0.40 volumes/s, about")


def test_bar_on_a_terminal(caplog):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="deeplight_bids"):
        with Progress(10, "run", stream=stream, interval=0.0) as progress:
            progress.update(10)
    assert "run:" in stream.getvalue() and "/10 [" in stream.getvalue()  # the bar was drawn
    assert not caplog.records  # the bar replaces the log lines


def test_log_lines_follow_the_current_stderr():
    """The terminal handler writes to the ``sys.stderr`` of the moment, not to the one it was set up under: a
    stream replaced and closed since (a notebook cell, a test's captured stderr) must not turn every later log
    line into a "Logging error"."""
    import contextlib
    import io
    import logging

    from deeplight_bids.runtime import setup_logging

    log = logging.getLogger("deeplight_bids")
    first, later = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(first):
        setup_logging()
        log.info("first line")
    first.close()
    with contextlib.redirect_stderr(later):
        log.info("later line")
    assert "later line" in later.getvalue() and "Logging error" not in later.getvalue()

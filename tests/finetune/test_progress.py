"""Training progress: a bar on a terminal, at most one log line a minute otherwise (issue 17)."""

import io
import logging

from deeplight_bids.models.train import _make_progress
from deeplight_bids.progress import LOG_INTERVAL


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _train(callback, epochs, batches, clock, step):
    callback.set_params({"epochs": epochs, "steps": batches, "verbose": 0})
    for epoch in range(epochs):
        callback.on_epoch_begin(epoch)
        for batch in range(batches):
            clock[0] += step
            callback.on_train_batch_end(batch, {"loss": 1.0 / (batch + 1), "accuracy": 0.5})
        callback.on_epoch_end(epoch, {"loss": 0.1})
    callback.on_train_end()


def test_log_lines_at_most_once_a_minute(caplog):
    clock = [0.0]
    log = logging.getLogger("deeplight_bids.test_progress")
    caplog.set_level(logging.INFO, logger=log.name)
    callback = _make_progress(3, log, stream=io.StringIO(), clock=lambda: clock[0])
    _train(callback, epochs=3, batches=100, clock=clock, step=2.0)  # 600 s of training, a batch every 2 s
    lines = [r.getMessage() for r in caplog.records]
    assert 600 / LOG_INTERVAL - 1 <= len(lines) <= 600 / LOG_INTERVAL  # never silent for long, never more than 1/min
    assert all("batch" in line and "/100" in line and "loss" in line for line in lines), lines
    assert lines[0].startswith("epoch 1/3, batch 30/100")  # the first after one minute


def test_bar_on_a_terminal_and_no_log_lines(caplog):
    clock = [0.0]
    stream = _Terminal()
    log = logging.getLogger("deeplight_bids.test_progress")
    caplog.set_level(logging.INFO, logger=log.name)
    callback = _make_progress(2, log, stream=stream, clock=lambda: clock[0])
    _train(callback, epochs=2, batches=5, clock=clock, step=100.0)
    text = stream.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "5/5" in text and "\r" in text
    assert not caplog.records


def test_step_progress_throttles_across_segments_and_counts_volumes(caplog):
    from deeplight_bids.progress import SegmentProgress

    clock = [0.0]
    log = logging.getLogger("deeplight_bids.test_progress")
    caplog.set_level(logging.INFO, logger=log.name)
    progress = SegmentProgress("volume", log, stream=io.StringIO(), clock=lambda: clock[0])
    for segment in range(3):  # three passes of 50 s each: lines at 60 s and 120 s only
        progress.start(10, f"pass {segment + 1}")
        for _ in range(10):
            clock[0] += 5.0
            progress.update(1)
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["pass 2, volume 2/10 (10 s)", "pass 3, volume 4/10 (20 s)"]

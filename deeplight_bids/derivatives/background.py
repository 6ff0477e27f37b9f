"""A writer's ``write`` calls in a thread beside the network, through a bounded queue."""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

LOGGER = logging.getLogger("deeplight_bids")


class BackgroundWriter:
    """Run a writer's ``write`` calls in a thread beside the network, through a bounded queue.

    Parameters
    ----------
    target : object
        Has ``write(start, volumes)``, ``close()`` and ``abort()`` (e.g. :class:`RunRelevanceOutputs`).
    max_pending : int
        Batches waiting at most; :meth:`write` blocks when the queue is full, so memory
        stays bounded (``max_pending`` batches of maps).

    Notes
    -----
    An error in the thread is raised again, unchanged, by the next :meth:`write` or by
    :meth:`close` (the run stops with it); :meth:`close` and :meth:`abort` wait for the
    thread, and the target's own atomic writes mean nothing partial lies under a final name.
    """

    _STOP = object()

    def __init__(self, target: Any, max_pending: int = 2):
        # duck-typed: RunRelevanceOutputs, or any object with write/read/close/abort (and finish)
        self.target = target
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="deeplight-relevance-writer", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self.error is None:  # after an error, drain without writing so that producers never block
                try:
                    self.target.write(*item)
                except BaseException as err:  # noqa: BLE001  (re-raised in the main thread)
                    self.error = err
            self._queue.task_done()

    def write(self, start: int, volumes: np.ndarray) -> None:
        """Queue ``volumes`` ``(n, x, y, z)`` for time indices ``start ..`` (a copy is not made: do not reuse them)."""
        if self.error is not None:
            raise self.error
        self._queue.put((start, volumes))

    def read(self, index: int) -> np.ndarray:
        """Volume ``index`` as written, ``(z, y, x)``: waits for the queued writes first."""
        self._queue.join()
        if self.error is not None:
            raise self.error
        return self.target.read(index)

    def _join(self):
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()

    def close(self) -> Any:
        """Wait for the queued writes, then close the target; the thread's error, if any, is raised."""
        self._join()
        if self.error is not None:
            raise self.error
        result = self.target.close()
        busy = getattr(self.target, "busy_s", None)
        if busy is not None:
            LOGGER.info("relevance writer: %.1f s of compression and writes, beside the network", busy)
        return result

    def abort(self) -> None:
        self._join()
        self.target.abort()

    def finish(self, sidecar: Mapping[str, Any]) -> Any:
        return self.target.finish(sidecar)

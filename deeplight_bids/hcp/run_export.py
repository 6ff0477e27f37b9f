"""The participant level's ``--save-tfrecords`` hook: one run's prepared volumes in the original TFRecord schema."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from deeplight_bids.derivatives import naming
from deeplight_bids.hcp.tfrecord import hcp_run_id, hcp_task_id, write_run_tfrecord
from deeplight_bids.states import HCP_STATES, hcp_task_name

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence
    from pathlib import Path

    import numpy as np

    from deeplight_bids.bids.discover import Run

LOGGER = logging.getLogger("deeplight_bids")


def save_run_tfrecords(
    run: Run,
    volumes: Callable[[int, int], np.ndarray],
    labels: Sequence[str | None],
    output_dir: str | os.PathLike[str],
    log: logging.Logger = LOGGER,
) -> Path | None:
    """Export a run's prepared, labelled volumes (reference §9) to ``OUTPUT_DIR/tfrecords/sub-<l>/``.

    Parameters
    ----------
    run : deeplight_bids.bids.discover.Run
        Its task must be an HCP task and its participant label numeric (the schema stores
        both as integers); otherwise nothing is written and a warning says why.
    volumes : callable
        ``volumes(start, stop)`` -> ``(n, 91, 109, 91)`` float32, the prepared run
        (:meth:`PreparedRun.volumes`).
    labels : sequence of (str or None)
        State per volume (HCP vocabulary; None: unlabelled).
    output_dir : path-like

    Returns
    -------
    pathlib.Path or None
        The file written.
    """
    task = hcp_task_name(run.entities["task"])
    subject = str(run.subject)
    if task is None or not subject.isdigit():
        log.warning(
            "%s: --save-tfrecords needs an HCP task and a numeric participant label (the original "
            "schema stores both as integers); no TFRecord written",
            run.label,
        )
        return None
    states = [HCP_STATES.index(s) if s in HCP_STATES else -1 for s in labels]
    direction = str(run.entities.get("direction", "")).upper()
    run_id = hcp_run_id(direction) if direction in ("LR", "RL") else int(run.entities.get("run") or 0)
    path = naming.tfrecord_output(output_dir, subject, run.label)
    # a prepared run has its t_r (Run.t_r is None only for runs skipped before preparation)
    n_written = write_run_tfrecord(path, volumes, states, hcp_task_id(task), int(subject), run_id, run.repetition_time)
    log.info("%s: wrote %s labelled volumes to %s", run.label, n_written, path)
    return path

"""Decisions a participant job takes after discovery and before any compute.

* which runs cannot be processed at all (:func:`no_runs_error`: a short message, the full
  table in the log and ``OUTPUT_DIR/logs/``);
* how each source space reaches the reference grid (:class:`prepare.spaces.SpacePlan`:
  transform files fetched and checked now, not after the first run's compute);
* which trial types label which model state (:func:`prepare.labels.plan_labels`: a
  ``--state-map`` naming a state, task or trial type that does not exist is an input
  error now; a task whose labels map to nothing gets one warning with an example).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from deeplight_bids.exceptions import NoRunsFoundError

if TYPE_CHECKING:
    from deeplight_bids.bids.discover import Run
    from deeplight_bids.config import Config
    from deeplight_bids.prepare.labels import LabelPlan
    from deeplight_bids.prepare.spaces import SpacePlan

LOGGER = logging.getLogger("deeplight_bids")


def plural(count: int, word: str, words: str | None = None) -> str:
    """``"1 volume"``, ``"2 volumes"``."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def no_runs_error(
    bids_dir: str | os.PathLike,
    runs: Sequence[Run],
    table_path: str | os.PathLike | None = None,
    shown: int = 3,
) -> NoRunsFoundError:
    """The error for a job in which no run can be processed: runs grouped by reason, at most ``shown`` reasons.

    Parameters
    ----------
    bids_dir : path
    runs : list of deeplight_bids.bids.discover.Run
        All discovered runs (every one with a ``skip_reason``).
    table_path : path or None
        Where the full run table was written.

    Returns
    -------
    NoRunsFoundError
    """
    groups: dict[str | None, list[str]] = {}
    for run in runs:
        groups.setdefault(run.skip_reason, []).append(run.label)
    parts = []
    for reason, labels in list(groups.items())[:shown]:
        who = labels[0] if len(labels) == 1 else f"{labels[0]} and {plural(len(labels) - 1, 'more run')}"
        parts.append(f"{who}: {reason}")
    more = len(groups) - shown
    tail = f"; {plural(more, 'other reason')}" if more > 0 else ""
    where = f"; full table in {table_path}" if table_path else "; full table in the log above"
    return NoRunsFoundError(
        f"{bids_dir}: no run can be processed ({plural(len(runs), 'run')} skipped) - "
        + " | ".join(parts)
        + tail
        + where
    )


def plan_before_compute(
    config: Config,
    todo: Sequence[Run],
    model_states: Sequence[str],
    user_state_map: Mapping[str, Mapping[str, str]] | None,
    dataset_tasks: Sequence[str] | None,
    log: logging.Logger = LOGGER,
) -> tuple[SpacePlan, LabelPlan]:
    """Space plan and label plan of a job; raises an input error before anything is computed.

    Returns
    -------
    (deeplight_bids.prepare.spaces.SpacePlan, deeplight_bids.prepare.labels.LabelPlan)
    """
    from deeplight_bids.prepare.labels import plan_labels  # deferred: loads pandas
    from deeplight_bids.prepare.spaces import SpacePlan  # deferred: loads nibabel and SciPy

    labels = plan_labels(todo, model_states, user_state_map, config.inputs.state_map_file, dataset_tasks)
    log.info("labels (trial type -> model state; '-': labels nothing):\n%s", labels.table())
    warning = labels.warning()
    if warning:
        log.warning("%s", warning)
    spaces = SpacePlan(allow_approximate=config.inputs.allow_approximate_space)
    spaces.prepare({r.space for r in todo})  # type: ignore[misc]  # a run to process has its space
    return spaces, labels


def source_space(run: Run) -> dict[str, str | None]:
    """``SourceSpace`` of the sidecars: the preprocessed BOLD's space and resolution."""
    return {"Space": run.space, "Resolution": None if run.res is None else str(run.res)}

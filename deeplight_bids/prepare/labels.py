"""From ``events.tsv`` to one cognitive-state label per volume (reference section 3).

Volume ``i`` of a run is acquired at ``t_i = i * TR`` (seconds).  It gets the label of
an event with onset ``o`` and duration ``d`` (seconds) when::

    o + TR <= t_i <= o + d + 2 * TR

i.e. the first volume of the event is dropped and one volume after its end is added,
to allow for the haemodynamic delay.  Both bounds are inclusive and compared with a
tolerance of :data:`TIME_TOLERANCE` seconds, so onsets written with rounding
(``12.000001``) behave as the round number.

Choices where the reference is silent (also in the README):

* **Overlaps**: where the windows of two *mapped* events overlap, the event with the
  later onset wins; for equal onsets the row further down in ``events.tsv`` wins.
* **Unmapped trial types** (not in the state map, e.g. HCP ``cue``) are ignored before
  labelling, as the original ignored ``cue.txt``: they neither label volumes nor
  overwrite a mapped event's volumes.  Volumes in no mapped event are ``None``
  (written as ``n/a``), and are still decoded.
* Events that end before the run or start after its end simply label nothing.
* Rows whose ``trial_type`` is ``n/a`` (or empty) are dropped when reading.

State maps come from :func:`resolve_state_map`: a user JSON map
(``{"<task>": {"<trial_type>": "<state>"}}``) for the task, else the HCP vocabulary
(:func:`deeplight_bids.states.hcp_state_map`), else nothing is mapped.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from deeplight_bids.exceptions import EventsError, InputDataError
from deeplight_bids.states import hcp_state_map

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Mapping, Sequence

    from deeplight_bids.bids.discover import Run

__all__ = [
    "TIME_TOLERANCE",
    "LabelPlan",
    "load_state_map_file",
    "plan_labels",
    "read_events",
    "resolve_state_map",
    "unmapped_trial_types",
    "volume_labels",
]

#: Tolerance (seconds) used when comparing volume times with event windows.
TIME_TOLERANCE = 1e-6

LOGGER = logging.getLogger("deeplight_bids")

_NA_STRINGS = ("n/a", "")
_REQUIRED = ("onset", "duration")


def read_events(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a BIDS ``events.tsv`` file.

    Parameters
    ----------
    path : str or pathlib.Path
        Tab-separated file with at least the columns ``onset``, ``duration`` (seconds)
        and ``trial_type``.

    Returns
    -------
    pandas.DataFrame
        Columns ``onset`` (float, s), ``duration`` (float, s) and ``trial_type`` (str),
        in file order, index ``0..n-1``.  Rows whose ``trial_type`` is ``n/a`` (or
        empty) are dropped; the result may then be empty.

    Raises
    ------
    deeplight_bids.exceptions.EventsError
        File missing or unreadable, no rows, a required column missing, an onset or
        duration that is ``n/a`` or not a finite number, or a negative duration.
        The one-line message names the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise EventsError(f"{path}: events file not found; add the run's *_events.tsv (onset, duration, trial_type).")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise EventsError(
            f"{path}: events file is empty; write a header 'onset duration trial_type' and one row per event."
        ) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise EventsError(f"{path}: cannot read as a tab-separated file ({exc}); save it as UTF-8 TSV.") from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in _REQUIRED:
        if column not in table.columns:
            raise EventsError(
                f"{path}: no '{column}' column (found: {', '.join(table.columns)}); "
                "events.tsv needs tab-separated columns onset, duration, trial_type."
            )
    if "trial_type" not in table.columns:
        raise EventsError(
            f"{path}: no 'trial_type' column (found: {', '.join(table.columns)}); "
            "add a trial_type column naming each event's condition."
        )
    if len(table) == 0:
        raise EventsError(f"{path}: events file has a header but no events; add one row per event.")

    trial_type = table["trial_type"].astype(str).str.strip()
    keep = ~trial_type.isin(_NA_STRINGS)
    out = pd.DataFrame(
        {
            "onset": _numeric_column(table["onset"], "onset", path),
            "duration": _numeric_column(table["duration"], "duration", path),
            "trial_type": trial_type.astype(object),
        }
    )
    negative = out["duration"] < 0
    if negative.any():
        row = int(np.flatnonzero(negative.to_numpy())[0])
        raise EventsError(
            f"{path}: negative duration {out['duration'].iloc[row]} in data row {row + 1}; "
            "durations must be >= 0 seconds."
        )
    if not keep.any():
        LOGGER.warning(
            "%s: trial_type is n/a in all %d row(s): no volume of this run gets a state (accuracy n/a, no mean "
            "maps from it); fill in each event's condition in trial_type.",
            path,
            len(table),
        )
    return out[keep.to_numpy()].reset_index(drop=True)


def _numeric_column(values, name, path):
    """Convert a column of strings to finite floats or raise EventsError."""
    result = np.empty(len(values), dtype=float)
    for row, text in enumerate(values.astype(str)):
        text = text.strip()
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            shown = text if text else "<empty>"
            raise EventsError(
                f"{path}: {name} '{shown}' in data row {row + 1} is not a number; "
                f"every event needs a numeric {name} in seconds."
            )
        result[row] = number
    return result


def volume_labels(events: pd.DataFrame, n_volumes: int, t_r: float, state_map: Mapping[str, str]) -> np.ndarray:
    """Label each volume of a run with a cognitive state (reference section 3).

    Parameters
    ----------
    events : pandas.DataFrame
        Columns ``onset``, ``duration`` (seconds) and ``trial_type``, e.g. from
        :func:`read_events`.
    n_volumes : int
        Number of volumes in the run (>= 0).
    t_r : float
        Repetition time in seconds (> 0); volume ``i`` is at ``i * t_r``.
    state_map : dict
        ``trial_type -> state name``.  Trial types not in it are ignored.

    Returns
    -------
    numpy.ndarray of object, shape (n_volumes,)
        State name (str) per volume, or None where no mapped event covers it.
        Volume ``i`` takes the state of an event when
        ``onset + t_r <= i * t_r <= onset + duration + 2 * t_r`` (inclusive, within
        :data:`TIME_TOLERANCE`); where mapped events overlap, the later onset wins
        (equal onsets: the later row).
    """
    if isinstance(n_volumes, bool) or not isinstance(n_volumes, (int, np.integer)) or n_volumes < 0:
        raise ValueError(f"n_volumes must be a non-negative integer, got {n_volumes!r}.")
    t_r = check_t_r(t_r)
    for column in ("onset", "duration", "trial_type"):
        if column not in events.columns:
            raise ValueError(f"events needs columns onset, duration, trial_type; '{column}' is missing.")

    labels = np.full(int(n_volumes), None, dtype=object)
    if n_volumes == 0 or len(events) == 0:
        return labels
    times = np.arange(int(n_volumes)) * t_r
    rows = labelled_events(events, state_map)
    onsets = rows["onset"].to_numpy(dtype=float)
    durations = rows["duration"].to_numpy(dtype=float)
    for onset, duration, trial_type in zip(onsets, durations, rows["trial_type"].to_numpy()):
        start, stop = labelling_window(onset, duration, t_r)
        labels[(times >= start) & (times <= stop)] = state_map[trial_type]
    return labels


def labelled_events(events: pd.DataFrame, state_map: Mapping[str, str]) -> pd.DataFrame:
    """The events whose trial type maps to a state, by onset.

    The sort is stable: equal onsets keep file order, so where windows overlap the later row is
    applied last and wins (the labels and the relevance blocks alike).
    """
    mapped = events[events["trial_type"].isin(list(state_map))]
    return mapped.iloc[np.argsort(mapped["onset"].to_numpy(dtype=float), kind="stable")]


def labelling_window(onset: float, duration: float, t_r: float) -> tuple[float, float]:
    """``(start, stop)``, in seconds, of the volumes an event labels (both included; the module docstring).

    From one TR after the onset to two TRs after the onset plus duration (the haemodynamic delay), widened by
    :data:`TIME_TOLERANCE` against rounding of onsets and repetition times.
    """
    return onset + t_r - TIME_TOLERANCE, onset + duration + 2.0 * t_r + TIME_TOLERANCE


def check_t_r(t_r: Any) -> float:  # Any: it validates an unchecked value (metadata, argument)
    """``t_r`` as a float number of seconds; ``ValueError`` unless it is a positive finite number."""
    try:
        value = float(t_r)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"t_r must be a positive number of seconds, got {t_r!r}.")
    return value


def unmapped_trial_types(events: pd.DataFrame, state_map: Mapping[str, str]) -> list[str]:
    """Trial types of ``events`` that ``state_map`` does not map.

    Parameters
    ----------
    events : pandas.DataFrame
        With a ``trial_type`` column.
    state_map : dict
        ``trial_type -> state name``.

    Returns
    -------
    list of str
        Sorted, without duplicates (e.g. ``["cue"]`` for HCP MOTOR).
    """
    return sorted({str(t) for t in events["trial_type"] if t not in state_map})


def resolve_state_map(task: str, user_map: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
    """The ``trial_type -> state`` map used for a task.

    Parameters
    ----------
    task : str
        BIDS task label (e.g. ``"motor"``).
    user_map : dict or None
        ``{task: {trial_type: state}}`` as returned by :func:`load_state_map_file`.
        The task is looked up exactly, then case-insensitively.

    Returns
    -------
    dict
        The user's map for the task if it has one (it replaces, not extends, the HCP
        map); else :func:`deeplight_bids.states.hcp_state_map` for HCP tasks (state
        names such as ``"MOTOR_lh"``; aliases such as ``win_event`` included); else
        an empty dict (nothing mapped: every volume unlabeled).
    """
    if user_map:
        if task in user_map:
            return dict(user_map[task])
        folded = {str(key).lower(): value for key, value in user_map.items()}
        if str(task).lower() in folded:
            return dict(folded[str(task).lower()])
    return hcp_state_map(task)


def load_state_map_file(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Read a user state map from JSON.

    The file holds ``{"<task>": {"<trial_type>": "<state>", ...}, ...}``.  A state of
    ``null`` marks a trial type as deliberately unmapped (it is left out).

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    dict
        ``{task: {trial_type: state}}`` with str keys and values.

    Raises
    ------
    deeplight_bids.exceptions.InputDataError
        Missing file, invalid JSON, or another structure; one line naming the file.
    """
    path = Path(path)
    example = '{"motor": {"left_hand": "MOTOR_lh"}}'
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputDataError(f"{path}: state-map file not found; pass a JSON file like {example}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{path}: cannot read the state-map file ({exc}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputDataError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); expected e.g. {example}."
        ) from None
    if not isinstance(data, dict) or not data:
        raise InputDataError(f"{path}: the state map must be a non-empty JSON object of tasks, e.g. {example}.")
    result = {}
    for task, mapping in data.items():
        if not isinstance(mapping, dict):
            raise InputDataError(f"{path}: task '{task}' must map to an object of trial_type -> state, e.g. {example}.")
        clean = {}
        for trial_type, state in mapping.items():
            if state is None:
                continue
            if not isinstance(state, str) or not state.strip():
                raise InputDataError(
                    f"{path}: task '{task}', trial_type '{trial_type}': the state must be a non-empty string "
                    f"or null, got {state!r}."
                )
            clean[str(trial_type)] = state.strip()
        result[str(task)] = clean
    return result


@dataclass
class TaskLabels:
    """How one task's trial types become model states (decided before any compute).

    Attributes
    ----------
    task : str
    trial_types : list of str
        Every trial type in the task's events files (sorted).
    state_map : dict
        ``trial_type -> state`` used (the user's map, else the HCP vocabulary).
    to_model : dict
        The trial types that label volumes with a state the model can output.
    """

    task: str
    trial_types: list
    state_map: dict
    to_model: dict

    @property
    def unmapped(self) -> list[str]:
        return [t for t in self.trial_types if t not in self.to_model]


@dataclass
class LabelPlan:
    """Per task: trial types and the model states they map to (see :func:`plan_labels`)."""

    tasks: list
    model_states: tuple
    source: str = "HCP vocabulary"

    @property
    def unlabelled_tasks(self) -> list[TaskLabels]:
        return [t for t in self.tasks if not t.to_model]

    def table(self) -> str:
        """Plain-text table: task, trial type, model state (or ``-`` when it labels nothing)."""
        lines = [f"{'task':<20} {'trial_type':<28} model state ({self.source})"]
        for task in self.tasks:
            for trial_type in task.trial_types or ["(no events read)"]:
                lines.append(f"{task.task:<20} {trial_type:<28} {task.to_model.get(trial_type, '-')}")
        return "\n".join(lines)

    def warning(self) -> str | None:
        """The one warning for tasks none of whose trial types maps to a model state (None: no such task)."""
        empty = self.unlabelled_tasks
        if not empty:
            return None
        example = json.dumps({t.task: state_map_example(t.trial_types, self.model_states) for t in empty})
        names = ", ".join(t.task for t in empty)
        return (
            f"task(s) {names}: no trial type maps to a model state, so volumes are decoded but no accuracy "
            f"can be computed (the model's states: {', '.join(self.model_states)}). To label them, pass "
            f"--state-map FILE with e.g. {example} (choose the states that fit)."
        )


def state_map_example(trial_types: Iterable[str], model_states: Iterable[str]) -> dict[str, str]:
    """``{trial_type: state}``: each trial type paired with a model state in turn (a template to edit)."""
    states = list(model_states) or ["<state>"]
    return {t: states[i % len(states)] for i, t in enumerate(trial_types)}


def plan_labels(
    runs: Iterable[Run],
    model_states: Iterable[str],
    user_map: Mapping[str, Mapping[str, str]] | None = None,
    state_map_path: str | os.PathLike[str] | None = None,
    dataset_tasks: Sequence[str] | None = None,
) -> LabelPlan:
    """Decide, before any compute, which trial types label which model state, per task.

    Parameters
    ----------
    runs : list of deeplight_bids.bids.discover.Run
        The runs to process (``entities["task"]`` and ``events`` are used; events files
        that cannot be read are left to the run's own error).
    model_states : sequence of str
        The model's output states.
    user_map : dict or None
        ``{task: {trial_type: state}}`` from :func:`load_state_map_file`.
    state_map_path : path or None
        Named in error messages.
    dataset_tasks : sequence of str or None
        Every task of the dataset (a user map naming another task is an error).

    Returns
    -------
    LabelPlan

    Raises
    ------
    deeplight_bids.exceptions.InputDataError
        ``user_map`` names a state the model lacks, a task not in the dataset, or a trial
        type not in that task's events: one line listing the valid names.
    """
    model_states = tuple(model_states)
    by_task: dict[str, set[str]] = {}
    for run in runs:
        types = by_task.setdefault(run.entities["task"], set())
        if run.events is None:
            continue
        try:
            types.update(str(t) for t in read_events(run.events)["trial_type"])
        except EventsError:
            continue
    if user_map:
        _check_user_map(user_map, by_task, model_states, state_map_path, dataset_tasks)
    tasks = []
    for task in sorted(by_task):
        state_map = resolve_state_map(task, user_map)
        trial_types = sorted(by_task[task])
        to_model = {t: state_map[t] for t in trial_types if state_map.get(t) in model_states}
        tasks.append(TaskLabels(task, trial_types, state_map, to_model))
    source = "--state-map, else HCP vocabulary" if user_map else "HCP vocabulary"
    return LabelPlan(tasks, model_states, source)


def _check_user_map(user_map, by_task, model_states, path, dataset_tasks):
    where = f"{path}: " if path else "--state-map: "
    bad_states = sorted({s for mapping in user_map.values() for s in mapping.values() if s not in model_states})
    if bad_states:
        raise InputDataError(
            f"{where}state(s) {', '.join(bad_states)} not among the model's states; valid: {', '.join(model_states)}."
        )
    known_tasks = {str(t).lower(): str(t) for t in (dataset_tasks or by_task)}
    unknown = sorted(t for t in user_map if str(t).lower() not in known_tasks)
    if unknown:
        raise InputDataError(
            f"{where}task(s) {', '.join(unknown)} not in the dataset; valid: {', '.join(sorted(known_tasks.values()))}."
        )
    folded = {str(t).lower(): t for t in by_task}
    for task, mapping in user_map.items():
        actual = folded.get(str(task).lower())
        if actual is None or not by_task[actual]:
            continue  # task not selected in this job (or its events unreadable): nothing to compare with
        missing = sorted(t for t in mapping if t not in by_task[actual])
        if missing:
            raise InputDataError(
                f"{where}task {task}: trial type(s) {', '.join(missing)} not in its events files; "
                f"valid: {', '.join(sorted(by_task[actual]))}."
            )

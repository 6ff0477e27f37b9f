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

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from deeplight_bids.exceptions import EventsError, InputDataError
from deeplight_bids.states import hcp_state_map

__all__ = [
    "TIME_TOLERANCE",
    "load_state_map_file",
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


def read_events(path):
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
            "maps from it); fill in each event's condition in trial_type.", path, len(table))
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


def volume_labels(events, n_volumes, t_r, state_map):
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
    t_r = _check_t_r(t_r)
    for column in ("onset", "duration", "trial_type"):
        if column not in events.columns:
            raise ValueError(f"events needs columns onset, duration, trial_type; '{column}' is missing.")

    labels = np.full(int(n_volumes), None, dtype=object)
    if n_volumes == 0 or len(events) == 0:
        return labels
    times = np.arange(int(n_volumes)) * t_r
    mapped = events[events["trial_type"].isin(list(state_map))]
    # Stable sort: equal onsets keep file order, so the later row is applied last and wins.
    order = np.argsort(mapped["onset"].to_numpy(dtype=float), kind="stable")
    onsets = mapped["onset"].to_numpy(dtype=float)[order]
    durations = mapped["duration"].to_numpy(dtype=float)[order]
    trial_types = mapped["trial_type"].to_numpy()[order]
    for onset, duration, trial_type in zip(onsets, durations, trial_types):
        start = onset + t_r - TIME_TOLERANCE
        stop = onset + duration + 2.0 * t_r + TIME_TOLERANCE
        inside = (times >= start) & (times <= stop)
        labels[inside] = state_map[trial_type]
    return labels


def _check_t_r(t_r):
    try:
        value = float(t_r)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"t_r must be a positive number of seconds, got {t_r!r}.")
    return value


def unmapped_trial_types(events, state_map):
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


def resolve_state_map(task, user_map=None):
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


def load_state_map_file(path):
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
            raise InputDataError(
                f"{path}: task '{task}' must map to an object of trial_type -> state, e.g. {example}."
            )
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

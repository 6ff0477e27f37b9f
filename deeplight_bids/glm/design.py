"""From a run's events to the states of its first-level GLM design, or the reason there is none.

The GLM models the same states as the decoder's labels: each trial type is mapped to a
model state by the label plan (:func:`deeplight_bids.prepare.labels.resolve_state_map`:
``--state-map``, else the HCP vocabulary), and every state becomes one regressor (all its
trial types' events, unit amplitude, convolved with the HRF).  Trial types the plan does
not map (HCP ``cue``, parametric-modulator columns used as trial types such as
``pumps_demean``, rows whose ``trial_type`` is ``n/a``) are left out, exactly as they label
no volume for the decoder: their time counts as baseline.  Parametric amplitudes
(a ``modulation`` column) are not modelled: the decoder labels states, not amplitudes.

A design needs at least two states with events inside the run (the contrast of a state
against the others needs others) and state regressors that are not collinear;
:func:`state_design` says why when it cannot make one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from deeplight_bids.derivatives.naming import label_value

__all__ = ["StateDesign", "regressor_names", "state_design"]


@dataclass
class StateDesign:
    """The states of one run's GLM.

    Attributes
    ----------
    states : tuple of str
        Model states with events inside the run, sorted.
    regressors : dict
        ``state -> regressor name`` (alphanumeric, unique; a valid Python identifier, as
        nilearn's design matrices want).
    events : pandas.DataFrame
        ``onset``, ``duration`` (s) and ``trial_type`` (the state's regressor name) of the
        mapped events, ready for :func:`nilearn.glm.first_level.make_first_level_design_matrix`.
    trial_types : dict
        ``state -> sorted trial types`` mapped to it in this run.
    unmapped : list of str
        Trial types of the run that the label plan leaves out.
    skip_reason : str or None
        Why no GLM can be fitted (None: it can).
    """

    states: tuple
    regressors: dict
    events: pd.DataFrame
    trial_types: dict = field(default_factory=dict)
    unmapped: list = field(default_factory=list)
    skip_reason: str | None = None


def regressor_names(states: Iterable[str]) -> dict[str, str]:
    """``{state: name}``: alphanumeric names (``"MOTOR_lh"`` -> ``"MOTORlh"``), unique, not starting with a digit.

    Names that would collide or start with a digit become ``"state<i>"`` (``i``: position).
    """
    names: dict[str, str] = {}
    for i, state in enumerate(states):
        name = label_value(state)
        if not name or name[0].isdigit() or name in names.values():
            name = f"state{i}"
        names[state] = name
    return names


def state_design(events: pd.DataFrame, state_map: Mapping[str, str], n_volumes: int, t_r: float) -> StateDesign:
    """The states of a run's design from its events and the label plan.

    Parameters
    ----------
    events : pandas.DataFrame
        ``onset``, ``duration`` (s), ``trial_type`` as :func:`deeplight_bids.prepare.labels.read_events`
        returns them (``n/a`` trial types already dropped).
    state_map : dict
        ``trial_type -> state`` (:func:`deeplight_bids.prepare.labels.resolve_state_map`).
    n_volumes : int
        Volumes of the run.
    t_r : float
        Repetition time in seconds.

    Returns
    -------
    StateDesign
        With ``skip_reason`` set when there is no labelled trial type, fewer than two
        states have events inside the run (``[0, n_volumes * t_r)``), or two states' events
        coincide (their regressors would be collinear).
    """
    trial_types = [str(t) for t in events["trial_type"]]
    unmapped = sorted({t for t in trial_types if t not in state_map})
    run_end = n_volumes * t_r
    mapped = events.loc[np.array([t in state_map for t in trial_types], dtype=bool)].copy()
    mapped["state"] = [state_map[t] for t in mapped["trial_type"]]
    inside = (mapped["onset"].to_numpy(float) < run_end) & (
        mapped["onset"].to_numpy(float) + mapped["duration"].to_numpy(float) > 0
    )
    mapped = mapped[inside].sort_values("onset", kind="stable")
    states = tuple(sorted(set(mapped["state"])))
    by_state = {s: sorted(set(mapped.loc[mapped["state"] == s, "trial_type"])) for s in states}
    regressors = regressor_names(states)
    frame = pd.DataFrame(
        {
            "onset": mapped["onset"].to_numpy(float),
            "duration": mapped["duration"].to_numpy(float),
            "trial_type": [regressors[s] for s in mapped["state"]],
        }
    )
    design = StateDesign(states, regressors, frame, by_state, unmapped)
    if not len(mapped):
        shown = ", ".join(unmapped[:6]) + (" ..." if len(unmapped) > 6 else "") if unmapped else "none"
        design.skip_reason = (
            f"no trial type of its events maps to a model state (trial types: {shown}); "
            "the label table at the start of the job says how to map them"
        )
    elif len(states) < 2:
        design.skip_reason = (
            f"only one state ({states[0]}) has events in the run: a state against the other states needs two or more"
        )
    else:
        same = _coinciding(frame, regressors)
        if same:
            design.skip_reason = (
                f"the events of states {same[0]} and {same[1]} coincide: their regressors are the same, "
                "so neither can be told apart"
            )
    return design


def _coinciding(frame, regressors):
    """A pair of states whose events are identical (onsets and durations), or None."""
    seen = {}
    for state, name in regressors.items():
        rows = frame[frame["trial_type"] == name]
        key = tuple(np.round(np.c_[rows["onset"], rows["duration"]], 6).ravel())
        if key in seen:
            return seen[key], state
        seen[key] = state
    return None

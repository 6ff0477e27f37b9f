"""Group relevance statistics between the states of a task, from the participants' mean relevance maps.

The participant level writes one mean relevance map per participant, task and state
(``label-<state>_desc-mean_relevance``).  Relevance of the published LRP presets is
non-negative almost everywhere, so "mean relevance > 0" holds in nearly every voxel by
construction and a test against 0 shows that the brain is relevant, not where a state lives.
What differs between states is where their relevance lies: the group level tests, per
state, the within-participant difference

    d_i = R_i(state) - mean over the task's other states s' of R_i(s')

(each R_i(s) first divided by its mean absolute relevance in the brain mask:
``--contrast-scaling brain-mean``, the default, see :data:`SCALING_TEXT`; LRP conserves the
explained logit, so a state explained with larger logits has more relevance everywhere, and
without the scaling "state > others" holds over much of the brain for that state) with a
one-sample (paired) second-level model (:func:`.inference.second_level_inference`),
contrast ``<state>VsOthers`` (``<state>Vs<other>`` when the task has two states), and on
request (``--pairwise-contrasts``) each ordered pair ``<A>Vs<B>`` (d_i = R_i(A) - R_i(B)).
A participant enters a contrast only with a map for each of its states.

The one-sample test of a state's mean map against 0 (contrast ``<state>``) is kept only
when the attribution method can give negative evidence (``Attribution.Signed`` in the map
sidecars; maps written before attribution methods were recorded are the published presets,
not signed); otherwise only that map's mean (``stat-effect``) is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from deeplight_bids.derivatives.naming import contrast_label

#: Attribution of maps whose sidecars predate the ``Attribution`` record: the published presets (not signed).
PRESET_METHODS = {"3D": "preset_b_flat", "2D": "deeplight_2d"}


@dataclass(frozen=True)
class StateContrast:
    """One group test on the state maps of a task.

    Attributes
    ----------
    label : str
        The ``contrast-`` label (:func:`deeplight_bids.derivatives.naming.contrast_label`).
    kind : {"zero", "others", "pair"}
        Against 0, against the mean of the other states, against one other state.
    state : str
        The state tested (weight +1).
    others : tuple of str
        States subtracted, with equal weights summing to -1 (empty for ``"zero"``).
    """

    label: str
    kind: str
    state: str
    others: tuple = ()

    @property
    def states(self) -> tuple[str, ...]:
        """Every state whose map the contrast needs."""
        return (self.state, *self.others)

    def weights(self) -> dict[str, float]:
        """``{state: weight}``: +1 for the state, -1 / len(others) for each other."""
        out = {self.state: 1.0}
        out.update({s: -1.0 / len(self.others) for s in self.others})
        return out

    def describe(self) -> str:
        """What the per-participant map of this contrast is, in words."""
        if self.kind == "zero":
            return f"mean relevance map of {self.state} (tested against 0)"
        if len(self.others) == 1:
            return f"{self.state} minus {self.others[0]} (paired difference of the participant mean relevance maps)"
        return (
            f"{self.state} minus the mean of {', '.join(self.others)} (paired difference of the participant mean "
            "relevance maps)"
        )


def state_contrasts(states: Iterable[str], pairwise: bool = False, against_zero: bool = False) -> list[StateContrast]:
    """The tests made for a task's states, in the order of ``states``.

    Parameters
    ----------
    states : sequence of str
        The task's states that have maps (model order).
    pairwise : bool
        Add each ordered pair ``<A>Vs<B>`` (not already a ``VsOthers`` contrast).
    against_zero : bool
        Add the one-sample test of each state's map against 0 (signed attributions only).

    Returns
    -------
    list of StateContrast
    """
    states = list(states)
    out = []
    if against_zero:
        out += [StateContrast(contrast_label(s), "zero", s) for s in states]
    if len(states) >= 2:
        for s in states:
            others = tuple(o for o in states if o != s)
            other = others[0] if len(others) == 1 else "Others"
            out.append(StateContrast(contrast_label(s, other), "others" if len(others) > 1 else "pair", s, others))
    if pairwise and len(states) > 2:
        out += [StateContrast(contrast_label(a, b), "pair", a, (b,)) for a in states for b in states if a != b]
    return out


#: ``--contrast-scaling`` choices: how each participant's state map is scaled before states are compared.
SCALINGS = ("brain-mean", "none")
#: What each scaling does, for sidecars and the methods text.
SCALING_TEXT = {
    "brain-mean": "each participant's mean relevance map of each state divided by its mean absolute relevance in "
    "the brain mask (1 = the average voxel's share), so that states are compared on where their relevance lies, "
    "not on its total (LRP conserves the explained logit: a state explained with larger logits has more "
    "relevance everywhere)",
    "none": "the participants' mean relevance maps as written (no scaling)",
}


def participant_maps(
    per_state: Mapping[str, Mapping[str, Any]],
    contrast: StateContrast,
    mask: np.ndarray | None = None,
    scaling: str = "none",
) -> tuple[list[str], list[np.ndarray], dict[str, str]]:
    """The per-participant maps of ``contrast``: ``(subjects, arrays, left_out)``.

    Parameters
    ----------
    per_state : dict
        ``{state: {subject: map}}``, each map an ndarray (x, y, z) or a nibabel image (read here).
    contrast : StateContrast
    mask : ndarray of bool (x, y, z) or None
        Brain mask of ``"brain-mean"`` scaling (needed for it).
    scaling : {"brain-mean", "none"}
        See :data:`SCALING_TEXT`; applied to each state map before the contrast's weights.

    Returns
    -------
    subjects : list of str
        Participants with a usable map for each of the contrast's states (sorted).
    arrays : list of ndarray (x, y, z) float64
        ``sum_s weight_s * R(s)`` per participant (``R`` scaled).
    left_out : dict
        ``{subject: reason}``: participants with maps for some of the contrast's states but
        not all, or (with scaling) a map that is 0 everywhere in the brain mask.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    if scaling == "brain-mean" and mask is None:
        raise ValueError("brain-mean scaling needs the brain mask")
    have = [set(per_state.get(s, {})) for s in contrast.states]
    everyone = set().union(*have)
    left_out = {
        sub: "no map of " + ", ".join(s for s, h in zip(contrast.states, have) if sub not in h)
        for sub in everyone
        if not all(sub in h for h in have)
    }
    arrays: list[np.ndarray]
    total: Any  # 0.0, then the weighted sum of the state arrays
    subjects, arrays = [], []
    for sub in sorted(everyone - set(left_out)):
        total, empty = 0.0, []
        for s, w in contrast.weights().items():
            data = _array(per_state[s][sub])
            if scaling == "brain-mean":
                scale = float(np.abs(data[mask]).mean())
                if not scale > 0:
                    empty.append(s)
                    continue
                data = data / scale
            total = total + w * data
        if empty:
            left_out[sub] = "relevance 0 everywhere in the brain mask for " + ", ".join(empty)
            continue
        subjects.append(sub)
        arrays.append(total)
    return subjects, arrays, dict(sorted(left_out.items()))


def _array(image):
    return np.asarray(image.dataobj if hasattr(image, "dataobj") else image, dtype=np.float64)


def attribution_of(metadata: Mapping[str, Any], model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``Attribution`` record of a map's sidecar, with the default for sidecars written before it existed.

    Parameters
    ----------
    metadata : dict
        A per-state mean map's sidecar.
    model : dict or None
        The model block (its ``Architecture`` picks the published preset); default: ``metadata["Model"]``.

    Returns
    -------
    dict
        ``{"Method": str, "Signed": bool, ...}``; ``"Recorded": False`` when the default was assumed.
    """
    record = metadata.get("Attribution")
    if isinstance(record, dict) and "Signed" in record:
        return {**record, "Signed": bool(record["Signed"]), "Recorded": True}
    arch = str((model or metadata.get("Model") or {}).get("Architecture", "3D"))
    return {"Method": PRESET_METHODS.get(arch, PRESET_METHODS["3D"]), "Signed": False, "Recorded": False}


def task_attribution(
    metadatas: Iterable[Mapping[str, Any]], model: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], bool]:
    """The attribution shared by a task's maps: ``(record, signed)``.

    ``signed`` is True only when every map's method is signed; maps of different methods
    (which the integrity screen refuses to pool when their settings differ) count as not signed.
    """
    records = [attribution_of(m, model) for m in metadatas]
    if not records:
        return attribution_of({}, model), False
    methods = sorted({r["Method"] for r in records})
    signed = all(r["Signed"] for r in records)
    record = dict(records[0])
    if len(methods) > 1:
        record = {"Method": methods, "Signed": signed, "Recorded": all(r["Recorded"] for r in records)}
    return record, signed


def against_zero_note(record: Mapping[str, Any], signed: bool) -> str:
    """Why the one-sample test against 0 is or is not made, for the report and the sidecars."""
    method = record["Method"] if isinstance(record["Method"], str) else ", ".join(record["Method"])
    assumed = "" if record.get("Recorded") else " (no Attribution record in the sidecars: the published preset)"
    if signed:
        return (
            f"attribution {method}{assumed} is signed (evidence for and against the state): each state's mean map "
            "is also tested against 0."
        )
    return (
        f"attribution {method}{assumed} is not signed: relevance is non-negative almost everywhere, so a test of "
        "a state's mean map against 0 would find the whole brain; its mean is written (stat-effect) but not tested, "
        "and the states are compared with each other instead."
    )

"""The content of every JSON sidecar: column descriptions and provenance.

A run's provenance (:func:`run_provenance`: sources, model, preprocessing, labelling,
space, settings and inputs identity, software) is built once per run and reused by the
predictions and the relevance sidecars; the model block (``Model``) is the model's own
:meth:`~deeplight_bids.models.weights.DeepLightModel.provenance` everywhere.  Writers
take these dicts as they are (key order is the order written).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids._version import __version__
from deeplight_bids.derivatives.links import source_uri
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_RES, REFERENCE_SHAPE, REFERENCE_SPACE

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from deeplight_bids.bids.discover import Run
    from deeplight_bids.config import Config

#: How volumes get their state (predictions sidecar, ``Labelling.Rule``).
LABEL_RULE = (
    "volume i (t_i = i*TR) takes the state of an event with onset o and duration d when "
    "o + TR <= t_i <= o + d + 2*TR (haemodynamic shift; later onset wins on overlap); other volumes n/a"
)
#: ``Resolution`` of every map on the reference grid.
RESOLUTION_TEXT = "2 mm isotropic MNI152NLin6Asym grid (91 x 109 x 91)"


def described(columns: Mapping[str, str | dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Column descriptions for a table's sidecar: a string is the column's ``Description``.

    Parameters
    ----------
    columns : dict
        Column name -> its description (str), or the column's sidecar entry (dict, e.g. with
        ``Units`` or ``Levels``), in table order.

    Returns
    -------
    dict
        Column name -> sidecar entry (``{"Description": ...}`` for the strings), same order.
    """
    return {name: {"Description": entry} if isinstance(entry, str) else entry for name, entry in columns.items()}


# -- participant level ----------------------------------------------------------------------------

PREDICTION_COLUMNS = described(
    {
        "volume": "0-based index of the volume in the run",
        "onset": {"Description": "acquisition time of the volume, volume * RepetitionTime", "Units": "s"},
        "true_state": (
            "state from events.tsv after the haemodynamic shift (n/a: unlabelled or trial type without a model state)"
        ),
        "predicted_state": "state with the highest probability",
        "correct": {
            "Description": "1 if predicted_state equals true_state, 0 if not, n/a if the volume has no "
            "state the model can output",
            "Levels": {"0": "wrong", "1": "right"},
        },
        "training_participant": "1 if this participant was in the model's training data (n/a: unknown, e.g. published weights)",
    }
)
LRP_TARGET_COLUMN = {"Description": "state whose logit the relevance map of this volume explains"}

SUMMARY_COLUMNS = described(
    {
        "run": "run label, or 'all' for all runs of the task",
        "task": "BIDS task label",
        "n_volumes": "number of decoded volumes",
        "n_labelled": "volumes with a state the model can output",
        "n_correct": "labelled volumes decoded correctly",
        "accuracy": "n_correct / n_labelled",
    }
)


def run_provenance(
    run: Run,
    model_provenance: dict[str, Any],
    config: Config,
    labelling: Mapping[str, Any],
    space_transform: dict[str, Any] | None,
    settings_hash: str,
    inputs_digest: str,
    source_space: dict[str, Any],
    compute_backend: dict[str, Any],
    dataset_roots: Mapping[str, str | os.PathLike[str]],
) -> dict[str, Any]:
    """The provenance block of one run's sidecars.

    Parameters
    ----------
    run : deeplight_bids.bids.discover.Run
        ``bold``, ``mask``, ``events`` paths and ``t_r`` (s).
    model_provenance : dict
        :meth:`DeepLightModel.provenance`.
    config : deeplight_bids.config.Config
        ``smoothing_fwhm`` (mm) and ``high_pass`` (Hz) are recorded.
    labelling : dict
        ``StateMap``, ``UnmappedTrialTypes``, ``StatesNotInModel`` (the rule is added).
    space_transform : dict or None
        How the BOLD reached the reference grid (:class:`deeplight_bids.prepare.spaces.SpacePlan`).
    settings_hash, inputs_digest : str
        :mod:`deeplight_bids.derivatives.resume`.
    source_space : dict
        :func:`deeplight_bids.preflight.source_space`.
    compute_backend : dict
        :func:`deeplight_bids.backend.versions`.
    dataset_roots : dict
        ``{name: root}`` of the source datasets (:func:`deeplight_bids.derivatives.links.dataset_roots`):
        ``Sources`` are BIDS URIs ``bids:<name>:<path>`` that OUTPUT_DIR's ``DatasetLinks`` resolve.

    Returns
    -------
    dict
    """
    return {
        # a processed run has all three files
        "Sources": [source_uri(p, dataset_roots) for p in (run.bold_file, run.mask_file, run.events_file)],
        "Model": model_provenance,
        "Preprocessing": {
            "ReferenceGrid": {
                "Space": REFERENCE_SPACE,
                "Resolution": REFERENCE_RES,
                "Shape": list(REFERENCE_SHAPE),
                "Affine": REFERENCE_AFFINE.tolist(),
            },
            "SmoothingFWHM": config.inputs.smoothing_fwhm,
            "SmoothingFWHMUnits": "mm",
            "HighPass": config.inputs.high_pass,
            "HighPassUnits": "Hz",
            "Detrend": "linear",
            "Standardize": "z-score per voxel over the run (population SD)",
            "RepetitionTime": run.t_r,
        },
        "Labelling": {"Rule": LABEL_RULE, **labelling},
        "SourceSpace": source_space,
        "SpaceTransform": space_transform,
        "SettingsHash": settings_hash,
        "InputsDigest": inputs_digest,
        "SoftwareVersion": __version__,
        "ComputeBackend": compute_backend,
    }


def predictions_sidecar(
    states: Iterable[str],
    with_lrp: bool,
    provenance: Mapping[str, Any],
    accuracy: float | None,
    n_labelled: int,
) -> dict[str, Any]:
    """Sidecar of ``*_desc-predictions_timeseries.tsv``: every column, accuracy, then the provenance.

    Parameters
    ----------
    states : sequence of str
        Model output states (one ``prob_<state>`` column each).
    with_lrp : bool
        The table has an ``lrp_target`` column.
    provenance : dict
        :func:`run_provenance`.
    accuracy : float or None
    n_labelled : int
    """
    columns = dict(PREDICTION_COLUMNS)
    if with_lrp:
        columns["lrp_target"] = LRP_TARGET_COLUMN
    for state in states:
        columns[f"prob_{state}"] = {"Description": f"softmax probability of state {state}", "Units": "arbitrary"}
    return {**columns, "Accuracy": accuracy, "NumberOfLabelledVolumes": n_labelled, **provenance}


def attribution_entries(lrp_description: dict[str, Any] | None, attribution: dict[str, Any] | None) -> dict[str, Any]:
    """The sidecar keys that say how the maps were made: ``Attribution`` and, for LRP, ``LRP`` (its rules)."""
    if attribution is None:
        return {"LRP": lrp_description}
    entries: dict[str, Any] = {"Attribution": attribution}
    if attribution.get("Family") == "lrp":
        entries["LRP"] = lrp_description
    else:
        entries["Attribution"] = {**attribution, "Details": lrp_description}
    return entries


def relevance_sidecar(
    t_r: float,
    provenance: Mapping[str, Any],
    conservation: np.ndarray,
    lrp_description: dict[str, Any] | None,
    lrp_target: str,
    lrp_rule: str,
    attribution: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sidecar of a run's relevance maps (per volume, per block or none kept).

    Parameters
    ----------
    t_r : float
        Repetition time (s).
    provenance : dict
        :func:`run_provenance`.
    conservation : ndarray, shape (n_volumes,)
        Sum of each map / its explained logit (NaN where undefined).
    lrp_description : dict
        The composite's description (:attr:`LRPAnalyzer.description`).
    lrp_target : {"predicted", "true"}
    lrp_rule : str
        ``--lrp-rule`` (2D) or ``"published"`` (3D).
    attribution : dict or None
        :meth:`deeplight_bids.attribution.methods.AttributionMethod.sidecar` of the method.
    """
    finite = conservation[np.isfinite(conservation)]
    method = (attribution or {}).get("Method", "LRP")
    kind = "LRP relevance" if (attribution or {}).get("Family", "lrp") == "lrp" else f"attribution ({method})"
    return {
        "Description": f"{kind} of each volume's decoding decision, one 3D map per volume, on the "
        "MNI152NLin6Asym 2 mm reference grid (x, y, z as in the NIfTI); positive values "
        "speak for the explained state",
        "RepetitionTime": t_r,
        "SkullStripped": True,
        "Resolution": RESOLUTION_TEXT,
        **({"LRP": lrp_description} if "LRP" in attribution_entries(lrp_description, attribution) else {}),
        "LRPTarget": lrp_target,
        "SpatialReference": (
            f"https://templateflow.s3.amazonaws.com/tpl-{REFERENCE_SPACE}/tpl-{REFERENCE_SPACE}"
            f"_res-0{REFERENCE_RES}_T1w.nii.gz"
        ),
        "LRPRule": lrp_rule,
        "Units": "arbitrary (relevance)",
        **{k: v for k, v in attribution_entries(lrp_description, attribution).items() if k != "LRP"},
        "Conservation": {
            "Description": "sum of each volume's relevance map divided by its explained logit, over the run's "
            "volumes (1 = conserved; neither rule conserves by design: biases and the BN rule "
            "absorb relevance, and 2D's epsilon denominators can amplify it)",
            "Median": float(np.median(finite)) if finite.size else None,
            "Min": float(finite.min()) if finite.size else None,
            "Max": float(finite.max()) if finite.size else None,
            "NumberOfVolumes": int(finite.size),
        },
        **provenance,
    }


def summary_sidecar(model_provenance: dict[str, Any]) -> dict[str, Any]:
    """Sidecar of ``sub-<l>_desc-accuracy_summary.tsv``."""
    return {**SUMMARY_COLUMNS, "Model": model_provenance}


def state_map_sidecar(
    task: str,
    state: str,
    n_volumes: int,
    lrp_target: str,
    model_provenance: dict[str, Any],
    lrp_description: dict[str, Any] | None,
    settings_hash: str,
    attribution: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sidecar of a participant's mean relevance map of one task and explained state."""
    kind = "LRP relevance" if (attribution or {}).get("Family", "lrp") == "lrp" else "attribution"
    return {
        "Description": f"mean {kind} of the volumes of task {task} whose decision for state "
        f"{state} was explained (lrp_target == {state})",
        "State": state,
        "NumberOfVolumes": int(n_volumes),
        "LRPTarget": lrp_target,
        "Model": model_provenance,
        **attribution_entries(lrp_description, attribution),
        "SettingsHash": settings_hash,
    }


# -- group level ----------------------------------------------------------------------------------

ACCURACY_COLUMNS = described(
    {
        "participant_id": "participant label with 'sub-'",
        "session": "session label of the run (n/a: none, or all sessions pooled)",
        "run": "run name (source entities), or 'all' for all runs of the participant pooled",
        "level": {
            "Description": "'run': one run; 'participant': all runs (and sessions) of the task pooled",
            "Levels": {"run": "one run", "participant": "runs pooled"},
        },
        "n_volumes": "number of decoded volumes",
        "n_labelled": "volumes whose true state the model can output (correct is 1 or 0)",
        "n_correct": "labelled volumes decoded correctly",
        "accuracy": "n_correct / n_labelled",
        "balanced_accuracy": "mean over the true states present of the per-state recall",
        "chance_level": (
            "1 / n_states: accuracy (and balanced accuracy) expected from guessing "
            "uniformly among the true states present"
        ),
        "n_states": "number of distinct true states among the labelled volumes",
    }
)
GROUP_COLUMNS = described(
    {
        "metric": "participant-level metric summarised (see the accuracy summary)",
        "n_participants": "participants with a value",
        "mean": "mean across participants",
        "sd": "standard deviation across participants (ddof = 1; n/a for one participant)",
        "ci95_low": "lower end of the t-based 95% interval of the mean: mean - t(0.975, n-1) * sd / sqrt(n)",
        "ci95_high": "upper end of the t-based 95% interval of the mean",
        "min": "lowest participant value",
        "max": "highest participant value",
    }
)
BLOCK_COLUMNS = described(
    {
        "volumes_since_onset": {
            "Description": "0-based position of the volume in its block; a block is a maximal "
            "stretch of consecutive volumes with the same true_state (labels include "
            "the haemodynamic shift, so 0 is the first labelled volume of a block)",
            "Units": "volumes",
        },
        "n_volumes": "labelled volumes at this position, all participants",
        "n_correct": "of which decoded correctly",
        "accuracy_pooled": "n_correct / n_volumes",
        "n_participants": "participants with volumes at this position",
        "accuracy_mean": "mean across participants of the participant accuracy at this position",
        "accuracy_sd": "SD across participants (ddof = 1)",
        "ci95_low": "lower end of the t-based 95% interval of accuracy_mean",
        "ci95_high": "upper end of the t-based 95% interval of accuracy_mean",
    }
)


#: ``Description`` of each group table by its ``desc`` entity (``{task}``: the task label,
#: ``{kind}``: ``counts`` or ``proportions`` of a confusion table).
GROUP_TABLE_DESCRIPTIONS = {
    "accuracy": "decoding performance per run and per participant, task {task}",
    "accuracygroup": "across-participant summary of the participant-level metrics, task {task}",
    "confusion": "confusion matrix ({kind}), labelled volumes of all participants pooled, task {task}",
    "blocktime": "accuracy by volumes since block onset, task {task}",
    "significance": "decoding accuracy against chance per participant (runs pooled), task {task}: permutation "
    "test of block labels within runs, and binomial test",
    "significancegroup": "one-sample t test (one-sided) of participants' accuracy minus chance, task {task}, and "
    "the count of participants significantly above chance",
    "faithfulness": "deletion curves per explained state, task {task}: mean over participants of the drop of the "
    "explained logit as the most relevant (or random) in-mask voxels are set to 0",
    "quality": "faithfulness and sanity (model-parameter randomisation) per participant, task {task}",
    "plausibility": "relevance against reference maps per participant mean map and state, task {task}",
    "attributions": "attribution methods compared (--compare-attributions), medians over runs, task {task}: "
    "faithfulness, model randomisation, class sensitivity, plausibility and cost",
}


def group_provenance(task: str, model: dict[str, Any] | None) -> dict[str, Any]:
    """The block shared by every group table's sidecar: task, model and software version."""
    return {"Task": task, "Model": model, "SoftwareVersion": __version__}


def table_sidecar(
    columns: Iterable[str], described: Mapping[str, dict[str, Any]], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """A table's sidecar: a description of each of ``columns`` (from ``described``), then ``extra``.

    Columns without a description are state columns of a confusion table ("count of
    volumes predicted as <state>").
    """
    out = {c: described.get(c, {"Description": f"count of volumes predicted as {c}"}) for c in columns}
    return {**out, **extra}


def confusion_columns(states: Iterable[str], kind: str) -> dict[str, dict[str, Any]]:
    """Column descriptions of a confusion table (``kind``: ``"counts"`` or ``"proportions"``)."""
    cols = {"true_state": {"Description": "true state (rows)"}}
    cols.update(
        {
            c: {
                "Description": (
                    f"labelled volumes of all participants predicted as {c}"
                    if kind == "counts"
                    else f"share of the row's volumes predicted as {c} (each row sums to 1)"
                )
            }
            for c in states
        }
    )
    return cols


def group_map_sidecar(
    task: str,
    state: str,
    stat: str,
    subjects: Sequence[str],
    model: dict[str, Any] | None,
    mask_provenance: dict[str, Any],
    correct_only: bool,
    n_volumes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Sidecar of a group statistical map (``stat``: ``"mean"`` (the effect) or ``"t"``).

    Parameters
    ----------
    subjects : sequence of str
        Participants pooled (labels without ``sub-``).
    model : dict
        The model block of the participants' sidecars.
    mask_provenance : dict
        The template brain mask used (:meth:`GroupTemplates.provenance`).
    n_volumes : dict or None
        Volumes per participant behind its map.
    """
    n = len(subjects)
    what = (
        "participant means over the correctly decoded volumes of the state"
        if correct_only
        else "participant mean relevance maps (label-<state>_desc-mean)"
    )
    if stat == "mean":
        desc = f"mean across {n} participant(s) of the {what}, task {task}, state {state}; 0 outside the brain mask"
    else:
        desc = (
            f"one-sample t statistic (H0: mean relevance = 0; df = {n - 1}) across {n} participants of the {what}, "
            f"task {task}, state {state}; nilearn SecondLevelModel, intercept-only design; 0 outside the brain "
            "mask and where all participants have the same value"
        )
    out: dict[str, Any] = {
        "Description": desc,
        "Task": task,
        "State": state,
        "Statistic": stat,
        "NumberOfParticipants": n,
        "Participants": [f"sub-{s}" for s in subjects],
        "CorrectOnly": bool(correct_only),
        "Resolution": RESOLUTION_TEXT,
        "SkullStripped": True,
        "Mask": mask_provenance,
        "Model": model,
        "SoftwareVersion": __version__,
    }
    if stat == "t":
        out["DegreesOfFreedom"] = n - 1
    if n_volumes is not None:
        out["NumberOfVolumes"] = {f"sub-{s}": int(v) for s, v in n_volumes.items()}
    return out

"""The one place that builds output file names (BIDS-Derivatives conventions).

Per run (source entities kept, then ``space-``/``res-``/``desc-``):

* ``sub-01/[ses-1/]func/sub-01_[ses-1_]task-motor_run-1_desc-predictions_timeseries.tsv`` (+ ``.json``)
* ``sub-01/[ses-1/]func/sub-01_..._run-1_space-MNI152NLin6Asym_res-2_desc-relevance_bold.nii.gz`` (+ ``.json``)
* ``--relevance-maps blocks``: ``..._run-1_space-MNI152NLin6Asym_res-2_desc-blocks_relevance.nii.gz`` and ``.tsv``
  (+ one ``.json``)

Per participant and task (across sessions and runs):

* ``sub-01/func/sub-01_task-motor_space-MNI152NLin6Asym_res-2_label-<state>_desc-mean_relevance.nii.gz``
* ``sub-01/func/sub-01_desc-accuracy_summary.tsv`` (+ ``.json``)
"""

import re
from pathlib import Path

from deeplight_bids.prepare.grid import REFERENCE_RES, REFERENCE_SPACE

#: BIDS entity order and short keys.
ENTITY_ORDER = (("subject", "sub"), ("session", "ses"), ("task", "task"), ("acquisition", "acq"),
                ("ceagent", "ce"), ("reconstruction", "rec"), ("direction", "dir"), ("run", "run"),
                ("echo", "echo"), ("space", "space"), ("res", "res"), ("label", "label"), ("desc", "desc"))


def label_value(text):
    """A BIDS label (alphanumeric only) from free text: ``"MOTOR_lf"`` -> ``"MOTORlf"``."""
    return re.sub(r"[^A-Za-z0-9]", "", str(text))


def build_name(entities, suffix, extension):
    parts = [f"{short}-{entities[key]}" for key, short in ENTITY_ORDER if entities.get(key) not in (None, "")]
    return "_".join(parts + [suffix]) + extension


def _folder(output_dir, entities, session=True):
    folder = Path(output_dir) / f"sub-{entities['subject']}"
    if session and entities.get("session"):
        folder = folder / f"ses-{entities['session']}"
    return folder / "func"


def run_outputs(output_dir, run_entities):
    """Paths of the per-run outputs.

    ``dict(predictions, predictions_json, relevance, relevance_json, faithfulness,
    faithfulness_json, sanity, sanity_json)``; the last four are the quality tables
    (:mod:`deeplight_bids.quality.run_quality`).
    """
    ents = {k: v for k, v in run_entities.items() if k in dict(ENTITY_ORDER)}
    folder = _folder(output_dir, ents)
    pred = build_name({**ents, "desc": "predictions"}, "timeseries", ".tsv")
    rel = build_name({**ents, "space": REFERENCE_SPACE, "res": REFERENCE_RES, "desc": "relevance"}, "bold", ".nii.gz")
    blocks = build_name({**ents, "space": REFERENCE_SPACE, "res": REFERENCE_RES, "desc": "blocks"}, "relevance",
                        ".nii.gz")
    return {
        "predictions": folder / pred,
        "predictions_json": folder / pred.replace(".tsv", ".json"),
        "relevance": folder / rel,
        "relevance_json": folder / rel.replace(".nii.gz", ".json"),
        **{f"{kind}{ext}": folder / build_name({**ents, "desc": kind}, "timeseries", ".tsv" if not ext else ".json")
           for kind in ("faithfulness", "sanity") for ext in ("", "_json")},
        # --relevance-maps blocks: one map per event block; the TSV lists them (one JSON for both)
        "blocks": folder / blocks,
        "blocks_tsv": folder / blocks.replace(".nii.gz", ".tsv"),
        "blocks_json": folder / blocks.replace(".nii.gz", ".json"),
    }


def state_map_output(output_dir, subject, task, state):
    """Path of a participant's mean relevance map for one state of one task."""
    ents = {"subject": subject, "task": task, "space": REFERENCE_SPACE, "res": REFERENCE_RES,
            "label": label_value(state), "desc": "mean"}
    return _folder(output_dir, ents, session=False) / build_name(ents, "relevance", ".nii.gz")


def summary_output(output_dir, subject):
    """Path of a participant's accuracy summary TSV."""
    ents = {"subject": subject, "desc": "accuracy"}
    return _folder(output_dir, ents, session=False) / build_name(ents, "summary", ".tsv")


def state_map_glob(output_dir, subject, task):
    """``(folder, glob pattern)`` matching every mean relevance map of ``subject`` for ``task`` (any state)."""
    path = state_map_output(output_dir, subject, task, "STATE")
    return path.parent, path.name.replace("label-STATE_", "label-*_")

"""The one place that builds output file names (BIDS-Derivatives conventions).

Per run (source entities kept, then ``space-``/``res-``/``desc-``):

* ``sub-01/[ses-1/]func/sub-01_[ses-1_]task-motor_run-1_desc-predictions_timeseries.tsv`` (+ ``.json``)
* ``sub-01/[ses-1/]func/sub-01_..._run-1_space-MNI152NLin6Asym_res-2_desc-relevance_bold.nii.gz`` (+ ``.json``)
* ``--relevance-maps blocks``: ``..._run-1_space-MNI152NLin6Asym_res-2_desc-blocks_relevance.nii.gz`` and ``.tsv``
  (+ one ``.json``)

* first-level GLM (:mod:`deeplight_bids.glm`): ``..._run-1_space-MNI152NLin6Asym_res-2_contrast-<c>_stat-<st>_statmap.nii.gz``
  (``<st>``: effect, variance, t; + ``.json``) and the design ``..._run-1_desc-glm_timeseries.tsv`` (+ ``.json``)

Per participant and task (across sessions and runs):

* ``sub-01/func/sub-01_task-motor_space-MNI152NLin6Asym_res-2_label-<state>_desc-mean_relevance.nii.gz``
* ``sub-01/func/sub-01_desc-accuracy_summary.tsv`` (+ ``.json``)
* ``sub-01/func/sub-01_task-motor_space-..._contrast-<c>_stat-<st>_desc-fixedeffects_statmap.nii.gz`` (two or
  more runs) and ``sub-01/func/sub-01_desc-glmagreement_summary.tsv`` (+ ``.json``)

Per job and outside the BIDS tree (listed in ``.bidsignore``):

* ``logs/config-<stamp>-<labels>.toml``, ``.log`` and ``logs/runs-<stamp>-<labels>.tsv``
* ``tfrecords/sub-01/<run>_volumes.tfrecords`` (``--save-tfrecords``)
* ``WORK_DIR/relevance_sums/<run>_sums.npz`` (per-state relevance sums of a finished run)

Group level (``group/``, or ``group/model-<sha>/`` per model): :func:`group_name`, the statistical maps and
cluster table of a contrast :func:`group_contrast_outputs` (labels: :func:`contrast_label`);
fine-tuning (``models/<name>/``): :func:`finetune_outputs`, :func:`finetune_comparison_output`, the linear
baseline's :func:`linear_baseline_outputs` and :func:`linear_summary_outputs` (and in
WORK_DIR :func:`finetune_work_dir`, :func:`finetune_features_cache`);
the HCP download's BIDS names: :func:`hcp_run_stem`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeplight_bids.prepare.grid import REFERENCE_RES, REFERENCE_SPACE

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

#: BIDS entity order and short keys.
ENTITY_ORDER = (
    ("subject", "sub"),
    ("session", "ses"),
    ("task", "task"),
    ("acquisition", "acq"),
    ("ceagent", "ce"),
    ("reconstruction", "rec"),
    ("direction", "dir"),
    ("run", "run"),
    ("echo", "echo"),
    ("space", "space"),
    ("res", "res"),
    ("label", "label"),
    ("desc", "desc"),
)
#: The entities that identify a run (its label, e.g. ``sub-01_ses-1_task-motor_run-1``), in BIDS order.
RUN_ENTITIES = tuple(e for e in ENTITY_ORDER if e[0] not in ("space", "res", "label", "desc"))


def label_value(text: object) -> str:
    """A BIDS label (alphanumeric only) from free text: ``"MOTOR_lf"`` -> ``"MOTORlf"``."""
    return re.sub(r"[^A-Za-z0-9]", "", str(text))


def entity_stem(entities: Mapping[str, Any]) -> str:
    """``<key>-<value>_...`` in BIDS entity order (:data:`ENTITY_ORDER`); empty values left out."""
    return "_".join(f"{short}-{entities[key]}" for key, short in ENTITY_ORDER if entities.get(key) not in (None, ""))


def build_name(entities: Mapping[str, Any], suffix: str, extension: str) -> str:
    """``<entity stem>_<suffix><extension>`` (see :func:`entity_stem`)."""
    stem = entity_stem(entities)
    return (f"{stem}_{suffix}" if stem else suffix) + extension


def _folder(output_dir, entities, session=True):
    folder = Path(output_dir) / f"sub-{entities['subject']}"
    if session and entities.get("session"):
        folder = folder / f"ses-{entities['session']}"
    return folder / "func"


def run_outputs(output_dir: str | os.PathLike[str], run_entities: Mapping[str, Any]) -> dict[str, Path]:
    """Paths of the per-run outputs.

    ``dict(predictions, predictions_json, relevance, relevance_json, faithfulness,
    faithfulness_json, sanity, sanity_json)``; the last four are the quality tables
    (:mod:`deeplight_bids.quality.run_quality`).
    """
    ents = {k: v for k, v in run_entities.items() if k in dict(ENTITY_ORDER)}
    folder = _folder(output_dir, ents)
    pred = build_name({**ents, "desc": "predictions"}, "timeseries", ".tsv")
    rel = build_name({**ents, "space": REFERENCE_SPACE, "res": REFERENCE_RES, "desc": "relevance"}, "bold", ".nii.gz")
    blocks = build_name(
        {**ents, "space": REFERENCE_SPACE, "res": REFERENCE_RES, "desc": "blocks"}, "relevance", ".nii.gz"
    )
    return {
        "predictions": folder / pred,
        "predictions_json": folder / pred.replace(".tsv", ".json"),
        "relevance": folder / rel,
        "relevance_json": folder / rel.replace(".nii.gz", ".json"),
        **{
            f"{kind}{ext}": folder / build_name({**ents, "desc": kind}, "timeseries", ".tsv" if not ext else ".json")
            for kind in ("faithfulness", "sanity")
            for ext in ("", "_json")
        },
        # --compare-attributions: attribution methods side by side (quality/compare.py)
        "attributions": folder / build_name({**ents, "desc": "attributions"}, "summary", ".tsv"),
        "attributions_json": folder / build_name({**ents, "desc": "attributions"}, "summary", ".json"),
        # --relevance-maps blocks: one map per event block; the TSV lists them (one JSON for both)
        "blocks": folder / blocks,
        "blocks_tsv": folder / blocks.replace(".nii.gz", ".tsv"),
        "blocks_json": folder / blocks.replace(".nii.gz", ".json"),
    }


def run_output_ending(key: str) -> str:
    """The fixed end of a per-run output's name, after the run's own entities.

    E.g. ``run_output_ending("relevance")`` is ``"space-MNI152NLin6Asym_res-2_desc-relevance_bold.nii.gz"``;
    ``key`` is one of :func:`run_outputs`' keys.  For readers that find outputs by name
    (:mod:`deeplight_bids.readback`), so that the names have one owner, this module.
    """
    name = run_outputs(".", {"subject": "x", "task": "x"})[key].name
    return name.split("_task-x_", 1)[1]


def state_map_output(output_dir: str | os.PathLike[str], subject: str, task: str, state: str) -> Path:
    """Path of a participant's mean relevance map for one state of one task."""
    ents = {
        "subject": subject,
        "task": task,
        "space": REFERENCE_SPACE,
        "res": REFERENCE_RES,
        "label": label_value(state),
        "desc": "mean",
    }
    return _folder(output_dir, ents, session=False) / build_name(ents, "relevance", ".nii.gz")


def summary_output(output_dir: str | os.PathLike[str], subject: str) -> Path:
    """Path of a participant's accuracy summary TSV."""
    ents = {"subject": subject, "desc": "accuracy"}
    return _folder(output_dir, ents, session=False) / build_name(ents, "summary", ".tsv")


def state_map_glob(output_dir: str | os.PathLike[str], subject: str, task: str) -> tuple[Path, str]:
    """``(folder, glob pattern)`` matching every mean relevance map of ``subject`` for ``task`` (any state)."""
    path = state_map_output(output_dir, subject, task, "STATE")
    return path.parent, path.name.replace("label-STATE_", "label-*_")


def sidecar_of(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar of an output: ``x.nii.gz`` / ``x.tsv`` / ``x.<ext>`` -> ``x.json``."""
    path = Path(path)
    for ext in (".nii.gz", ".tsv"):
        if path.name.endswith(ext):
            return path.with_name(path.name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def dataset_outputs(output_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The dataset-level files of OUTPUT_DIR: ``dict(description, bidsignore, readme)``."""
    output_dir = Path(output_dir)
    return {
        "description": output_dir / "dataset_description.json",
        "bidsignore": output_dir / ".bidsignore",
        "readme": output_dir / "README.md",
    }


# -- first-level GLM (deeplight_bids.glm) ---------------------------------------------------------
#: Statistics written per GLM contrast: the effect (contrast estimate), its variance and the t statistic.
GLM_STATS = ("effect", "variance", "t")
#: ``desc`` of a participant's GLM maps: the fixed-effects combination of the runs of a task.
GLM_PARTICIPANT_DESC = "fixedeffects"


def glm_contrast_label(regressor: str, against: str) -> str:
    """A contrast's BIDS label: ``"MOTORlh", "others"`` -> ``"MOTORlhVsOthers"`` (``against``: others/baseline)."""
    return label_value(regressor) + "Vs" + against.capitalize()


def statmap_name(entities: Mapping[str, Any], contrast: str, stat: str, desc: str | None = None) -> str:
    """``<entities>_space-<s>_res-<r>_contrast-<c>_stat-<st>[_desc-<d>]_statmap.nii.gz`` (BIDS statistical map)."""
    ents = {k: v for k, v in entities.items() if k in dict(ENTITY_ORDER) and k not in ("label", "desc")}
    ents.update(space=REFERENCE_SPACE, res=REFERENCE_RES)
    parts = [entity_stem(ents), f"contrast-{contrast}", f"stat-{stat}"] + ([f"desc-{desc}"] if desc else [])
    return "_".join(parts) + "_statmap.nii.gz"


def glm_run_outputs(
    output_dir: str | os.PathLike[str], run_entities: Mapping[str, Any], contrasts: Iterable[str] = ()
) -> dict[str, Any]:
    """Paths of one run's first-level GLM outputs.

    ``dict(design, design_json, maps)``: the design matrix ``..._desc-glm_timeseries.tsv``
    and its sidecar (written last: it marks the run's GLM complete), and ``maps``
    ``{(contrast, stat): ..._contrast-<c>_stat-<st>_statmap.nii.gz}`` for ``contrasts``
    (labels) and :data:`GLM_STATS`.
    """
    ents = {k: v for k, v in run_entities.items() if k in dict(ENTITY_ORDER)}
    folder = _folder(output_dir, ents)
    design = build_name({**ents, "desc": "glm"}, "timeseries", ".tsv")
    return {
        "design": folder / design,
        "design_json": folder / design.replace(".tsv", ".json"),
        "maps": {(c, s): folder / statmap_name(ents, c, s) for c in contrasts for s in GLM_STATS},
    }


def glm_run_statmap_glob(output_dir: str | os.PathLike[str], run_entities: Mapping[str, Any]) -> tuple[Path, str]:
    """``(folder, glob pattern)`` of every statistical map of one run (any contrast and statistic)."""
    ents = {k: v for k, v in run_entities.items() if k in dict(ENTITY_ORDER)}
    name = statmap_name(ents, "C", "S")
    return _folder(output_dir, ents), name.replace("contrast-C_stat-S", "contrast-*_stat-*")


def glm_participant_maps(output_dir: str | os.PathLike[str], subject: str, task: str, contrast: str) -> dict[str, Path]:
    """``{stat: path}`` of a participant's fixed-effects GLM maps of one task and contrast (all runs)."""
    ents = {"subject": subject, "task": task}
    folder = _folder(output_dir, ents, session=False)
    return {s: folder / statmap_name(ents, contrast, s, GLM_PARTICIPANT_DESC) for s in GLM_STATS}


def glm_participant_glob(output_dir: str | os.PathLike[str], subject: str, task: str) -> tuple[Path, str]:
    """``(folder, glob pattern)`` of every fixed-effects GLM map of a participant and task."""
    path = glm_participant_maps(output_dir, subject, task, "C")["t"]
    return path.parent, path.name.replace("contrast-C_stat-t", "contrast-*_stat-*")


def glm_agreement_output(output_dir: str | os.PathLike[str], subject: str) -> Path:
    """``sub-<s>/func/sub-<s>_desc-glmagreement_summary.tsv``: relevance vs GLM, per run and per participant."""
    ents = {"subject": subject, "desc": "glmagreement"}
    return _folder(output_dir, ents, session=False) / build_name(ents, "summary", ".tsv")


#: Glob (below OUTPUT_DIR) of every participant's GLM agreement table.
GLM_AGREEMENT_GLOB = "sub-*/func/sub-*_desc-glmagreement_summary.tsv"


# -- per job (outside the BIDS tree) ------------------------------------------------------------
def job_log_stem(output_dir: str | os.PathLike[str], participant_label: Sequence[str] | None = None) -> Path:
    """``OUTPUT_DIR/logs/config-<date>-<time>-<pid>-<labels>`` without extension (one per job).

    The process id keeps concurrent jobs started in the same second apart; ``<labels>``
    are the job's ``--participant-label`` values (``all`` without), cut to 40 characters.
    """
    # the process id keeps concurrent jobs started in the same second apart
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    labels = "-".join(participant_label or ("all",))[:40]
    return Path(output_dir) / "logs" / f"config-{stamp}-{labels}"


def job_outputs(stem: str | os.PathLike[str]) -> dict[str, Path]:
    """``dict(config, log, runs)``: the job's settings TOML, log copy and run table beside ``stem``."""
    stem = Path(stem)
    return {
        "config": stem.with_suffix(".toml"),
        "log": stem.with_suffix(".log"),
        "runs": stem.with_name(stem.name.replace("config-", "runs-") + ".tsv"),
    }


def tfrecord_output(output_dir: str | os.PathLike[str], subject: str, run_label: str) -> Path:
    """``OUTPUT_DIR/tfrecords/sub-<subject>/<run_label>_volumes.tfrecords`` (``--save-tfrecords``)."""
    return Path(output_dir) / "tfrecords" / f"sub-{subject}" / f"{run_label}_volumes.tfrecords"


def attribution_sums_output(work_dir: str | os.PathLike[str], run_label: str) -> Path:
    """``WORK_DIR/attribution_sums/<run_label>_sums.npz``: per method and state, the compared volumes' map sums."""
    return Path(work_dir) / "attribution_sums" / f"{run_label}_sums.npz"


def state_sums_output(work_dir: str | os.PathLike[str], run_label: str) -> Path:
    """``WORK_DIR/relevance_sums/<run_label>_sums.npz``: a finished run's per-state relevance sums."""
    return Path(work_dir) / "relevance_sums" / f"{run_label}_sums.npz"


# -- group level ---------------------------------------------------------------------------------
#: Folder of the group outputs under OUTPUT_DIR.
GROUP_FOLDER = "group"


def group_name(
    task: str,
    suffix: str,
    extension: str,
    label: str | None = None,
    stat: str | None = None,
    desc: str | None = None,
    space: bool = False,
    contrast: str | None = None,
) -> str:
    """A group output's file name.

    ``task-<t>[_space-<s>_res-<r>][_label-<l>][_contrast-<c>][_stat-<st>][_desc-<d>]_<suffix><extension>``.
    """
    parts = [f"task-{task}"]
    if space:
        parts += [f"space-{REFERENCE_SPACE}", f"res-{REFERENCE_RES}"]
    if label:
        parts.append(f"label-{label}")
    if contrast:
        parts.append(f"contrast-{contrast}")
    if stat:
        parts.append(f"stat-{stat}")
    if desc:
        parts.append(f"desc-{desc}")
    return "_".join(parts + [suffix]) + extension


def contrast_label(state: str, other: str | None = None) -> str:
    """The ``contrast-`` label of a group contrast: ``"<state>"`` (against zero), ``"<state>Vs<other>"``, or
    ``"<state>VsOthers"`` (``other`` is ``"Others"``); states as BIDS labels (``MOTOR_lh`` -> ``MOTORlh``)."""
    if other is None:
        return label_value(state)
    return f"{label_value(state)}Vs{'Others' if other == 'Others' else label_value(other)}"


def group_contrast_outputs(
    folder: str | os.PathLike[str], task: str, contrast: str, desc: str | None = None
) -> dict[str, Path]:
    """Files of one group contrast in ``folder``: ``dict(effect, t, z, p, fwe_p, clusters)``.

    ``task-<t>_space-<s>_res-<r>_contrast-<c>_stat-{effect,t,z,p}[_desc-<d>]_statmap.nii.gz``, the
    FWE-corrected p-map ``..._stat-p_desc-[<d>]fwe_statmap.nii.gz`` and the cluster table of the
    z-map ``..._contrast-<c>_stat-z[_desc-<d>]_clusters.tsv``; each with a ``.json`` sidecar
    (:func:`sidecar_of`).  ``contrast``: a label from :func:`contrast_label` (or any BIDS label).
    """
    folder = Path(folder)
    contrast = label_value(contrast)
    out = {
        stat: folder / group_name(task, "statmap", ".nii.gz", contrast=contrast, stat=stat, desc=desc, space=True)
        for stat in ("effect", "t", "z", "p")
    }
    fwe = f"{desc or ''}fwe"
    out["fwe_p"] = folder / group_name(task, "statmap", ".nii.gz", contrast=contrast, stat="p", desc=fwe, space=True)
    out["clusters"] = folder / group_name(task, "clusters", ".tsv", contrast=contrast, stat="z", desc=desc, space=True)
    return out


def group_folder(output_dir: str | os.PathLike[str], model_sha: str | None = None) -> Path:
    """``OUTPUT_DIR/group``, or ``OUTPUT_DIR/group/model-<12 hex digits>`` when several models are pooled apart."""
    base = Path(output_dir) / GROUP_FOLDER
    if model_sha is None:
        return base
    return base / f"model-{label_value(str(model_sha)[:12]) or 'unknown'}"


def group_manifest_output(output_dir: str | os.PathLike[str]) -> Path:
    """``OUTPUT_DIR/group/group_manifest.json``: what the group level wrote (read by ``--reports-only``)."""
    return Path(output_dir) / GROUP_FOLDER / "group_manifest.json"


# -- fine-tuning ---------------------------------------------------------------------------------
def finetune_model_dir(output_dir: str | os.PathLike[str], name: str) -> Path:
    """``OUTPUT_DIR/models/<name>``: one fine-tuning's models and tables."""
    return Path(output_dir) / "models" / name


def finetune_outputs(folder: str | os.PathLike[str], stem: str) -> dict[str, Path]:
    """Files of one fitted model in ``folder`` (``models/<name>[/fold-<k>]``), named ``<stem>...``.

    ``dict(model, history, learning_curve)``.
    """
    folder = Path(folder)
    return {
        "model": folder / f"{stem}.keras",
        "history": folder / f"{stem}_history.tsv",
        "learning_curve": folder / f"{stem}_learningcurve.png",
    }


def finetune_heldout_outputs(model_dir: str | os.PathLike[str], name: str) -> dict[str, Path]:
    """Held-out tables of one fine-tuning: ``dict(predictions, summary, summary_json)`` in ``models/<name>``."""
    model_dir = Path(model_dir)
    return {
        "predictions": model_dir / f"{name}_desc-heldout_predictions.tsv",
        "summary": model_dir / f"{name}_desc-heldout_summary.tsv",
        "summary_json": model_dir / f"{name}_desc-heldout_summary.json",
    }


def linear_baseline_outputs(folder: str | os.PathLike[str], stem: str, states: Iterable[str]) -> dict[str, Any]:
    """One fold's linear baseline decoder in ``folder`` (``models/<name>[/fold-<k>]``), named ``<stem>...``.

    ``dict(model, weights)``: the fitted model ``<stem>_desc-linear_model.npz`` (arrays only) and
    ``weights`` ``{state: <stem>_space-..._contrast-<state>_stat-weight_desc-linear_statmap.nii.gz}``.
    """
    folder = Path(folder)
    grid = f"space-{REFERENCE_SPACE}_res-{REFERENCE_RES}"
    return {
        "model": folder / f"{stem}_desc-linear_model.npz",
        "weights": {
            s: folder / f"{stem}_{grid}_contrast-{label_value(s)}_stat-weight_desc-linear_statmap.nii.gz"
            for s in states
        },
    }


def linear_summary_outputs(model_dir: str | os.PathLike[str], name: str) -> dict[str, Path]:
    """The linear baseline beside DeepLight over all folds: ``dict(summary, summary_json)`` in ``models/<name>``."""
    model_dir = Path(model_dir)
    return {
        "summary": model_dir / f"{name}_desc-linear_summary.tsv",
        "summary_json": model_dir / f"{name}_desc-linear_summary.json",
    }


#: Glob (below OUTPUT_DIR) of every fine-tuning's held-out summary.
FINETUNE_SUMMARY_GLOB = "models/*/*_desc-heldout_summary.json"


def finetune_comparison_output(output_dir: str | os.PathLike[str], architecture: str, frozen: bool = False) -> Path:
    """``OUTPUT_DIR/group/finetune-comparison_arch-<A>[_frozen].tsv`` (its sidecar: :func:`sidecar_of`)."""
    stem = f"finetune-comparison_arch-{architecture}" + ("_frozen" if frozen else "")
    return Path(output_dir) / GROUP_FOLDER / f"{stem}.tsv"


def finetune_work_dir(work_dir: str | os.PathLike[str], name: str) -> Path:
    """``WORK_DIR/finetune/<name>``: one fine-tuning's checkpoints, a folder per fold (resumed from there)."""
    return Path(work_dir) / "finetune" / name


def finetune_features_cache(work_dir: str | os.PathLike[str], key: str) -> Path:
    """``WORK_DIR/finetune/features/<key>.npy``: frozen-body features, keyed by body, data and labels."""
    return Path(work_dir) / "finetune" / "features" / f"{key}.npy"


# -- HCP download (raw side and derivatives/hcp) ---------------------------------------------------
def hcp_run_stem(subject: str, task: str, direction: str) -> str:
    """``sub-<id>_task-<T>_dir-<D>``: the entities of an HCP run in the downloaded BIDS dataset."""
    return entity_stem({"subject": subject, "task": task, "direction": direction})

"""Group level: the participants' relevance-vs-GLM agreement tables pooled per model and task.

Writes ``group/[model-<sha>/]task-<t>_desc-glmagreement_summary.tsv`` (every run and
participant row of the participants whose relevance maps this model made) and its JSON
sidecar: the columns, and per state the mean, SD and range across participants of the
participant-level Pearson r and Dice overlaps.  Outputs made before the GLM existed (or
with ``--no-glm``) have no agreement tables: the group level says which participants lack
them and how to add them, and goes on.

:func:`write_glm_group_maps` fits the group second-level model of each state's GLM contrast
(the state against the others) with the same statistics as the relevance contrasts
(:func:`deeplight_bids.group.inference.second_level_inference`: one-sample test of the
participants' effect maps, the same ``--group-threshold``), so relevance and GLM are compared
like for like; ``..._contrast-<State>VsOthers_stat-{effect,t,z,p}_desc-glm_statmap.nii.gz``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.writers import write_json, write_tsv
from deeplight_bids.glm.agreement import TOP_PERCENTS
from deeplight_bids.glm.stage import AGREEMENT_COLUMNS
from deeplight_bids.group import inference
from deeplight_bids.group.stats import MIN_T_PARTICIPANTS
from deeplight_bids.utils.tsv import read_tsv

if TYPE_CHECKING:
    from deeplight_bids.config import Config
    from deeplight_bids.group.stats import MapRecord
    from deeplight_bids.group.templates import Templates

LOGGER = logging.getLogger("deeplight_bids")

__all__ = ["MEASURES", "agreement_summary", "read_agreement_tables", "write_glm_group_maps", "write_glm_tables"]

#: The agreement measures summarised across participants.
MEASURES = ("pearson_r", *(f"dice_top{k}" for k in TOP_PERCENTS))
#: ``desc`` of the pooled table.
DESC = "glmagreement"


def read_agreement_tables(
    output_dir: str | os.PathLike[str], subjects: Iterable[str]
) -> tuple[pd.DataFrame, list[str]]:
    """``(rows, missing)``: the agreement tables of ``subjects`` concatenated, and the subjects without one."""
    frames, missing = [], []
    for subject in sorted(subjects):
        path = naming.glm_agreement_output(output_dir, subject)
        if not path.is_file():
            missing.append(subject)
            continue
        try:
            frame = read_tsv(path, allow_empty=False, dtype={"run": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            missing.append(subject)
            continue
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(AGREEMENT_COLUMNS))
    return rows, missing


def agreement_summary(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per state and attribution method: participants, and mean / SD / min / max of each measure (participant rows)."""
    part = rows[rows["level"] == "participant"]
    out = []
    for (state, method), group in part.groupby(["state", "attribution_method"], sort=True):
        entry: dict[str, Any] = {
            "state": state,
            "attribution_method": method,
            "n_participants": int(group["participant_id"].nunique()),
        }
        for measure in MEASURES:
            values = pd.to_numeric(group[measure], errors="coerce").dropna().to_numpy(float)
            entry[measure] = {
                "mean": float(values.mean()) if values.size else None,
                "sd": float(values.std(ddof=1)) if values.size > 1 else None,
                "min": float(values.min()) if values.size else None,
                "max": float(values.max()) if values.size else None,
            }
        out.append(entry)
    return out


def write_glm_tables(
    config: Config,
    folder: Path,
    task: str,
    map_records: Sequence[MapRecord],
    provenance: Mapping[str, Any],
    log: logging.Logger = LOGGER,
) -> dict[str, Any]:
    """The pooled agreement table of one model and task; returns the group manifest's entries.

    Parameters
    ----------
    config : deeplight_bids.config.Config
        ``output_dir``.
    folder : pathlib.Path
        The model's group folder.
    task : str
    map_records : list of deeplight_bids.group.stats.MapRecord
        This model's mean relevance maps of the task: only agreement rows of these maps are pooled.
    provenance : dict
        Sidecar fields shared by the task's group tables.

    Returns
    -------
    dict
        ``glm_agreement`` (the table, relative to OUTPUT_DIR) and ``glm_missing`` (participants
        without an agreement table), or ``glm_note`` when no participant has one.
    """
    out = Path(config.inputs.output_dir).resolve()
    subjects = sorted({m.subject for m in map_records})
    if not subjects:
        return {"glm_note": "no relevance maps: no agreement with the GLM to pool"}
    rows, missing = read_agreement_tables(out, subjects)
    mine = {str(Path(m.path).resolve().relative_to(out)) for m in map_records}
    rows = rows[(rows["task"] == task) & rows["relevance_map"].isin(mine)].reset_index(drop=True)
    how = "re-run the participant level for them (finished runs are kept; only the GLM is computed), without --no-glm"
    if missing:
        log.warning(
            "group: task %s: no relevance-vs-GLM agreement table for %d participant(s) (%s): made before the GLM "
            "was added, or with --no-glm; %s",
            task,
            len(missing),
            ", ".join(f"sub-{s}" for s in missing),
            how,
        )
    if not len(rows):
        note = (
            f"no relevance-vs-GLM agreement for task {task}: the participants' outputs have no GLM (made before it "
            f"was added, with --no-glm, or no run's events made a design); {how}"
        )
        return {"glm_note": note, "glm_missing": missing}
    path = folder / naming.group_name(task, "summary", ".tsv", desc=DESC)
    # (no "task" column: the file name holds the task, and pybids refuses a sidecar whose "task" key, the column's
    # description, contradicts the name's task entity)
    write_tsv(path, rows.drop(columns=["task"]))
    summary = agreement_summary(rows)
    write_json(
        naming.sidecar_of(path),
        {
            "Description": f"relevance maps against GLM t-maps (each state against the mean of the other states), "
            f"per run and per participant, all participants of task {task} (Thomas, Re & Poldrack, 2023)",
            **{c: {"Description": d} for c, d in AGREEMENT_COLUMNS.items() if c != "task"},
            "GroupSummary": summary,
            "ParticipantsWithoutGLM": [f"sub-{s}" for s in missing],
            **provenance,
        },
    )
    for entry in summary:
        r, d1 = entry["pearson_r"]["mean"], entry["dice_top1"]["mean"]
        log.info(
            "group: task %s, %s (%s): relevance vs GLM over %d participant(s): mean r %s, mean Dice top 1 %% %s",
            task,
            entry["state"],
            entry["attribution_method"],
            entry["n_participants"],
            "n/a" if r is None else f"{r:.2f}",
            "n/a" if d1 is None else f"{d1:.2f}",
        )
    return {"glm_agreement": str(path.relative_to(out)), "glm_missing": missing, "glm_rows": rows}


def write_glm_group_maps(
    config: Config,
    folder: Path,
    task: str,
    rows: pd.DataFrame,
    templates: Templates,
    provenance: Mapping[str, Any],
    log: logging.Logger = LOGGER,
) -> list[dict[str, Any]]:
    """Group second level of each state's GLM contrast (state vs others); returns the manifest entries.

    Parameters
    ----------
    config : deeplight_bids.config.Config
        ``output_dir``, ``group_threshold``, ``group_alpha``, ``group_permutations``, ``seed``.
    folder : pathlib.Path
        The model's group folder.
    task : str
    rows : pandas.DataFrame
        The pooled agreement rows (:func:`write_glm_tables`): their participant-level ``glm_map`` (t-map)
        names each participant's GLM maps; the effect map beside it enters the model.
    templates : deeplight_bids.group.templates.Templates
        The brain mask.
    provenance : dict
        Sidecar fields shared by the task's group outputs.

    Returns
    -------
    list of dict
        One entry per contrast: ``state``, ``label``, ``n_participants``, ``files`` (relative to
        OUTPUT_DIR), ``threshold_text``, ``inference``.
    """
    import nibabel as nib

    out = Path(config.inputs.output_dir).resolve()
    part = rows[rows["level"] == "participant"]
    part = part[~part["relevance_map"].astype(str).str.startswith("mean of the ")]
    entries = []
    for (state, label), sel in part.groupby(["state", "contrast"], sort=True):
        effect_of = {}
        for subject, t_map in zip(sel["participant_id"], sel["glm_map"]):
            effect = out / str(t_map).replace("_stat-t_", "_stat-effect_")
            if effect.is_file():
                effect_of[subject] = effect
        if not effect_of:
            continue
        subjects = sorted(effect_of)
        # nib.load() is typed as any image format; these are NIfTI images, which have dataobj
        arrays = [np.asarray(nib.load(effect_of[s]).dataobj, np.float32) for s in subjects]  # type: ignore[attr-defined]
        result = inference.group_test(arrays, templates.mask, config, test=len(subjects) >= MIN_T_PARTICIPANTS)
        if len(subjects) < MIN_T_PARTICIPANTS:
            result.notes.append(f"{len(subjects)} participant(s): effect map only (a test needs {MIN_T_PARTICIPANTS})")
        paths = naming.group_contrast_outputs(folder, task, label, desc="glm")
        sidecar = {
            "Description": f"group GLM contrast {label} (the state {state} against the mean of the task's other "
            f"states), task {task}: one-sample test of the participants' first-level effect maps (fixed effects "
            "of their runs), the same statistics as the relevance contrasts; 0 outside the brain mask",
            "Task": task,
            "State": state,
            "Contrast": label,
            "NumberOfParticipants": len(subjects),
            "Participants": list(subjects),
            "Sources": [f"bids::{effect_of[s].relative_to(out)}" for s in subjects],
            "Mask": templates.provenance(),
            **provenance,
        }
        written = inference.write_inference(result, paths, sidecar)
        log.info(
            "group: task %s, GLM contrast %s (%d participants): %s", task, label, len(subjects), result.threshold_text()
        )
        entries.append(
            {
                "state": state,
                "label": label,
                "n_participants": len(subjects),
                "files": {kind: str(path.relative_to(out)) for kind, path in written.items()},
                "threshold_text": result.threshold_text(),
                "inference": result.summary(),
            }
        )
    return entries


def mean_t_map(output_dir: str | os.PathLike[str], rows: pd.DataFrame, state: str) -> tuple[np.ndarray | None, int]:
    """Mean of the participants' GLM t-maps of ``state`` (for display only; no inference), or None."""
    import nibabel as nib

    part = rows[(rows["level"] == "participant") & (rows["state"] == state)]
    paths = [Path(output_dir) / p for p in dict.fromkeys(part["glm_map"]) if (Path(output_dir) / p).is_file()]
    if not paths:
        return None, 0
    total: Any = None  # the sum of the maps (ndarray) once one is read
    for path in paths:
        data = np.asarray(nib.load(path).dataobj, np.float64)  # type: ignore[attr-defined]  # a NIfTI
        total = data if total is None else total + data
    return (total / len(paths)).astype(np.float32), len(paths)

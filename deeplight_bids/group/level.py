"""Group level: statistics, group relevance maps and the HTML report.

``deeplight-bids BIDS_DIR OUTPUT_DIR group`` reads the participant-level outputs of
OUTPUT_DIR (see :mod:`deeplight_bids.group.stats`) and writes under ``OUTPUT_DIR/group/``
(listed in ``.bidsignore``; every TSV has a JSON sidecar describing its columns):

* ``task-<t>_desc-accuracy_summary.tsv``: per run and per participant accuracy, balanced
  accuracy, chance level, labelled volumes;
* ``task-<t>_desc-accuracygroup_summary.tsv``: mean, SD, 95% interval across participants;
* ``task-<t>_desc-confusion_counts.tsv`` and ``task-<t>_desc-confusion_proportions.tsv``
  (row-normalised);
* ``task-<t>_desc-blocktime_accuracy.tsv``: accuracy by volumes since block onset;
* ``task-<t>_desc-significance_summary.tsv`` / ``desc-significancegroup``: accuracy against
  chance (block permutation, binomial; group t test), ``desc-faithfulness``/``desc-quality``:
  deletion curves and sanity across participants, ``desc-plausibility`` with
  ``--reference-map`` (:mod:`deeplight_bids.group.quality`);
* ``task-<t>_space-MNI152NLin6Asym_res-2_contrast-<state>_stat-effect_statmap.nii.gz``: each state's
  mean map (BIDS statistical derivatives as nilearn and fitlins name them), tested against 0
  (``stat-{t,z,p}``) only for signed attributions; ``contrast-<state>VsOthers`` (and with
  ``--pairwise-contrasts`` ``<A>Vs<B>``) ``_stat-{effect,t,z,p}`` maps, the FWE p-map
  (``stat-p_desc-fwe``) and the cluster table ``..._stat-z_clusters.tsv`` of each contrast
  between states (:mod:`deeplight_bids.group.contrasts`, :mod:`deeplight_bids.group.inference`),
  each with a ``.json`` sidecar naming the model and correction; with ``--correct-only`` the same
  with ``desc-correct``; ``task-<t>_desc-contrasts_summary.tsv``: one row per test;
* ``group_manifest.json``: what was written (read by ``--reports-only``);

and the report ``OUTPUT_DIR/deeplight_report.html``.  When the runs were processed by
more than one model (architecture / weights checksum), each model gets its own folder
``group/model-<first 12 hex digits of the weights SHA-256>/`` with the same files, and
nothing is pooled across models.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids._version import __version__
from deeplight_bids.derivatives import naming, sidecars
from deeplight_bids.derivatives.integrity import FILES_KEY, read_marker, record, report_record
from deeplight_bids.derivatives.writers import write_json, write_tsv
from deeplight_bids.exceptions import EXIT_OK, InputDataError
from deeplight_bids.group import contrasts, inference, stats
from deeplight_bids.group.glm import write_glm_group_maps, write_glm_tables
from deeplight_bids.group.integrity import (
    describe_fitting_participants,
    screen_inventory,
    set_aside_fitting_participants,
)
from deeplight_bids.group.quality import write_quality_tables
from deeplight_bids.group.report import write_report
from deeplight_bids.group.templates import load_templates
from deeplight_bids.prepare.grid import is_on_reference_grid

if TYPE_CHECKING:
    import pandas as pd

    from deeplight_bids.config import Config
    from deeplight_bids.group.templates import Templates

LOGGER = logging.getLogger("deeplight_bids")

GROUP_FOLDER = naming.GROUP_FOLDER
MANIFEST = naming.group_manifest_output(".").name


def _model_folder(output_dir, key, model, n_models):
    if n_models == 1:
        return naming.group_folder(output_dir)
    return naming.group_folder(output_dir, (model or {}).get("WeightsSHA256") or "unknown")


def _filter(inventory, config):
    """Apply --participant-label / --task to the inventory."""
    labels = set(config.inputs.participant_label or ())
    tasks = {t.lower() for t in (config.inputs.task or ())}
    if labels:
        inventory.runs = [r for r in inventory.runs if r.subject in labels]
        inventory.maps = [m for m in inventory.maps if m.subject in labels]
        inventory.expected = [p for p in inventory.expected if p in labels]
        inventory.problems = [p for p in inventory.problems if p["participant"] in labels]
    if tasks:
        inventory.runs = [r for r in inventory.runs if r.task.lower() in tasks]
        inventory.maps = [m for m in inventory.maps if m.task.lower() in tasks]
    if not inventory.runs:
        raise InputDataError(
            f"{inventory.output_dir}: no participant-level outputs match --participant-label/--task; drop the "
            "filters or run the participant level for them first."
        )
    inventory.models = {k: v for k, v in inventory.models.items() if any(r.key == k for r in inventory.runs)}
    return inventory


def _rel(path, output_dir):
    return str(Path(path).relative_to(output_dir))


def _write_table(path, frame, columns, extra):
    write_tsv(path, frame)
    write_json(naming.sidecar_of(path), sidecars.table_sidecar(frame.columns, columns, extra))


@dataclass(frozen=True)
class GroupTables:
    """Writes the group tables of one model and task, each a TSV with its JSON sidecar.

    Attributes
    ----------
    folder : pathlib.Path
        The model's group folder.
    output_dir : pathlib.Path
        OUTPUT_DIR; the manifest names files relative to it.
    task : str
    provenance : dict
        Sidecar fields shared by the task's tables (:func:`sidecars.group_provenance`), written last.
    """

    folder: Path
    output_dir: Path
    task: str
    provenance: dict

    def write(
        self, desc: str, frame: pd.DataFrame, columns: Mapping[str, Any], kind: str = "summary", **fields: Any
    ) -> str:
        """Write ``frame`` as the task's ``desc-<desc>_<kind>.tsv`` with its sidecar.

        The sidecar holds the description of each column (from ``columns``), then the
        table's ``Description`` (:data:`sidecars.GROUP_TABLE_DESCRIPTIONS`), ``fields``
        (e.g. ``Seed``) and the provenance.  Returns the table's path relative to
        OUTPUT_DIR, as the manifest records it.
        """
        path = self.folder / naming.group_name(self.task, kind, ".tsv", desc=desc)
        description = sidecars.GROUP_TABLE_DESCRIPTIONS[desc].format(task=self.task, kind=kind)
        _write_table(path, frame, columns, {"Description": description, **fields, **self.provenance})
        return _rel(path, self.output_dir)


def _state_maps(map_records, model):
    """``(states, {state: {subject: image}}, {state: {subject: n volumes}}, {state: [paths]})`` of a task's maps.

    Images are nibabel proxies (read when a statistic needs them); maps not 3D on the
    reference grid are left out with a warning.
    """
    import nibabel as nib

    per_state, n_vols, sources = {}, {}, {}
    for rec in sorted(map_records, key=lambda r: (r.state, r.subject)):
        img = nib.load(rec.path)
        if not is_on_reference_grid(img) or img.ndim != 3:
            LOGGER.warning("%s: not a 3D map on the reference grid; left out of the group map", rec.path)
            continue
        per_state.setdefault(rec.state, {})[rec.subject] = img
        n_vols.setdefault(rec.state, {})[rec.subject] = rec.metadata.get("NumberOfVolumes", 0)
        sources.setdefault(rec.state, []).append(str(rec.path))
    order = model.get("States", [])
    states = [s for s in order if s in per_state] + sorted(set(per_state) - set(order))
    return states, per_state, n_vols, sources


def _group_maps(folder, output_dir, task, model, map_records, templates, config, correct_only_means=None):
    """Write the state maps and the contrasts between states of one task.

    Returns
    -------
    maps : list of dict
        Manifest entries of the state maps (mean, tested against 0 for signed attributions).
    tests : list of dict
        Manifest entries of the contrasts between states.
    attribution : dict
        ``{"Attribution": record, "Signed": bool, "Note": text, "Skipped": [...]}``; ``Skipped``: the
        tests no participant could enter (``label``, ``correct_only``, ``left_out`` with reasons).
    """
    states, per_state, n_vols, sources = _state_maps(map_records, model)
    record, signed = contrasts.task_attribution([r.metadata for r in map_records], model)
    attribution = {"Attribution": record, "Signed": signed, "Note": contrasts.against_zero_note(record, signed)}
    sets = [(False, states, per_state, n_vols, sources)]
    for_correct = correct_only_means or {}
    if for_correct:
        order = [s for s in states if s in for_correct] + [s for s in for_correct if s not in states]
        arrays = {s: {sub: v[0] for sub, v in for_correct[s].items()} for s in order}
        counts = {s: {sub: v[1] for sub, v in for_correct[s].items()} for s in order}
        sets.append((True, order, arrays, counts, {}))
    maps, tests, skipped = [], [], []
    for correct_only, names, images, counts, srcs in sets:
        if not names:
            continue
        for test in contrasts.state_contrasts(names, pairwise=config.group.pairwise_contrasts, against_zero=True):
            entry = _write_test(
                folder,
                output_dir,
                task,
                test,
                images,
                counts,
                srcs,
                model,
                templates,
                config,
                correct_only,
                attribution,
            )
            if entry.get("skipped"):
                skipped.append(entry)
            else:
                (maps if test.kind == "zero" else tests).append(entry)
    attribution["Skipped"] = skipped
    return maps, tests, attribution


def _write_test(
    folder, output_dir, task, test, images, counts, sources, model, templates, config, correct_only, attribution
):
    """Fit, threshold and write one test; returns its manifest entry (``skipped`` True without participants)."""
    zero = test.kind == "zero"
    scaling = "none" if zero else config.group.contrast_scaling  # the mean maps keep their units
    inside = np.asarray(templates.mask.dataobj) > 0
    subjects, arrays, left_out = contrasts.participant_maps(images, test, mask=inside, scaling=scaling)
    for sub, reason in left_out.items():
        LOGGER.warning("group: task %s, contrast %s: sub-%s left out (%s)", task, test.label, sub, reason)
    if not subjects:
        return {
            "skipped": True,
            "label": test.label,
            "correct_only": correct_only,
            "left_out": [f"sub-{s} ({reason})" for s, reason in left_out.items()],
        }
    result = inference.group_test(arrays, templates.mask, config, test=attribution["Signed"] or not zero)
    del arrays
    desc = "correct" if correct_only else None
    paths = naming.group_contrast_outputs(folder, task, test.label, desc=desc)
    which = (
        "participant means over the correctly decoded volumes of each state"
        if correct_only
        else "participant mean relevance maps (label-<state>_desc-mean)"
    )
    side = {
        "Description": f"group {test.describe()}, task {task}, from the {which}; 0 outside the brain mask",
        "Task": task,
        "State": test.state,
        "Contrast": test.label,
        "ContrastKind": {"zero": "against zero", "others": "state vs the mean of the other states"}.get(
            test.kind, "state vs state"
        ),
        "ContrastWeights": test.weights(),
        "NumberOfParticipants": len(subjects),
        "Participants": [f"sub-{s}" for s in subjects],
        "ParticipantsLeftOut": {f"sub-{s}": reason for s, reason in left_out.items()},
        "Scaling": {"Method": scaling, "Description": contrasts.SCALING_TEXT[scaling]},
        "CorrectOnly": bool(correct_only),
        "Resolution": sidecars.RESOLUTION_TEXT,
        "SkullStripped": True,
        "Mask": templates.provenance(),
        "Model": model,
        "Attribution": attribution["Attribution"],
        "SoftwareVersion": __version__,
        "NumberOfVolumes": {
            f"sub-{sub}": {s: int(counts.get(s, {}).get(sub, 0)) for s in test.states} for sub in subjects
        },
    }
    if zero:
        side["AgainstZero"] = attribution["Note"]
    srcs = [p for s in test.states for p in sources.get(s, [])]
    if srcs:
        side["Sources"] = [f"bids::{_rel(p, output_dir)}" for p in srcs]
    written = inference.write_inference(result, paths, side)
    files = {kind: _rel(path, output_dir) for kind, path in written.items()}
    LOGGER.info(
        "group: task %s, contrast %s%s (%d participants): %s",
        task,
        test.label,
        " (correct only)" if correct_only else "",
        len(subjects),
        result.threshold_text(),
    )
    entry = {
        "kind": "mean" if zero else test.kind,
        "state": test.state,
        "others": list(test.others),
        "label": test.label,
        "description": test.describe(),
        "correct_only": correct_only,
        "n_participants": len(subjects),
        "participants": subjects,
        "left_out": [f"sub-{s} ({reason})" for s, reason in left_out.items()],
        "scaling": scaling,
        "files": files,
        "inference": result.summary(),
        "threshold_text": result.threshold_text(),
        "n_clusters": 0
        if result.clusters is None
        else int(result.clusters["cluster_id"].astype(str).str.isdigit().sum()),
        # the keys of group outputs made before contrasts (read by older reports): the mean and its t-map
        "mean": files["effect"] if zero else None,
        "t": files.get("t") if zero else None,
    }
    if result.clusters is not None and len(result.clusters):
        top = result.clusters.loc[result.clusters["peak_stat"].astype(float).idxmax()]
        entry["peak"] = {"peak_stat": float(top["peak_stat"]), **{f"peak_{a}": float(top[a]) for a in "xyz"}}
    if result.note:
        entry["note"] = result.note
    elif zero and not attribution["Signed"]:
        entry["note"] = attribution["Note"]
    return entry


#: Columns of ``task-<t>_desc-contrasts_summary.tsv`` (one row per group test).
CONTRAST_COLUMNS = sidecars.described(
    {
        "contrast": "contrast- label of the maps (<state>: the state's mean map; <A>Vs<B>, <A>VsOthers)",
        "kind": (
            "mean (the state's mean map, tested against 0 only for signed attributions), others "
            "(state minus the mean of the other states) or pair (state minus one other state)"
        ),
        "state": "the state with weight +1",
        "others": "the states subtracted (comma-separated; n/a for mean)",
        "correct_only": "1: from the correctly decoded volumes only (--correct-only), 0: all volumes",
        "n_participants": "participants in the test",
        "dof": "degrees of freedom of the t statistic (n/a: not tested)",
        "correction": (
            "correction applied: fdr, fwe-permutation, none; 'not tested' (effect only) or 'not "
            "applied' (the correction was impossible), see note"
        ),
        "alpha": "FDR q or FWE alpha",
        "threshold_z": "z threshold (n/a: none, or no voxel survives)",
        "voxels_mask": "voxels in the template brain mask",
        "voxels_tested": "voxels tested (brain mask minus voxels equal in every participant)",
        "voxels_surviving": "voxels above the corrected threshold",
        "share_surviving": "voxels_surviving / voxels_mask",
        "n_clusters": "clusters of surviving voxels (cluster table)",
        "peak_stat": "largest z of the surviving voxels (n/a: none)",
        "peak_x": {"Description": "its x coordinate", "Units": "mm"},
        "peak_y": {"Description": "its y coordinate", "Units": "mm"},
        "peak_z": {"Description": "its z coordinate", "Units": "mm"},
        "note": "why something was not computed (n/a: everything was)",
    }
)


def contrast_table(entries: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per group test of a task (:data:`CONTRAST_COLUMNS`) from the manifest entries."""
    import pandas as pd

    rows = []
    for e in entries:
        info = e["inference"]
        rows.append(
            {
                "contrast": e["label"],
                "kind": e["kind"],
                "state": e["state"],
                "others": ", ".join(e["others"]) or None,
                "correct_only": int(e["correct_only"]),
                "n_participants": e["n_participants"],
                "dof": info["DegreesOfFreedom"],
                "correction": info["Correction"],
                "alpha": info["Alpha"],
                "threshold_z": info["Threshold"],
                "voxels_mask": info["VoxelsInMask"],
                "voxels_tested": info["VoxelsTested"],
                "voxels_surviving": info["VoxelsSurviving"],
                "share_surviving": info["ShareOfMaskSurviving"],
                "n_clusters": e["n_clusters"],
                **e.get("peak", {"peak_stat": None, "peak_x": None, "peak_y": None, "peak_z": None}),
                "note": e.get("note"),
            }
        )
    return pd.DataFrame(rows, columns=list(CONTRAST_COLUMNS))


def compute_group_outputs(config: Config, inventory: stats.Inventory, templates: Templates) -> dict[str, Any]:
    """Write every group table and map; returns the manifest dict."""
    out = Path(config.inputs.output_dir)
    keys = sorted(inventory.models)
    manifest: dict[str, Any] = {
        "GeneratedBy": {"Name": "deeplight-bids", "Version": __version__},
        "Created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "CorrectOnly": bool(config.group.correct_only),
        "Templates": templates.provenance(),
        "ModelGroups": [],
    }
    for key in keys:
        model = inventory.models[key]
        folder = _model_folder(out, key, model, len(keys))
        group = {"Key": key, "Model": model, "Folder": _rel(folder, out) if folder != out else ".", "Tasks": {}}
        states = model.get("States", [])
        for task in inventory.tasks_of(key):
            runs = inventory.runs_of(key, task)
            LOGGER.info(
                "group: model %s, task %s: %d runs of %d participants",
                model.get("Name", key),
                task,
                len(runs),
                len({r.subject for r in runs}),
            )
            extra = sidecars.group_provenance(task, model)
            tables = GroupTables(folder, out, task, extra)
            entry: dict[str, Any] = {"participants": sorted({r.subject for r in runs}), "runs": [r.label for r in runs]}
            table = stats.accuracy_table(runs)
            entry["accuracy"] = tables.write("accuracy", table, sidecars.ACCURACY_COLUMNS)
            entry["accuracy_group"] = tables.write("accuracygroup", stats.group_summary(table), sidecars.GROUP_COLUMNS)
            counts, props = stats.confusion_tables(runs, states)
            for kind, frame in (("counts", counts), ("proportions", props)):
                columns = sidecars.confusion_columns(frame.columns[1:], kind)
                entry[f"confusion_{kind}"] = tables.write("confusion", frame, columns, kind=kind)
            blocks = stats.block_time_table(runs)
            entry["blocktime"] = tables.write("blocktime", blocks, sidecars.BLOCK_COLUMNS, kind="accuracy")

            maps = [m for m in inventory.maps if m.key == key and m.task == task]
            correct = None
            if config.group.correct_only:
                LOGGER.info("group: task %s: reading per-volume relevance maps for --correct-only", task)
                correct = stats.correct_only_participant_means(runs, states, output_dir=out)
            entry["maps"], entry["contrasts"], entry["attribution"] = _group_maps(
                folder, out, task, model, maps, templates, config, correct
            )
            if entry["maps"] or entry["contrasts"]:
                frame = contrast_table(entry["maps"] + entry["contrasts"])
                path = folder / naming.group_name(task, "summary", ".tsv", desc="contrasts")
                _write_table(
                    path,
                    frame,
                    CONTRAST_COLUMNS,
                    {"Description": f"group relevance tests of task {task}: one row per contrast", **extra},
                )
                entry["contrast_table"] = _rel(path, out)

            entry.update(write_quality_tables(config, tables, runs, maps, templates))

            glm = write_glm_tables(config, folder, task, maps, extra)  # relevance vs the GLM (glm/)
            rows = glm.pop("glm_rows", None)
            entry.update(glm)
            if rows is not None and len(rows):
                entry["glm_contrasts"] = write_glm_group_maps(config, folder, task, rows, templates, extra)
            if not entry["maps"]:
                entry["maps_note"] = "no relevance maps (participant level run with --no-lrp?)"
            group["Tasks"][task] = entry
        manifest["ModelGroups"].append(group)
    write_json(naming.group_manifest_output(out), manifest, root=out)
    return manifest


def read_manifest(output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = naming.group_manifest_output(output_dir)
    if not path.is_file():
        raise InputDataError(
            f"{output_dir}: no group outputs to report on ({_rel(path, output_dir)} missing); run "
            "the group level without --reports-only first."
        )

    manifest, reason = read_marker(path)
    if manifest is None:
        raise InputDataError(
            f"{path}: damaged ({reason}); run the group level without --reports-only to write the group outputs again."
        )
    return manifest


def run_group_level(config: Config, log: logging.Logger = LOGGER) -> int:
    """Group level (or only its report with ``config.group.reports_only``); returns the exit code.

    ``group --finetune`` is not this: the command line hands it to
    :func:`deeplight_bids.workflows.finetune.run_finetune`.
    """
    if config.finetune.enabled:
        raise ValueError("run_group_level: fine-tuning runs through deeplight_bids.workflows.finetune.run_finetune")

    out = Path(config.inputs.output_dir)
    inventory = _filter(stats.collect_inventory(out, config.inputs.bids_dir), config)
    fitted = set_aside_fitting_participants(inventory)
    if fitted:
        log.info("group: %s", describe_fitting_participants(fitted))
    log.info(
        "group: %d finished runs of %d participants, %d model(s); %d problem(s) listed in the report",
        len(inventory.runs),
        len(inventory.participants),
        len(inventory.models),
        len(inventory.problems),
    )
    for problem in inventory.problems:
        log.warning("group: %s %s: %s", problem["participant"], problem["item"], problem["problem"])
    manifest = read_manifest(out) if config.group.reports_only else None
    templates = load_templates(download=config.group.download_templates)
    if manifest is None:
        screen_inventory(inventory, config.group.correct_only, log)  # before any write: nothing half-written
        report_record(naming.group_manifest_output(out), out, log=log, prefix="group: ")  # all rewritten below
        manifest = compute_group_outputs(config, inventory, templates)
    path = write_report(out, manifest, inventory, templates, config)
    log.info("group: report written to %s", path)
    _record_group_files(out, manifest, path)
    return EXIT_OK


def _record_group_files(out, manifest, report):
    """The manifest again, with the size and checksum of every group output and the report (``--verify``)."""
    folder = Path(out) / naming.GROUP_FOLDER
    marker = naming.group_manifest_output(out)
    files = {str(p.relative_to(out)): p for p in sorted(folder.rglob("*")) if p.is_file() and p != marker}
    files = {k: p for k, p in files.items() if not p.name.startswith(".")}  # temporaries of concurrent jobs
    files[Path(report).name] = Path(report)
    write_json(marker, {**manifest, FILES_KEY: record(files, out)}, root=out)

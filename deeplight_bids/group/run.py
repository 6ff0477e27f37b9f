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
  ``--reference-map`` (:mod:`deeplight_bids.quality.group_quality`);
* ``task-<t>_space-MNI152NLin6Asym_res-2_contrast-<state>_stat-{effect,t}_statmap.nii.gz``
  (BIDS statistical derivatives as nilearn and fitlins name them; ``effect``: the mean)
  (+ ``.json`` with ``NumberOfParticipants``), and with ``--correct-only`` the same with
  ``desc-correct``;
* ``group_manifest.json``: what was written (read by ``--reports-only``);

and the report ``OUTPUT_DIR/deeplight_report.html``.  When the runs were processed by
more than one model (architecture / weights checksum), each model gets its own folder
``group/model-<first 12 hex digits of the weights SHA-256>/`` with the same files, and
nothing is pooled across models.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplight_bids import __version__
from deeplight_bids.derivatives import naming, sidecars
from deeplight_bids.derivatives.writers import write_json, write_nifti, write_tsv
from deeplight_bids.exceptions import EXIT_OK, InputDataError
from deeplight_bids.group import stats
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, is_on_reference_grid

LOGGER = logging.getLogger("deeplight_bids")

GROUP_FOLDER = naming.GROUP_FOLDER
MANIFEST = naming.group_manifest_output(".").name


def _model_folder(output_dir, key, model, n_models):
    if n_models == 1:
        return naming.group_folder(output_dir)
    return naming.group_folder(output_dir, (model or {}).get("WeightsSHA256") or "unknown")


def _filter(inventory, config):
    """Apply --participant-label / --task to the inventory."""
    labels = set(config.participant_label or ())
    tasks = {t.lower() for t in (config.task or ())}
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

    def write(self, desc, frame, columns, kind="summary", **fields):
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


def _write_map(path, data, sidecar):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), REFERENCE_AFFINE)
    img.header.set_xyzt_units("mm")
    img.set_sform(REFERENCE_AFFINE, code=4)
    img.set_qform(REFERENCE_AFFINE, code=4)
    write_nifti(path, img)
    write_json(naming.sidecar_of(path), sidecar)


def _group_maps(folder, output_dir, task, model, map_records, templates, correct_only_means=None):
    """Write mean (+ t) maps per state; returns the manifest entries."""
    import nibabel as nib

    entries = []
    by_label = {}
    for rec in map_records:
        by_label.setdefault(rec.state, []).append(rec)
    states = [s for s in model.get("States", []) if s in by_label] + sorted(
        set(by_label) - set(model.get("States", []))
    )
    for state in states:
        recs = sorted(by_label[state], key=lambda r: r.subject)
        imgs, subjects, n_vols = [], [], {}
        for rec in recs:
            img = nib.load(rec.path)
            if not is_on_reference_grid(img) or img.ndim != 3:
                LOGGER.warning("%s: not a 3D map on the reference grid; left out of the group map", rec.path)
                continue
            imgs.append(img)
            subjects.append(rec.subject)
            n_vols[rec.subject] = rec.metadata.get("NumberOfVolumes", 0)
        if not imgs:
            continue
        entries.append(
            _write_state_maps(
                folder,
                output_dir,
                task,
                state,
                imgs,
                subjects,
                model,
                templates,
                False,
                n_vols,
                [str(r.path) for r in recs],
            )
        )
    for state, per in (correct_only_means or {}).items():
        subjects = list(per)
        arrays = [per[s][0] for s in subjects]
        n_vols = {s: per[s][1] for s in subjects}
        entries.append(
            _write_state_maps(folder, output_dir, task, state, arrays, subjects, model, templates, True, n_vols, None)
        )
    return entries


def _write_state_maps(
    folder, output_dir, task, state, images, subjects, model, templates, correct_only, n_vols, sources
):
    label = stats.state_label(state)
    desc = "correct" if correct_only else None
    mean, t = stats.one_sample_maps(images, templates.mask)
    entry = {
        "state": state,
        "label": label,
        "correct_only": correct_only,
        "n_participants": len(subjects),
        "participants": subjects,
    }
    # BIDS statistical derivatives, as nilearn and fitlins name them: the intercept's effect (the mean) and its t
    for kind, stat, image in (("mean", "effect", mean), ("t", "t", t)):
        if image is None:
            entry[kind] = None
            continue
        path = folder / naming.group_name(task, "statmap", ".nii.gz", contrast=label, stat=stat, desc=desc, space=True)
        side = sidecars.group_map_sidecar(
            task, state, kind, subjects, model, templates.provenance(), correct_only, n_vols
        )
        if sources:
            side["Sources"] = [f"bids::{_rel(s, output_dir)}" for s in sources]
        _write_map(path, image, side)
        entry[kind] = _rel(path, output_dir)
    if t is None:
        entry["note"] = (
            f"{len(subjects)} participant(s): no t-map (needs at least {stats.MIN_T_PARTICIPANTS}); mean map only"
        )
    return entry


def compute_group_outputs(config, inventory, templates):
    """Write every group table and map; returns the manifest dict."""
    out = Path(config.output_dir)
    keys = sorted(inventory.models)
    manifest = {
        "GeneratedBy": {"Name": "deeplight-bids", "Version": __version__},
        "Created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "CorrectOnly": bool(config.correct_only),
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
            entry = {"participants": sorted({r.subject for r in runs}), "runs": [r.label for r in runs]}
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
            if config.correct_only:
                LOGGER.info("group: task %s: reading per-volume relevance maps for --correct-only", task)
                correct = stats.correct_only_participant_means(runs, states, output_dir=out)
            entry["maps"] = _group_maps(folder, out, task, model, maps, templates, correct)
            from deeplight_bids.quality.group_quality import write_quality_tables

            entry.update(write_quality_tables(config, tables, runs, maps, templates))
            from deeplight_bids.glm.group import write_glm_tables

            entry.update(write_glm_tables(config, folder, task, maps, extra))  # relevance vs the GLM (glm/)
            if not entry["maps"]:
                entry["maps_note"] = "no relevance maps (participant level run with --no-lrp?)"
            group["Tasks"][task] = entry
        manifest["ModelGroups"].append(group)
    write_json(naming.group_manifest_output(out), manifest, root=out)
    return manifest


def read_manifest(output_dir):
    path = naming.group_manifest_output(output_dir)
    if not path.is_file():
        raise InputDataError(
            f"{output_dir}: no group outputs to report on ({_rel(path, output_dir)} missing); run "
            "the group level without --reports-only first."
        )
    from deeplight_bids.derivatives.integrity import read_marker

    manifest, reason = read_marker(path)
    if manifest is None:
        raise InputDataError(
            f"{path}: damaged ({reason}); run the group level without --reports-only to write the group outputs again."
        )
    return manifest


def run_group_level(config, log=LOGGER):
    """Group level (or only its report with ``config.reports_only``); returns the exit code."""
    if config.finetune.enabled:
        from deeplight_bids.workflows.finetune import run_finetune

        return run_finetune(config, log=log)
    from deeplight_bids.group.integrity import describe_fitting_participants, set_aside_fitting_participants
    from deeplight_bids.group.report import write_report
    from deeplight_bids.group.templates import load_templates

    out = Path(config.output_dir)
    inventory = _filter(stats.collect_inventory(out, config.bids_dir), config)
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
    manifest = read_manifest(out) if config.reports_only else None
    templates = load_templates()
    if manifest is None:
        from deeplight_bids.derivatives.integrity import report_record
        from deeplight_bids.group.integrity import screen_inventory

        screen_inventory(inventory, config.correct_only, log)  # before any write: nothing half-written
        report_record(naming.group_manifest_output(out), out, log=log, prefix="group: ")  # all rewritten below
        manifest = compute_group_outputs(config, inventory, templates)
    path = write_report(out, manifest, inventory, templates, config)
    log.info("group: report written to %s", path)
    _record_group_files(out, manifest, path)
    return EXIT_OK


def _record_group_files(out, manifest, report):
    """The manifest again, with the size and checksum of every group output and the report (``--verify``)."""
    from deeplight_bids.derivatives.integrity import FILES_KEY, record

    folder = Path(out) / naming.GROUP_FOLDER
    marker = naming.group_manifest_output(out)
    files = {str(p.relative_to(out)): p for p in sorted(folder.rglob("*")) if p.is_file() and p != marker}
    files = {k: p for k, p in files.items() if not p.name.startswith(".")}  # temporaries of concurrent jobs
    files[Path(report).name] = Path(report)
    write_json(marker, {**manifest, FILES_KEY: record(files, out)}, root=out)

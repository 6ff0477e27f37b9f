"""The participant level's GLM stage: per run a first-level GLM, per participant fixed effects and agreement.

Runs after the decoder's runs and the participant summaries (so the per-state mean
relevance maps exist), for every run of the job that the decoder finished:

1. per run (:class:`RunGLM`): the design from the events and the label plan
   (:mod:`deeplight_bids.glm.design`), the GLM (:mod:`deeplight_bids.glm.first_level`),
   and its maps ``..._contrast-<c>_stat-{effect,variance,t}_statmap.nii.gz`` with sidecars,
   then the design matrix ``..._desc-glm_timeseries.tsv`` and its sidecar, written last:
   a re-run with the same GLM settings and inputs skips the run.  A run whose events make
   no design gets one warning and no GLM (never an error);
2. per participant and task (:func:`participant_glm`): the fixed-effects combination of its
   runs' maps (:func:`nilearn.glm.compute_fixed_effects`, ``..._desc-fixedeffects_statmap``)
   when it has two or more runs; with one run, that run's maps are the participant's
   (:func:`participant_maps` finds either);
3. per participant: the agreement table ``sub-<s>_desc-glmagreement_summary.tsv``: for each
   run and for the participant, each state's mean relevance map against its GLM t-map
   (:mod:`deeplight_bids.glm.agreement`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from deeplight_bids._version import __version__
from deeplight_bids.attribution.methods import get_method
from deeplight_bids.bids.discover import job_dataset_roots
from deeplight_bids.derivatives import integrity, naming, resume
from deeplight_bids.derivatives.links import source_uri
from deeplight_bids.derivatives.stale import remove_stale
from deeplight_bids.derivatives.writers import write_json, write_nifti, write_tsv
from deeplight_bids.exceptions import DeepLightBidsError, EventsError, ImageError, OutputError
from deeplight_bids.glm import first_level
from deeplight_bids.glm.agreement import TOP_PERCENTS, agreement
from deeplight_bids.glm.design import state_design
from deeplight_bids.glm.first_level import Contrast
from deeplight_bids.prepare.clean import masked_signals
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE, REFERENCE_SPACE
from deeplight_bids.prepare.labels import read_events, resolve_state_map
from deeplight_bids.quality.compare import read_method_sums

if TYPE_CHECKING:
    from deeplight_bids.bids.discover import Run
    from deeplight_bids.config import Config
    from deeplight_bids.glm.design import StateDesign
    from deeplight_bids.glm.first_level import GLMFit
    from deeplight_bids.prepare.spaces import SpacePlan

LOGGER = logging.getLogger("deeplight_bids")

__all__ = ["AGREEMENT_COLUMNS", "GLMRunResult", "RunGLM", "participant_glm", "participant_maps", "run_glm_stage"]

#: Column descriptions of the agreement tables (participant and group).
AGREEMENT_COLUMNS = {
    "participant_id": "participant label with 'sub-'",
    "task": "task label",
    "level": "'run': the run's GLM t-map; 'participant': the fixed-effects t-map of all the participant's runs "
    "of the task",
    "run": "run name (source entities), or 'all' at the participant level",
    "state": "model state",
    "contrast": "GLM contrast compared (the state against the mean of the task's other states)",
    "attribution_method": "method of the relevance map (its sidecar's Attribution.Method; outputs made before "
    "the Attribution key: preset_b_flat for 3D, deeplight_2d for 2D)",
    "attribution_signed": "1 when the relevance map carries evidence for and against (signed), else 0",
    "n_voxels": "voxels compared (where the GLM was fitted)",
    "pearson_r": "Pearson correlation of the participant's mean relevance map of the state and the GLM t-map",
    **{
        f"dice_top{k}": f"Dice overlap of the top {k} % voxels of the relevance map and of the t-map (highest "
        "signed values)"
        for k in TOP_PERCENTS
    },
    "relevance_map": "the mean relevance map compared (relative to OUTPUT_DIR)",
    "glm_map": "the GLM t-map compared (relative to OUTPUT_DIR)",
}


@dataclass
class GLMRunResult:
    """What the GLM stage did with one run: ``status`` in {"done", "skipped", "reused", "failed"}."""

    label: str
    status: str
    detail: str = ""
    contrasts: list = field(default_factory=list)


def _image(values, mask):
    import nibabel as nib

    data = np.zeros(REFERENCE_SHAPE, np.float32)
    data[mask] = values
    img = nib.Nifti1Image(data, REFERENCE_AFFINE)
    img.header.set_xyzt_units("mm")
    img.set_sform(REFERENCE_AFFINE, code=4)
    img.set_qform(REFERENCE_AFFINE, code=4)
    return img


_STAT_TEXT = {
    "effect": ("contrast estimate (effect size)", "percent signal change"),
    "variance": ("variance of the contrast estimate", "squared percent signal change"),
    "t": ("t statistic of the contrast", "arbitrary"),
}


class RunGLM:
    """Fit and write the first-level GLM of runs with one job's settings.

    Parameters
    ----------
    config : deeplight_bids.config.Config
        ``smoothing_fwhm``, ``high_pass``, ``glm_noise_model``, ``output_dir``, ``overwrite``.
    space_plan : deeplight_bids.prepare.spaces.SpacePlan
        The decoder's: the GLM reads the BOLD through the same resampling.
    user_state_map : dict or None
        ``--state-map``.
    """

    def __init__(
        self,
        config: Config,
        space_plan: SpacePlan,
        user_state_map: Mapping[str, Mapping[str, str]] | None = None,
        log: logging.Logger = LOGGER,
        dataset_roots: dict[str, Path] | None = None,
    ):
        self.config = config
        self.space_plan = space_plan
        self.user_state_map = user_state_map
        if dataset_roots is None:  # {name: root} of the source datasets (their BIDS URIs), as the decoder finds them
            dataset_roots = job_dataset_roots(config)
        self.dataset_roots = dataset_roots
        self.settings = first_level.glm_settings(config)
        self.settings_hash = first_level.glm_settings_hash(self.settings, user_state_map)
        self.log = log

    def is_complete(self, run: Run) -> bool:
        """True when the run's GLM outputs exist for these settings and inputs."""
        outputs = naming.glm_run_outputs(self.config.inputs.output_dir, run.entities)
        side, reason = integrity.read_marker(outputs["design_json"])
        if side is None:
            if reason != "missing":
                self.log.warning(
                    "%s: %s: damaged (%s); the run's GLM is fitted again", run.label, outputs["design_json"], reason
                )
            return False
        if not outputs["design"].is_file():
            return False
        if side.get("SettingsHash") != self.settings_hash or side.get("InputsDigest") != resume.inputs_digest(run):
            return False
        labels = [c["Name"] for c in side.get("Contrasts", [])]
        if not all(
            p.is_file()
            for p in naming.glm_run_outputs(self.config.inputs.output_dir, run.entities, labels)["maps"].values()
        ):
            return False
        damaged = integrity.verify(
            side.get(integrity.FILES_KEY), self.config.inputs.output_dir, self.config.inputs.work_dir
        )
        for damage in damaged:
            self.log.warning("%s: %s", run.label, damage.line("the run's GLM is fitted again"))
        return not damaged

    def process(self, run: Run) -> GLMRunResult:
        """The GLM of one run (or its reason to have none); returns a :class:`GLMRunResult`."""
        cfg = self.config
        if not cfg.overwrite and self.is_complete(run):
            return GLMRunResult(run.label, "reused", "GLM outputs exist (same settings)")
        try:
            events = read_events(run.events_file)
        except EventsError as err:
            return self._skip(run, f"its events cannot be read ({err})")
        n_volumes = _n_volumes(run.bold)
        state_map = resolve_state_map(run.entities["task"], self.user_state_map)
        # ignores: Run types t_r (and its files) Optional; a run the decoder finished has them
        design = state_design(events, state_map, n_volumes, run.repetition_time)
        if design.skip_reason:
            return self._skip(run, design.skip_reason)
        matrix = first_level.design_matrix(design, n_volumes, run.repetition_time, cfg.inputs.high_pass)
        n_states = len(design.states)
        rank = int(np.linalg.matrix_rank(matrix.to_numpy(float)[:, :n_states]))
        if rank < n_states:
            return self._skip(run, "its states' regressors are collinear (events of different states overlap)")
        contrasts = first_level.contrasts_of(design)
        t0 = time.monotonic()
        to_grid, space_transform = self.space_plan.resampler_for(run.space or REFERENCE_SPACE)
        signals, mask = masked_signals(run.bold_file, run.mask_file, cfg.inputs.smoothing_fwhm, to_grid=to_grid)
        read_s = time.monotonic() - t0
        fit = first_level.fit_glm(signals, matrix, contrasts, self.settings["noise_model"])
        del signals
        self._write(run, design, matrix, contrasts, fit, mask, space_transform)
        detail = (
            f"{len(design.states)} states, {len(contrasts)} contrasts, {self.settings['noise_model']}, "
            f"df {fit.dof:g}; read {read_s:.1f} s, fit {fit.seconds:.1f} s, total {time.monotonic() - t0:.1f} s"
        )
        self.log.info("%s: GLM: %s", run.label, detail)
        return GLMRunResult(run.label, "done", detail, [c.label for c in contrasts])

    def _skip(self, run, reason):
        self.log.warning("%s: no GLM: %s", run.label, reason)
        outputs = naming.glm_run_outputs(self.config.inputs.output_dir, run.entities)
        remove_stale(
            [outputs["design"], *_run_statmaps(self.config.inputs.output_dir, run.entities)],
            "GLM of other events or settings (this run now has no GLM)",
            self.log,
        )
        return GLMRunResult(run.label, "skipped", reason)

    def _write(self, run, design, matrix, contrasts, fit, mask, space_transform):
        cfg = self.config
        root = cfg.inputs.output_dir
        labels = [c.label for c in contrasts]
        outputs = naming.glm_run_outputs(root, run.entities, labels)
        description = self.design_description(run, design, matrix, contrasts, fit, space_transform)
        for contrast in contrasts:
            for stat in naming.GLM_STATS:
                path = outputs["maps"][(contrast.label, stat)]
                write_nifti(path, _image(fit.maps[contrast.label][stat], mask), root=root)
                write_json(naming.sidecar_of(path), statmap_sidecar(contrast, stat, description), root=root)
        stale = [p for p in _run_statmaps(root, run.entities) if p not in set(outputs["maps"].values())]
        remove_stale(stale, "GLM map of a contrast this run no longer has", self.log)
        frame = matrix.reset_index(drop=True)
        frame.insert(0, "onset", np.arange(len(frame)) * float(run.t_r))
        write_tsv(outputs["design"], frame, root=root)
        files = {"design": outputs["design"]}
        for (contrast, stat), path in outputs["maps"].items():
            files[f"{contrast}_{stat}"] = path
            files[f"{contrast}_{stat}_json"] = naming.sidecar_of(path)
        description[integrity.FILES_KEY] = integrity.record(files, root)  # verified by a re-run
        write_json(outputs["design_json"], description, root=root)  # last: marks the run's GLM complete

    def design_description(
        self,
        run: Run,
        design: StateDesign,
        matrix: pd.DataFrame,
        contrasts: Sequence[Contrast],
        fit: GLMFit,
        space_transform: Any,
    ) -> dict[str, Any]:
        """The design sidecar (also the core of every map's sidecar)."""
        import nilearn

        drift = first_level.drift_settings(self.config.inputs.high_pass)
        return {
            "Description": f"first-level GLM design matrix of run {run.label}: one row per volume (onset in s), "
            "the states convolved with the HRF, the drift regressors and the constant",
            "Columns": list(matrix.columns),
            "GLM": {
                "Software": f"nilearn {nilearn.__version__} (make_first_level_design_matrix, run_glm, "
                "compute_contrast: FirstLevelModel's steps, fitted in voxel chunks)",
                "HRF": first_level.HRF_MODEL,
                "DriftModel": drift["drift_model"],
                **({"HighPass": drift["high_pass"], "HighPassUnits": "Hz"} if "high_pass" in drift else {}),
                **({"DriftOrder": drift["drift_order"]} if "drift_order" in drift else {}),
                "NoiseModel": self.settings["noise_model"],
                "SignalScaling": "percent signal change per voxel (nilearn mean_scaling; FirstLevelModel "
                "signal_scaling=0)",
                "SliceTimeRef": 0.0,
                "SmoothingFWHM": self.config.inputs.smoothing_fwhm,
                "SmoothingFWHMUnits": "mm",
                "DesignRank": fit.rank,
            },
            "States": {
                s: {"Regressor": design.regressors[s], "TrialTypes": design.trial_types[s]} for s in design.states
            },
            "UnmappedTrialTypes": design.unmapped,
            "Contrasts": [c.describe() for c in contrasts],
            "DegreesOfFreedom": fit.dof,
            "NumberOfVolumes": int(len(matrix)),
            "RepetitionTime": run.repetition_time,
            "ReferenceGrid": {"Space": REFERENCE_SPACE, "Resolution": naming.REFERENCE_RES},
            "SpaceTransform": space_transform,
            # the same URIs as the relevance sidecars' (bids:<dataset>:<path>, through DatasetLinks)
            "Sources": [source_uri(p, self.dataset_roots) for p in (run.bold_file, run.mask_file, run.events_file)],
            "Settings": self.settings,
            "SettingsHash": self.settings_hash,
            "InputsDigest": resume.inputs_digest(run),
            "SoftwareVersion": __version__,
        }


def statmap_sidecar(
    contrast: Contrast,
    stat: str,
    design: Mapping[str, Any],
    level: str = "run",
    runs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Sidecar of one GLM map: the contrast, the statistic, degrees of freedom and the design."""
    what, units = _STAT_TEXT[stat]
    against = "the mean of the other states" if contrast.against == "others" else "baseline"
    side: dict[str, Any] = {
        "Description": f"{what} of state {contrast.state} against {against}"
        + (" (fixed effects over the participant's runs)" if level == "participant" else ""),
        "Contrast": contrast.describe(),
        "Statistic": stat,
        "Units": units,
        "DegreesOfFreedom": design["DegreesOfFreedom"],
        "Design": {
            **design["GLM"],
            "Columns": design["Columns"],
            "States": design["States"],
            "Contrasts": [c["Name"] for c in design["Contrasts"]],
        },
        "SettingsHash": design["SettingsHash"],
    }
    if level == "run":
        side["Sources"] = design["Sources"]
        side["RepetitionTime"] = design["RepetitionTime"]
    else:
        side["Runs"] = runs
    return side


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _load(path):
    """A NIfTI image the participant level wrote, read in full; a damaged one is one line (exit code 5)."""
    import nibabel as nib

    try:
        img = nib.load(path)
        return nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
    except Exception as err:  # noqa: BLE001  (nibabel, gzip and zlib errors of a damaged file)
        raise OutputError(
            f"{path}: damaged ({integrity.describe_error(err)}); re-run the participant level for this participant."
        ) from None


def _n_volumes(bold):
    import nibabel as nib

    try:
        shape = nib.load(bold).shape
    except Exception as exc:  # unreadable: the same error as the decoder's
        raise ImageError(f"{bold}: not a readable NIfTI image ({exc}); re-create or re-download the file.") from None
    return int(shape[3]) if len(shape) == 4 else 1


def _run_statmaps(output_dir, entities):
    """The run's statistical maps on disk (not a participant's fixed-effects maps that share the folder)."""
    folder, pattern = naming.glm_run_statmap_glob(output_dir, entities)
    return sorted(p for p in folder.glob(pattern) if "_desc-" not in p.name) if folder.is_dir() else []


# -- participant level -------------------------------------------------------------------------------
def participant_glm(
    config: Config,
    subject: str,
    runs: Sequence[Run],
    settings_hash: str,
    map_tasks: Collection[str] | None = None,
    log: logging.Logger = LOGGER,
) -> pd.DataFrame | None:
    """Fixed-effects maps per task and the agreement table of one participant.

    Parameters
    ----------
    config : deeplight_bids.config.Config
    subject : str
    runs : list of deeplight_bids.bids.discover.Run
        Every run of the participant (those whose GLM is complete for ``settings_hash`` count).
    settings_hash : str
        :attr:`RunGLM.settings_hash`.
    map_tasks : set of str or None
        Tasks whose fixed-effects maps are rewritten (default: all).

    Returns
    -------
    pandas.DataFrame or None
        The agreement table written (None: no run of the participant has a GLM).
    """
    root = config.inputs.output_dir
    done: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for run in runs:
        side = _read_json(naming.glm_run_outputs(root, run.entities)["design_json"])
        if side and side.get("SettingsHash") == settings_hash and side.get("InputsDigest") == resume.inputs_digest(run):
            damaged = integrity.verify(side.get(integrity.FILES_KEY), root, config.inputs.work_dir)
            for damage in damaged:  # a run of another job (this job's runs were checked and fitted again)
                log.warning("%s: %s", run.label, damage.line("left out; re-run the participant level for it"))
            if not damaged:
                done.setdefault(run.entities["task"], []).append((run, side))
    path = naming.glm_agreement_output(root, subject)
    integrity.report_record(naming.sidecar_of(path), root, log=log, prefix=f"sub-{subject}: ")
    rows = []
    for task in sorted(done):
        task_runs = sorted(done[task], key=lambda rs: rs[0].label)
        if map_tasks is None or task in map_tasks:
            _fixed_effects(config, subject, task, task_runs, log)
        rows += _agreement_rows(config, subject, task, task_runs)
    if not done:
        return None
    frame = pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))
    write_tsv(path, frame, root=root)
    files = {"agreement": path}
    for task in done:  # the fixed-effects maps (a re-run checks them)
        folder, pattern = naming.glm_participant_glob(root, subject, task)
        for found in sorted(folder.glob(pattern)) if folder.is_dir() else ():
            files[found.name] = found
            files[naming.sidecar_of(found).name] = naming.sidecar_of(found)
    write_json(
        naming.sidecar_of(path),
        {
            "Description": "agreement of each state's mean relevance map with its GLM t-map (the state against "
            "the mean of the other states), per run and per participant (Thomas, Re & Poldrack, 2023)",
            **{c: {"Description": d} for c, d in AGREEMENT_COLUMNS.items()},
            "SettingsHash": settings_hash,
            integrity.FILES_KEY: integrity.record(files, root),
        },
        root=root,
    )
    return frame


def _fixed_effects(config, subject, task, task_runs, log):
    """``desc-fixedeffects`` maps of every contrast of the task's runs (nilearn's compute_fixed_effects)."""
    import nibabel as nib
    from nilearn.glm import compute_fixed_effects

    root = config.inputs.output_dir
    contrasts = {}
    for run, side in task_runs:
        for c in side["Contrasts"]:
            contrasts.setdefault(c["Name"], (c, []))[1].append((run, side))
    written = set()
    for label, (desc, members) in contrasts.items():
        if len(members) < 2:
            continue  # one run: its own maps are the participant's (participant_maps), no copy
        paths = [naming.glm_run_outputs(root, r.entities, [label])["maps"] for r, _ in members]
        effects = [_load(p[(label, "effect")]) for p in paths]
        variances = [_load(p[(label, "variance")]) for p in paths]
        support = np.logical_and.reduce([np.asarray(v.dataobj) > 0 for v in variances])
        if not support.any():
            log.warning(
                "sub-%s task %s: contrast %s has no voxel common to its runs; no fixed effects", subject, task, label
            )
            continue
        dofs = [float(s["DegreesOfFreedom"]) for _, s in members]
        mask_img = nib.Nifti1Image(support.astype(np.uint8), REFERENCE_AFFINE)
        effect, variance, t, _ = compute_fixed_effects(effects, variances, mask_img, dofs=dofs)
        out = naming.glm_participant_maps(root, subject, task, label)
        contrast = Contrast(desc["Name"], desc["State"], desc["Against"], desc["Weights"])
        design = dict(members[0][1], DegreesOfFreedom=float(sum(dofs)))
        for stat, img in (("effect", effect), ("variance", variance), ("t", t)):
            data = np.asarray(img.dataobj, np.float32)
            write_nifti(out[stat], _image(data[support], support), root=root)
            side = statmap_sidecar(contrast, stat, design, "participant", [r.label for r, _ in members])
            side["FixedEffects"] = "mean of the runs' effects, variance mean / n runs (nilearn compute_fixed_effects, "
            "not precision weighted); degrees of freedom summed over runs"
            write_json(naming.sidecar_of(out[stat]), side, root=root)
            written.add(out[stat])
    folder, pattern = naming.glm_participant_glob(root, subject, task)
    stale = [p for p in folder.glob(pattern) if p not in written] if folder.is_dir() else []
    remove_stale(stale, "fixed-effects GLM map of a contrast the participant's runs no longer have", log)


def participant_maps(
    output_dir: str | os.PathLike[str], subject: str, task: str, runs: Sequence[Run], contrast: str
) -> dict[str, Path] | None:
    """``{stat: path}`` of a participant's GLM maps of one task and contrast, or None.

    The fixed-effects maps (``desc-fixedeffects``) when two or more of ``runs`` (the
    participant's runs of the task with a GLM) have the contrast; with one, that run's maps.
    """
    fixed = naming.glm_participant_maps(output_dir, subject, task, contrast)
    having = [
        m
        for r in runs
        if (m := naming.glm_run_outputs(output_dir, r.entities, [contrast])["maps"])[(contrast, "t")].is_file()
    ]
    if len(having) >= 2:
        return fixed if all(p.is_file() for p in fixed.values()) else None
    if len(having) == 1:
        return {s: having[0][(contrast, s)] for s in naming.GLM_STATS}
    return None


def _attribution(sidecar):
    """``(method, signed)`` of a mean relevance map from its sidecar (before the Attribution key: the published preset)."""
    info = (sidecar or {}).get("Attribution")
    if isinstance(info, dict) and info.get("Method"):
        return str(info["Method"]), bool(info.get("Signed", False))
    arch = str(((sidecar or {}).get("Model") or {}).get("Architecture", "3D"))
    return ("deeplight_2d" if arch.startswith("2D") else "preset_b_flat"), False


def _agreement_rows(config, subject, task, task_runs):

    root = config.inputs.output_dir
    rows = []
    states = {}
    for _, side in task_runs:
        for c in side["Contrasts"]:
            if c["Against"] == "others":
                states.setdefault(c["State"], c["Name"])
    targets = [
        (run.label, naming.glm_run_outputs(root, run.entities, [c["Name"] for c in side["Contrasts"]])["maps"], "run")
        for run, side in task_runs
    ]
    for state, label in states.items():
        rel_path = naming.state_map_output(root, subject, task, state)
        if not rel_path.is_file():
            continue
        relevance = np.asarray(_load(rel_path).dataobj, np.float32)
        method, signed = _attribution(_read_json(naming.sidecar_of(rel_path)))
        maps = [(lab, m.get((label, "t")), m.get((label, "variance")), lvl) for lab, m, lvl in targets]
        part = participant_maps(root, subject, task, [r for r, _ in task_runs], label)
        if part:
            maps.append(("all", part["t"], part["variance"], "participant"))
        for run_label, t_path, var_path, level in maps:
            if t_path is None or not t_path.is_file() or not var_path.is_file():
                continue
            t_map = np.asarray(_load(t_path).dataobj, np.float32)
            mask = np.asarray(_load(var_path).dataobj) > 0
            rows.append(
                {
                    "participant_id": f"sub-{subject}",
                    "task": task,
                    "level": level,
                    "run": run_label,
                    "state": state,
                    "contrast": label,
                    "attribution_method": method,
                    "attribution_signed": int(signed),
                    **agreement(relevance, t_map, mask),
                    "relevance_map": str(rel_path.relative_to(root)),
                    "glm_map": str(t_path.relative_to(root)),
                }
            )
        if part:
            rows += _compared_method_rows(config, subject, task, task_runs, state, label, part, method)
    return rows


def _compared_method_rows(config, subject, task, task_runs, state, label, part, main_method):
    """Agreement of the other ``--compare-attributions`` methods: their mean map of the compared volumes of
    the state (all runs of the participant pooled) against the participant-level t-map."""
    import nibabel as nib

    pooled = {}
    if config.inputs.work_dir is None:  # (no work folder, no comparison sums)
        return []
    for run, _ in task_runs:
        for method, by_state in read_method_sums(
            naming.attribution_sums_output(config.inputs.work_dir, run.label)
        ).items():
            if method == main_method or state not in by_state:
                continue
            total, count = pooled.get(method, (0.0, 0))
            pooled[method] = (total + by_state[state][0], count + by_state[state][1])
    if not pooled:
        return []
    t_map = np.asarray(nib.load(part["t"]).dataobj, np.float32)
    mask = np.asarray(nib.load(part["variance"]).dataobj) > 0
    rows = []
    for method, (total, count) in pooled.items():
        rows.append(
            {
                "participant_id": f"sub-{subject}",
                "task": task,
                "level": "participant",
                "run": "all",
                "state": state,
                "contrast": label,
                "attribution_method": method,
                "attribution_signed": int(get_method(method).signed),
                **agreement((total / count).astype(np.float32), t_map, mask),
                "relevance_map": f"mean of the {count} volume(s) of {state} in --compare-attributions",
                "glm_map": str(Path(part["t"]).relative_to(config.inputs.output_dir)),
            }
        )
    return rows


# -- the stage ---------------------------------------------------------------------------------------
def run_glm_stage(
    config: Config,
    space_plan: SpacePlan,
    user_state_map: Mapping[str, Mapping[str, str]] | None,
    runs: Sequence[Run],
    results: Sequence[Any],  # workflows.run.RunResult: a higher layer, not imported here
    all_runs_of: Callable[[str, list[Run]], Sequence[Run]],
    log: logging.Logger = LOGGER,
    dataset_roots: dict[str, Path] | None = None,
) -> list[GLMRunResult]:
    """GLM of the job's finished runs, then per participant fixed effects and agreement.

    Parameters
    ----------
    config : deeplight_bids.config.Config
    space_plan : deeplight_bids.prepare.spaces.SpacePlan
    user_state_map : dict or None
    runs : list of deeplight_bids.bids.discover.Run
        The job's runs.
    results : list of deeplight_bids.workflows.run.RunResult
        What the decoder did with them: runs it finished (now or in an earlier job) get a GLM.
    all_runs_of : callable
        ``all_runs_of(subject, job_runs)`` -> every run of the participant (their GLMs, when
        complete, enter the participant's maps and table).
    log : logging.Logger
    dataset_roots : dict or None
        ``{name: root}`` of the source datasets (:func:`deeplight_bids.derivatives.links.dataset_roots`):
        the sidecars name their sources as BIDS URIs through the output's ``DatasetLinks``.

    Returns
    -------
    list of GLMRunResult
    """
    finished = {
        r.label
        for r in results
        if r.status == "done" or (r.status == "skipped" and r.detail.startswith("outputs exist"))
    }
    todo = [r for r in runs if r.label in finished]
    glm = RunGLM(config, space_plan, user_state_map, log, dataset_roots)
    out = []
    if todo:
        log.info("GLM: first-level models of %d run(s) (%s noise model)", len(todo), glm.settings["noise_model"])
    for i, run in enumerate(todo, start=1):
        try:
            result = glm.process(run)
        except DeepLightBidsError as err:
            if err.exit_code != 3:
                raise
            log.warning("%s: no GLM: %s", run.label, err)
            result = GLMRunResult(run.label, "failed", str(err))
        if result.status == "reused":
            log.info("[GLM %d/%d] %s: %s", i, len(todo), run.label, result.detail)
        out.append(result)
    for subject in sorted({r.subject for r in todo}):
        mine = [r for r in todo if r.subject == subject]
        frame = participant_glm(
            config, subject, all_runs_of(subject, mine), glm.settings_hash, {r.entities["task"] for r in mine}, log
        )
        if frame is not None and len(frame):
            # the run's own maps (the --compare-attributions methods' rows are in the table)
            part = frame[(frame["level"] == "participant") & ~frame["relevance_map"].str.startswith("mean of the ")]
            log.info(
                "sub-%s: relevance vs GLM (participant level): %s",
                subject,
                "; ".join(
                    f"{row.task} {row.state}: r {_fmt(row.pearson_r)}, Dice top 1 % {_fmt(row.dice_top1)}"
                    for row in part.itertuples()
                ),
            )
    return out


def _fmt(value):
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.2f}"

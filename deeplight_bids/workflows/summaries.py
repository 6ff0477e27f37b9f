"""Per participant: the accuracy summary and the mean relevance map per task and explained state.

Every run of the participant that is complete for the current settings is summarised,
whichever job made it; per-state relevance sums of each run are kept in the work folder
(:func:`save_state_sums`) and recomputed from the run's maps if the work folder was cleaned.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deeplight_bids.derivatives import integrity, naming, resume, sidecars, tables
from deeplight_bids.derivatives.integrity import Damage, describe_error
from deeplight_bids.derivatives.relevance import scratch_paths
from deeplight_bids.derivatives.stale import remove_stale, stale_state_maps
from deeplight_bids.derivatives.writers import atomic_path, write_json, write_nifti, write_tsv
from deeplight_bids.exceptions import OutputError
from deeplight_bids.prepare.grid import REFERENCE_AFFINE
from deeplight_bids.readback import iter_volumes

if TYPE_CHECKING:
    from deeplight_bids.bids.discover import Run

LOGGER = logging.getLogger("deeplight_bids")


def save_state_sums(
    path: str | os.PathLike,
    sums: Mapping[int, np.ndarray],
    counts: Mapping[int, int],
    settings_hash: str,
    inputs_digest: str,
    root: str | os.PathLike | None = None,
) -> None:
    """Store a run's per-state relevance sums ``{state index: (91, 109, 91) sum}`` and volume counts.

    Keyed by the settings and by the identity of the run's inputs, so sums of another
    dataset or other settings sharing the work folder are never reused.
    """
    import zipfile

    arrays = {"settings": np.array(settings_hash), "inputs": np.array(inputs_digest)}
    for idx, total in sums.items():
        arrays[f"sum_{idx}"] = np.ascontiguousarray(total, dtype=np.float32)
        arrays[f"count_{idx}"] = np.array(counts[idx])
    with atomic_path(path, root=root) as tmp:
        # np.savez_compressed's layout, with fixed member time stamps: the same sums give the same bytes, so the
        # file's checksum in the run's record does not change when a re-run writes it again
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for key, array in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)


def read_state_sums(
    path: Path, settings_hash: str, inputs_digest: str | None, log: logging.Logger = LOGGER
) -> dict[int, tuple[np.ndarray, int]] | None:
    """``{state index: (sum float64, count)}`` from :func:`save_state_sums`, or None if missing or of other keys.

    A damaged file (truncated, emptied, another file) is removed with one log line and read
    as missing: the caller makes the sums again from the run's per-volume maps.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            key = (str(data["settings"]), str(data["inputs"]) if "inputs" in data.files else None)
            if key != (settings_hash, inputs_digest):
                return None
            return {
                int(k[4:]): (data[k].astype(np.float64), int(data[f"count_{k[4:]}"]))
                for k in data.files
                if k.startswith("sum_")
            }
    except Exception as err:  # noqa: BLE001  (zipfile, zlib, numpy and OS errors of a damaged file)
        log.warning(
            "%s", Damage(path, describe_error(err)).line("removed; the sums are made again from the per-volume maps")
        )
        path.unlink(missing_ok=True)
        return None


class ParticipantSummaries:
    """Write the participant-level summaries of one model and settings.

    Parameters
    ----------
    config : deeplight_bids.config.Config
    states : sequence of str
        Model output states.
    model_provenance : dict
    lrp_description : dict or None
        The explainer's description (None without maps).
    attribution : dict or None
        The method's ``Attribution`` sidecar entry.
    settings_hash : str
    with_quality : bool
        Runs are complete only with their quality tables.
    """

    def __init__(
        self,
        config,
        states,
        model_provenance,
        lrp_description,
        settings_hash,
        with_quality,
        log=LOGGER,
        pass_hash=None,
        attribution=None,
    ):
        self.config = config
        self.states = tuple(states)
        self.state_index = {s: i for i, s in enumerate(self.states)}
        self.model_provenance = model_provenance
        self.lrp_description = lrp_description
        self.attribution = attribution
        self.settings_hash = settings_hash
        self.pass_hash = pass_hash or settings_hash  # keys the work folder's relevance sums
        self.with_quality = with_quality
        self.log = log

    def _load_state_sums(self, run):
        """Per-state relevance sums of a finished run (recomputed from its outputs if the work dir was cleaned)."""
        path = naming.state_sums_output(self.config.inputs.work_dir, run.label)
        stored = read_state_sums(path, self.pass_hash, resume.inputs_digest(run), self.log)
        if stored is not None:
            return stored
        if path.is_file():
            self.log.info(
                "%s: %s was made from other inputs or settings (another dataset sharing the work folder?); "
                "recomputing the sums from the run's outputs",
                run.label,
                path,
            )
        outputs = naming.run_outputs(self.config.inputs.output_dir, run.entities)
        # the per-volume maps: the output (--relevance-maps volumes) or the work folder's copy (any choice)
        sources = [
            p for p in (outputs["relevance"], scratch_paths(self.config.inputs.work_dir, outputs)[0]) if p.is_file()
        ]
        if not sources:
            raise OutputError(
                f"{path}: missing, and the run's per-volume maps were not kept (--relevance-maps "
                f"{self.config.participant.relevance_maps}); re-run the participant level with --overwrite."
            )
        frame = tables.read_predictions(outputs["predictions"])
        targets = frame["lrp_target"].to_numpy(dtype=object)
        out = {}
        try:
            for index, volume in iter_volumes(sources[0], range(len(frame)), dtype=np.float32):
                state = targets[index]
                if not isinstance(state, str):
                    continue
                idx = self.state_index[state]
                total, count = out.get(idx, (np.zeros(volume.shape, np.float64), 0))
                total += volume
                out[idx] = (total, count + 1)
        except Exception as err:  # noqa: BLE001  (a damaged map: gzip, zlib, nibabel errors)
            raise OutputError(
                f"{sources[0]}: damaged ({describe_error(err)}); re-run the participant level for "
                f"sub-{run.subject} with --overwrite."
            ) from None
        # kept again in the work folder (the next job reads them instead of the maps)
        save_state_sums(
            path,
            {i: total for i, (total, _) in out.items()},
            {i: count for i, (_, count) in out.items()},
            self.pass_hash,
            resume.inputs_digest(run),
            root=self.config.inputs.output_dir,
        )
        # as read back from them (float32), so that the mean maps are those of the next job, to the bit
        return {i: (total.astype(np.float32).astype(np.float64), count) for i, (total, count) in out.items()}

    def write(self, subject: str, runs: Iterable[Run], map_tasks: Iterable[str] | None = None) -> None:
        """Mean relevance map per task and explained state, and the accuracy summary TSV.

        ``runs`` are all the participant's runs (those complete for these settings are
        summarised, whichever job made them); mean maps are rewritten only for
        ``map_tasks`` (default: every task of ``runs``).
        """
        cfg = self.config
        done = [
            r
            for r in runs
            if resume.is_complete(
                naming.run_outputs(cfg.inputs.output_dir, r.entities),
                cfg,
                self.settings_hash,
                self.with_quality,
                r,
                self.log,
            )
        ]
        if not done:
            return
        out = naming.summary_output(cfg.inputs.output_dir, subject)
        # the summaries of an earlier job, checked against their record before they are replaced (one line each)
        integrity.report_record(naming.sidecar_of(out), cfg.inputs.output_dir, log=self.log, prefix=f"sub-{subject}: ")
        rows = []
        for run in done:
            outputs = naming.run_outputs(cfg.inputs.output_dir, run.entities)
            rows.append(
                tables.accuracy_row(run.label, run.entities["task"], tables.read_predictions(outputs["predictions"]))
            )
        write_tsv(out, tables.accuracy_summary(rows), root=cfg.inputs.output_dir)
        tasks = sorted({r.entities["task"] for r in done} & set(map_tasks or {r.entities["task"] for r in done}))
        if not cfg.participant.lrp:
            for task in tasks:  # mean maps of an earlier LRP run: no longer what this participant's runs hold
                remove_stale(
                    stale_state_maps(cfg.inputs.output_dir, subject, task, ()), "mean map of other settings (LRP)"
                )
        else:
            for task in tasks:
                written = self._write_state_maps(subject, task, [r for r in done if r.entities["task"] == task])
                remove_stale(
                    stale_state_maps(cfg.inputs.output_dir, subject, task, written),
                    "mean map of other settings (no volume explained for its state with --lrp-target "
                    f"{cfg.participant.lrp_target})",
                )
        # last: the sidecar records the summary and every mean map of the participant (a re-run checks them)
        files = {"summary": out}
        for task in sorted({r.entities["task"] for r in runs}):
            folder, pattern = naming.state_map_glob(cfg.inputs.output_dir, subject, task)
            for path in sorted(folder.glob(pattern)) if folder.is_dir() else ():
                files[path.name] = path
                files[naming.sidecar_of(path).name] = naming.sidecar_of(path)
        side = sidecars.summary_sidecar(self.model_provenance)
        side[integrity.FILES_KEY] = integrity.record(files, cfg.inputs.output_dir)
        write_json(naming.sidecar_of(out), side, root=cfg.inputs.output_dir)

    def _write_state_maps(self, subject, task, runs):
        import nibabel as nib

        cfg = self.config
        totals = {}
        for run in runs:
            for idx, (total, count) in self._load_state_sums(run).items():
                acc, n = totals.get(idx, (0.0, 0))
                totals[idx] = (acc + total, n + count)
        written = []
        for idx, (total, count) in sorted(totals.items()):
            state = self.states[idx]
            path = naming.state_map_output(cfg.inputs.output_dir, subject, task, state)
            img = nib.Nifti1Image((total / count).astype(np.float32), REFERENCE_AFFINE)
            img.header.set_xyzt_units("mm")
            write_nifti(path, img, root=cfg.inputs.output_dir)
            write_json(
                naming.sidecar_of(path),
                root=cfg.inputs.output_dir,
                obj=sidecars.state_map_sidecar(
                    task,
                    state,
                    count,
                    cfg.participant.lrp_target,
                    self.model_provenance,
                    self.lrp_description,
                    self.settings_hash,
                    self.attribution,
                ),
            )
            written.append(path)
        return written

"""Participant level: discover -> prepare -> decode -> explain -> write, run by run.

Each run's outputs are written atomically; the predictions sidecar JSON is written
last and records a hash of the settings that produced the run, so a re-run skips
runs that are complete for the same settings (resume), and recomputes those made
with other settings or left unfinished.
"""

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deeplight_bids import __version__
from deeplight_bids.backend import versions as backend_versions
from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.relevance import BackgroundWriter, RelevanceMasker, RunRelevanceOutputs, event_blocks
from deeplight_bids.derivatives.relevance import relevance_outputs_complete, reuse_scratch
from deeplight_bids.derivatives.writers import write_json, write_nifti, write_tsv
from deeplight_bids.exceptions import DeepLightBidsError
from deeplight_bids.models.decode import softmax
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_RES, REFERENCE_SHAPE, REFERENCE_SPACE
from deeplight_bids.preflight import plural, source_space

LOGGER = logging.getLogger("deeplight_bids")

LABEL_RULE = ("volume i (t_i = i*TR) takes the state of an event with onset o and duration d when "
              "o + TR <= t_i <= o + d + 2*TR (haemodynamic shift; later onset wins on overlap); other volumes n/a")


@dataclass
class RunResult:
    """Outcome of one run: ``status`` in {"done", "skipped", "failed"}."""

    label: str
    status: str
    detail: str = ""
    n_volumes: int = 0
    accuracy: float | None = None


class RunProcessor:
    """Decode and explain runs with one loaded model.

    Parameters
    ----------
    dl_model : deeplight_bids.models.weights.DeepLightModel
    config : deeplight_bids.config.Config
    user_state_map : dict or None
        ``{task: {trial_type: state}}`` from ``--state-map``.
    """

    def __init__(self, dl_model, config, user_state_map=None, space_plan=None):
        from deeplight_bids.models.decode import Decoder, network_batch_limit
        from deeplight_bids.prepare.spaces import SpacePlan

        self.dl_model = dl_model
        self.config = config
        self.user_state_map = user_state_map
        self.space_plan = space_plan or SpacePlan(allow_approximate=config.allow_approximate_space)
        self.states = tuple(dl_model.states)
        self.state_index = {s: i for i, s in enumerate(self.states)}
        max_batch = network_batch_limit()
        self.decoder = Decoder(dl_model.model, max_batch=max_batch)
        self.analyzer = None
        if config.lrp:
            from deeplight_bids.lrp.analyzer import LRPAnalyzer

            # reference section 7: iNNvestigate's preset B-flat for 3D, epsilon (LSTM rule included) for 2D,
            # stabilised as the original code (published) or sign-aware (--lrp-rule signed)
            composite = ("preset_b_flat" if dl_model.architecture == "3D"
                         else "deeplight_2d_signed" if config.lrp_rule == "signed" else "deeplight_2d")
            self.analyzer = LRPAnalyzer(dl_model.model, composite=composite, max_batch=max_batch)
        self.quality = None
        if self.analyzer is not None and getattr(config, "quality", False):
            from deeplight_bids.quality.run_quality import RunQuality

            self.quality = RunQuality(dl_model.model, self.analyzer.composite, self.decoder, config.quality_volumes,
                                      seed=config.seed, max_batch=max_batch)
        self.settings_hash = self._settings_hash()
        self.pass_hash = self._settings_hash("volumes")  # the network pass's settings: all but --relevance-maps

    def _settings_hash(self, relevance_maps=None):
        c = self.config
        settings = {"weights": self.dl_model.weights_sha256, "lrp": c.lrp, "target": c.lrp_target,
                    "fwhm": c.smoothing_fwhm, "high_pass": c.high_pass, "version": __version__,
                    "state_map": self.user_state_map, "relevance_masked": True}
        if c.allow_approximate_space:  # only when set, so hashes of earlier outputs stay valid
            settings["allow_approximate_space"] = True
        if self.dl_model.architecture == "2D":
            settings["lrp_rule"] = c.lrp_rule
        if self.quality is not None:  # only when on, so outputs made before --quality keep their hash
            settings["quality"] = self.quality.settings()
        if (relevance_maps or c.relevance_maps) != "volumes":  # likewise
            settings["relevance_maps"] = relevance_maps or c.relevance_maps
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # -- resume -------------------------------------------------------------------------
    def is_complete(self, outputs, run=None):
        """True when a previous run with the same settings (and, given ``run``, the same inputs) finished all outputs."""
        marker = outputs["predictions_json"]
        if not marker.is_file() or not outputs["predictions"].is_file():
            return False
        if self.config.lrp and not relevance_outputs_complete(self.config.relevance_maps, outputs):
            return False
        if self.quality is not None and not (outputs["faithfulness"].is_file() and outputs["sanity"].is_file()):
            return False
        try:
            sidecar = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if sidecar.get("SettingsHash") != self.settings_hash:
            return False
        if run is not None and sidecar.get("InputsDigest") not in (None, _inputs_digest(run)):
            LOGGER.info("%s: its BOLD, mask or events file changed since its outputs were made: they are out of date",
                        run.label)
            return False
        return True

    # -- one run --------------------------------------------------------------------------
    def process(self, run):
        from deeplight_bids.prepare.clean import prepare_run
        from deeplight_bids.prepare.labels import read_events, resolve_state_map, unmapped_trial_types, volume_labels

        cfg = self.config
        outputs = naming.run_outputs(cfg.output_dir, run.entities)
        if not cfg.overwrite and self.is_complete(outputs, run):
            return RunResult(run.label, "skipped", "outputs exist (same settings); use --overwrite to recompute")
        if not cfg.overwrite and self.analyzer is not None and reuse_scratch(  # another --relevance-maps choice
                cfg.relevance_maps, outputs, cfg.work_dir, [self.pass_hash, _inputs_digest(run)], self.settings_hash,
                lambda n: event_blocks(read_events(run.events), n, run.t_r,
                                       resolve_state_map(run.entities["task"], self.user_state_map)), cfg.output_dir):
            return RunResult(run.label, "done", "relevance maps made from the work folder's per-volume maps")
        t0 = time.monotonic()
        _check_headers(run)
        LOGGER.info("%s: preparing (mask, smooth %.3g mm, detrend, high-pass, z-score)", run.label, cfg.smoothing_fwhm)
        to_grid, space_transform = self.space_plan.resampler_for(run.space or REFERENCE_SPACE)
        prepared = prepare_run(run.bold, run.mask, run.t_r, smoothing_fwhm=cfg.smoothing_fwhm,
                               high_pass=cfg.high_pass, to_grid=to_grid)
        events = read_events(run.events)
        task = run.entities["task"]
        state_map = resolve_state_map(task, self.user_state_map)
        unmapped = unmapped_trial_types(events, state_map)
        if unmapped:  # the start-up label table says it for the task; per run, info only
            LOGGER.info("%s: trial types without a model state (volumes labelled n/a): %s",
                        run.label, ", ".join(unmapped))
        labels = volume_labels(events, prepared.n_volumes, run.t_r, state_map)
        if cfg.save_tfrecords:
            self._save_tfrecords(run, prepared, labels)
        n_vol = prepared.n_volumes
        late = events["onset"].to_numpy(dtype=float) >= n_vol * run.t_r
        if late.any():
            LOGGER.warning("%s: %s: %d of %d event(s) start at or after the end of the run (%d volumes x TR %g s = "
                           "%g s) and label nothing; check that the events file, RepetitionTime and onsets (in "
                           "seconds) belong to this run.", run.label, run.events, int(late.sum()), len(events),
                           n_vol, run.t_r, n_vol * run.t_r)
        true_idx = np.array([self.state_index.get(s, -1) if s is not None else -1 for s in labels])
        not_decodable = sorted({s for s in labels if s is not None and s not in self.state_index})
        if not_decodable:
            LOGGER.warning("%s: labelled states the model cannot output (excluded from accuracy): %s",
                           run.label, ", ".join(not_decodable))

        stream = None
        masker = RelevanceMasker(prepared.mask)  # relevance inside the brain (derivatives/relevance.py)
        if self.analyzer is not None:
            blocks = event_blocks(events, n_vol, run.t_r, state_map) if cfg.relevance_maps == "blocks" else None
            # written by a thread beside the network (bounded queue; its errors stop the run)
            stream = BackgroundWriter(RunRelevanceOutputs(cfg.relevance_maps, outputs, n_vol, run.t_r, blocks,
                                                          scratch_dir=cfg.work_dir, root=cfg.output_dir,
                                                          key=[self.pass_hash, _inputs_digest(run)]))
        logits = np.zeros((n_vol, len(self.states)), dtype=np.float32)
        targets = np.full(n_vol, -1, dtype=int)
        sums, counts = {}, {}
        conservation = np.full(n_vol, np.nan)  # sum of each map / its explained logit
        batches = _ModelOrderBatches(prepared)
        try:
            for start in range(0, n_vol, cfg.batch_size):
                stop = min(start + cfg.batch_size, n_vol)
                tb = time.monotonic()
                x = batches.get(start, stop)  # = to_model_order(prepared.volumes(start, stop)), one copy fewer
                if self.analyzer is None:
                    logits[start:stop] = self.decoder.logits(x)
                else:
                    target = None
                    if cfg.lrp_target == "true":
                        pred = self.decoder.logits(x).argmax(axis=1)
                        true = true_idx[start:stop]
                        target = np.where(true >= 0, true, pred)
                    batch_logits, relevance = self.analyzer.explain(x, target=target)
                    logits[start:stop] = batch_logits
                    targets[start:stop] = batch_logits.argmax(axis=1) if target is None else target
                    explained = batch_logits[np.arange(stop - start), targets[start:stop]].astype(np.float64)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        conservation[start:stop] = relevance.sum(axis=(1, 2, 3), dtype=np.float64) / explained
                    # (batch, z, y, x) C order is (batch, x, y, z) Fortran order per volume: the
                    # transposed view is what from_model_order would copy, and it goes into the
                    # NIfTI's column-major volumes (and the sums below) as contiguous copies.
                    rel_xyz = masker.apply(relevance.transpose(0, 3, 2, 1))
                    stream.write(start, rel_xyz)
                    for j, tgt in enumerate(targets[start:stop]):
                        if tgt not in sums:
                            sums[tgt] = np.zeros(REFERENCE_SHAPE, np.float64, order="F")
                            counts[tgt] = 0
                        sums[tgt] += rel_xyz[j]
                        counts[tgt] += 1
                LOGGER.info("%s: volumes %d-%d of %d (%.2f s/batch)", run.label, start + 1, stop, n_vol,
                            time.monotonic() - tb)
            quality = None
            if self.quality is not None:  # reads the relevance back from the stream before it is closed
                relevance_of = stream.read  # the per-volume maps as written (in the work folder, whatever the mode)
                quality = self.quality.evaluate(outputs, batches.get, relevance_of, batches.index, logits, targets,
                                                self.states, root=cfg.output_dir, label=run.label)
            if stream is not None:
                stream.close()
        except BaseException:
            if stream is not None:
                stream.abort()
            raise

        probs = softmax(logits)
        pred_idx = probs.argmax(axis=1)
        frame = self._predictions_frame(n_vol, run.t_r, labels, true_idx, pred_idx, probs, targets,
                                        subject=run.subject)
        decodable = true_idx >= 0
        accuracy = float((pred_idx[decodable] == true_idx[decodable]).mean()) if decodable.any() else None
        provenance = self._provenance(run, unmapped, not_decodable, state_map, space_transform)
        if self.analyzer is not None:
            stream.finish({**self._relevance_sidecar(run, provenance, conservation), **masker.sidecar()})
            self._save_state_sums(run, sums, counts)
        else:
            from deeplight_bids.derivatives.stale import remove_stale

            remove_stale([outputs["relevance"], outputs["blocks"], outputs["blocks_tsv"]], "relevance of other settings (this run was re-done with --no-lrp)")
        write_tsv(outputs["predictions"], frame, root=cfg.output_dir)
        sidecar = self._predictions_sidecar(provenance, accuracy, int(decodable.sum()))
        if quality is not None:
            sidecar["Quality"] = quality
        write_json(outputs["predictions_json"], sidecar, root=cfg.output_dir)  # last: marks the run complete
        detail = plural(n_vol, "volume") + (f", accuracy {accuracy:.3f}" if accuracy is not None else "")
        detail += f", {time.monotonic() - t0:.1f} s"
        return RunResult(run.label, "done", detail, n_vol, accuracy)

    def _save_tfrecords(self, run, prepared, labels):
        """Export the run's prepared, labelled volumes in the original TFRecord schema (reference §9)."""
        from deeplight_bids.hcp.tfrecord import hcp_run_id, hcp_task_id, write_run_tfrecord
        from deeplight_bids.states import HCP_STATES, hcp_task_name

        task = hcp_task_name(run.entities["task"])
        subject = str(run.subject)
        if task is None or not subject.isdigit():
            LOGGER.warning("%s: --save-tfrecords needs an HCP task and a numeric participant label (the original "
                           "schema stores both as integers); no TFRecord written", run.label)
            return
        states = [HCP_STATES.index(s) if s in HCP_STATES else -1 for s in labels]
        direction = str(run.entities.get("direction", "")).upper()
        run_id = hcp_run_id(direction) if direction in ("LR", "RL") else int(run.entities.get("run") or 0)
        path = Path(self.config.output_dir) / "tfrecords" / f"sub-{subject}" / f"{run.label}_volumes.tfrecords"
        n_written = write_run_tfrecord(path, prepared.volumes, states, hcp_task_id(task), int(subject), run_id,
                                       run.t_r)
        LOGGER.info("%s: wrote %s labelled volumes to %s", run.label, n_written, path)

    def _predictions_frame(self, n_vol, t_r, labels, true_idx, pred_idx, probs, targets, subject=None):
        # 1/0: the participant was/was not in the model's training set (model card); n/a when unknown
        trained_on = self.dl_model.card.get("training_participants") if self.dl_model.card else None
        in_training = None
        if trained_on and subject is not None:
            in_training = int(str(subject) in {str(p).removeprefix("sub-") for p in trained_on})
        frame = pd.DataFrame({
            "volume": np.arange(n_vol),
            "onset": np.arange(n_vol) * float(t_r),
            "true_state": [s if s is not None else None for s in labels],
            "predicted_state": [self.states[i] for i in pred_idx],
            "correct": [None if t < 0 else int(p == t) for p, t in zip(pred_idx, true_idx)],
            "training_participant": [in_training] * n_vol,
        })
        frame["training_participant"] = frame["training_participant"].astype("Int64")
        if self.analyzer is not None:
            frame["lrp_target"] = [self.states[t] if t >= 0 else None for t in targets]
        for i, state in enumerate(self.states):
            frame[f"prob_{state}"] = probs[:, i]
        frame["correct"] = frame["correct"].astype("Int64")
        return frame

    def _provenance(self, run, unmapped, not_decodable, state_map, space_transform=None):
        cfg = self.config
        return {
            "Sources": [f"bids::{p}" for p in (run.bold, run.mask, run.events)],
            "Model": self.dl_model.provenance(),
            "Preprocessing": {
                "ReferenceGrid": {"Space": REFERENCE_SPACE, "Resolution": REFERENCE_RES,
                                  "Shape": list(REFERENCE_SHAPE), "Affine": REFERENCE_AFFINE.tolist()},
                "SmoothingFWHM": cfg.smoothing_fwhm, "SmoothingFWHMUnits": "mm",
                "HighPass": cfg.high_pass, "HighPassUnits": "Hz", "Detrend": "linear",
                "Standardize": "z-score per voxel over the run (population SD)",
                "RepetitionTime": run.t_r,
            },
            "Labelling": {"Rule": LABEL_RULE, "StateMap": state_map, "UnmappedTrialTypes": unmapped,
                          "StatesNotInModel": not_decodable},
            "SourceSpace": source_space(run),
            "SpaceTransform": space_transform,
            "SettingsHash": self.settings_hash,
            "InputsDigest": _inputs_digest(run),
            "SoftwareVersion": __version__,
            "ComputeBackend": backend_versions(),
        }

    def _predictions_sidecar(self, provenance, accuracy, n_labelled):
        columns = {
            "volume": {"Description": "0-based index of the volume in the run"},
            "onset": {"Description": "acquisition time of the volume, volume * RepetitionTime", "Units": "s"},
            "true_state": {"Description": "state from events.tsv after the haemodynamic shift (n/a: unlabelled "
                                          "or trial type without a model state)"},
            "predicted_state": {"Description": "state with the highest probability"},
            "correct": {"Description": "1 if predicted_state equals true_state, 0 if not, n/a if the volume has no "
                                       "state the model can output", "Levels": {"0": "wrong", "1": "right"}},
            "training_participant": {"Description": "1 if this participant was in the model's training data "
                                                    "(n/a: unknown, e.g. published weights)"},
        }
        if self.analyzer is not None:
            columns["lrp_target"] = {"Description": "state whose logit the relevance map of this volume explains"}
        for state in self.states:
            columns[f"prob_{state}"] = {"Description": f"softmax probability of state {state}", "Units": "arbitrary"}
        return {**columns, "Accuracy": accuracy, "NumberOfLabelledVolumes": n_labelled, **provenance}

    def _relevance_sidecar(self, run, provenance, conservation):
        lrp = self.analyzer.description if self.analyzer is not None else {}
        finite = conservation[np.isfinite(conservation)]
        return {
            "Description": "LRP relevance of each volume's decoding decision, one 3D map per volume, on the "
                           "MNI152NLin6Asym 2 mm reference grid (x, y, z as in the NIfTI); positive values "
                           "speak for the explained state",
            "RepetitionTime": run.t_r,
            "SkullStripped": True,
            "Resolution": "2 mm isotropic MNI152NLin6Asym grid (91 x 109 x 91)",
            "LRP": lrp,
            "LRPTarget": self.config.lrp_target,
            "SpatialReference": (f"https://templateflow.s3.amazonaws.com/tpl-{REFERENCE_SPACE}/tpl-{REFERENCE_SPACE}"
                                 f"_res-0{REFERENCE_RES}_T1w.nii.gz"),
            "LRPRule": self.config.lrp_rule if self.dl_model.architecture == "2D" else "published",
            "Units": "arbitrary (relevance)",
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

    # -- participant summaries ----------------------------------------------------------------
    def _sums_path(self, run_label):
        return Path(self.config.work_dir) / "relevance_sums" / f"{run_label}_sums.npz"

    def _save_state_sums(self, run, sums, counts):
        arrays = {}
        for idx, total in sums.items():
            arrays[f"sum_{idx}"] = np.ascontiguousarray(total, dtype=np.float32)
            arrays[f"count_{idx}"] = np.array(counts[idx])
        path = self._sums_path(run.label)
        from deeplight_bids.derivatives.writers import atomic_path

        with atomic_path(path, root=self.config.output_dir) as tmp:
            with open(tmp, "wb") as fobj:  # keyed by settings and by the identity of the run's inputs
                np.savez_compressed(fobj, settings=np.array(self.pass_hash),
                                    inputs=np.array(_inputs_digest(run)), **arrays)

    def _load_state_sums(self, run):
        """Per-state relevance sums of a finished run (recomputed from its outputs if the work dir was cleaned)."""
        path = self._sums_path(run.label)
        if path.is_file():
            with np.load(path) as data:
                key = (str(data["settings"]), str(data["inputs"]) if "inputs" in data.files else None)
                if key == (self.pass_hash, _inputs_digest(run)):
                    return {int(k[4:]): (data[k].astype(np.float64), int(data[f"count_{k[4:]}"]))
                            for k in data.files if k.startswith("sum_")}
            LOGGER.info("%s: %s was made from other inputs or settings (another dataset sharing the work folder?); "
                        "recomputing the sums from the run's outputs", run.label, path)
        import nibabel as nib

        outputs = naming.run_outputs(self.config.output_dir, run.entities)
        if not outputs["relevance"].is_file():  # --relevance-maps blocks/means keep no per-volume maps
            from deeplight_bids.exceptions import OutputError

            raise OutputError(f"{path}: missing, and the run's per-volume maps were not kept (--relevance-maps "
                              f"{self.config.relevance_maps}); re-run the participant level with --overwrite.")
        frame = pd.read_csv(outputs["predictions"], sep="\t", na_values="n/a", keep_default_na=False)
        data = np.asarray(nib.load(outputs["relevance"]).dataobj, dtype=np.float32)
        out = {}
        for state, rows in frame.groupby("lrp_target").groups.items():
            idx = self.state_index[state]
            out[idx] = (data[..., np.asarray(rows)].sum(axis=-1, dtype=np.float64), len(rows))
        return out

    def write_participant_summaries(self, subject, runs, map_tasks=None):
        """Mean relevance map per task and explained state, and the accuracy summary TSV.

        ``runs`` are all the participant's runs (those complete for these settings are
        summarised, whichever job made them); mean maps are rewritten only for
        ``map_tasks`` (default: every task of ``runs``).
        """
        cfg = self.config
        done = [r for r in runs if self.is_complete(naming.run_outputs(cfg.output_dir, r.entities), r)]
        if not done:
            return
        rows = []
        for run in done:
            outputs = naming.run_outputs(cfg.output_dir, run.entities)
            frame = pd.read_csv(outputs["predictions"], sep="\t", na_values="n/a", keep_default_na=False)
            rows.append(_accuracy_row(run.label, run.entities["task"], frame))
        summary = pd.DataFrame(rows)
        for task, group in summary.groupby("task"):
            n_lab = group["n_labelled"].sum()
            n_cor = group["n_correct"].sum()
            summary.loc[len(summary)] = {"run": "all", "task": task, "n_volumes": group["n_volumes"].sum(),
                                         "n_labelled": n_lab, "n_correct": n_cor,
                                         "accuracy": n_cor / n_lab if n_lab else np.nan}
        out = naming.summary_output(cfg.output_dir, subject)
        write_tsv(out, summary, root=cfg.output_dir)
        write_json(out.with_suffix(".json"), root=cfg.output_dir, obj={
            "run": {"Description": "run label, or 'all' for all runs of the task"},
            "task": {"Description": "BIDS task label"},
            "n_volumes": {"Description": "number of decoded volumes"},
            "n_labelled": {"Description": "volumes with a state the model can output"},
            "n_correct": {"Description": "labelled volumes decoded correctly"},
            "accuracy": {"Description": "n_correct / n_labelled"},
            "Model": self.dl_model.provenance(),
        })
        from deeplight_bids.derivatives.stale import remove_stale, stale_state_maps

        tasks = sorted({r.entities["task"] for r in done} & set(map_tasks or {r.entities["task"] for r in done}))
        if not cfg.lrp:
            for task in tasks:  # mean maps of an earlier LRP run: no longer what this participant's runs hold
                remove_stale(stale_state_maps(cfg.output_dir, subject, task, ()), "mean map of other settings (LRP)")
            return
        import nibabel as nib

        for task in tasks:
            written = []
            totals = {}
            for run in (r for r in done if r.entities["task"] == task):
                for idx, (total, count) in self._load_state_sums(run).items():
                    acc, n = totals.get(idx, (0.0, 0))
                    totals[idx] = (acc + total, n + count)
            for idx, (total, count) in sorted(totals.items()):
                state = self.states[idx]
                path = naming.state_map_output(cfg.output_dir, subject, task, state)
                img = nib.Nifti1Image((total / count).astype(np.float32), REFERENCE_AFFINE)
                img.header.set_xyzt_units("mm")
                write_nifti(path, img, root=cfg.output_dir)
                write_json(path.with_name(path.name.replace(".nii.gz", ".json")), root=cfg.output_dir, obj={
                    "Description": f"mean LRP relevance of the volumes of task {task} whose decision for state "
                                   f"{state} was explained (lrp_target == {state})",
                    "State": state, "NumberOfVolumes": int(count), "LRPTarget": cfg.lrp_target,
                    "Model": self.dl_model.provenance(), "LRP": self.analyzer.description,
                    "SettingsHash": self.settings_hash,
                })
                written.append(path)
            remove_stale(stale_state_maps(cfg.output_dir, subject, task, written),
                         f"mean map of other settings (no volume explained for its state with --lrp-target "
                         f"{cfg.lrp_target})")


def _inputs_digest(run):
    """Identity of the run's BOLD, mask and events (path, size, mtime, SHA-256): see bids/identity.py."""
    from deeplight_bids.bids.identity import run_inputs_digest

    return run_inputs_digest(run)


def _accuracy_row(label, task, frame):
    labelled = frame["correct"].notna()
    n_lab = int(labelled.sum())
    n_cor = int(frame.loc[labelled, "correct"].sum())
    return {"run": label, "task": task, "n_volumes": len(frame), "n_labelled": n_lab, "n_correct": n_cor,
            "accuracy": n_cor / n_lab if n_lab else np.nan}


def run_participant_level(config, log=LOGGER):
    """Process every selected run; returns (results, exit code)."""
    from deeplight_bids.bids.discover import build_layout, discover_runs, find_derivatives, format_run_table
    from deeplight_bids.derivatives.writers import write_dataset_files
    from deeplight_bids.exceptions import EXIT_OK, EXIT_PARTIAL
    from deeplight_bids.models.weights import load_deeplight

    from deeplight_bids.derivatives.writers import ensure_writable

    ensure_writable(config.output_dir)  # fail fast, before discovery and the model
    derivatives = find_derivatives(config.bids_dir, config.derivatives)
    if not config.skip_bids_validation:
        validate_bids(config.bids_dir, log)
    layout = build_layout(config.bids_dir, derivatives)
    runs = discover_runs(layout, space=config.space, participant_label=config.participant_label,
                         session_label=config.session_label, task=config.task, bids_filters=config.bids_filters)
    log.info("runs found:\n%s", format_run_table(runs))
    todo = [r for r in runs if r.skip_reason is None]
    if not todo:
        from deeplight_bids.preflight import no_runs_error

        stem = _write_config(config)
        table = stem.with_name(stem.name.replace("config-", "runs-") + ".tsv")
        _write_run_table(config, table, [RunResult(r.label, "skipped", r.skip_reason) for r in runs])
        raise no_runs_error(config.bids_dir, runs, table)

    _remove_stale_temporaries(config, {r.subject for r in todo}, log)
    user_state_map = None
    if config.state_map_file is not None:
        from deeplight_bids.prepare.labels import load_state_map_file

        user_state_map = load_state_map_file(config.state_map_file)
    _configure_threads(config.nprocs)
    dl_model = load_deeplight(config.weights, config.architecture)
    log.info("model: %s-DeepLight '%s' (%d states) from %s", dl_model.architecture, dl_model.name,
             len(dl_model.states), dl_model.weights_path)
    from deeplight_bids.preflight import plan_before_compute

    space_plan, _ = plan_before_compute(config, todo, dl_model.states, user_state_map, layout.get_tasks(), log)

    write_dataset_files(config.output_dir, [config.bids_dir, *derivatives])
    log_stem = _write_config(config)
    file_log = _attach_log_file(log, log_stem.with_suffix(".log"))
    processor = RunProcessor(dl_model, config, user_state_map, space_plan)
    results = [RunResult(r.label, "skipped", r.skip_reason) for r in runs if r.skip_reason]
    for i, run in enumerate(todo, start=1):
        log.info("[%d/%d] %s", i, len(todo), run.label)
        try:
            result = processor.process(run)
        except DeepLightBidsError as err:
            if err.exit_code not in (3,):  # only bad data of one run is survivable; others stop
                raise
            log.error("%s: %s", run.label, err)
            result = RunResult(run.label, "failed", str(err))
        log.info("%s: %s (%s)", run.label, result.status, result.detail)
        results.append(result)
    for subject in sorted({r.subject for r in todo}):
        mine = [r for r in todo if r.subject == subject]
        # the summary covers every finished run of the participant, also those of earlier jobs
        # run with other --task/--session selections, so it is never narrowed by a later job
        processor.write_participant_summaries(subject, _all_runs_of(layout, config, subject, mine),
                                              map_tasks={r.entities["task"] for r in mine})

    log.info("summary:\n%s", format_results(results))
    _write_run_table(config, log_stem.with_name(log_stem.name.replace("config-", "runs-") + ".tsv"), results)
    if file_log is not None:
        log.removeHandler(file_log)
        file_log.close()
    bad = [r for r in results if r.status == "failed" or (r.status == "skipped" and not r.detail.startswith("outputs exist"))]
    if bad and len(bad) == len(results):
        from deeplight_bids.exceptions import InputDataError

        # nothing usable at all: an input error (exit 3) with the first reason, not a "partial" success
        first = next((r for r in bad if r.status == "failed"), bad[0])
        more = f" (and {len(bad) - 1} more run(s) failed or skipped; see the run table)" if len(bad) > 1 else ""
        raise InputDataError(f"{first.label}: {first.detail}{more}")
    if bad:
        log.warning("%d of %d run(s) skipped or failed for bad input (exit code %d; reasons in the table above); "
                    "fix them and re-run: finished runs are kept.", len(bad), len(results), EXIT_PARTIAL)
    return results, (EXIT_PARTIAL if bad else EXIT_OK)


def _remove_stale_temporaries(config, subjects, log):
    """Temporaries of earlier jobs on this host that were killed, where this job writes.

    Only this job's participants' folders are searched below; the top of OUTPUT_DIR,
    ``logs/`` and the work folder's scratch places are searched without descending, so a
    job's start does not walk a whole shared OUTPUT_DIR.
    """
    from deeplight_bids.derivatives.writers import remove_stale_temporaries

    out, work = Path(config.output_dir), Path(config.work_dir)
    for folder in sorted(subjects):
        remove_stale_temporaries(out / f"sub-{folder}", log)
    for folder in dict.fromkeys((out, out / "logs", work, work / "relevance_sums", work / "relevance_volumes")):
        remove_stale_temporaries(folder, log, recursive=False)


def _check_headers(run):
    """Warn about header inconsistencies that do not stop a run (header reads only; cheap).

    * ``RepetitionTime`` (sidecar) vs the NIfTI ``pixdim[4]``: BIDS makes the sidecar
      authoritative, so it is used; a header value that is set (> 0) and differs by more
      than 1% is reported, as labels depend on the TR.
    * A mask on another grid than the BOLD: both are resampled onto the reference grid
      in world coordinates, which is correct when both headers are; a mask from another
      space is caught later (BOLD 0 in most of the mask).
    """
    import nibabel as nib

    try:
        bold = nib.load(run.bold)
        mask = nib.load(run.mask)
    except Exception:  # unreadable files get their one-line error from prepare_run
        return
    if len(bold.shape) == 4:
        zoom = float(bold.header.get_zooms()[3])
        unit = bold.header.get_xyzt_units()[1]
        header_tr = zoom / 1000.0 if unit == "msec" else zoom / 1e6 if unit == "usec" else zoom
        if header_tr > 0 and abs(header_tr - run.t_r) > 0.01 * run.t_r:
            LOGGER.warning("%s: RepetitionTime %g s in the sidecar JSON differs from the NIfTI header (pixdim[4] = %g "
                           "s); the sidecar is used (BIDS) - fix whichever is wrong.", run.bold, run.t_r, header_tr)
    if tuple(mask.shape[:3]) != tuple(bold.shape[:3]) or not np.allclose(mask.affine, bold.affine, atol=1e-3):
        LOGGER.warning("%s: brain mask grid %s differs from the BOLD grid %s (%s); both are resampled onto the "
                       "reference grid - check that the mask belongs to this run.", run.mask, tuple(mask.shape[:3]),
                       tuple(bold.shape[:3]), run.bold)


class _ModelOrderBatches:
    """Batches of a prepared run in model order, ``(batch, z, y, x, 1)`` float32.

    Equal to ``to_model_order(prepared.volumes(start, stop))``, but the masked signals
    are scattered straight into model order (one zero-filled array per batch) instead of
    into NIfTI order and then transposed into a second array.
    """

    def __init__(self, prepared):
        self.signals = prepared.signals
        x, y, z = np.nonzero(prepared.mask)  # the signals' column order (C order of the mask)
        nx, ny, nz = prepared.mask.shape
        self.shape = (nz, ny, nx, 1)
        self.index = (z * ny + y) * nx + x

    def get(self, start, stop):
        out = np.zeros((stop - start, int(np.prod(self.shape))), dtype=np.float32)
        out[:, self.index] = self.signals[start:stop]
        return out.reshape((stop - start, *self.shape))


def _all_runs_of(layout, config, subject, fallback):
    """Every processable run of ``subject`` in the dataset (any task or session)."""
    from deeplight_bids.bids.discover import discover_runs
    from deeplight_bids.exceptions import NoRunsFoundError

    try:
        runs = discover_runs(layout, space=config.space, participant_label=[subject])
    except NoRunsFoundError:
        return fallback
    return [r for r in runs if r.skip_reason is None] or fallback


def format_results(results):
    lines = [f"{'run':<48} {'status':<8} detail"]
    lines += [f"{r.label:<48} {r.status:<8} {r.detail}" for r in results]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def find_bids_validator():
    """Path of ``bids-validator-deno`` (on PATH, or beside the running interpreter), or None."""
    import shutil
    import sys

    # beside the interpreter too: a venv's bin/ is often not on PATH
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return shutil.which("bids-validator-deno") or (str(beside) if beside.is_file() else None)


def validate_bids(bids_dir, log):
    """Run bids-validator-deno on BIDS_DIR when installed; errors stop the run."""
    import subprocess

    from deeplight_bids.exceptions import InputDataError

    exe = find_bids_validator()
    if exe is None:
        log.warning("bids-validator-deno not found: BIDS validation skipped (pip install bids-validator-deno)")
        return
    proc = subprocess.run([exe, str(bids_dir), "--format", "json", "--ignoreWarnings"], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 0:
        log.info("BIDS validation: no errors")
        return
    try:
        issues = json.loads(proc.stdout)["issues"]["issues"]
        errors = [i for i in issues if i.get("severity") == "error"]
        first = errors[0] if errors else {}
        detail = f"{len(errors)} error(s), first: {first.get('code')} at {first.get('location')}"
    except (json.JSONDecodeError, KeyError, IndexError):
        detail = _validator_crash_line(proc.stderr or proc.stdout)
    raise InputDataError(f"{bids_dir}: the BIDS validator found problems ({detail}); run bids-validator-deno "
                         f"{bids_dir} to see them, fix them, or pass --skip-bids-validation.")


def _validator_crash_line(text):
    """The validator's own error line, without terminal colour codes or deno stack frames."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).strip() for line in str(text).splitlines()]
    lines = [line for line in lines if line and not line.startswith("at ")]
    return next((line for line in lines if "error" in line.lower()), lines[0] if lines else "unknown error")


def _configure_threads(nprocs):
    """The Keras backend's thread pools for ``--nprocs`` (TensorFlow: intra-op N, inter-op at most 2).

    Logs the settings in force (e.g. ``TensorFlow threads: intra-op N, inter-op M``), so
    a job's log shows that ``--nprocs`` was respected (e.g. a SLURM task's
    ``--cpus-per-task``).  See :func:`deeplight_bids.backend.configure_threads`.
    """
    from deeplight_bids import backend

    backend.configure_threads(nprocs, LOGGER)


def _write_config(config):
    import tomli_w

    from deeplight_bids.derivatives.writers import write_text

    # the process id keeps concurrent jobs started in the same second apart
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    labels = "-".join(config.participant_label or ("all",))[:40]
    path = Path(config.output_dir) / "logs" / f"config-{stamp}-{labels}.toml"
    write_text(path, tomli_w.dumps(config.to_dict()), root=config.output_dir)
    return path.with_suffix("")


def _attach_log_file(log, path):
    """Copy the log of this job to ``OUTPUT_DIR/logs/*.log`` (as fMRIPrep keeps its logs)."""
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as err:
        log.warning("cannot write the log file %s (%s); logging to the terminal only", path, err)
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def _write_run_table(config, path, results):
    """What happened to every run of this job (``run``, ``status``, ``detail``): read by the group report."""
    from deeplight_bids.derivatives.writers import write_tsv

    frame = pd.DataFrame([{"run": r.label, "status": r.status, "detail": r.detail} for r in results],
                         columns=["run", "status", "detail"])
    write_tsv(path, frame)

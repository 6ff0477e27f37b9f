"""One run: prepare -> label -> decode and explain -> tables and sidecars; resumable.

Each run's outputs are written atomically; the predictions sidecar JSON is written
last and records the settings and inputs that produced the run
(:mod:`deeplight_bids.derivatives.resume`), so a re-run skips complete runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deeplight_bids.attribution.methods import STANDARD_SET, parameters_from, published_method, resolve
from deeplight_bids.backend import versions as backend_versions
from deeplight_bids.bids.discover import job_dataset_roots
from deeplight_bids.bids.headers import check_headers
from deeplight_bids.derivatives import naming, resume, sidecars, tables
from deeplight_bids.derivatives.background import BackgroundWriter
from deeplight_bids.derivatives.blocks import event_blocks
from deeplight_bids.derivatives.integrity import FILES_KEY
from deeplight_bids.derivatives.masking import RelevanceMasker
from deeplight_bids.derivatives.relevance import RunRelevanceOutputs
from deeplight_bids.derivatives.relevance_reuse import restore_scratch, reuse_scratch
from deeplight_bids.derivatives.stale import remove_stale
from deeplight_bids.derivatives.writers import write_json, write_tsv
from deeplight_bids.hcp.run_export import save_run_tfrecords
from deeplight_bids.models.batches import ModelOrderBatches, decode_and_explain
from deeplight_bids.models.decode import Decoder, network_batch_limit, softmax
from deeplight_bids.preflight import plural, source_space
from deeplight_bids.prepare.clean import prepare_run
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE, REFERENCE_SPACE
from deeplight_bids.prepare.labels import read_events, resolve_state_map, unmapped_trial_types, volume_labels
from deeplight_bids.prepare.spaces import SpacePlan
from deeplight_bids.quality import plausibility
from deeplight_bids.quality.compare import AttributionComparison
from deeplight_bids.quality.run_quality import RunQuality
from deeplight_bids.runtime import memory_limit
from deeplight_bids.workflows.summaries import ParticipantSummaries, save_state_sums

if TYPE_CHECKING:
    from deeplight_bids.bids.discover import Run

LOGGER = logging.getLogger("deeplight_bids")


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
    space_plan : deeplight_bids.prepare.spaces.SpacePlan or None
    dataset_roots : dict or None
        ``{name: root}`` of the source datasets, as OUTPUT_DIR's ``DatasetLinks`` name them
        (:func:`deeplight_bids.derivatives.links.dataset_roots`); None: found from the configuration.
    """

    def __init__(self, dl_model, config, user_state_map=None, space_plan=None, dataset_roots=None):
        self.dl_model = dl_model
        self.config = config
        self.user_state_map = user_state_map
        self.space_plan = space_plan or SpacePlan(allow_approximate=config.inputs.allow_approximate_space)
        if dataset_roots is None:
            dataset_roots = job_dataset_roots(config)
        self.dataset_roots = dataset_roots
        self.states = tuple(dl_model.states)
        self.state_index = {s: i for i, s in enumerate(self.states)}
        max_batch = network_batch_limit()
        self.decoder = Decoder(dl_model.model, max_batch=max_batch)
        self.analyzer = None  # the explainer of the maps (an LRP analyzer or a gradient method)
        self.method = None
        if config.participant.lrp:
            # deferred: loads TensorFlow/Keras
            from deeplight_bids.lrp.analyzer import WHOLE_STEM_MIN_MIB, stem_batch_for_memory

            # the published rule by default (reference section 7: iNNvestigate's preset B-flat for 3D, epsilon,
            # LSTM rule included, for 2D, stabilised as the original code or sign-aware with --lrp-rule signed)
            self.method = resolve(config.participant.attribution, dl_model.architecture, config.participant.lrp_rule)
            limit_mib, source = memory_limit(config.mem_mb)
            stem_batch = stem_batch_for_memory(limit_mib)
            self.analyzer = self.method.explainer(
                dl_model.model, max_batch=max_batch, stem_batch=stem_batch, **parameters_from(config)
            )
            LOGGER.info(
                "Attribution: %s (%s)%s",
                self.method.name,
                self.method.summary,
                "" if config.participant.attribution != "published" else "; the published rule",
            )
            if max_batch is not None and self.method.family == "lrp":  # CPU: the memory/speed trade of the job
                LOGGER.info(
                    "LRP: memory %s MiB (%s): the full-resolution layers' backward pass takes %s",
                    limit_mib,
                    source,
                    "one volume at a time (bounded memory, ~8 %% slower)"
                    if stem_batch
                    else f"{max_batch} volumes at a time (--mem-mb below {WHOLE_STEM_MIN_MIB} bounds memory instead)",
                )

        self.attribution = (
            self.method.sidecar(parameters_from(config)) if self.method is not None else None
        )  # the "Attribution" entry of the relevance sidecars
        self.quality = None
        if self.analyzer is not None and config.participant.quality:
            self.quality = RunQuality(
                self.analyzer, self.decoder, config.participant.quality_volumes, seed=config.seed, max_batch=max_batch
            )
        self.comparison = None
        if self.analyzer is not None and config.participant.compare_attributions is not None:
            self.comparison = self._comparison(dl_model, max_batch, stem_batch)
        job = (
            config,
            dl_model.weights_sha256,
            dl_model.architecture,
            user_state_map,
            self.quality.settings() if self.quality is not None else None,
        )
        self.settings_hash = resume.settings_hash(
            *job, comparison_settings=self.comparison.settings() if self.comparison is not None else None
        )
        # the network pass's settings: all but --relevance-maps (keys the work folder's per-volume maps and sums)
        self.pass_hash = resume.settings_hash(*job, relevance_maps="volumes")
        self.summaries = ParticipantSummaries(
            config,
            self.states,
            dl_model.provenance(),
            self.analyzer.description if self.analyzer is not None else None,
            self.settings_hash,
            self.quality is not None,
            pass_hash=self.pass_hash,
            attribution=self.attribution,
        )

    def _comparison(self, dl_model, max_batch, stem_batch):
        """The ``--compare-attributions`` evaluator: the published rule first, then the methods asked for."""
        cfg = self.config
        published = published_method(dl_model.architecture, cfg.participant.lrp_rule)
        methods = []
        for name in [published, *(cfg.participant.compare_attributions or STANDARD_SET)]:
            method = resolve(name, dl_model.architecture, cfg.participant.lrp_rule)
            if method.name not in [m.name for m in methods]:
                methods.append(method)
        references = None
        if cfg.group.reference_map is not None:
            files = plausibility.find_reference_files(cfg.group.reference_map, self.states)
            references = {
                s: plausibility.load_reference(f, REFERENCE_SHAPE, REFERENCE_AFFINE) for s, f in files.items()
            }
        return AttributionComparison(
            dl_model.model,
            methods,
            published,
            self.decoder,
            cfg.participant.compare_volumes,
            seed=cfg.seed,
            max_batch=max_batch,
            stem_batch=stem_batch,
            parameters=parameters_from(cfg),
            references=references,
            reference_top_percent=cfg.group.reference_top_percent,
        )

    def is_complete(self, outputs: Mapping[str, Path], run: Run | None = None) -> bool:
        """True when a previous run with these settings (and, given ``run``, inputs) finished all outputs."""
        return resume.is_complete(outputs, self.config, self.settings_hash, self.quality is not None, run)

    def write_participant_summaries(
        self, subject: str, runs: Iterable[Run], map_tasks: Iterable[str] | None = None
    ) -> None:
        """See :meth:`ParticipantSummaries.write`."""
        self.summaries.write(subject, runs, map_tasks)

    # -- one run: a list of stages ------------------------------------------------------------
    def process(self, run: Run) -> RunResult:
        cfg = self.config
        outputs = naming.run_outputs(cfg.inputs.output_dir, run.entities)
        if not cfg.overwrite and self.is_complete(outputs, run):
            if (
                self.analyzer is not None and cfg.participant.relevance_maps == "volumes"
            ):  # a damaged work copy was removed
                restore_scratch(
                    outputs, cfg.inputs.work_dir, [self.pass_hash, resume.inputs_digest(run)], cfg.inputs.output_dir
                )
            return RunResult(run.label, "skipped", "outputs exist (same settings); use --overwrite to recompute")
        if not cfg.overwrite and self.analyzer is not None and self._reuse_scratch(run, outputs):
            return RunResult(run.label, "done", "relevance maps made from the work folder's per-volume maps")
        t0 = time.monotonic()
        check_headers(run)
        prepared, space_transform = self._prepare(run)
        labelled = self._label(run, prepared.n_volumes)
        if cfg.participant.save_tfrecords:
            save_run_tfrecords(run, prepared.volumes, labelled["labels"], cfg.inputs.output_dir)
        decoding, quality, masker, stream = self._decode_and_explain(run, prepared, labelled, outputs)
        accuracy, n_labelled = self._write_outputs(
            run, outputs, decoding, quality, masker, stream, labelled, space_transform
        )
        n_vol = prepared.n_volumes
        detail = plural(n_vol, "volume") + (f", accuracy {accuracy:.3f}" if accuracy is not None else "")
        detail += f", {time.monotonic() - t0:.1f} s"
        return RunResult(run.label, "done", detail, n_vol, accuracy)

    def _reuse_scratch(self, run, outputs):
        """Another ``--relevance-maps`` choice of an earlier pass: its outputs from the work folder, no network."""
        cfg = self.config

        def blocks_of(n_vol):
            return event_blocks(
                read_events(run.events), n_vol, run.t_r, resolve_state_map(run.entities["task"], self.user_state_map)
            )

        return reuse_scratch(
            cfg.participant.relevance_maps,
            outputs,
            cfg.inputs.work_dir,
            [self.pass_hash, resume.inputs_digest(run)],
            self.settings_hash,
            blocks_of,
            cfg.inputs.output_dir,
            files_of=lambda: resume.files_record(outputs, cfg, run.label),
        )

    def _prepare(self, run):
        cfg = self.config
        LOGGER.info(
            "%s: preparing (mask, smooth %.3g mm, detrend, high-pass, z-score)", run.label, cfg.inputs.smoothing_fwhm
        )
        to_grid, space_transform = self.space_plan.resampler_for(run.space or REFERENCE_SPACE)
        prepared = prepare_run(
            run.bold,
            run.mask,
            run.t_r,
            smoothing_fwhm=cfg.inputs.smoothing_fwhm,
            high_pass=cfg.inputs.high_pass,
            to_grid=to_grid,
            n_threads=cfg.nprocs,
        )
        return prepared, space_transform

    def _label(self, run, n_vol):
        """State per volume from the events (haemodynamic shift), and what could not be labelled."""
        events = read_events(run.events)
        state_map = resolve_state_map(run.entities["task"], self.user_state_map)
        unmapped = unmapped_trial_types(events, state_map)
        if unmapped:  # the start-up label table says it for the task; per run, info only
            LOGGER.info(
                "%s: trial types without a model state (volumes labelled n/a): %s", run.label, ", ".join(unmapped)
            )
        labels = volume_labels(events, n_vol, run.t_r, state_map)
        late = events["onset"].to_numpy(dtype=float) >= n_vol * run.t_r
        if late.any():
            LOGGER.warning(
                "%s: %s: %d of %d event(s) start at or after the end of the run (%d volumes x TR %g s = "
                "%g s) and label nothing; check that the events file, RepetitionTime and onsets (in "
                "seconds) belong to this run.",
                run.label,
                run.events,
                int(late.sum()),
                len(events),
                n_vol,
                run.t_r,
                n_vol * run.t_r,
            )
        true_idx = np.array([self.state_index.get(s, -1) if s is not None else -1 for s in labels])
        not_decodable = sorted({s for s in labels if s is not None and s not in self.state_index})
        if not_decodable:
            LOGGER.warning(
                "%s: labelled states the model cannot output (excluded from accuracy): %s",
                run.label,
                ", ".join(not_decodable),
            )
        return {
            "events": events,
            "state_map": state_map,
            "labels": labels,
            "true_idx": true_idx,
            "unmapped": unmapped,
            "not_decodable": not_decodable,
        }

    def _decode_and_explain(self, run, prepared, labelled, outputs):
        """The batch loop (streaming the relevance maps), then the quality measures before the stream closes."""
        cfg = self.config
        n_vol = prepared.n_volumes
        stream = None
        masker = RelevanceMasker(prepared.mask)  # relevance inside the brain (derivatives/masking.py)
        if self.analyzer is not None:
            blocks = (
                event_blocks(labelled["events"], n_vol, run.t_r, labelled["state_map"])
                if cfg.participant.relevance_maps == "blocks"
                else None
            )
            # written by a thread beside the network (bounded queue; its errors stop the run)
            stream = BackgroundWriter(
                RunRelevanceOutputs(
                    cfg.participant.relevance_maps,
                    outputs,
                    n_vol,
                    run.t_r,
                    blocks,
                    scratch_dir=cfg.inputs.work_dir,
                    root=cfg.inputs.output_dir,
                    key=[self.pass_hash, resume.inputs_digest(run)],
                )
            )
        batches = ModelOrderBatches(prepared)
        try:
            decoding = decode_and_explain(
                batches,
                n_vol,
                len(self.states),
                cfg.participant.batch_size,
                self.decoder,
                self.analyzer,
                cfg.participant.lrp_target,
                labelled["true_idx"],
                masker,
                stream,
                label=run.label,
            )
            quality = None
            if self.quality is not None:  # reads the relevance back from the stream before it is closed
                relevance_of = stream.read  # the per-volume maps as written (in the work folder, whatever the mode)
                quality = self.quality.evaluate(
                    outputs,
                    batches.get,
                    relevance_of,
                    batches.index,
                    decoding.logits,
                    decoding.targets,
                    self.states,
                    root=cfg.inputs.output_dir,
                    label=run.label,
                )
            if self.comparison is not None:
                task_states = sorted(
                    {self.state_index[s] for s in labelled["state_map"].values() if s in self.state_index}
                )
                quality = dict(quality or {})
                quality["AttributionComparison"] = self.comparison.evaluate(
                    outputs,
                    batches.get,
                    batches.index,
                    decoding.logits,
                    decoding.targets,
                    self.states,
                    task_states or range(len(self.states)),
                    root=cfg.inputs.output_dir,
                    label=run.label,
                    sums_path=naming.attribution_sums_output(cfg.inputs.work_dir, run.label),
                )
            if stream is not None:
                stream.close()
        except BaseException:
            if stream is not None:
                stream.abort()
            raise
        return decoding, quality, masker, stream

    def _write_outputs(self, run, outputs, decoding, quality, masker, stream, labelled, space_transform):
        """Relevance sidecar and sums, predictions table, and last its sidecar (marks the run complete)."""
        cfg = self.config
        probs = softmax(decoding.logits)
        pred_idx = probs.argmax(axis=1)
        true_idx = labelled["true_idx"]
        frame = tables.predictions_frame(
            self.states,
            run.t_r,
            labelled["labels"],
            true_idx,
            pred_idx,
            probs,
            decoding.targets if self.analyzer is not None else None,
            tables.in_training_set(self.dl_model.card, run.subject),
        )
        decodable = true_idx >= 0
        accuracy = float((pred_idx[decodable] == true_idx[decodable]).mean()) if decodable.any() else None
        digest = resume.inputs_digest(run)
        provenance = sidecars.run_provenance(
            run,
            self.dl_model.provenance(),
            cfg,
            {
                "StateMap": labelled["state_map"],
                "UnmappedTrialTypes": labelled["unmapped"],
                "StatesNotInModel": labelled["not_decodable"],
            },
            space_transform,
            self.settings_hash,
            digest,
            source_space(run),
            backend_versions(),
            self.dataset_roots,
        )
        if self.analyzer is not None:
            lrp_rule = cfg.participant.lrp_rule if self.dl_model.architecture == "2D" else "published"
            stream.finish(
                {
                    **sidecars.relevance_sidecar(
                        run.t_r,
                        provenance,
                        decoding.conservation,
                        self.analyzer.description,
                        cfg.participant.lrp_target,
                        lrp_rule,
                        self.attribution,
                    ),
                    **masker.sidecar(),
                }
            )
            save_state_sums(
                naming.state_sums_output(cfg.inputs.work_dir, run.label),
                decoding.sums,
                decoding.counts,
                self.pass_hash,
                digest,
                root=cfg.inputs.output_dir,
            )
        else:
            remove_stale(
                [outputs["relevance"], outputs["blocks"], outputs["blocks_tsv"]],
                "relevance of other settings (this run was re-done with --no-lrp)",
            )
        write_tsv(outputs["predictions"], frame, root=cfg.inputs.output_dir)
        sidecar = sidecars.predictions_sidecar(
            self.states, self.analyzer is not None, provenance, accuracy, int(decodable.sum())
        )
        if quality is not None:
            sidecar["Quality"] = quality
        # every file written, with its size and checksum: a re-run verifies them (derivatives/integrity.py)
        sidecar[FILES_KEY] = resume.files_record(outputs, cfg, run.label)
        write_json(outputs["predictions_json"], sidecar, root=cfg.inputs.output_dir)  # last: marks the run complete
        return accuracy, int(decodable.sum())

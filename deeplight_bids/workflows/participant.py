"""Participant level: discover -> validate -> load the model -> plan -> process each run -> summaries.

A short list of stages; the work is done by the packages that own it: discovery in
:mod:`deeplight_bids.bids`, one run in :mod:`deeplight_bids.workflows.run`, summaries in
:mod:`deeplight_bids.workflows.summaries`, names and tables in :mod:`deeplight_bids.derivatives`,
threads and logging in :mod:`deeplight_bids.runtime`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from deeplight_bids.bids.discover import (
    build_layout,
    discover_runs,
    discover_selected_runs,
    find_derivatives,
    format_run_table,
)
from deeplight_bids.bids.validate import validate_bids
from deeplight_bids.derivatives import naming, tables
from deeplight_bids.derivatives.links import dataset_roots
from deeplight_bids.derivatives.stale import adopt_legacy_work_dir, remove_job_temporaries
from deeplight_bids.derivatives.writers import ensure_writable, write_dataset_files, write_tsv
from deeplight_bids.exceptions import EXIT_OK, EXIT_PARTIAL, DeepLightBidsError, InputDataError, NoRunsFoundError
from deeplight_bids.glm.stage import run_glm_stage
from deeplight_bids.models.weights import load_deeplight
from deeplight_bids.preflight import no_runs_error, plan_before_compute
from deeplight_bids.prepare.labels import load_state_map_file
from deeplight_bids.runtime import compute_session, log_file
from deeplight_bids.workflows.run import RunProcessor, RunResult

if TYPE_CHECKING:
    from deeplight_bids.config import Config

LOGGER = logging.getLogger("deeplight_bids")

__all__ = ["RunProcessor", "RunResult", "run_participant_level"]


def run_participant_level(config: Config, log: logging.Logger = LOGGER) -> tuple[list[RunResult], int]:
    """Process every selected run; returns (results, exit code)."""
    ensure_writable(config.inputs.output_dir)  # fail fast, before discovery and the model
    derivatives = find_derivatives(config.inputs.bids_dir, config.inputs.derivatives)
    if not config.inputs.skip_bids_validation:
        validate_bids(config.inputs.bids_dir, log)
    layout = build_layout(config.inputs.bids_dir, derivatives)
    runs = discover_selected_runs(layout, config.inputs)
    log.info("runs found:\n%s", format_run_table(runs))
    todo = [r for r in runs if r.skip_reason is None]
    if not todo:
        job = _save_config(config)
        # no run to do: every run has a skip_reason
        _write_run_table(job["runs"], [RunResult(r.label, "skipped", r.skip_reason) for r in runs])  # type: ignore[arg-type]
        raise no_runs_error(config.inputs.bids_dir, runs, job["runs"])

    adopt_legacy_work_dir(config.inputs.output_dir, config.inputs.work_dir, log)
    remove_job_temporaries(config.inputs.output_dir, config.inputs.work_dir, {r.subject for r in todo}, log)
    user_state_map = _user_state_map(config)
    with compute_session(config.nprocs, log=log):
        dl_model = load_deeplight(config.inputs.weights, config.inputs.architecture)
        log.info(
            "model: %s-DeepLight '%s' (%d states) from %s",
            dl_model.architecture,
            dl_model.name,
            len(dl_model.states),
            dl_model.weights_path,
        )
        space_plan, _ = plan_before_compute(config, todo, dl_model.states, user_state_map, layout.get_tasks(), log)
        roots = dataset_roots(config.inputs.bids_dir, derivatives)
        write_dataset_files(config.inputs.output_dir, roots)
        job = _save_config(config)
        with log_file(job["log"], log):
            processor = RunProcessor(dl_model, config, user_state_map, space_plan, roots)
            results = [RunResult(r.label, "skipped", r.skip_reason) for r in runs if r.skip_reason]
            results += _process_runs(processor, todo, log)
            for subject in sorted({r.subject for r in todo}):
                mine = [r for r in todo if r.subject == subject]
                # the summary covers every finished run of the participant, also those of earlier jobs
                # run with other --task/--session selections, so it is never narrowed by a later job
                processor.write_participant_summaries(
                    subject, _all_runs_of(layout, config, subject, mine), map_tasks={r.entities["task"] for r in mine}
                )
            if (
                config.participant.glm
            ):  # the dataset's own GLM beside the maps (deeplight_bids.glm): after the mean maps
                run_glm_stage(
                    config,
                    processor.space_plan,
                    user_state_map,
                    todo,
                    results,
                    lambda subject, mine: _all_runs_of(layout, config, subject, mine),
                    log,
                    roots,
                )
            log.info("summary:\n%s", tables.format_results(results))
            _write_run_table(job["runs"], results)
    return results, _exit_code(results, log)


def _process_runs(processor, todo, log):
    """Each run in turn; bad data of one run (exit code 3) is recorded and the next run goes on."""
    results = []
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
    return results


def _exit_code(results, log):
    """0, or 6 (partial) when some runs were skipped or failed for bad input; all of them: InputDataError."""
    bad = [
        r
        for r in results
        if r.status == "failed" or (r.status == "skipped" and not r.detail.startswith("outputs exist"))
    ]
    if bad and len(bad) == len(results):
        # nothing usable at all: an input error (exit 3) with the first reason, not a "partial" success
        first = next((r for r in bad if r.status == "failed"), bad[0])
        more = f" (and {len(bad) - 1} more run(s) failed or skipped; see the run table)" if len(bad) > 1 else ""
        raise InputDataError(f"{first.label}: {first.detail}{more}")
    if bad:
        log.warning(
            "%d of %d run(s) skipped or failed for bad input (exit code %d; reasons in the table above); "
            "fix them and re-run: finished runs are kept.",
            len(bad),
            len(results),
            EXIT_PARTIAL,
        )
    return EXIT_PARTIAL if bad else EXIT_OK


def _user_state_map(config):
    if config.inputs.state_map_file is None:
        return None

    return load_state_map_file(config.inputs.state_map_file)


def _all_runs_of(layout, config, subject, fallback):
    """Every processable run of ``subject`` in the dataset (any task or session)."""
    try:
        runs = discover_runs(layout, space=config.inputs.space, participant_label=[subject])
    except NoRunsFoundError:
        return fallback
    return [r for r in runs if r.skip_reason is None] or fallback


def _save_config(config):
    """Write this job's settings to ``OUTPUT_DIR/logs/config-*.toml``; returns :func:`naming.job_outputs`."""
    job = naming.job_outputs(naming.job_log_stem(config.inputs.output_dir, config.inputs.participant_label))
    config.save(job["config"], root=config.inputs.output_dir)
    return job


def _write_run_table(path, results):
    """What happened to every run of this job (``run``, ``status``, ``detail``): read by the group report."""
    write_tsv(path, tables.run_table(results))

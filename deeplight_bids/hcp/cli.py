"""``deeplight-bids-hcp``: fetch HCP task fMRI from S3 into a BIDS dataset, or list subjects.

Usage::

    deeplight-bids-hcp fetch OUTPUT_BIDS_DIR (--subjects ID [ID ...] | --n-subjects N)
        [--tasks TASK ...] [--runs LR RL] [S3 options] [--jobs N] [--retries N] [--no-progress]
    deeplight-bids-hcp list [--tasks TASK ...] [--runs LR RL] [--subjects ID ...] [--limit N] [S3 options]

S3 options: ``--profile`` (default: see :mod:`deeplight_bids.hcp.s3`), ``--endpoint-url``,
``--bucket`` (``hcp-openaccess``), ``--prefix`` (``HCP_1200/``), ``--region``,
``--no-sign-request``.

Exit codes: 0 everything requested was fetched (or was already there); 2 usage error;
3 access or input error (credentials, endpoint, bucket, nothing found); 5 OUTPUT_BIDS_DIR
not writable; 6 partial: some objects are missing upstream or failed (listed in the
summary and in ``sourcedata/hcp/missing_upstream.tsv``); 130 interrupted (run the same
command again to resume).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from deeplight_bids._version import __version__
from deeplight_bids.derivatives.writers import write_text
from deeplight_bids.exceptions import (
    EXIT_OK,
    EXIT_PARTIAL,
    NoRunsFoundError,
    OutputError,
    UsageError,
)
from deeplight_bids.hcp import bids as hcp_bids
from deeplight_bids.hcp import s3
from deeplight_bids.hcp.download import Downloader, Transfer
from deeplight_bids.hcp.listing import (
    find_complete_subjects,
    format_missing_summary,
    missing_rows,
    plan_subjects,
    results_dir,
)
from deeplight_bids.progress import ByteProgress, format_bytes
from deeplight_bids.runtime import run_guarded
from deeplight_bids.states import HCP_TASK_STATES

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Sequence

PROG = "deeplight-bids-hcp"
log = logging.getLogger("deeplight_bids.hcp")


# --------------------------------------------------------------------------- fetch


@dataclass
class FetchResult:
    """What :func:`fetch` did."""

    runs_written: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # rows of missing_rows

    @property
    def exit_code(self) -> int:
        if not self.runs_written:
            return NoRunsFoundError.exit_code
        return EXIT_PARTIAL if self.missing else EXIT_OK


def fetch(
    source: s3.S3Source,
    output_dir: str | os.PathLike[str],
    subjects: Iterable[str],
    tasks: Iterable[str],
    runs: Iterable[str],
    jobs: int = 4,
    retries: int = 5,
    progress: bool = True,
    stream: TextIO | None = None,
    downloader: Downloader | None = None,
) -> FetchResult:
    """Download HCP runs and write them as a BIDS dataset with derivatives.

    Parameters
    ----------
    source : s3.S3Source
    output_dir : path-like
        OUTPUT_BIDS_DIR; created if needed.
    subjects, tasks, runs : list of str
        HCP subject ids, task names (``"MOTOR"``) and runs (``"LR"``, ``"RL"``).
    jobs, retries : int
        Parallel downloads and retries per object.
    progress : bool
        Show the progress bar on ``stream`` (stderr).
    downloader : Downloader, optional
        Pre-configured downloader (tests use this to inject faults).

    Returns
    -------
    FetchResult
    """
    stream = sys.stderr if stream is None else stream
    root = Path(output_dir)
    plans = plan_subjects(source, subjects, tasks, runs, jobs)
    transfers, run_transfers = _transfers(root, source.prefix, plans)
    total = sum(t.obj.size for t in transfers)
    _say(
        stream,
        f"{len(transfers)} file(s), {format_bytes(total)} from {source.where()} (credentials: {source.credentials})",
    )
    bar = ByteProgress(total, len(transfers), stream=stream, enabled=progress)
    downloader = downloader or Downloader(source, jobs=jobs, retries=retries)
    failed = downloader.download_all(transfers, bar)
    bar.close()
    result = FetchResult(missing=missing_rows(plans, failed))
    for plan in plans:
        if plan.t1w is not None and plan.t1w.key not in failed:
            hcp_bids.write_t1w_sidecar(root, plan.subject)
        for run in plan.runs:
            keys = [t.obj.key for t in run_transfers.get((plan.subject, run.task, run.run), [])]
            if run.complete and not any(key in failed for key in keys):
                ev_dir = (
                    _source_path(root, source.prefix, results_dir(source.prefix, plan.subject, run.task, run.run))
                    / "EVs"
                )
                hcp_bids.write_run(root, plan.subject, run.task, run.run, ev_dir)
                result.runs_written.append((plan.subject, run.task, run.run))
    _write_dataset_level(root, source)
    _report(stream, root, source, result, plans)
    return result


def _transfers(root, prefix, plans):
    """All downloads of the complete runs (+ T1w), and those of each run."""
    transfers, per_run = [], {}
    for plan in plans:
        for run in (r for r in plan.runs if r.complete):
            files = hcp_bids.run_files(plan.subject, run.task, run.run)
            run_list = []
            for role, obj in run.objects.items():
                if role == "bold":
                    dest = root / files.bold
                elif role == "mask":
                    dest = root / files.mask
                else:
                    dest = _source_path(root, prefix, obj.key)
                run_list.append(Transfer(obj, dest))
            per_run[(plan.subject, run.task, run.run)] = run_list
            transfers += run_list
        if plan.t1w is not None and any(r.complete for r in plan.runs):
            transfers.append(Transfer(plan.t1w, root / hcp_bids.t1w_file(plan.subject)))
    return transfers, per_run


def _source_path(root, prefix, key):
    """Local copy of an S3 key under ``sourcedata/hcp`` (keeps HCP's own layout)."""
    return root / "sourcedata" / "hcp" / key[len(prefix) :]


def _write_dataset_level(root, source):
    """Dataset-level files, from all runs on disk (earlier fetches included)."""
    present = sorted(root.glob(f"{hcp_bids.derivatives_dir()}/sub-*/func/*_desc-preproc_bold.nii.gz"))
    subjects, tasks = set(), set()
    for path in present:
        match = re.match(r"sub-([^_]+)_task-([^_]+)_", path.name)
        if match:
            subjects.add(match.group(1))
            tasks.add(match.group(2))
    if subjects:
        hcp_bids.write_dataset_files(root, source.bucket, source.prefix, subjects, tasks)


def _report(stream, root, source, result, plans):
    n_runs = sum(len(p.runs) for p in plans)
    _say(stream, f"{len(result.runs_written)} of {n_runs} run(s) of {len(plans)} subject(s) written to {root}")
    for line in format_missing_summary(result.missing, source.prefix):
        _say(stream, line)
    if result.missing:
        table = root / "sourcedata" / "hcp" / "missing_upstream.tsv"
        lines = ["subject\ttask\trun\tkey\treason"] + ["\t".join(row) for row in result.missing]
        write_text(table, "\n".join(lines) + "\n")
        _say(stream, f"list of what is missing: {table}")


def _say(stream, line):
    stream.write(line + "\n")
    stream.flush()


# --------------------------------------------------------------------------- argparse


def build_parser() -> argparse.ArgumentParser:
    """The ``deeplight-bids-hcp`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fetch Human Connectome Project task fMRI from S3 into a BIDS dataset.",
        epilog="Exit codes: 0 ok, 2 usage, 3 access/input error, 5 output error, 6 partial "
        "(something missing upstream), 130 interrupted (re-run to resume).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{fetch,list}")

    fetch_parser = commands.add_parser("fetch", help="download subjects into OUTPUT_BIDS_DIR")
    fetch_parser.add_argument("output_dir", metavar="OUTPUT_BIDS_DIR", type=Path)
    who = fetch_parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--subjects", nargs="+", metavar="ID", help="HCP subject ids, e.g. 100307")
    who.add_argument(
        "--n-subjects",
        type=_positive_int,
        metavar="N",
        help="the N lowest subject ids with complete data for --tasks/--runs",
    )
    _add_selection(fetch_parser)
    _add_s3(fetch_parser)
    fetch_parser.add_argument("--jobs", type=_positive_int, default=4, help="parallel downloads (default 4)")
    fetch_parser.add_argument(
        "--retries", type=_non_negative_int, default=5, help="retries per file after network errors (default 5)"
    )
    fetch_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch_parser.add_argument("-v", "--verbose", action="count", default=0)

    list_parser = commands.add_parser("list", help="print subjects with complete data for --tasks/--runs")
    list_parser.add_argument("--subjects", nargs="+", metavar="ID", help="only check these subjects")
    list_parser.add_argument("--limit", type=_positive_int, metavar="N", help="stop after N subjects")
    _add_selection(list_parser)
    _add_s3(list_parser)
    list_parser.add_argument("--jobs", type=_positive_int, default=8, help="parallel listings (default 8)")
    list_parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _add_selection(parser):
    parser.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        default=list(HCP_TASK_STATES),
        help=f"HCP tasks (default: all of {' '.join(HCP_TASK_STATES)})",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="RUN",
        default=list(hcp_bids.HCP_RUNS),
        help="runs (phase-encoding directions): LR RL (default both)",
    )


def _add_s3(parser):
    group = parser.add_argument_group("S3")
    group.add_argument(
        "--profile",
        help=f"AWS profile (default: environment credentials, else profile "
        f"'{s3.DEFAULT_PROFILE}', else the default chain)",
    )
    group.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. a mirror")
    group.add_argument("--bucket", default=s3.DEFAULT_BUCKET, help=f"default {s3.DEFAULT_BUCKET}")
    group.add_argument("--prefix", default=s3.DEFAULT_PREFIX, help=f"release prefix (default {s3.DEFAULT_PREFIX})")
    group.add_argument("--region", help=f"default: the profile's, else {s3.DEFAULT_REGION}")
    group.add_argument("--no-sign-request", action="store_true", help="anonymous access (public mirrors)")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def validate_selection(
    tasks: Iterable[str], runs: Iterable[str], subjects: Iterable[str] | None = None
) -> tuple[list[str], list[str], list[str] | None]:
    """Normalized ``(tasks, runs, subjects)``; :class:`UsageError` naming the bad option."""
    tasks_out = []
    for task in tasks:
        name = task.upper().removeprefix("TFMRI_")
        if name not in HCP_TASK_STATES:
            raise UsageError(f"--tasks {task}: not an HCP task; choose from {' '.join(HCP_TASK_STATES)}.")
        if name not in tasks_out:
            tasks_out.append(name)
    runs_out = []
    for run in runs:
        if run.upper() not in hcp_bids.HCP_RUNS:
            raise UsageError(f"--runs {run}: choose LR and/or RL.")
        if run.upper() not in runs_out:
            runs_out.append(run.upper())
    subjects_out = None
    if subjects is not None:
        subjects_out = []
        for subject in subjects:
            label = subject.removeprefix("sub-")
            if not re.fullmatch(r"[A-Za-z0-9]+", label):
                raise UsageError(f"--subjects {subject}: a subject id is letters and digits only, e.g. 100307.")
            if label not in subjects_out:
                subjects_out.append(label)
    return tasks_out, runs_out, subjects_out


def _connect(args, jobs):
    """The S3 source the "S3" options name (all but --no-sign-request are :func:`s3.connect`'s parameters)."""
    same_name = ("bucket", "prefix", "profile", "endpoint_url", "region")
    location = {name: getattr(args, name) for name in same_name}
    return s3.connect(**location, unsigned=args.no_sign_request, max_connections=jobs + 2)


def run_fetch(args: argparse.Namespace, stream: TextIO) -> int:
    tasks, runs, subjects = validate_selection(args.tasks, args.runs, args.subjects)
    _check_writable(args.output_dir)
    source = _connect(args, args.jobs)
    if subjects is None:
        subjects = find_complete_subjects(source, tasks, runs, limit=args.n_subjects, jobs=args.jobs)
        if len(subjects) < args.n_subjects:
            _say(
                stream,
                f"only {len(subjects)} subject(s) with complete data for {' '.join(tasks)} "
                f"({' '.join(runs)}) under {source.where()}",
            )
        if not subjects:
            raise NoRunsFoundError(
                f"no subject under {source.where()} has complete data for --tasks "
                f"{' '.join(tasks)} --runs {' '.join(runs)}; check --prefix and --tasks."
            )
    result = fetch(
        source,
        args.output_dir,
        subjects,
        tasks,
        runs,
        jobs=args.jobs,
        retries=args.retries,
        progress=not args.no_progress,
        stream=stream,
    )
    if not result.runs_written:
        raise NoRunsFoundError(
            f"nothing could be fetched for --subjects {' '.join(subjects)} from "
            f"{source.where()}; see the summary above and check --prefix and --subjects."
        )
    return result.exit_code


def run_list(args: argparse.Namespace, out: TextIO, stream: TextIO) -> int:
    tasks, runs, subjects = validate_selection(args.tasks, args.runs, args.subjects)
    source = _connect(args, args.jobs)
    found = find_complete_subjects(source, tasks, runs, limit=args.limit, jobs=args.jobs, candidates=subjects)
    for subject in found:
        out.write(subject + "\n")
    out.flush()
    _say(
        stream,
        f"{len(found)} subject(s) with complete data for {' '.join(tasks)} ({' '.join(runs)}) under {source.where()}",
    )
    return EXIT_OK


def _check_writable(output_dir):
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(output_dir) / ".deeplight-bids-hcp-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"{output_dir}: cannot write here ({exc.strerror}); choose another OUTPUT_BIDS_DIR or fix its permissions."
        ) from None


def _setup_logging(verbosity, stream):
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # botocore's own debug log prints request headers; keep it quiet whatever -v says.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("boto3").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point; exits with the code documented in the module docstring."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line and return the exit code (never raises for user errors)."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, stderr)

    def job():
        return run_fetch(args, stderr) if args.command == "fetch" else run_list(args, stdout, stderr)

    return run_guarded(
        job,
        PROG,
        "run the same command again to resume (partial files are kept).",
        output_name="OUTPUT_BIDS_DIR",
        verbose=args.verbose,
        stderr=stderr,
        log=log,
        trace_user_errors=False,
        removes_temporaries=False,
    )


if __name__ == "__main__":
    main()

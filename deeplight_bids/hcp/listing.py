"""What HCP holds upstream: listings of subjects and runs, and what could not be obtained.

A run needs its BOLD series, its brain mask and the EV files of its states
(:data:`deeplight_bids.states` via :data:`deeplight_bids.hcp.bids.HCP_EV_FILES`); a
subject also its T1w.  Listings are small (three per run) and run in parallel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import botocore.exceptions as bce

from deeplight_bids.hcp.bids import HCP_EV_FILES
from deeplight_bids.hcp.s3 import access_error

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from deeplight_bids.hcp.s3 import S3Source

    #: ``(subject, task, run, key, reason)`` of an object not obtained (:func:`missing_rows`).
    MissingRow = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class S3Object:
    """One listed object: key, size in bytes, ETag (with quotes stripped)."""

    key: str
    size: int
    etag: str


def list_objects(source: S3Source, prefix: str) -> dict[str, S3Object]:
    """All objects whose key starts with ``prefix``, as ``{key: S3Object}``."""
    found = {}
    paginator = source.client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=source.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = S3Object(item["Key"], int(item["Size"]), item.get("ETag", "").strip('"'))
    except (bce.ClientError, bce.BotoCoreError) as exc:
        error = access_error(exc, source, f"'{prefix}'")
        if error is None:
            raise
        raise error from exc
    return found


def list_subjects(source: S3Source) -> list[str]:
    """HCP subject ids (folder names of digits) directly under the release prefix, sorted."""
    subjects = []
    paginator = source.client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=source.bucket, Prefix=source.prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(source.prefix) :].strip("/")
                if name.isdigit():
                    subjects.append(name)
    except (bce.ClientError, bce.BotoCoreError) as exc:
        error = access_error(exc, source, f"'{source.prefix}'")
        if error is None:
            raise
        raise error from exc
    return sorted(subjects, key=lambda s: (len(s), s))


def results_dir(prefix: str, subject: str, task: str, run: str) -> str:
    """Key prefix of one HCP run: ``<prefix><subject>/MNINonLinear/Results/tfMRI_<TASK>_<RUN>/``."""
    return f"{prefix}{subject}/MNINonLinear/Results/tfMRI_{task}_{run}/"


def run_keys(prefix: str, subject: str, task: str, run: str) -> dict[str, str]:
    """The S3 keys one run needs, as ``{role: key}``.

    Roles: ``"bold"``, ``"mask"`` and ``"ev:<file name>"`` for each state EV file.
    """
    base = results_dir(prefix, subject, task, run)
    keys = {"bold": f"{base}tfMRI_{task}_{run}.nii.gz", "mask": f"{base}brainmask_fs.2.nii.gz"}
    keys.update({f"ev:{name}": f"{base}EVs/{name}" for name in sorted(HCP_EV_FILES[task])})
    return keys


def t1w_key(prefix: str, subject: str) -> str:
    """S3 key of the subject's MNINonLinear T1w."""
    return f"{prefix}{subject}/MNINonLinear/T1w.nii.gz"


@dataclass
class RunPlan:
    """What S3 holds for one run: the objects found and the keys missing upstream."""

    subject: str
    task: str
    run: str
    objects: dict[str, S3Object] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class SubjectPlan:
    """What S3 holds for one subject."""

    subject: str
    runs: list[RunPlan]
    t1w: S3Object | None = None
    t1w_missing: str | None = None

    @property
    def complete(self) -> bool:
        return all(run.complete for run in self.runs)


def plan_run(source: S3Source, subject: str, task: str, run: str) -> RunPlan:
    """List what one run has upstream (3 small listings: BOLD, mask, EVs)."""
    keys = run_keys(source.prefix, subject, task, run)
    base = results_dir(source.prefix, subject, task, run)
    listed = {}
    for prefix in (keys["bold"], keys["mask"], f"{base}EVs/"):
        listed.update(list_objects(source, prefix))
    plan = RunPlan(subject, task, run)
    for role, key in keys.items():
        if key in listed:
            plan.objects[role] = listed[key]
        else:
            plan.missing.append(key)
    return plan


def plan_subject(
    source: S3Source, subject: str, tasks: Iterable[str], runs: Iterable[str], with_t1w: bool = True
) -> SubjectPlan:
    """List what one subject has upstream for the given tasks and runs."""
    plans = [plan_run(source, subject, task, run) for task in tasks for run in runs]
    plan = SubjectPlan(subject, plans)
    if with_t1w:
        key = t1w_key(source.prefix, subject)
        plan.t1w = list_objects(source, key).get(key)
        plan.t1w_missing = None if plan.t1w else key
    return plan


def plan_subjects(
    source: S3Source,
    subjects: Iterable[str],
    tasks: Iterable[str],
    runs: Iterable[str],
    jobs: int = 8,
    with_t1w: bool = True,
) -> list[SubjectPlan]:
    """:func:`plan_subject` for many subjects in parallel, in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda s: plan_subject(source, s, tasks, runs, with_t1w), subjects))


def find_complete_subjects(
    source: S3Source,
    tasks: Iterable[str],
    runs: Iterable[str],
    limit: int | None = None,
    jobs: int = 8,
    candidates: Iterable[str] | None = None,
) -> list[str]:
    """Subjects whose every requested task and run is complete upstream.

    Parameters
    ----------
    limit : int, optional
        Stop after this many (lowest ids first).
    candidates : list of str, optional
        Subjects to check; default: all under the prefix.
    """
    candidates = list_subjects(source) if candidates is None else list(candidates)
    complete = []
    batch = max(1, jobs)
    for start in range(0, len(candidates), batch):
        for plan in plan_subjects(source, candidates[start : start + batch], tasks, runs, jobs, with_t1w=False):
            if plan.complete:
                complete.append(plan.subject)
                if limit is not None and len(complete) >= limit:
                    return complete
    return complete


def missing_rows(plans: Iterable[SubjectPlan], failed: dict[str, str] | None = None) -> list[MissingRow]:
    """Rows ``(subject, task, run, key, reason)`` for every object not obtained.

    Parameters
    ----------
    plans : list of SubjectPlan
    failed : dict, optional
        ``{key: reason}`` from :meth:`Downloader.download_all`.
    """
    failed = failed or {}
    rows = []
    for plan in plans:
        for run in plan.runs:
            rows += [(plan.subject, run.task, run.run, key, "missing upstream") for key in run.missing]
            rows += [
                (plan.subject, run.task, run.run, o.key, failed[o.key]) for o in run.objects.values() if o.key in failed
            ]
        if plan.t1w_missing:
            rows.append((plan.subject, "anat", "-", plan.t1w_missing, "missing upstream"))
        elif plan.t1w is not None and plan.t1w.key in failed:
            rows.append((plan.subject, "anat", "-", plan.t1w.key, failed[plan.t1w.key]))
    return rows


def format_missing_summary(rows: Sequence[MissingRow], prefix: str = "", max_lines: int = 20) -> list[str]:
    """Human-readable lines for :func:`missing_rows` (keys shown relative to the prefix)."""
    if not rows:
        return []
    lines = [f"{len(rows)} object(s) not obtained:"]
    for subject, task, run, key, reason in rows[:max_lines]:
        shown = key[len(prefix) :] if key.startswith(prefix) else key
        lines.append(f"  {subject} {task} {run}: {shown} ({reason})")
    if len(rows) > max_lines:
        lines.append(f"  ... and {len(rows) - max_lines} more")
    return lines

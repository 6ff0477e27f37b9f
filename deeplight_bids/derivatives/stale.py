"""Outputs of other settings that a re-run no longer produces: found, removed and reported.

A participant re-run with other settings rewrites its runs' outputs under the same
names, but some outputs of the old settings have no successor: the per-state mean maps
of states the new settings explain no volume for (e.g. ``--lrp-target true`` then
``predicted``), or the relevance maps of a run re-done with ``--no-lrp``.  Left in place,
the group level would pool them with the new ones.  They are removed (a JSON sidecar
together with its image) and each removal is logged with the file's name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from deeplight_bids.config import default_work_dir
from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.writers import remove_stale_temporaries

if TYPE_CHECKING:
    from collections.abc import Iterable

LOGGER = logging.getLogger("deeplight_bids")


def remove_stale(paths: Iterable[str | os.PathLike[str]], reason: str, log: logging.Logger = LOGGER) -> list[Path]:
    """Remove ``paths`` (and their JSON sidecars) that exist; one log line each.

    Parameters
    ----------
    paths : iterable of path-like
        Output files (images or tables) of other settings.
    reason : str
        Why they are stale (goes into the log line).

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    removed = []
    for path in paths:
        for target in dict.fromkeys((Path(path), naming.sidecar_of(path))):
            if target.is_file() or target.is_symlink():
                target.unlink()
                removed.append(target)
    for path in removed:
        log.warning("removed %s: %s", path, reason)
    return removed


def stale_state_maps(
    output_dir: str | os.PathLike[str], subject: str, task: str, written: Iterable[str | os.PathLike[str]]
) -> list[Path]:
    """The participant's mean relevance maps of ``task`` that are not in ``written``.

    Parameters
    ----------
    output_dir : path-like
    subject, task : str
        Labels without ``sub-`` / ``task-``.
    written : iterable of path-like
        The maps the current settings (re)wrote.

    Returns
    -------
    list of pathlib.Path
        ``*_label-<state>_desc-mean_relevance.nii.gz`` left by other settings.
    """
    folder, pattern = naming.state_map_glob(output_dir, subject, task)
    keep = {Path(p).name for p in written}
    return sorted(p for p in folder.glob(pattern) if p.name not in keep) if folder.is_dir() else []


#: What an earlier version's default work folder (``OUTPUT_DIR/work``) holds (:func:`adopt_legacy_work_dir`).
LEGACY_WORK_CONTENT = ("relevance_volumes", "relevance_sums", "prepared", "finetune")


def adopt_legacy_work_dir(
    output_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    log: logging.Logger = LOGGER,
) -> bool:
    """Move an earlier version's default work folder ``OUTPUT_DIR/work`` to ``work_dir`` (``OUTPUT_DIR/.work``).

    Earlier versions kept the work folder at ``OUTPUT_DIR/work``, where pybids indexes its
    per-volume maps as a second copy of the outputs.  When the default work folder is used, does
    not exist yet, and ``OUTPUT_DIR/work`` holds what this app keeps there, it is renamed (same
    file system: nothing is copied, its maps stay reusable); anything else is left alone.

    Returns
    -------
    bool
        True if the folder was moved.
    """
    legacy, work_dir = Path(output_dir) / "work", Path(work_dir)
    if work_dir != default_work_dir(output_dir) or work_dir.exists() or not legacy.is_dir():
        return False
    if not any((legacy / name).exists() for name in LEGACY_WORK_CONTENT):
        return False
    try:
        legacy.rename(work_dir)
    except OSError as err:  # a concurrent job moved it first, or no permission: the old folder is only not reused
        log.debug("could not move %s to %s: %s", legacy, work_dir, err)
        return False
    log.info(
        "work folder: moved %s (an earlier version's default) to %s, where pybids and bids-validator ignore it",
        legacy,
        work_dir,
    )
    return True


def remove_job_temporaries(
    output_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    subjects: Iterable[str],
    log: logging.Logger = LOGGER,
) -> None:
    """Temporaries of earlier jobs on this host that were killed, where this job writes.

    Only the folders of this job's participants (``subjects``, labels without ``sub-``)
    are searched below; the top of OUTPUT_DIR, ``logs/`` and the work folder's scratch
    places are searched without descending, so a job's start does not walk a whole
    shared OUTPUT_DIR.  See :func:`deeplight_bids.derivatives.writers.remove_stale_temporaries`.
    """
    out, work = Path(output_dir), Path(work_dir)
    folder: str | Path  # a label, then a path
    for folder in sorted(subjects):
        remove_stale_temporaries(out / f"sub-{folder}", log)
    sums = naming.state_sums_output(work, "x").parent
    for folder in dict.fromkeys((out, out / "logs", work, sums, work / "relevance_volumes")):
        remove_stale_temporaries(folder, log, recursive=False)

"""Outputs of other settings that a re-run no longer produces: found, removed and reported.

A participant re-run with other settings rewrites its runs' outputs under the same
names, but some outputs of the old settings have no successor: the per-state mean maps
of states the new settings explain no volume for (e.g. ``--lrp-target true`` then
``predicted``), or the relevance maps of a run re-done with ``--no-lrp``.  Left in place,
the group level would pool them with the new ones.  They are removed (a JSON sidecar
together with its image) and each removal is logged with the file's name.
"""

import logging
from pathlib import Path

from deeplight_bids.derivatives import naming

LOGGER = logging.getLogger("deeplight_bids")


def _sidecar(path):
    name = Path(path).name
    for ext in (".nii.gz", ".tsv"):
        if name.endswith(ext):
            return Path(path).with_name(name[: -len(ext)] + ".json")
    return Path(path).with_suffix(".json")


def remove_stale(paths, reason, log=LOGGER):
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
        for target in dict.fromkeys((Path(path), _sidecar(path))):
            if target.is_file() or target.is_symlink():
                target.unlink()
                removed.append(target)
    for path in removed:
        log.warning("removed %s: %s", path, reason)
    return removed


def stale_state_maps(output_dir, subject, task, written):
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

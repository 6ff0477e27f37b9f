"""A run's relevance outputs made again from the work folder's per-volume maps, without the network.

Another ``--relevance-maps`` choice later (:func:`reuse_scratch`), or the work folder's copy put
back after it was removed (:func:`restore_scratch`); nothing is reused from damaged files.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.derivatives import integrity
from deeplight_bids.derivatives.relevance import RunRelevanceOutputs, scratch_paths
from deeplight_bids.derivatives.writers import link_or_copy, write_json

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import pandas as pd

LOGGER = logging.getLogger("deeplight_bids")


def reuse_scratch(
    mode: str,
    outputs: Mapping[str, Path],
    scratch_dir: str | os.PathLike[str],
    key: Sequence[Any],
    settings_hash: str,
    blocks_of: Callable[[int], tuple[pd.DataFrame, np.ndarray]],
    root: str | os.PathLike[str] | None = None,
    files_of: Callable[[], dict[str, Any]] | None = None,
    log: logging.Logger = LOGGER,
) -> bool:
    """Make a run's ``mode`` outputs from the work folder's per-volume maps of an earlier pass, without the network.

    Done only when the work folder's maps were made under the same ``key`` (settings
    other than ``--relevance-maps``, and inputs) and the run's predictions were made by
    that same pass (their sidecar names the record's settings hash).  The predictions
    sidecar is written last, with ``settings_hash``, which marks the run complete.

    Parameters
    ----------
    mode : {"volumes", "blocks", "means"}
    outputs : dict
        :func:`deeplight_bids.derivatives.naming.run_outputs` of the run.
    scratch_dir : path-like
        The work folder.
    key : list
        As for :class:`RunRelevanceOutputs`.
    settings_hash : str
        This run's settings hash (``--relevance-maps`` included).
    blocks_of : callable
        ``n_volumes -> event_blocks(...)`` of the run (called for ``blocks``).
    root : path-like or None
        OUTPUT_DIR.
    files_of : callable or None
        ``() -> dict``: the run's ``"Files"`` record (:func:`deeplight_bids.derivatives.resume.files_record`),
        written into the predictions sidecar with the new settings hash.

    Returns
    -------
    bool
        True when the outputs were made; False: nothing was changed (run the network).

    Notes
    -----
    Nothing is reused from damaged files: the work folder's maps must match the size and
    gzip member CRCs their record lists, and the run's other outputs (predictions, quality
    tables) those of the predictions sidecar.
    """
    from deeplight_bids.readback import iter_volumes  # deferred: loads pandas

    volumes, record_path = scratch_paths(scratch_dir, outputs)
    record, _ = integrity.read_marker(record_path)
    predictions, _ = integrity.read_marker(outputs["predictions_json"])
    if record is None or predictions is None:
        return False
    if (
        record.get("Key") != json.loads(json.dumps(key))
        or not volumes.is_file()
        or not outputs["predictions"].is_file()
        or predictions.get("SettingsHash") != record.get("SettingsHash")
    ):
        return False
    own = (record.get(integrity.FILES_KEY) or {}).get("volumes")
    reason = integrity.check(volumes, own) if isinstance(own, dict) else None
    if reason is None and integrity.member_trailers(volumes) is None:
        reason = "not the gzip file written (its members are not one per volume)"
    if reason is not None:
        log.warning("%s", integrity.Damage(volumes, reason).line("removed; the maps are computed again"))
        for path in (volumes, record_path):
            path.unlink(missing_ok=True)
        return False
    made = set(RELEVANCE_OUTPUT_KEYS) | {"predictions_json"}
    others = [k for k in (predictions.get(integrity.FILES_KEY) or {}) if k in outputs and k not in made]
    if integrity.verify(predictions.get(integrity.FILES_KEY), root, scratch_dir, keys=others):
        return False  # the predictions or quality tables are damaged too: the network pass makes them again
    import nibabel as nib  # deferred: only when maps are reused

    try:
        header: Any = nib.load(volumes).header  # a Nifti1Header (nibabel types load() as any image)
        n_volumes, t_r = int(header.get_data_shape()[3]), float(header.get_zooms()[3])
    except Exception:  # noqa: BLE001  (a header that matched its record cannot fail; be safe: recompute)
        return False
    target = RunRelevanceOutputs(
        mode,
        outputs,
        n_volumes,
        t_r,
        blocks_of(n_volumes) if mode == "blocks" else None,
        scratch_dir=scratch_dir,
        root=root,
        key=key,
        per_volume=False,
    )
    try:
        if target.blocks is not None:
            for index, volume in iter_volumes(volumes, range(n_volumes), dtype=np.float32):
                target.write(index, volume[None])
        target.close()
    except BaseException:
        target.abort()
        raise
    sidecar = {**record["Sidecar"], "SettingsHash": settings_hash}
    target.finish(sidecar)
    log.info("--relevance-maps %s: made from the per-volume maps %s (no network pass)", mode, volumes)
    marker = {**predictions, "SettingsHash": settings_hash}
    if files_of is not None:
        marker[integrity.FILES_KEY] = files_of()
    write_json(outputs["predictions_json"], marker, root=root)
    return True


#: The outputs :func:`reuse_scratch` makes from the work folder's per-volume maps.
RELEVANCE_OUTPUT_KEYS = ("relevance", "relevance_json", "blocks", "blocks_tsv", "blocks_json")


def restore_scratch(
    outputs: Mapping[str, Path],
    scratch_dir: str | os.PathLike[str],
    key: Sequence[Any],
    root: str | os.PathLike[str] | None = None,
    log: logging.Logger = LOGGER,
) -> bool:
    """``--relevance-maps volumes``: put back a finished run's work-folder copy of its per-volume maps, if missing.

    The copy is a hard link to the output (no disk space; a copy on another file system)
    and its record is made from the output's sidecar, which holds the same entries.  Done
    after a damaged copy was removed, or the work folder cleaned, so that another
    ``--relevance-maps`` choice later needs no network pass.

    Returns
    -------
    bool
        True when the copy was put back.
    """
    volumes, record_path = scratch_paths(scratch_dir, outputs)
    if volumes.is_file() and record_path.is_file():
        return False
    sidecar, _ = integrity.read_marker(outputs["relevance_json"])
    if sidecar is None or not outputs["relevance"].is_file() or integrity.member_trailers(outputs["relevance"]) is None:
        return False
    record_path.unlink(missing_ok=True)
    link_or_copy(outputs["relevance"], volumes, root)
    write_json(
        record_path,
        {
            "Key": key,
            "SettingsHash": sidecar.get("SettingsHash"),
            "Sidecar": sidecar,
            integrity.FILES_KEY: {"volumes": integrity.fingerprint(volumes)},
        },
        root=root,
    )
    log.info("%s: put back in the work folder (a hard link to %s)", volumes, outputs["relevance"].name)
    return True

"""Relevance maps inside the brain: masking and the record of what fell outside the mask.

LRP's flat rule on the first convolution (3D-DeepLight, preset B-flat) spreads relevance
evenly over every voxel of a unit's receptive field, so a map is non-zero a few voxels
beyond the brain mask.  The per-volume maps, the per-state means and everything made from
them are written masked to the run's brain mask (exact zeros outside, which gzip stores in
almost no space), and the fraction of the absolute relevance that was cut off is recorded
per run in the relevance sidecar, so that nothing is hidden.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.config import RELEVANCE_MAP_KINDS
from deeplight_bids.derivatives.sidecars import described
from deeplight_bids.derivatives.volume_gzip import VolumeGzipNifti4D, round_mantissa

if TYPE_CHECKING:
    import queue
    from collections.abc import Callable, Mapping, Sequence

    import numpy.typing as npt
    import pandas as pd

LOGGER = logging.getLogger("deeplight_bids")


class RelevanceMasker:
    """Zero the relevance outside a brain mask and tally the share that was outside.

    Parameters
    ----------
    mask : numpy.ndarray, shape (x, y, z), bool
        The run's brain mask on the reference grid (``PreparedRun.mask``).
    keepbits : int or None
        Mantissa bits kept (:func:`round_mantissa`); None: :data:`RELEVANCE_KEEPBITS`.
        The maps are rounded once, here, so that every output made from them (per-volume
        and block files, per-state means, maps made again from the work folder) agrees.

    Attributes
    ----------
    outside_fractions : list of float
        Per volume seen so far: ``sum |R| outside the mask / sum |R|`` (0 for an all-zero map).
    """

    def __init__(self, mask: npt.ArrayLike, keepbits: int | None = None):
        self.mask = np.asarray(mask, dtype=bool)
        self.keepbits = RELEVANCE_KEEPBITS if keepbits is None else int(keepbits)
        self.outside_fractions: list[float] = []

    def apply(self, volumes: npt.ArrayLike) -> np.ndarray:
        """Masked copies of ``volumes``; the outside fractions are recorded.

        Parameters
        ----------
        volumes : numpy.ndarray, shape (n, x, y, z)
            Relevance maps in NIfTI array order (any memory layout, e.g. the transposed
            view of model-order maps).

        Returns
        -------
        numpy.ndarray, shape (n, x, y, z), float32
            ``volumes`` with exact zeros outside the mask, rounded to ``keepbits`` mantissa
            bits, in the memory layout of ``volumes`` (a transposed view gives
            Fortran-ordered volumes).
        """
        volumes = np.asarray(volumes)
        if volumes.shape[1:] != self.mask.shape:
            raise ValueError(f"expected volumes (n, {', '.join(map(str, self.mask.shape))}), got {volumes.shape}")
        magnitude = np.abs(volumes)
        total = magnitude.sum(axis=(1, 2, 3), dtype=np.float64)
        inside = np.where(self.mask, magnitude, 0).sum(axis=(1, 2, 3), dtype=np.float64)
        fractions = np.divide(total - inside, total, out=np.zeros_like(total), where=total > 0)
        self.outside_fractions.extend(float(f) for f in np.clip(fractions, 0.0, 1.0))
        out = volumes.astype(np.float32, order="K", copy=True)  # "K": a transposed view stays Fortran per volume
        np.copyto(out, np.float32(0), where=~self.mask)  # +0.0, not -0.0 as a multiplication would leave
        return round_mantissa(out, self.keepbits)

    def sidecar(self) -> dict[str, Any]:
        """Sidecar entries: the mask rule and the outside fraction's median and max over the run's volumes."""
        fractions = np.asarray(self.outside_fractions, dtype=np.float64)
        return {
            "RelevanceMask": (
                "the run's brain mask on the reference grid (nearest neighbour); relevance outside it "
                "is set to 0 in this map and in every map made from it"
            ),
            "RelevanceOutsideMaskFraction": {
                "Description": "per volume, sum of |relevance| outside the brain mask / sum of |relevance| "
                "(before masking); median and maximum over the run's volumes",
                "Median": float(np.median(fractions)) if fractions.size else None,
                "Max": float(fractions.max()) if fractions.size else None,
                "NumberOfVolumes": int(fractions.size),
            },
        }


def event_blocks(
    events: pd.DataFrame, n_volumes: int, t_r: float, state_map: Mapping[str, str]
) -> tuple[pd.DataFrame, np.ndarray]:
    """The volumes each mapped event labels, by the labelling rule of :func:`~deeplight_bids.prepare.labels.volume_labels`.

    An *event* block (one per event, for ``--relevance-maps blocks``), not a *label* block: two events of
    one state in a row are two blocks here, one stretch of a state in
    :func:`deeplight_bids.quality.significance.blocks` (the permutation test's and accuracy-by-time's unit).

    Parameters
    ----------
    events : pandas.DataFrame
        ``onset``, ``duration`` (s), ``trial_type``.
    n_volumes : int
    t_r : float
        Seconds.
    state_map : dict
        ``trial_type -> state``; other trial types label nothing.

    Returns
    -------
    table : pandas.DataFrame
        One row per mapped event that labels at least one volume, in onset order:
        ``block`` (0-based index of the block map), ``trial_type``, ``state``, ``onset``,
        ``duration`` (s), ``volumes`` (comma-separated 0-based indices), ``n_volumes``.
    block_of_volume : numpy.ndarray, shape (n_volumes,), int
        The block of each volume, -1 where no mapped event labels it.  A volume that
        two events label belongs to the later onset (as its label does).
    """
    import pandas as pd

    from deeplight_bids.prepare.labels import labelled_events, labelling_window

    block_of_volume = np.full(int(n_volumes), -1, dtype=int)
    times = np.arange(int(n_volumes)) * float(t_r)
    rows = labelled_events(events, state_map)  # later onset wins, as in the labels
    for k, (onset, duration) in enumerate(zip(rows["onset"].to_numpy(float), rows["duration"].to_numpy(float))):
        start, stop = labelling_window(onset, duration, t_r)
        block_of_volume[(times >= start) & (times <= stop)] = k
    table: list[dict[str, Any]]
    table, renumber = [], np.full(len(rows) + 1, -1, dtype=int)
    for k, (_, event) in enumerate(rows.iterrows()):
        volumes = np.flatnonzero(block_of_volume == k)
        if volumes.size == 0:
            continue
        renumber[k] = len(table)
        table.append(
            {
                "block": len(table),
                "trial_type": event["trial_type"],
                "state": state_map[event["trial_type"]],
                "onset": float(event["onset"]),
                "duration": float(event["duration"]),
                "volumes": ",".join(map(str, volumes)),
                "n_volumes": int(volumes.size),
            }
        )
    columns = ["block", "trial_type", "state", "onset", "duration", "volumes", "n_volumes"]
    return pd.DataFrame(table, columns=columns), renumber[block_of_volume]


class BlockMeans:
    """Mean relevance map per block, written as soon as the block's last volume has been seen.

    Parameters
    ----------
    block_of_volume : numpy.ndarray, shape (n_volumes,), int
        From :func:`event_blocks` (-1: no block).
    stream : VolumeGzipNifti4D
        4D output with one volume per block.

    Notes
    -----
    Only the blocks still open are kept in memory (one float64 map each), so memory does
    not grow with the number of blocks of a run.
    """

    def __init__(self, block_of_volume: npt.ArrayLike, stream: VolumeGzipNifti4D):
        self.block_of_volume = np.asarray(block_of_volume, dtype=int)
        self.stream = stream
        self.last = {
            int(b): int(np.flatnonzero(self.block_of_volume == b)[-1])
            for b in np.unique(self.block_of_volume)
            if b >= 0
        }
        self.open: dict[int, tuple[np.ndarray, int]] = {}

    def add(self, start: int, volumes: np.ndarray) -> None:
        """Add the maps ``volumes`` ``(n, x, y, z)`` of time indices ``start ..``; write finished blocks."""
        for i, volume in enumerate(volumes):
            index = start + i
            block = int(self.block_of_volume[index])
            if block < 0:
                continue
            total, count = self.open.get(block, (None, 0))
            total = volume.astype(np.float64) if total is None else total + volume
            self.open[block] = (total, count + 1)
            if index == self.last[block]:
                total, count = self.open.pop(block)
                self.stream.write(block, (total / count).astype(np.float32)[None])

    def close(self) -> Path:
        if self.open:
            raise RuntimeError(f"blocks {sorted(self.open)} not finished: not every volume was added")
        return self.stream.close()


#: gzip level and mantissa bits of the per-volume and per-block relevance files: ISA-L's level 1 (level 3 is
#: larger on these maps) and 16 of float32's 23 mantissa bits, a relative change of at most 2**-17 (7.6e-6)
#: per value, below float32 LRP's own round-off between backends; 17 % smaller files (benchmarks/RESULTS.md).
RELEVANCE_GZIP_LEVEL = 1
RELEVANCE_KEEPBITS = 16


def scratch_paths(scratch_dir: str | os.PathLike[str], outputs: Mapping[str, Path]) -> tuple[Path, Path]:
    """``(per-volume maps, record)`` of a run in the work folder: ``<work>/relevance_volumes/<name>`` and its ``.json``."""
    folder = Path(scratch_dir) / "relevance_volumes"
    name = outputs["relevance"].name
    return folder / name, folder / name.replace(".nii.gz", ".json")


class RunRelevanceOutputs:
    """What one run writes of its relevance, by ``--relevance-maps``.

    Every mode writes the per-volume maps (masked, one gzip member per volume, compressed
    as they arrive: :class:`VolumeGzipNifti4D`) into the work folder
    (:func:`scratch_paths`); ``volumes`` then links (or copies) that file to its BIDS
    name; ``blocks`` also writes one mean map per event block (4D) and its TSV;
    ``means`` nothing more (the per-state means are made from the sums the participant
    level keeps in every case).  A later run with another choice makes its outputs from
    the work folder's file without the network (:func:`reuse_scratch`).

    Parameters
    ----------
    mode : {"volumes", "blocks", "means"}
    outputs : dict
        :func:`deeplight_bids.derivatives.naming.run_outputs` of the run.
    n_volumes : int
    t_r : float
        Seconds.
    blocks : tuple (pandas.DataFrame, numpy.ndarray) or None
        :func:`event_blocks` of the run (``blocks`` mode).
    scratch_dir : path-like or None
        The work folder; None: the per-volume maps are written straight to their BIDS name
        (``volumes``) or not at all.
    root : path-like or None
        OUTPUT_DIR (no folder below it may be a symbolic link).
    key : list or None
        What the network pass depended on (settings and inputs), kept with the work
        folder's maps: :func:`reuse_scratch` uses them only under the same key.
    per_volume : bool
        False: no per-volume file is written (:func:`reuse_scratch` makes the outputs
        from the one that exists).
    """

    volumes: VolumeGzipNifti4D | None
    blocks: BlockMeans | None
    block_table: pd.DataFrame | None

    def __init__(
        self,
        mode: str,
        outputs: Mapping[str, Path],
        n_volumes: int,
        t_r: float,
        blocks: tuple[pd.DataFrame, np.ndarray] | None = None,
        scratch_dir: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        key: Sequence[Any] | None = None,
        per_volume: bool = True,
    ):
        from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE

        if mode not in RELEVANCE_MAP_KINDS:
            raise ValueError(f"mode must be one of {RELEVANCE_MAP_KINDS}, got {mode!r}")
        self.mode, self.outputs, self.root, self.key = mode, outputs, root, key
        self.scratch = scratch_paths(scratch_dir, outputs) if scratch_dir is not None else None
        self.volumes = self.blocks = None
        self.block_table = None
        self.busy_s = 0.0  # seconds spent compressing and writing
        keep: dict[str, Any] = {"level": RELEVANCE_GZIP_LEVEL, "keepbits": RELEVANCE_KEEPBITS, "root": root}
        if per_volume and (self.scratch is not None or mode == "volumes"):
            target = self.scratch[0] if self.scratch is not None else outputs["relevance"]
            if self.scratch is not None:
                self.scratch[1].unlink(missing_ok=True)  # the record goes with the maps it describes
            self.volumes = VolumeGzipNifti4D(
                target,
                (*REFERENCE_SHAPE, n_volumes),
                REFERENCE_AFFINE,
                t_r,
                description="deeplight-bids LRP relevance",
                **keep,
            )
        if mode == "blocks":
            self.block_table, block_of_volume = blocks  # type: ignore[misc]  # given in blocks mode
            if len(self.block_table):
                stream = VolumeGzipNifti4D(
                    outputs["blocks"],
                    (*REFERENCE_SHAPE, len(self.block_table)),
                    REFERENCE_AFFINE,
                    t_r,
                    description="deeplight-bids LRP relevance, mean per block",
                    **keep,
                )
                self.blocks = BlockMeans(block_of_volume, stream)

    def write(self, start: int, volumes: np.ndarray) -> None:
        """Relevance maps ``(n, x, y, z)`` (masked) of time indices ``start .. start + n - 1``."""
        import time

        began = time.perf_counter()
        if self.volumes is not None:
            self.volumes.write(start, volumes)
        if self.blocks is not None:
            self.blocks.add(start, volumes)
        self.busy_s += time.perf_counter() - began

    def read(self, index: int) -> np.ndarray:
        """Per-volume map ``index`` as written, ``(z, y, x)``."""
        if self.volumes is None:
            raise LookupError(f"--relevance-maps {self.mode} without a work folder keeps no per-volume maps")
        return self.volumes.read(index)

    def close(self) -> None:
        if self.volumes is not None:
            self.volumes.close()
        if self.blocks is not None:
            self.blocks.close()

    def abort(self) -> None:
        for stream in (self.volumes, self.blocks.stream if self.blocks is not None else None):
            if stream is not None:
                stream.abort()

    def finish(self, sidecar: Mapping[str, Any]) -> None:
        """Write the outputs' sidecars (and link the per-volume maps); remove this run's outputs of the other modes.

        The work folder's record (written last) names the settings hash of ``sidecar``.
        """
        from deeplight_bids.derivatives.stale import remove_stale
        from deeplight_bids.derivatives.writers import write_json, write_tsv

        stale = []
        if self.mode == "volumes":
            if self.scratch is not None:
                link_or_copy(self.scratch[0], self.outputs["relevance"], self.root)
            write_json(self.outputs["relevance_json"], sidecar, root=self.root)
        else:
            stale.append(self.outputs["relevance"])
        if self.mode == "blocks":
            write_tsv(self.outputs["blocks_tsv"], self.block_table, root=self.root)
            write_json(
                self.outputs["blocks_json"],
                {
                    **sidecar,
                    **BLOCK_COLUMNS,
                    "Description": (
                        "LRP relevance, one 3D map per event block / trial: the mean of the (brain-masked) maps of the "
                        "volumes that the event labels (onset + TR <= t <= onset + duration + 2 TR; the later onset wins "
                        "on overlap); the maps are listed, in order, in the TSV of the same name"
                    ),
                },
                root=self.root,
            )
            if not len(self.block_table):  # type: ignore[arg-type]  # set in blocks mode
                stale.append(self.outputs["blocks"])  # no block in this run: no image, an empty table
        else:
            stale += [self.outputs["blocks"], self.outputs["blocks_tsv"]]
        remove_stale(stale, f"relevance maps of another --relevance-maps choice (now: {self.mode})")
        if self.scratch is not None and self.scratch[0].is_file():
            from deeplight_bids.derivatives.integrity import FILES_KEY, fingerprint

            write_json(
                self.scratch[1],
                {
                    "Key": self.key,
                    "SettingsHash": sidecar.get("SettingsHash"),
                    "Sidecar": sidecar,
                    FILES_KEY: {"volumes": fingerprint(self.scratch[0])},  # checked before the maps are reused
                },
                root=self.root,
            )


def link_or_copy(
    source: str | os.PathLike[str], target: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> None:
    """Put ``source`` at ``target`` atomically: a hard link (no copy, same file system) or else a copy."""
    import os
    import shutil

    from deeplight_bids.derivatives.writers import atomic_path

    with atomic_path(target, root) as tmp:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not supported
            shutil.copyfile(source, tmp)


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
    import json

    from deeplight_bids.derivatives import integrity
    from deeplight_bids.derivatives.writers import write_json
    from deeplight_bids.readback import iter_volumes

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
    import nibabel as nib

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
    from deeplight_bids.derivatives.integrity import FILES_KEY, fingerprint, member_trailers, read_marker
    from deeplight_bids.derivatives.writers import write_json

    volumes, record_path = scratch_paths(scratch_dir, outputs)
    if volumes.is_file() and record_path.is_file():
        return False
    sidecar, _ = read_marker(outputs["relevance_json"])
    if sidecar is None or not outputs["relevance"].is_file() or member_trailers(outputs["relevance"]) is None:
        return False
    record_path.unlink(missing_ok=True)
    link_or_copy(outputs["relevance"], volumes, root)
    write_json(
        record_path,
        {
            "Key": key,
            "SettingsHash": sidecar.get("SettingsHash"),
            "Sidecar": sidecar,
            FILES_KEY: {"volumes": fingerprint(volumes)},
        },
        root=root,
    )
    log.info("%s: put back in the work folder (a hard link to %s)", volumes, outputs["relevance"].name)
    return True


def relevance_outputs_complete(mode: str, outputs: Mapping[str, Path]) -> bool:
    """True when the run's relevance outputs of ``--relevance-maps`` ``mode`` exist (for resuming)."""
    need = {"volumes": ("relevance", "relevance_json"), "blocks": ("blocks_tsv", "blocks_json"), "means": ()}[mode]
    return all(outputs[key].is_file() for key in need)


#: Column descriptions of the blocks TSV (BIDS sidecar entries).
BLOCK_COLUMNS = described(
    {
        "block": "0-based index of the block's map in the 4D image",
        "trial_type": "trial type of the event (events.tsv)",
        "state": "model state of the trial type",
        "onset": {"Description": "onset of the event", "Units": "s"},
        "duration": {"Description": "duration of the event", "Units": "s"},
        "volumes": "comma-separated 0-based indices of the volumes averaged (those the event labels)",
        "n_volumes": "number of volumes averaged",
    }
)


class BackgroundWriter:
    """Run a writer's ``write`` calls in a thread beside the network, through a bounded queue.

    Parameters
    ----------
    target : object
        Has ``write(start, volumes)``, ``close()`` and ``abort()`` (e.g. :class:`RunRelevanceOutputs`).
    max_pending : int
        Batches waiting at most; :meth:`write` blocks when the queue is full, so memory
        stays bounded (``max_pending`` batches of maps).

    Notes
    -----
    An error in the thread is raised again, unchanged, by the next :meth:`write` or by
    :meth:`close` (the run stops with it); :meth:`close` and :meth:`abort` wait for the
    thread, and the target's own atomic writes mean nothing partial lies under a final name.
    """

    _STOP = object()

    def __init__(self, target: Any, max_pending: int = 2):
        import queue
        import threading

        # duck-typed: RunRelevanceOutputs, or any object with write/read/close/abort (and finish)
        self.target = target
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="deeplight-relevance-writer", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self.error is None:  # after an error, drain without writing so that producers never block
                try:
                    self.target.write(*item)
                except BaseException as err:  # noqa: BLE001  (re-raised in the main thread)
                    self.error = err
            self._queue.task_done()

    def write(self, start: int, volumes: np.ndarray) -> None:
        """Queue ``volumes`` ``(n, x, y, z)`` for time indices ``start ..`` (a copy is not made: do not reuse them)."""
        if self.error is not None:
            raise self.error
        self._queue.put((start, volumes))

    def read(self, index: int) -> np.ndarray:
        """Volume ``index`` as written, ``(z, y, x)``: waits for the queued writes first."""
        self._queue.join()
        if self.error is not None:
            raise self.error
        return self.target.read(index)

    def _join(self):
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()

    def close(self) -> Any:
        """Wait for the queued writes, then close the target; the thread's error, if any, is raised."""
        self._join()
        if self.error is not None:
            raise self.error
        result = self.target.close()
        busy = getattr(self.target, "busy_s", None)
        if busy is not None:
            LOGGER.info("relevance writer: %.1f s of compression and writes, beside the network", busy)
        return result

    def abort(self) -> None:
        self._join()
        self.target.abort()

    def finish(self, sidecar: Mapping[str, Any]) -> Any:
        return self.target.finish(sidecar)

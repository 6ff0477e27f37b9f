"""Relevance maps inside the brain: masking and the record of what fell outside the mask.

LRP's flat rule on the first convolution (3D-DeepLight, preset B-flat) spreads relevance
evenly over every voxel of a unit's receptive field, so a map is non-zero a few voxels
beyond the brain mask.  The per-volume maps, the per-state means and everything made from
them are written masked to the run's brain mask (exact zeros outside, which gzip stores in
almost no space), and the fraction of the absolute relevance that was cut off is recorded
per run in the relevance sidecar, so that nothing is hidden.
"""

import numpy as np


class RelevanceMasker:
    """Zero the relevance outside a brain mask and tally the share that was outside.

    Parameters
    ----------
    mask : numpy.ndarray, shape (x, y, z), bool
        The run's brain mask on the reference grid (``PreparedRun.mask``).

    Attributes
    ----------
    outside_fractions : list of float
        Per volume seen so far: ``sum |R| outside the mask / sum |R|`` (0 for an all-zero map).
    """

    def __init__(self, mask):
        self.mask = np.asarray(mask, dtype=bool)
        self.outside_fractions = []

    def apply(self, volumes):
        """Masked copies of ``volumes``; the outside fractions are recorded.

        Parameters
        ----------
        volumes : numpy.ndarray, shape (n, x, y, z)
            Relevance maps in NIfTI array order (any memory layout, e.g. the transposed
            view of model-order maps).

        Returns
        -------
        numpy.ndarray, shape (n, x, y, z), float32
            ``volumes`` with exact zeros outside the mask, in the memory layout of
            ``volumes`` (a transposed view gives Fortran-ordered volumes).
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
        return out

    def sidecar(self):
        """Sidecar entries: the mask rule and the outside fraction's median and max over the run's volumes."""
        fractions = np.asarray(self.outside_fractions, dtype=np.float64)
        return {
            "RelevanceMask": ("the run's brain mask on the reference grid (nearest neighbour); relevance outside it "
                              "is set to 0 in this map and in every map made from it"),
            "RelevanceOutsideMaskFraction": {
                "Description": "per volume, sum of |relevance| outside the brain mask / sum of |relevance| "
                               "(before masking); median and maximum over the run's volumes",
                "Median": float(np.median(fractions)) if fractions.size else None,
                "Max": float(fractions.max()) if fractions.size else None,
                "NumberOfVolumes": int(fractions.size),
            },
        }


#: ``--relevance-maps`` choices: what is written per run besides the per-state means.
RELEVANCE_MAPS = ("volumes", "blocks", "means")


def event_blocks(events, n_volumes, t_r, state_map):
    """The volumes each mapped event labels, by the labelling rule of :func:`~deeplight_bids.prepare.labels.volume_labels`.

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

    from deeplight_bids.prepare.labels import TIME_TOLERANCE

    block_of_volume = np.full(int(n_volumes), -1, dtype=int)
    times = np.arange(int(n_volumes)) * float(t_r)
    mapped = events[events["trial_type"].isin(list(state_map))]
    order = np.argsort(mapped["onset"].to_numpy(dtype=float), kind="stable")  # later onset wins, as in the labels
    rows = mapped.iloc[order]
    for k, (onset, duration) in enumerate(zip(rows["onset"].to_numpy(float), rows["duration"].to_numpy(float))):
        inside = (times >= onset + t_r - TIME_TOLERANCE) & (times <= onset + duration + 2.0 * t_r + TIME_TOLERANCE)
        block_of_volume[inside] = k
    table, renumber = [], np.full(len(rows) + 1, -1, dtype=int)
    for k, (_, event) in enumerate(rows.iterrows()):
        volumes = np.flatnonzero(block_of_volume == k)
        if volumes.size == 0:
            continue
        renumber[k] = len(table)
        table.append({"block": len(table), "trial_type": event["trial_type"], "state": state_map[event["trial_type"]],
                      "onset": float(event["onset"]), "duration": float(event["duration"]),
                      "volumes": ",".join(map(str, volumes)), "n_volumes": int(volumes.size)})
    columns = ["block", "trial_type", "state", "onset", "duration", "volumes", "n_volumes"]
    return pd.DataFrame(table, columns=columns), renumber[block_of_volume]


class BlockMeans:
    """Mean relevance map per block, written as soon as the block's last volume has been seen.

    Parameters
    ----------
    block_of_volume : numpy.ndarray, shape (n_volumes,), int
        From :func:`event_blocks` (-1: no block).
    stream : deeplight_bids.derivatives.writers.StreamingNifti4D
        4D output with one volume per block.

    Notes
    -----
    Only the blocks still open are kept in memory (one float64 map each), so memory does
    not grow with the number of blocks of a run.
    """

    def __init__(self, block_of_volume, stream):
        self.block_of_volume = np.asarray(block_of_volume, dtype=int)
        self.stream = stream
        self.last = {int(b): int(np.flatnonzero(self.block_of_volume == b)[-1])
                     for b in np.unique(self.block_of_volume) if b >= 0}
        self.open = {}

    def add(self, start, volumes):
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

    def close(self):
        if self.open:
            raise RuntimeError(f"blocks {sorted(self.open)} not finished: not every volume was added")
        return self.stream.close()


class RunRelevanceOutputs:
    """What one run writes of its relevance, by ``--relevance-maps``.

    ``volumes``: the per-volume 4D map; ``blocks``: one mean map per event block (4D) and
    its TSV; ``means``: nothing per run (the per-state means are made from the sums the
    participant level keeps in every case).

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
    scratch_dir, root : path-like
        As for :class:`~deeplight_bids.derivatives.writers.StreamingNifti4D`.
    """

    def __init__(self, mode, outputs, n_volumes, t_r, blocks=None, scratch_dir=None, root=None):
        from deeplight_bids.derivatives.writers import StreamingNifti4D
        from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE

        if mode not in RELEVANCE_MAPS:
            raise ValueError(f"mode must be one of {RELEVANCE_MAPS}, got {mode!r}")
        self.mode, self.outputs, self.root = mode, outputs, root
        self.volumes = self.blocks = None
        self.block_table = None
        if mode == "volumes":
            self.volumes = StreamingNifti4D(outputs["relevance"], (*REFERENCE_SHAPE, n_volumes), REFERENCE_AFFINE, t_r,
                                            scratch_dir=scratch_dir, description="deeplight-bids LRP relevance",
                                            root=root)
        elif mode == "blocks":
            self.block_table, block_of_volume = blocks
            if len(self.block_table):
                stream = StreamingNifti4D(outputs["blocks"], (*REFERENCE_SHAPE, len(self.block_table)),
                                          REFERENCE_AFFINE, t_r, scratch_dir=scratch_dir,
                                          description="deeplight-bids LRP relevance, mean per block", root=root)
                self.blocks = BlockMeans(block_of_volume, stream)

    def write(self, start, volumes):
        """Relevance maps ``(n, x, y, z)`` (masked) of time indices ``start .. start + n - 1``."""
        if self.volumes is not None:
            self.volumes.write(start, volumes)
        if self.blocks is not None:
            self.blocks.add(start, volumes)

    def read(self, index):
        """Per-volume map ``index`` as written, ``(z, y, x)`` (``volumes`` mode only: the others keep none)."""
        if self.volumes is None:
            raise LookupError(f"--relevance-maps {self.mode} keeps no per-volume maps to read back")
        return self.volumes.read(index)

    def close(self):
        if self.volumes is not None:
            self.volumes.close()
        if self.blocks is not None:
            self.blocks.close()

    def abort(self):
        for stream in (self.volumes, self.blocks.stream if self.blocks is not None else None):
            if stream is not None:
                stream.abort()

    def finish(self, sidecar):
        """Write the sidecars of what was written; remove this run's outputs of the other modes (logged)."""
        from deeplight_bids.derivatives.stale import remove_stale
        from deeplight_bids.derivatives.writers import write_json, write_tsv

        stale = []
        if self.mode == "volumes":
            write_json(self.outputs["relevance_json"], sidecar, root=self.root)
        else:
            stale.append(self.outputs["relevance"])
        if self.mode == "blocks":
            write_tsv(self.outputs["blocks_tsv"], self.block_table, root=self.root)
            write_json(self.outputs["blocks_json"], {**sidecar, **BLOCK_COLUMNS, "Description": (
                "LRP relevance, one 3D map per event block / trial: the mean of the (brain-masked) maps of the "
                "volumes that the event labels (onset + TR <= t <= onset + duration + 2 TR; the later onset wins "
                "on overlap); the maps are listed, in order, in the TSV of the same name")}, root=self.root)
            if not len(self.block_table):
                stale.append(self.outputs["blocks"])  # no block in this run: no image, an empty table
        else:
            stale += [self.outputs["blocks"], self.outputs["blocks_tsv"]]
        remove_stale(stale, f"relevance maps of another --relevance-maps choice (now: {self.mode})")


def relevance_outputs_complete(mode, outputs):
    """True when the run's relevance outputs of ``--relevance-maps`` ``mode`` exist (for resuming)."""
    need = {"volumes": ("relevance", "relevance_json"), "blocks": ("blocks_tsv", "blocks_json"), "means": ()}[mode]
    return all(outputs[key].is_file() for key in need)


#: Column descriptions of the blocks TSV (BIDS sidecar entries).
BLOCK_COLUMNS = {
    "block": {"Description": "0-based index of the block's map in the 4D image"},
    "trial_type": {"Description": "trial type of the event (events.tsv)"},
    "state": {"Description": "model state of the trial type"},
    "onset": {"Description": "onset of the event", "Units": "s"},
    "duration": {"Description": "duration of the event", "Units": "s"},
    "volumes": {"Description": "comma-separated 0-based indices of the volumes averaged (those the event labels)"},
    "n_volumes": {"Description": "number of volumes averaged"},
}


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

    def __init__(self, target, max_pending=2):
        import queue
        import threading

        self.target = target
        self.error = None
        self._queue = queue.Queue(maxsize=max_pending)
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

    def write(self, start, volumes):
        """Queue ``volumes`` ``(n, x, y, z)`` for time indices ``start ..`` (a copy is not made: do not reuse them)."""
        if self.error is not None:
            raise self.error
        self._queue.put((start, volumes))

    def read(self, index):
        """Volume ``index`` as written, ``(z, y, x)``: waits for the queued writes first."""
        self._queue.join()
        if self.error is not None:
            raise self.error
        return self.target.read(index)

    def _join(self):
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()

    def close(self):
        """Wait for the queued writes, then close the target; the thread's error, if any, is raised."""
        self._join()
        if self.error is not None:
            raise self.error
        return self.target.close()

    def abort(self):
        self._join()
        self.target.abort()

    def finish(self, sidecar):
        return self.target.finish(sidecar)

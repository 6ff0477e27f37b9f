"""Event blocks of a run (``--relevance-maps blocks``): the volumes each event labels, and each block's mean map."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.derivatives.sidecars import described
from deeplight_bids.derivatives.volume_gzip import VolumeGzipNifti4D

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy.typing as npt
    import pandas as pd


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

    # deferred: loads pandas, which the participant level needs only in blocks mode
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

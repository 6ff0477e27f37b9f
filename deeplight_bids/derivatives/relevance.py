"""What one run writes of its relevance maps, by ``--relevance-maps`` (volumes, blocks or means).

The per-volume maps go into the work folder as they arrive (the file format:
:mod:`deeplight_bids.derivatives.volume_gzip`); the BIDS outputs are linked or made from
there.  Beside it: :mod:`.masking` (maps cut to the brain mask), :mod:`.blocks` (event
blocks and their mean maps), :mod:`.relevance_reuse` (outputs made again from the work
folder without the network) and :mod:`.background` (the writer thread).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.config import RELEVANCE_MAP_KINDS
from deeplight_bids.derivatives.blocks import BLOCK_COLUMNS, BlockMeans
from deeplight_bids.derivatives.integrity import FILES_KEY, fingerprint
from deeplight_bids.derivatives.stale import remove_stale
from deeplight_bids.derivatives.volume_gzip import RELEVANCE_GZIP_LEVEL, RELEVANCE_KEEPBITS, VolumeGzipNifti4D
from deeplight_bids.derivatives.writers import link_or_copy, write_json, write_tsv

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd


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
        from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE  # deferred: loads nibabel

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


def relevance_outputs_complete(mode: str, outputs: Mapping[str, Path]) -> bool:
    """True when the run's relevance outputs of ``--relevance-maps`` ``mode`` exist (for resuming)."""
    need = {"volumes": ("relevance", "relevance_json"), "blocks": ("blocks_tsv", "blocks_json"), "means": ()}[mode]
    return all(outputs[key].is_file() for key in need)

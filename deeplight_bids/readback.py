"""Reading relevance outputs back: one call from OUTPUT_DIR to images and their table rows.

:func:`load_relevance` finds a participant's relevance files by their BIDS names
(:mod:`deeplight_bids.derivatives.naming`), selects volumes from the predictions table
(by the state each map explains), and reads only those volumes (:func:`iter_volumes`:
one gzip member per volume, or else front to back through the gzip stream a few volumes
at a time), so a 405-volume run is never held in memory whole.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from deeplight_bids.config import RELEVANCE_MAP_KINDS
from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.volume_gzip import member_extents, read_volumes
from deeplight_bids.derivatives.writers import gzip_module
from deeplight_bids.exceptions import InputDataError
from deeplight_bids.prepare.grid import REFERENCE_AFFINE
from deeplight_bids.utils.tsv import read_tsv

if TYPE_CHECKING:
    import nibabel as nib

#: file name ends of the per-run relevance files, by kind.  Found by name (a glob in one participant's folder)
#: rather than pybids, whose index of a whole OUTPUT_DIR takes seconds to minutes: a notebook reading one
#: participant's maps stays fast and imports nothing heavy; the names come from derivatives.naming.
_RUN_FILES = {"volumes": naming.run_output_ending("relevance"), "blocks": naming.run_output_ending("blocks")}
_SHORT_TO_LONG = {short: key for key, short in naming.ENTITY_ORDER}


def iter_volumes(
    path: str | os.PathLike,
    wanted: Iterable[int],
    chunk: int = 16,
    dtype: npt.DTypeLike = np.float64,
    copy: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, volume)`` for the wanted volume indices of a 4D NIfTI, in order.

    A file written one gzip member per volume
    (:class:`~deeplight_bids.derivatives.volume_gzip.VolumeGzipNifti4D`, the participant
    level's relevance files) is read member by member: only the wanted volumes are
    decompressed.  Any other file is read once, front to back, ``chunk`` volumes at a time,
    so memory stays at ``chunk`` volumes whatever the run length.

    Parameters
    ----------
    path : path-like
        4D ``.nii`` or ``.nii.gz``.
    wanted : iterable of int
        0-based volume indices; out-of-range ones are ignored.
    chunk : int
        Volumes decompressed per read.
    dtype : numpy dtype
        Of the yielded volumes (the header's scaling applied).
    copy : bool
        False: a volume that needs no conversion (the file's dtype, no scaling) is yielded
        as a read-only view of the bytes read (one copy fewer, for callers that copy it).

    Yields
    ------
    index : int
    volume : numpy.ndarray, shape (x, y, z)
    """
    import nibabel as nib

    img: Any = nib.load(path)  # nibabel's stubs type load() as FileBasedImage (no shape, affine, dataobj)
    header = img.header
    shape = img.shape
    if len(shape) != 4:
        raise InputDataError(f"{path}: expected a 4D relevance image, got shape {shape}; re-run the participant level.")
    n_vox = int(np.prod(shape[:3]))
    file_dtype = header.get_data_dtype()
    vol_bytes = n_vox * file_dtype.itemsize
    slope, inter = header.get_slope_inter()
    # nibabel's own data offset (the header's vox_offset may be 0 in a single-file .nii, meaning 352)
    offset = int(getattr(img.dataobj, "offset", 0) or header.get_data_offset() or 352)
    wanted = sorted({int(w) for w in wanted if 0 <= int(w) < shape[3]})
    if not wanted:
        return

    scale = slope is not None and np.isfinite(slope) and slope not in (0, 1)
    shift = inter is not None and np.isfinite(inter) and inter != 0

    def scaled(raw):
        vol = np.frombuffer(raw, dtype=file_dtype).reshape(shape[:3], order="F")
        if copy or scale or shift or vol.dtype != np.dtype(dtype):
            vol = vol.astype(dtype)
        if scale:
            vol *= slope
        if shift:
            vol += inter
        return vol

    if str(path).endswith(".gz"):  # written one gzip member per volume: only the wanted members are decompressed
        extents = member_extents(path)
        if extents is not None and len(extents) == shape[3]:
            for w, raw in read_volumes(path, wanted, vol_bytes):
                yield w, scaled(raw)
            return
    opener = gzip_module().open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fobj:
        fobj.seek(offset)
        for start in range(0, wanted[-1] + 1, chunk):
            stop = min(start + chunk, shape[3])
            need = [w for w in wanted if start <= w < stop]
            if not need:
                continue
            fobj.seek(offset + start * vol_bytes)  # forward seek: decompress and discard
            buf = fobj.read((stop - start) * vol_bytes)
            arr = np.frombuffer(buf, dtype=file_dtype).reshape(stop - start, n_vox)
            for w in need:
                yield w, scaled(arr[w - start])


def parse_entities(path: str | os.PathLike) -> dict[str, str]:
    """BIDS entities of an output file name: ``{"subject": "01", "task": "motor", ...}`` (long keys)."""
    stem = Path(path).name.split(".")[0]
    out = {}
    for part in stem.split("_")[:-1]:
        key, _, value = part.partition("-")
        if key in _SHORT_TO_LONG and value:
            out[_SHORT_TO_LONG[key]] = value
    return out


def _same_index(a, b):
    a, b = str(a), str(b)
    return int(a) == int(b) if a.isdigit() and b.isdigit() else a == b


def _run_files(output_dir, subject, task, run, session, filters=None, kind="volumes"):
    subject = str(subject).removeprefix("sub-")
    folder = Path(output_dir) / f"sub-{subject}"
    pattern = f"sub-{subject}_*task-{task}_*{_RUN_FILES[kind]}"
    files = sorted(set(folder.glob(f"func/{pattern}")) | set(folder.glob(f"ses-*/func/{pattern}")))
    chosen = []
    for path in files:
        ents = parse_entities(path)
        if ents.get("task") != str(task):
            continue
        if run is not None and not _same_index(ents.get("run", ""), run):
            continue
        if session is not None and ents.get("session") != str(session).removeprefix("ses-"):
            continue
        if any(str(ents.get(key, "")) != str(value or "") for key, value in (filters or {}).items()):
            continue
        chosen.append((path, ents))
    if not chosen:
        what = (
            f"sub-{subject}, task {task}"
            + (f", run {run}" if run is not None else "")
            + (f", session {session}" if session is not None else "")
        )
        raise InputDataError(
            f"{output_dir}: no {'per-volume' if kind == 'volumes' else 'block'} relevance maps for "
            f"{what} (*_{_RUN_FILES[kind]}); run the participant level with LRP (and --relevance-maps "
            f"{kind}), or check the labels."
        )
    return chosen


def _read_table(path):
    return read_tsv(path, allow_empty=False)


def _matches_state(values, state):
    values = values.astype(object)
    return values.map(lambda v: isinstance(v, str) and (v == state or naming.label_value(v) == state)).astype(bool)


def load_relevance(
    output_dir: str | os.PathLike,
    subject: str,
    task: str,
    run: int | str | None = None,
    state: str | None = None,
    kind: str = "volumes",
    session: str | None = None,
    volumes: Iterable[int] | None = None,
    filters: Mapping[str, Any] | None = None,
) -> tuple[nib.Nifti1Image, pd.DataFrame]:
    """Relevance maps of one participant and task from OUTPUT_DIR, with the matching table rows.

    Parameters
    ----------
    output_dir : path-like
        OUTPUT_DIR of the participant level.
    subject : str
        Participant label, with or without ``sub-``.
    task : str
        BIDS task label.
    run : int or str or None
        Run index (``1`` matches ``run-01``); None: every run of the task (and session).
    state : str or None
        Only the maps that explain this state (``lrp_target`` of the predictions table;
        the state name, e.g. ``"MOTOR_lh"``, or its label ``"MOTORlh"``); None: all.
    kind : {"volumes", "blocks", "means"}
        ``"volumes"``: the per-volume maps of the runs' ``*_desc-relevance_bold.nii.gz``.
        ``"blocks"``: the per-block maps of ``--relevance-maps blocks``
        (``*_desc-blocks_relevance.nii.gz``; ``state`` selects on the block's state).
        ``"means"``: the participant's per-state mean maps (``*_desc-mean_relevance``).
    session : str or None
        Session label (with or without ``ses-``); None: every session.
    volumes : iterable of int or None
        Keep only these 0-based volume (``"blocks"``: block) indices of each selected run.
    filters : dict or None
        ``"volumes"`` and ``"blocks"``: other entities the runs must have (long names, e.g.
        ``{"direction": "LR", "acquisition": None}``; None or "" = the entity is absent).

    Returns
    -------
    image : nibabel.Nifti1Image, shape (91, 109, 91, n), float32
        The selected maps, one per table row, in the table's order (runs in file-name
        order, then volume order); ``n`` may be 0.  For ``"volumes"`` the header's 4th
        zoom is the RepetitionTime (s).
    table : pandas.DataFrame, n rows
        ``"volumes"``: the rows of the runs' predictions tables (``volume``, ``onset``,
        ``true_state``, ``predicted_state``, ``correct``, ``lrp_target``, ``prob_*``) with
        a first column ``source`` (the relevance file's name).
        ``"blocks"``: the rows of the runs' blocks TSVs (``block``, ``trial_type``, ``state``,
        ``onset``, ``duration``, ``volumes``, ``n_volumes``), with ``source`` first.
        ``"means"``: ``state``, ``number_of_volumes`` and ``source`` per mean map.

    Raises
    ------
    deeplight_bids.exceptions.InputDataError
        No such outputs, or a predictions table without ``lrp_target`` (made with
        ``--no-lrp``).

    Notes
    -----
    Only the selected volumes are kept in memory, and only they are decompressed (files
    written one gzip member per volume, as the participant level writes them; others are
    read once, front to back, up to the last selected volume).

    Examples
    --------
    >>> img, rows = load_relevance("out", "01", "motor", state="MOTOR_lh")  # doctest: +SKIP
    >>> img.shape[3] == len(rows)  # doctest: +SKIP
    True
    """
    import nibabel as nib

    if kind not in RELEVANCE_MAP_KINDS:
        raise ValueError(f"kind must be one of {', '.join(RELEVANCE_MAP_KINDS)}; got {kind!r}")
    if kind == "means":
        return _load_means(output_dir, subject, task, state)
    selected = []
    index_column, state_column = ("volume", "lrp_target") if kind == "volumes" else ("block", "state")
    for path, ents in _run_files(output_dir, subject, task, run, session, filters, kind):
        source = {k: v for k, v in ents.items() if k not in ("space", "res", "label", "desc")}
        listing = naming.run_outputs(output_dir, source)["predictions" if kind == "volumes" else "blocks_tsv"]
        if not listing.is_file():
            raise InputDataError(f"{listing}: missing (the run is unfinished); re-run the participant level.")
        table = _read_table(listing)
        if state_column not in table.columns:
            raise InputDataError(
                f"{listing}: no {state_column} column (made with --no-lrp?); re-run the participant level with LRP."
            )
        keep = pd.Series(True, index=table.index)
        if state is not None:
            keep &= _matches_state(table[state_column], state)
        if volumes is not None:
            keep &= table[index_column].isin([int(v) for v in volumes])
        rows = table.loc[keep].copy()
        rows.insert(0, "source", path.name)
        selected.append((path, rows))
    n_total = sum(len(rows) for _, rows in selected)
    first: Any = nib.load(selected[0][0])  # a Nifti1Image (see iter_volumes)
    data = np.zeros((*first.shape[:3], n_total), dtype=np.float32, order="F")
    filled = 0
    for path, rows in selected:
        position = {int(v): filled + i for i, v in enumerate(rows[index_column])}
        for index, vol in iter_volumes(path, position, dtype=np.float32, copy=False):
            data[..., position[index]] = vol
        filled += len(rows)
    header = first.header.copy()
    header.set_data_shape(data.shape)
    img = nib.Nifti1Image(data, first.affine if first.affine is not None else REFERENCE_AFFINE, header)
    table = pd.concat([rows for _, rows in selected], ignore_index=True)
    return img, table


def _load_means(output_dir, subject, task, state):
    import nibabel as nib

    subject = str(subject).removeprefix("sub-")
    folder, pattern = naming.state_map_glob(output_dir, subject, task)
    rows, arrays, affine = [], [], None
    for path in sorted(folder.glob(pattern)):
        sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        name = meta.get("State") or re.sub(
            r"^label-", "", next((p for p in path.name.split("_") if p.startswith("label-")), "label-")
        )
        if state is not None and state not in (name, naming.label_value(name)):
            continue
        img = nib.load(path)
        affine = img.affine
        arrays.append(np.asarray(img.dataobj, dtype=np.float32))
        rows.append({"state": name, "number_of_volumes": meta.get("NumberOfVolumes"), "source": path.name})
    if not rows:
        what = f"sub-{subject}, task {task}" + (f", state {state}" if state is not None else "")
        raise InputDataError(
            f"{output_dir}: no mean relevance maps for {what} (*_desc-mean_relevance.nii.gz); run "
            "the participant level with LRP."
        )
    data = np.stack(arrays, axis=-1)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    return img, pd.DataFrame(rows, columns=["state", "number_of_volumes", "source"])

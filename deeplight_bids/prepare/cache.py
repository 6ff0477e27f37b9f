"""A cache of prepared runs for training, and a bounded-memory ``tf.data`` reader.

Fine-tuning reads every labelled volume once per epoch.  Preparing a run (resample,
mask, smooth, detrend, high-pass, z-score; :func:`deeplight_bids.prepare.clean.prepare_run`)
takes seconds, so each run is prepared once and stored in the work folder in a compact
form:

``WORK_DIR/prepared/<key>/``
    ``signals.npy``  float16 ``(n_volumes, n_mask_voxels)``: the in-mask voxels only
    (~1/4 of a float32 full-grid volume per brain-masked volume, halved again by float16);
    ``mask.npy``     bool ``(91, 109, 91)`` on the reference grid, (x, y, z) order;
    ``meta.json``    the run, its inputs and the preprocessing parameters.
``WORK_DIR/prepared/index.json``
    ``key -> meta`` of every prepared run (the index).

``key`` is a SHA-256 over the BOLD and mask identities (resolved path, size, modification
time and content SHA-256; :mod:`deeplight_bids.utils.identity`), the repetition time, the
preprocessing parameters and :data:`CACHE_VERSION`: editing or replacing an input (even
with its old time stamp) or changing ``--smoothing-fwhm`` / ``--high-pass`` prepares again
(logged with the run's name), anything else reuses the cache.  Entries are written to a temporary folder and renamed, so an interrupted
preparation never leaves a partial entry.  Labels are not cached (they are cheap and depend
on the events file and ``--states``); :func:`label_volumes` computes them.

Reading: :class:`VolumeReader` memory-maps the cached signals and rebuilds one full
volume at a time in model order ``(z, y, x, 1)``; :func:`make_volume_dataset` wraps it in
``tf.data`` with per-epoch shuffling and class balancing (every class oversampled to the
largest class), batching and prefetching; at most a few batches of full volumes are in
memory at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.derivatives.writers import write_json
from deeplight_bids.prepare.grid import REFERENCE_SHAPE
from deeplight_bids.prepare.spaces import SpacePlan
from deeplight_bids.utils.identity import digest, file_identity

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    import numpy.typing as npt

    from deeplight_bids.bids.discover import Run

LOGGER = logging.getLogger("deeplight_bids")

#: Bump when the cached format or the preparation changes meaning (2: inputs keyed by content too).
CACHE_VERSION = 2
CACHE_FOLDER = "prepared"
INDEX_FILE = "index.json"
#: Model-order shape of one volume, (z, y, x, 1).
MODEL_SHAPE = (REFERENCE_SHAPE[2], REFERENCE_SHAPE[1], REFERENCE_SHAPE[0], 1)
_FLOAT16_MAX = 65000.0


@dataclass
class CacheStats:
    """What :func:`prepare_cached` did: runs prepared now and runs reused from the cache."""

    prepared: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CacheEntry:
    """One prepared run in the cache."""

    key: str
    folder: Path
    meta: dict

    @property
    def n_volumes(self) -> int:
        return int(self.meta["n_volumes"])

    def signals(self) -> np.ndarray:
        """Memory-mapped float16 ``(n_volumes, n_mask_voxels)``."""
        return np.load(self.folder / "signals.npy", mmap_mode="r")

    def mask(self) -> np.ndarray:
        return np.load(self.folder / "mask.npy")


def cache_key(run: Run, smoothing_fwhm: float, high_pass: float | None) -> tuple[str, dict[str, Any]]:
    """Key of a run's prepared data: inputs (path, size, mtime, SHA-256) + preprocessing parameters."""
    content = {
        "version": CACHE_VERSION,
        "bold": file_identity(run.bold_file),
        "mask": file_identity(run.mask_file),
        "t_r": run.repetition_time,
        "smoothing_fwhm": float(smoothing_fwhm),
        "high_pass": None if high_pass is None else float(high_pass),
    }
    return digest(content, length=24), content


def cache_dir(work_dir: str | os.PathLike[str]) -> Path:
    return Path(work_dir) / CACHE_FOLDER


def _prepare_one(bold, mask, t_r, smoothing_fwhm, high_pass, folder, meta, space=None):
    """Prepare one run and write its cache entry (runs in a worker process)."""
    from deeplight_bids.prepare.clean import prepare_run  # deferred: loads pandas

    t0 = time.monotonic()
    to_grid = SpacePlan().resampler_for(space)[0] if space else None  # 2009c: TemplateFlow's transform
    prepared = prepare_run(bold, mask, t_r, smoothing_fwhm=smoothing_fwhm, high_pass=high_pass, to_grid=to_grid)
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        signals = np.clip(prepared.signals, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)
        np.save(tmp / "signals.npy", signals)
        np.save(tmp / "mask.npy", prepared.mask)
        meta = dict(
            meta,
            n_volumes=int(prepared.n_volumes),
            n_voxels=int(prepared.mask.sum()),
            seconds=round(time.monotonic() - t0, 3),
        )
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _entry_ok(folder, log=None):
    """True when a cache entry is complete and readable; a damaged one (``log`` given) is one line, and prepared again."""
    names = ("signals.npy", "mask.npy", "meta.json")
    if not all((folder / name).is_file() for name in names):
        return False
    from deeplight_bids.derivatives.integrity import read_marker  # deferred: loads pandas

    try:
        for name in ("signals.npy", "mask.npy"):  # the header, and the data's full length (memory-mapped)
            array = np.load(folder / name, mmap_mode="r", allow_pickle=False)
            del array
        meta, reason = read_marker(folder / "meta.json")
        if meta is None:
            raise ValueError(f"meta.json {reason}")
    except (OSError, ValueError, EOFError) as err:
        if log is not None:
            log.warning("%s: damaged cache entry (%s); prepared again", folder, " ".join(str(err).split())[:120])
        return False
    return True


def prepare_cached(
    runs: Sequence[Run],
    work_dir: str | os.PathLike[str],
    smoothing_fwhm: float = 3.0,
    high_pass: float | None = 1 / 128,
    nprocs: int = 1,
    log: logging.Logger = LOGGER,
) -> tuple[list[CacheEntry], CacheStats]:
    """Prepare ``runs`` into the cache (in parallel), reusing entries already there.

    Parameters
    ----------
    runs : list of deeplight_bids.bids.discover.Run
        Processable runs.
    work_dir : path
        The cache lives in ``work_dir/prepared``.
    nprocs : int
        Worker processes for the runs still to prepare (1: in this process).

    Returns
    -------
    entries : list of CacheEntry
        One per run, in the order of ``runs``.
    stats : CacheStats
    """
    t0 = time.monotonic()
    root = cache_dir(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    stats = CacheStats()
    jobs, keys = [], []
    earlier = _read_index(root)
    for run in runs:
        key, content = cache_key(run, smoothing_fwhm, high_pass)
        keys.append(key)
        folder = root / key
        if _entry_ok(folder, log):
            stats.reused.append(run.label)
            continue
        if any(m.get("inputs", {}).get("bold", {}).get("path") == content["bold"]["path"] for m in earlier.values()):
            log.info(
                "cache: %s: its inputs or preprocessing settings differ from the prepared copy in %s; preparing again",
                run.label,
                root,
            )
        meta = {
            "run_label": run.label,
            "subject": run.subject,
            "entities": {k: v for k, v in run.entities.items() if v is not None},
            "events": str(run.events) if run.events else None,
            "inputs": content,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        jobs.append(
            (
                str(run.bold),
                str(run.mask),
                run.repetition_time,
                smoothing_fwhm,
                high_pass,
                str(folder),
                meta,
                getattr(run, "space", None),
            )
        )
        stats.prepared.append(run.label)
    if stats.reused:
        log.info("cache: reusing %d prepared run(s) from %s", len(stats.reused), root)
    workers = max(1, min(int(nprocs or 1), len(jobs)))
    if jobs:
        log.info("cache: preparing %d run(s) with %d process(es)", len(jobs), workers)
    if workers > 1:
        # spawn: the parent may hold TensorFlow threads, which do not survive fork
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_prepare_one, *job) for job in jobs]
            for job, fut in zip(jobs, futures):
                meta = fut.result()
                log.info(
                    "cache: %s prepared (%d volumes, %.1f s)", job[6]["run_label"], meta["n_volumes"], meta["seconds"]
                )
    else:
        for job in jobs:
            meta = _prepare_one(*job)
            log.info("cache: %s prepared (%d volumes, %.1f s)", job[6]["run_label"], meta["n_volumes"], meta["seconds"])
    entries = [CacheEntry(key, root / key, json.loads((root / key / "meta.json").read_text())) for key in keys]
    _write_index(root)
    stats.seconds = time.monotonic() - t0
    return entries, stats


def _read_index(root):
    try:
        index = json.loads((root / INDEX_FILE).read_text())
    except (OSError, ValueError):  # damaged: rebuilt by _write_index
        return {}
    return index if isinstance(index, dict) else {}


def _write_index(root):
    index = {}
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith(".") and _entry_ok(folder):
            try:
                index[folder.name] = json.loads((folder / "meta.json").read_text())
            except (OSError, ValueError):
                continue
    write_json(root / INDEX_FILE, index)


@dataclass
class Samples:
    """Labelled volumes selected for training or evaluation (parallel arrays)."""

    entry: np.ndarray  #: index into the entries list
    volume: np.ndarray  #: volume index within the run
    label: np.ndarray  #: index into ``states``
    subject: np.ndarray  #: participant label (no ``sub-``)
    run_label: np.ndarray  #: run name

    def __len__(self):
        return len(self.label)

    def subset(self, keep: npt.ArrayLike) -> Samples:
        keep = np.asarray(keep)
        return Samples(self.entry[keep], self.volume[keep], self.label[keep], self.subject[keep], self.run_label[keep])

    def of_subjects(self, subjects: Iterable[str]) -> Samples:
        return self.subset(np.isin(self.subject, list(subjects)))


def label_volumes(
    entries: Iterable[CacheEntry],
    runs: Iterable[Run],
    states: Sequence[str] | None,
    state_maps: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[Samples, dict[str, int]]:
    """Labelled volumes of the cached runs whose state is in ``states``.

    Returns
    -------
    samples : Samples
    counts : dict
        ``state -> number of labelled volumes`` (all states found, also those not in ``states``).
    """
    from deeplight_bids.prepare.labels import read_events, resolve_state_map, volume_labels  # deferred: loads pandas

    index = {s: i for i, s in enumerate(states)} if states is not None else None
    rows = []
    counts: dict[str, int] = {}
    for e_idx, (entry, run) in enumerate(zip(entries, runs)):
        state_map = resolve_state_map(run.entities["task"], state_maps)
        # runs with labels have their events file and t_r (Run: None only before discovery fills them)
        labels = volume_labels(read_events(run.events_file), entry.n_volumes, run.repetition_time, state_map)
        for v, state in enumerate(labels):
            if state is None:
                continue
            counts[state] = counts.get(state, 0) + 1
            if index is None or state in index:
                rows.append((e_idx, v, state, run.subject, run.label))
    if index is None:
        index = {s: i for i, s in enumerate(sorted(counts))}
    return Samples(
        np.array([r[0] for r in rows], int),
        np.array([r[1] for r in rows], int),
        np.array([index[r[2]] for r in rows], int),
        np.array([r[3] for r in rows], dtype=object),
        np.array([r[4] for r in rows], dtype=object),
    ), counts


class VolumeReader:
    """Rebuild full model-order volumes ``(z, y, x, 1)`` float32 from cache entries, one at a time."""

    def __init__(self, entries):
        self.entries = list(entries)
        self._signals = {}
        self._index = {}

    def _open(self, e):
        if e not in self._signals:
            entry = self.entries[e]
            mask = entry.mask()
            # flat positions, in the (z, y, x) model array, of the mask voxels in (x, y, z) C order
            xyz = np.nonzero(mask)
            nz, ny, nx = MODEL_SHAPE[:3]
            key = hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()
            if key not in self._index:
                self._index[key] = (xyz[2] * ny + xyz[1]) * nx + xyz[0]
            self._signals[e] = (entry.signals(), self._index[key])
        return self._signals[e]

    def volume(self, e: int, v: int) -> np.ndarray:
        signals, flat = self._open(int(e))
        out = np.zeros(int(np.prod(MODEL_SHAPE)), np.float32)
        out[flat] = signals[int(v)]
        return out.reshape(MODEL_SHAPE)

    def batch(self, samples: Samples, start: int, stop: int) -> np.ndarray:
        return np.stack([self.volume(samples.entry[i], samples.volume[i]) for i in range(start, stop)])

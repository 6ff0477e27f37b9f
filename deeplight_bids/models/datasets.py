"""Training data for fine-tuning: labelled, prepared volumes and the frozen body's features.

The runs are discovered as the participant level does, prepared once into the work-folder
cache (:mod:`deeplight_bids.prepare.cache`) and their volumes labelled with the states.
Batches are made by :func:`deeplight_bids.models.input_pipeline.make_volume_dataset` (volumes) and
:func:`~deeplight_bids.models.input_pipeline.make_array_dataset` (features).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.bids.discover import build_layout, discover_selected_runs, find_derivatives
from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.writers import atomic_path
from deeplight_bids.exceptions import InputDataError, NoRunsFoundError
from deeplight_bids.prepare.cache import VolumeReader, label_volumes, prepare_cached
from deeplight_bids.progress import SegmentProgress
from deeplight_bids.utils.identity import digest, file_identity, sha256sum

if TYPE_CHECKING:
    import os

    from deeplight_bids.bids.discover import Run
    from deeplight_bids.config import Config
    from deeplight_bids.prepare.cache import Samples

LOGGER = logging.getLogger("deeplight_bids")


@dataclass
class TrainingData:
    """Labelled volumes of the runs to fine-tune on.

    Attributes
    ----------
    runs : list of deeplight_bids.bids.discover.Run
        Processable runs.
    entries : list
        Their prepared-cache entries (same order).
    cache_stats : object
        ``prepared`` and ``reused`` run labels.
    states : tuple of str
        State names in output order.
    samples : deeplight_bids.prepare.cache.Samples
        One row per labelled volume (subject, run, volume, label index, ...).
    participants : list of str
        Labels (without ``sub-``) of the participants with labelled volumes, sorted.
    reader : deeplight_bids.prepare.cache.VolumeReader
        Reads batches of prepared volumes in model order (made from ``entries``).
    """

    runs: list
    entries: list
    cache_stats: object
    states: tuple
    samples: Samples
    participants: list
    reader: VolumeReader = field(init=False)

    def __post_init__(self) -> None:
        self.reader = VolumeReader(self.entries)


def load_training_data(config: Config, log: logging.Logger = LOGGER) -> TrainingData:
    """Discover, prepare (cached) and label the runs ``config`` selects.

    States: ``config.finetune.states`` in that order, else every labelled state found
    (sorted).  Raises :class:`~deeplight_bids.exceptions.InputDataError` when fewer than two
    states or two participants have labelled volumes, or a requested state has none.
    """
    from deeplight_bids.prepare.labels import load_state_map_file  # deferred: loads pandas

    cfg = config
    layout = build_layout(cfg.inputs.bids_dir, find_derivatives(cfg.inputs.bids_dir, cfg.inputs.derivatives))
    runs = discover_selected_runs(layout, cfg.inputs)
    for run in runs:
        if run.skip_reason:
            log.warning("fine-tune: skipping %s: %s", run.label, run.skip_reason)
    runs = [r for r in runs if r.skip_reason is None]
    if not runs:
        raise NoRunsFoundError(f"{cfg.inputs.bids_dir}: no processable runs to fine-tune on (see the warnings above).")
    state_maps = load_state_map_file(cfg.inputs.state_map_file) if cfg.inputs.state_map_file else None
    entries, cache_stats = prepare_cached(
        runs, cfg.inputs.work_dir, cfg.inputs.smoothing_fwhm, cfg.inputs.high_pass, nprocs=cfg.nprocs, log=log
    )
    _, counts = label_volumes(entries, runs, None, state_maps)
    if cfg.finetune.states:
        states = tuple(cfg.finetune.states)
        empty = [s for s in states if not counts.get(s)]
        if empty:
            raise InputDataError(
                f"{cfg.inputs.bids_dir}: state(s) {', '.join(empty)} have no labelled volumes (found: "
                f"{', '.join(f'{s} ({n})' for s, n in sorted(counts.items())) or 'none'}); fix --states, the "
                "events files or --state-map."
            )
    else:
        states = tuple(sorted(counts))
    if len(states) < 2:
        raise InputDataError(
            f"{cfg.inputs.bids_dir}: fine-tuning needs at least 2 states with labelled volumes, found "
            f"{', '.join(states) or 'none'}; check the events files (trial_type) and --state-map."
        )
    samples, _ = label_volumes(entries, runs, states, state_maps)
    participants = sorted(set(samples.subject))
    if len(participants) < 2:
        raise InputDataError(
            f"{cfg.inputs.bids_dir}: held-out evaluation needs at least 2 participants with labelled volumes, found "
            f"{len(participants)} ({', '.join('sub-' + p for p in participants) or 'none'}); add "
            "participants or widen --participant-label."
        )
    log.info(
        "fine-tune: %d labelled volumes of %d participants, states %s (%s)",
        len(samples),
        len(participants),
        ", ".join(states),
        ", ".join(str(int((samples.label == i).sum())) for i in range(len(states))),
    )
    return TrainingData(runs, entries, cache_stats, states, samples, participants)


def labels_identity(runs: Sequence[Run], state_map_file: str | os.PathLike | None, states: Sequence[str]) -> str:
    """What the labels derive from (the cache entries key the BOLD and mask): events files and state map."""
    state_map = file_identity(state_map_file) if state_map_file else None
    return digest(
        {
            "events": [file_identity(r.events) if r.events else None for r in runs],
            "state_map": state_map,
            "states": list(states),
        }
    )


def weights_identity(weights: str | os.PathLike | None, init: str) -> str | os.PathLike | list[Any] | None:
    """``--weights`` as given, and the identity of the file(s) it names (a re-saved file is other weights)."""
    if weights is None or init == "scratch" or not Path(weights).exists():
        return weights  # published weights are verified by checksum when loaded
    files = sorted(Path(weights).glob("*.keras")) if Path(weights).is_dir() else [Path(weights)]
    return [str(weights), *(file_identity(f) for f in files)]


def input_checksums(runs: Sequence[Run], subjects: Collection[str]) -> list[dict]:
    """sha256 of the BOLD, mask and events files of the runs of ``subjects`` (for the model card)."""
    return [
        {
            "run": run.label,
            "bold": run.bold_file.name,
            "bold_sha256": sha256sum(run.bold_file),
            "mask_sha256": sha256sum(run.mask_file),
            "events_sha256": sha256sum(run.events_file),
        }
        for run in runs
        if run.subject in subjects
    ]


def body_features(
    body: Any,
    data: TrainingData,
    work_dir: str | os.PathLike,
    batch_size: int,
    key_extra: dict[str, Any],
    log: logging.Logger = LOGGER,
) -> np.ndarray:
    """Frozen-body features of every sample, computed once and kept in ``WORK_DIR/finetune/features``.

    The body is the same in every fold (same init, same seed), so one pass over the volumes
    serves all folds and re-runs (keyed by the body's weights, the cache entries, the
    samples and ``key_extra``, e.g. the architecture and the labels' identity).

    Returns
    -------
    numpy.ndarray
        ``(n_samples, *feature shape)`` float32, in the order of ``data.samples``.
    """
    weights_digest = hashlib.sha256(
        b"".join(np.ascontiguousarray(w).tobytes() for w in body.get_weights())
    ).hexdigest()[:16]
    key = digest(
        {
            "body": weights_digest,
            **key_extra,
            "entries": [e.key for e in data.entries],
            "samples": [data.samples.entry.tolist(), data.samples.volume.tolist()],
        },
        16,
    )
    path = naming.finetune_features_cache(work_dir, key)
    if path.is_file():
        try:
            features = np.load(path, allow_pickle=False)
            if features.ndim != 2 or len(features) != len(data.samples):
                raise ValueError(f"shape {features.shape}, not ({len(data.samples)}, features)")
            log.info("fine-tune: reusing frozen-body features from %s", path)
            return features
        except (OSError, ValueError, EOFError) as err:  # damaged: computed again (a cache)
            log.warning("%s: damaged (%s); computed again", path, " ".join(str(err).split())[:120])
            path.unlink(missing_ok=True)

    t0 = time.monotonic()
    batch = max(1, int(batch_size))
    n = len(data.samples)
    progress = SegmentProgress("volume", log)
    progress.start(n, "fine-tune: frozen-body features")
    parts = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        parts.append(np.asarray(body(data.reader.batch(data.samples, start, stop), training=False), np.float32))
        progress.update(stop - start)
    progress.close()
    features = np.concatenate(parts)
    log.info(
        "fine-tune: frozen-body features of %d volumes in %.1f s (%s)",
        len(features),
        time.monotonic() - t0,
        "x".join(str(d) for d in features.shape[1:]),
    )
    with atomic_path(path) as tmp:
        np.save(tmp, features)
    return features

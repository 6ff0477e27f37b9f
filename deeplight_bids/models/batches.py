"""The batch loop of one run: model-order batches -> logits (and LRP relevance) -> streamed maps and sums."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.exceptions import NonFiniteMapError
from deeplight_bids.prepare.grid import REFERENCE_SHAPE
from deeplight_bids.progress import Progress

if TYPE_CHECKING:
    from deeplight_bids.attribution.gradients import GradientMethod
    from deeplight_bids.lrp.analyzer import LRPAnalyzer
    from deeplight_bids.prepare.clean import PreparedRun

    from .decode import Decoder

LOGGER = logging.getLogger("deeplight_bids")


class ModelOrderBatches:
    """Batches of a prepared run in model order, ``(batch, z, y, x, 1)`` float32.

    Equal to ``to_model_order(prepared.volumes(start, stop))``, but the masked signals
    are scattered straight into model order (one zero-filled array per batch) instead of
    into NIfTI order and then transposed into a second array.
    """

    def __init__(self, prepared: PreparedRun) -> None:
        self.signals = prepared.signals
        x, y, z = np.nonzero(prepared.mask)  # the signals' column order (C order of the mask)
        nx, ny, nz = prepared.mask.shape
        self.shape = (nz, ny, nx, 1)
        self.index = (z * ny + y) * nx + x

    def get(self, start: int, stop: int) -> np.ndarray:
        out = np.zeros((stop - start, int(np.prod(self.shape))), dtype=np.float32)
        out[:, self.index] = self.signals[start:stop]
        return out.reshape((stop - start, *self.shape))


@dataclass
class RunDecoding:
    """What the batch loop computed for a run of ``n_volumes``.

    Attributes
    ----------
    logits : ndarray, shape (n_volumes, n_states), float32
    targets : ndarray of int, shape (n_volumes,)
        Explained state per volume (-1 without LRP).
    conservation : ndarray, shape (n_volumes,)
        Sum of each relevance map / its explained logit (NaN without LRP).
    sums, counts : dict
        Per explained state index: relevance sum ``(91, 109, 91)`` float64 (x, y, z) and number of volumes.
    """

    logits: np.ndarray
    targets: np.ndarray
    conservation: np.ndarray
    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)


def check_finite(maps: np.ndarray, start: int, label: str, description: dict[str, Any] | None = None) -> None:
    """Raise :class:`~deeplight_bids.exceptions.NonFiniteMapError` when a map holds NaN or inf.

    Parameters
    ----------
    maps : numpy.ndarray, shape (n, ...)
        Maps of volumes ``start ... start + n - 1`` (as written: masked).
    start : int
    label : str
        The run (named in the message).
    description : dict or None
        The explainer's description (its method or composite is named).
    """
    finite = np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)
    if finite.all():
        return

    bad = (np.flatnonzero(~finite) + start).tolist()
    method = (description or {}).get("composite") or (description or {}).get("method") or "the attribution method"
    raise NonFiniteMapError(
        f"{label}: the maps of {len(bad)} volume(s) (first: volume {bad[0]}) hold NaN or inf values ({method} divided "
        "by 0 on this run's data); nothing of this run is written: use --lrp-rule signed (2D) or another --attribution"
    )


def decode_and_explain(
    batches: ModelOrderBatches,
    n_volumes: int,
    n_states: int,
    batch_size: int,
    decoder: Decoder,
    analyzer: LRPAnalyzer | GradientMethod | None = None,
    lrp_target: str = "predicted",
    true_idx: np.ndarray | None = None,
    masker: Any = None,
    stream: Any = None,
    label: str = "run",
    log: logging.Logger = LOGGER,
) -> RunDecoding:
    """Decode (and, given ``analyzer``, explain) every volume of a run, ``batch_size`` at a time.

    Relevance maps are masked (``masker``), handed to ``stream`` (a background writer)
    and summed per explained state; progress is shown per volume (:class:`Progress`).

    Parameters
    ----------
    batches : ModelOrderBatches
    n_volumes, n_states, batch_size : int
    decoder : deeplight_bids.models.decode.Decoder
    analyzer : deeplight_bids.lrp.analyzer.LRPAnalyzer or None
    lrp_target : {"predicted", "true"}
        ``"true"`` explains the labelled state (``true_idx``; unlabelled volumes: the predicted one).
    true_idx : ndarray of int, shape (n_volumes,)
        True state index per volume (-1: none).
    masker : deeplight_bids.derivatives.masking.RelevanceMasker
    stream : deeplight_bids.derivatives.background.BackgroundWriter
    label : str
        The run's label (log lines, progress).

    Returns
    -------
    RunDecoding
    """
    result = RunDecoding(
        logits=np.zeros((n_volumes, n_states), dtype=np.float32),
        targets=np.full(n_volumes, -1, dtype=int),
        conservation=np.full(n_volumes, np.nan),
    )  # sum of each map / its explained logit
    logits, targets = result.logits, result.targets
    with Progress(n_volumes, label, unit="volume", log=log) as progress:
        for start in range(0, n_volumes, batch_size):
            stop = min(start + batch_size, n_volumes)
            tb = time.monotonic()
            x = batches.get(start, stop)  # = to_model_order(prepared.volumes(start, stop)), one copy fewer
            if analyzer is None:
                batch_logits = decoder.logits(x)
            else:
                target = None
                if lrp_target == "true":
                    pred = decoder.logits(x).argmax(axis=1)
                    true = true_idx[start:stop]  # type: ignore[index]  # given with lrp_target 'true'
                    target = np.where(true >= 0, true, pred)
                batch_logits, relevance = analyzer.explain(x, target=target)
                targets[start:stop] = batch_logits.argmax(axis=1) if target is None else target
                explained = batch_logits[np.arange(stop - start), targets[start:stop]].astype(np.float64)
                with np.errstate(divide="ignore", invalid="ignore"):
                    result.conservation[start:stop] = relevance.sum(axis=(1, 2, 3), dtype=np.float64) / explained
                # (batch, z, y, x) C order is (batch, x, y, z) Fortran order per volume: the
                # transposed view is the NIfTI's column-major volume without a copy, and it goes
                # into the written volumes (and the sums below) as contiguous copies.
                rel_xyz = masker.apply(relevance.transpose(0, 3, 2, 1))
                check_finite(rel_xyz, start, label, getattr(analyzer, "description", {}))
                stream.write(start, rel_xyz)
                for j, tgt in enumerate(targets[start:stop]):
                    if tgt not in result.sums:
                        result.sums[tgt] = np.zeros(REFERENCE_SHAPE, np.float64, order="F")
                        result.counts[tgt] = 0
                    result.sums[tgt] += rel_xyz[j]
                    result.counts[tgt] += 1
            logits[start:stop] = batch_logits
            log.debug(
                "%s: volumes %d-%d of %d (%.2f s/batch)", label, start + 1, stop, n_volumes, time.monotonic() - tb
            )
            progress.update(stop - start)
    return result

"""Per-run quality measures of the relevance maps (participant level, ``--quality``).

On a subsample of each run's volumes (:func:`.faithfulness.select_volumes`, stratified by
predicted state): deletion curves (:mod:`.faithfulness`) and the model-parameter
randomisation check (:mod:`.sanity`).  Two tables per run, each with a JSON sidecar;
their summaries go into the run's predictions sidecar under ``"Quality"``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deeplight_bids import backend
from deeplight_bids.config import default
from deeplight_bids.derivatives.writers import write_json, write_tsv

from . import faithfulness, sanity

LOGGER = logging.getLogger("deeplight_bids")

#: Default volumes per run (``--quality-volumes``; the one default is the config's), chosen by the
#: precision it buys (benchmarks/RESULTS.md, "Quality precision"): see :class:`RunQuality`.
DEFAULT_VOLUMES = default("quality_volumes")
#: How the randomised models of the sanity check are drawn (sidecars, settings hash).
COPIES = (
    "one randomised copy of the model per checked volume, drawn with numpy.random.default_rng([seed, volume]): the "
    "medians then average over as many random draws as volumes (one copy for all volumes left the medians depending "
    "on that one draw: the median Spearman's SD over draws was 0.21, 13 times its standard error over volumes)"
)
#: Bootstrap draws for the standard errors of the medians (seeded; a few milliseconds).
BOOTSTRAP_DRAWS = 1000


class RunQuality:
    """Faithfulness and sanity of one model's relevance maps, run by run.

    Parameters
    ----------
    explainer : LRPAnalyzer or deeplight_bids.attribution.gradients.GradientMethod
        The explainer of the run's maps, on the trained model (``explainer.model``); the
        randomised copy is explained by the same method (``explainer.for_model``).
    decoder : deeplight_bids.models.decode.Decoder
        Batched logits of the trained model.
    n_volumes : int
        Volumes per run (``--quality-volumes``).
    seed : int
        Seeds the volume choice, the random deletion order and the randomised copy.
    max_batch : int or None
        Kept for the callers; each volume's randomised map is one call (its own copy).

    Notes
    -----
    Precision (measured on two runs of the demo's fitted model, benchmarks/bench_quality_precision.py,
    RESULTS.md "Quality precision"): the area between the deletion curves varies from volume to
    volume (SD ~2 logits around a run's ~2.3), so its standard error falls as 1 / sqrt(volumes)
    (21-24 % of the area at the default 12 volumes) and hardly depends on the fractions
    (:data:`.faithfulness.FRACTIONS`); the medians of the sanity check depend on the randomised
    model drawn, hence :data:`COPIES` (standard error ~0.08 at 12 volumes, against ~0.20 with one
    copy at any number of volumes).  Each run's own standard errors are written beside the
    figures (``*_se`` in the sidecars' summaries).
    """

    def __init__(self, explainer, decoder, n_volumes=DEFAULT_VOLUMES, seed=0, max_batch=None):
        self.explainer = explainer
        self.model = explainer.model
        self.decoder = decoder
        self.n_volumes = int(n_volumes)
        self.seed = int(seed)
        self.max_batch = max_batch
        self._random = None  # (randomised copy, its explainer), built on first use and redrawn per volume

    def settings(self) -> dict[str, Any]:
        """What the outputs depend on (for the run's settings hash)."""
        return {
            "volumes": self.n_volumes,
            "seed": self.seed,
            "fractions": list(faithfulness.FRACTIONS),
            "randomisation": sanity.RANDOMISATION,
            "copies": COPIES,
        }

    def random_analyzer(self, volume: int) -> Any:
        """The run's method on the randomised copy of ``volume`` (seed ``[seed, volume]``).

        The copy and its explainer are built once; later volumes redraw the copy's kernels in
        place (:func:`.sanity.redraw`), so the explainer's compiled function is traced once.
        Under JAX, whose compiled functions keep the values they were traced with, each volume
        gets a new explainer.
        """
        seed = [self.seed, int(volume)]
        if self._random is None or backend.name() == "jax":
            copy = sanity.randomized_copy(self.model, seed)
            self._random = (copy, self.explainer.for_model(copy))
        else:
            sanity.redraw(self._random[0], self.model, seed)
        return self._random[1]

    def evaluate(
        self,
        outputs: Mapping[str, Path],
        x_of: Callable[[int, int], np.ndarray],
        relevance_of: Callable[[int], np.ndarray],
        mask_index: np.ndarray,
        logits: np.ndarray,
        targets: np.ndarray,
        states: Sequence[str],
        root: str | os.PathLike | None = None,
        label: str = "",
    ) -> dict[str, Any]:
        """Compute, write both tables and their sidecars; returns the summary for the predictions sidecar.

        Parameters
        ----------
        outputs : dict
            The run's paths (:func:`deeplight_bids.derivatives.naming.run_outputs`).
        x_of : callable
            ``(start, stop) -> inputs (n, z, y, x, 1)`` of the run in model order.
        relevance_of : callable
            ``volume -> relevance (z, y, x)`` of the trained model.
        mask_index : numpy.ndarray of int
            Flat (z, y, x) C-order indices of the in-mask voxels.
        logits : numpy.ndarray, shape (n_volumes, n_states)
        targets : numpy.ndarray of int, shape (n_volumes,)
            LRP target of each volume.
        states : sequence of str
        root : path-like or None
            OUTPUT_DIR (write guard).
        label : str
            Run label for the log.

        Returns
        -------
        dict
            ``Faithfulness`` (:func:`.faithfulness.area_between_curves`), ``Sanity``
            (:func:`.sanity.summarize`), ``Volumes``.
        """
        t0 = time.monotonic()
        chosen = faithfulness.select_volumes(logits.argmax(axis=1), self.n_volumes, self.seed)
        LOGGER.info("%s: quality measures on %d volumes (deletion curves, randomised-model check)", label, len(chosen))

        def x_one(v):
            return x_of(int(v), int(v) + 1)[0]

        curves = faithfulness.deletion_curves(
            self.decoder.logits, chosen, x_one, relevance_of, targets, mask_index, seed=self.seed, known_logits=logits
        )
        curves["state"] = [states[i] for i in curves["state"]]
        faith = faithfulness.area_between_curves(curves)

        rows = []
        mask = None
        not_finite = []  # volumes whose randomised-model map has NaN or inf (rule not defined there)
        for v in chosen:
            target = targets[v : v + 1].astype(np.int32)
            _, random_map = self.random_analyzer(v).explain(x_of(int(v), int(v) + 1), target=target)
            if mask is None:
                mask = np.zeros(random_map.shape[1:], dtype=bool)
                mask.reshape(-1)[mask_index] = True
            if not np.isfinite(random_map[0][mask]).all():
                not_finite.append(int(v))
                measures = {"spearman": float("nan"), "spearman_abs": float("nan"), "ssim": float("nan")}
            else:
                measures = sanity.compare_maps(relevance_of(int(v)), random_map[0], mask)
            rows.append({"volume": int(v), "state": states[int(targets[v])], **measures})
        import pandas as pd

        sanity_frame = pd.DataFrame(rows, columns=list(sanity.COLUMNS))
        checks = sanity.summarize(sanity_frame, draws=BOOTSTRAP_DRAWS, seed=self.seed)
        if not_finite:
            checks["not_evaluated"] = {
                "volumes": not_finite,
                "reason": "the method's map of the randomised model has NaN or inf values on these volumes (a "
                "denominator of the rule at 0); they are left out of the medians",
            }
            LOGGER.warning(
                "%s: sanity check: the randomised model's maps of %d of %d volumes are not finite (%s); "
                "they are left out of the check",
                label,
                len(not_finite),
                len(chosen),
                getattr(self.explainer, "description", {}).get("composite") or type(self.explainer).__name__,
            )

        write_tsv(outputs["faithfulness"], curves, root=root)
        write_json(outputs["faithfulness_json"], faithfulness.sidecar(self.seed, len(mask_index), faith), root=root)
        write_tsv(outputs["sanity"], sanity_frame, root=root)
        write_json(outputs["sanity_json"], sanity.sidecar(self.seed, checks, COPIES), root=root)
        seconds = time.monotonic() - t0
        if checks["high_similarity"]:
            LOGGER.warning(
                "%s: relevance maps resemble those of a randomised model (median Spearman %.2f, SSIM %.2f):"
                " they may not reflect what the model learned",
                label,
                checks["median_spearman"],
                checks["median_ssim"],
            )
        LOGGER.info(
            "%s: quality: area between deletion curves %.3g (logit), median Spearman vs random model %.2f (%.1f s)",
            label,
            faith["area_between_curves"],
            checks["median_spearman"],
            seconds,
        )
        # (no time in the sidecar: a re-run must give byte-identical outputs; the time is logged above)
        return {"Faithfulness": faith, "Sanity": checks, "Volumes": [int(v) for v in chosen]}

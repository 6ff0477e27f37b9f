"""Attribution methods side by side on the same volumes of a run (``--compare-attributions``).

Every method explains the same volumes (a stratified subsample, :func:`.faithfulness.select_volumes`)
for the same target, and goes through the same checks:

- **faithfulness**: deletion curves (:mod:`.faithfulness`; the random order is drawn once per
  volume and shared by all methods), the area between them, that area relative to the
  published rule's, and the removed fraction at which the decision first changes (as in
  Thomas, Ré & Poldrack 2023);
- **model randomisation as a cascade** (Adebayo et al. 2018): the top 1, ~1/4, ~1/2 and all
  blocks of the model randomised (:func:`.sanity.cascade_blocks`, :func:`.sanity.randomized_copy`),
  one median Spearman / SSIM per stage between the trained and the randomised model's maps;
- **class sensitivity** (the random-logit test of Sixt, Granz & Landgraf 2020): the map for
  the explained state against the map of each other state of the run's task (up to
  :data:`MAX_OTHER_STATES`, the strongest logits first), same volume, median Spearman;
- **plausibility** against ``--reference-map`` when given (relevance rank accuracy of the
  explained state's reference region, Arras et al. 2022);
- **cost**: seconds per map, and relative to decoding the same volumes, timed on the class-sensitivity
  check's maps (a method's first call also compiles it: ~1-3 s that a run pays once).

A method *passes* when its deletion area is at least :data:`FAITHFUL_SHARE` of the published
rule's, its median Spearman against the fully randomised model is at most
:data:`RANDOM_SPEARMAN_MAX`, and its median Spearman against the other states' maps is at most
:data:`CLASS_SPEARMAN_MAX`.  As Binder et al. (CVPR 2023) show, a randomisation test alone
cannot rank methods; it stands here beside faithfulness, and neither says whether a map
matches the brain (plausibility, the GLM).  Cost: the class check uses every volume and the
cascade every other one; integrated gradients and SmoothGrad cost their steps or samples in
gradient passes per map, so both their checks use every fourth volume (at least 2) and two
cascade stages (top block, all blocks).  The table's ``n_volumes`` says how many.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from deeplight_bids import backend
from deeplight_bids.derivatives.integrity import describe_error
from deeplight_bids.derivatives.sidecars import described
from deeplight_bids.derivatives.writers import atomic_path, write_json, write_tsv

from . import faithfulness, plausibility, sanity

LOGGER = logging.getLogger("deeplight_bids")


class _NoRetracingNotes(logging.Filter):
    """Drop TensorFlow's "triggered tf.function retracing" warning: each method and randomised copy traces its own
    functions once, by design, which is not the repeated retracing the warning is about."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_NoRetracingNotes())

#: A faithful method's deletion area is at least this share of the published rule's.
FAITHFUL_SHARE = 0.5
#: Most median Spearman correlation with the fully randomised model's maps.
RANDOM_SPEARMAN_MAX = 0.2
#: Most median Spearman correlation with the maps of the other states.
CLASS_SPEARMAN_MAX = 0.5
#: Other states per volume in the class-sensitivity check.
MAX_OTHER_STATES = 4
#: Methods whose class and randomisation checks use half the volumes and two cascade stages.
COSTLY = ("integrated_gradients", "smoothgrad")

COLUMNS = described(
    {
        "method": "attribution method (--attribution name)",
        "family": {"Description": "'lrp' or 'gradient'", "Levels": {"lrp": "LRP composite", "gradient": "gradients"}},
        "check": {
            "Description": "what the row measures",
            "Levels": {
                "deletion_area": "area between the random- and relevance-order deletion curves (mean logit difference)",
                "deletion_area_ratio": "deletion_area / the published rule's deletion_area",
                "decision_change_fraction": "mean share of in-mask voxels removed (most relevant first) at which the "
                "decision first changes; 1 where it never changed up to the largest fraction",
                "randomisation_spearman": "median Spearman of the trained and the randomised model's maps",
                "randomisation_ssim": "median SSIM of the trained and the randomised model's maps",
                "class_sensitivity_spearman": "median Spearman of the explained state's map and the other states' maps",
                "plausibility_rank_accuracy": "mean share of the K most relevant voxels inside the explained state's "
                "reference region (K = region size)",
                "seconds_per_volume": "seconds to explain one volume, over the class-sensitivity check's maps (the "
                "first call of a method also compiles it; n_volumes: the maps timed)",
                "cost_vs_decoding": "seconds_per_volume / seconds to decode one volume",
            },
        },
        "stage": "randomisation cascade: blocks randomised from the top ('all' = the fully randomised model); "
        "n/a for the other checks",
        "value": "the measure",
        "n_volumes": "volumes the measure is taken over",
        "criterion": "the bar a method must meet (n/a: reported only)",
        "passed": {"Description": "1 if the value meets the criterion", "Levels": {"0": "no", "1": "yes"}},
    }
)


def spearman_in_mask(a: npt.ArrayLike, b: npt.ArrayLike, index: np.ndarray) -> float:
    """Spearman rank correlation of two maps over the flat ``index`` voxels (NaN when one is constant)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)[index]
    b = np.asarray(b, dtype=np.float64).reshape(-1)[index]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def _median(values):
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    return float(np.median(values)) if values.size else float("nan")


class AttributionComparison:
    """Compare attribution methods on a run's volumes, one table per run.

    Parameters
    ----------
    model : keras.Sequential
        The trained model.
    methods : sequence of AttributionMethod
        The methods (:func:`deeplight_bids.attribution.methods.resolve`); the published rule
        must be among them (the faithfulness bar is relative to it).
    published : str
        The published rule's method name.
    decoder : deeplight_bids.models.decode.Decoder
    n_volumes : int
        Volumes per run (``--compare-volumes``).
    seed : int
        Seeds the volume choice, the random deletion orders and the randomised copies.
    max_batch, stem_batch
        Passed to every explainer.
    parameters : dict
        The methods' parameters (:func:`deeplight_bids.attribution.methods.parameters_from`).
    references : dict or None
        State name -> reference map ``(x, y, z)`` on the reference grid (``--reference-map``).
    reference_top_percent : float
    """

    def __init__(
        self,
        model,
        methods,
        published,
        decoder,
        n_volumes=8,
        seed=0,
        max_batch=None,
        stem_batch="auto",
        parameters=None,
        references=None,
        reference_top_percent=10.0,
    ):
        names = [m.name for m in methods]
        if published not in names:
            raise ValueError(f"the comparison needs the published rule {published!r} among its methods; got {names}")
        self.model = model
        self.methods = list(methods)
        self.published = published
        self.decoder = decoder
        self.n_volumes = int(n_volumes)
        self.seed = int(seed)
        self.max_batch = max_batch
        self.stem_batch = stem_batch
        self.parameters = dict(parameters or {})
        self.references = references or {}
        self.reference_top_percent = float(reference_top_percent)
        self.blocks = sanity.cascade_blocks(model)
        self.stages = sanity.cascade_stages(len(self.blocks))
        self._randomised = {}
        self._working_copy = None  # the cascade's model on TensorFlow and PyTorch (_stage_explainer)

    def settings(self) -> dict[str, Any]:
        """What the table depends on (for the run's settings hash)."""
        return {
            "methods": [m.sidecar(self.parameters) for m in self.methods],
            "volumes": self.n_volumes,
            "seed": self.seed,
            "fractions": list(faithfulness.FRACTIONS),
            "stages": self.stages,
            "randomisation": sanity.RANDOMISATION,
            "references": sorted(self.references),
            "reference_top_percent": self.reference_top_percent if self.references else None,
        }

    def randomised(self, n_blocks: int) -> Any:
        """The model with its top ``n_blocks`` blocks randomised (built once per comparison)."""
        if n_blocks not in self._randomised:
            layers = {name for block in self.blocks[:n_blocks] for name in block}
            self._randomised[n_blocks] = sanity.randomized_copy(self.model, self.seed, layers=layers)
        return self._randomised[n_blocks]

    def _explainers(self, method):
        """``(explainer of the trained model, n_blocks -> explainer of the model with its top n_blocks randomised)``.

        TensorFlow and PyTorch read a model's variables at each call of a compiled function, so one
        explainer of a working copy serves the trained model and every stage: each stage's values are
        assigned to the copy (the same values as :meth:`randomised`, so the same maps) and nothing is
        traced again (a trace of an LRP composite takes ~2 s, its maps of two volumes ~0.5 s).  The
        trained model's values are assigned first (the previous method left the copy randomised).
        Under JAX compiled functions hold the values they were traced with: one explainer per model.
        """
        options = {"max_batch": self.max_batch, "stem_batch": self.stem_batch, **self.parameters}
        if backend.name() == "jax":
            trained = method.explainer(self.model, **options)
            return trained, lambda n_blocks: trained.for_model(self.randomised(n_blocks))
        if self._working_copy is None:
            import keras  # deferred: loads TensorFlow

            self._working_copy = keras.models.clone_model(self.model)
            if not self._working_copy.built:
                self._working_copy.build(self.model.inputs[0].shape)
        working = self._working_copy

        def assign(model):
            for variable, value in zip(working.weights, model.weights):
                variable.assign(value.value)

        assign(self.model)
        explainer = method.explainer(working, **options)

        def for_stage(n_blocks):
            assign(self.randomised(n_blocks))
            return explainer

        return explainer, for_stage

    # -- one run ------------------------------------------------------------------------------
    def evaluate(
        self,
        outputs: Mapping[str, Path],
        x_of: Callable[[int, int], np.ndarray],
        mask_index: np.ndarray,
        logits: np.ndarray,
        targets: np.ndarray,
        states: Sequence[str],
        task_states: Sequence[int],
        root: str | os.PathLike | None = None,
        label: str = "",
        sums_path: str | os.PathLike | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Run every method and check, write the table and its sidecar; returns the per-method summary.

        Parameters
        ----------
        outputs, x_of, mask_index, logits, root, label
            As :meth:`deeplight_bids.quality.run_quality.RunQuality.evaluate`.
        targets : numpy.ndarray of int, shape (n_volumes,)
            Explained state of each volume.
        states : sequence of str
            The model's output states.
        task_states : sequence of int
            Output indices of the run's task's states (the class-sensitivity check's alternatives).
        sums_path : path-like or None
            Where to save each method's per-state sums of the compared volumes' maps (in-mask, NIfTI
            order; :func:`read_method_sums`): the GLM's agreement table compares every method with
            the GLM through them.

        Returns
        -------
        dict
            Method name -> ``{"passes": bool, "deletion_area": ..., "randomisation_spearman": ...,
            "class_sensitivity_spearman": ..., "seconds_per_volume": ...}``.
        """
        t_start = time.monotonic()
        self._states = tuple(states)
        chosen = faithfulness.select_volumes(logits.argmax(axis=1), self.n_volumes, self.seed)
        x = np.concatenate([x_of(int(v), int(v) + 1) for v in chosen])
        target = targets[chosen].astype(np.int32)
        self.decoder.logits(x)  # a batch of this size may need compiling: timed on the second call
        t0 = time.monotonic()
        self.decoder.logits(x)
        decode_seconds = (time.monotonic() - t0) / len(chosen)
        LOGGER.info(
            "%s: comparing %d attribution methods on %d volumes (%s)",
            label,
            len(self.methods),
            len(chosen),
            ", ".join(m.name for m in self.methods),
        )
        random_logits = self._random_order_logits(x, mask_index, chosen)
        self._sums: dict[str, dict[str, tuple[np.ndarray, int]]] = {}
        rows, summary, areas = [], {}, {}
        for method in self.methods:
            t_method = time.monotonic()
            rows_m, info = self._one_method(method, x, chosen, target, logits, random_logits, mask_index, task_states)
            info["cost_vs_decoding"] = info["seconds_per_volume"] / max(decode_seconds, 1e-9)
            rows_m.append(self._row(method, "cost_vs_decoding", info["cost_vs_decoding"], info["cost_maps"]))
            areas[method.name] = info["deletion_area"]
            rows.extend(rows_m)
            summary[method.name] = info
            LOGGER.info(
                "%s: %s: deletion area %.3g, Spearman vs random model %.2f, vs other states %.2f, %.2f s/volume "
                "(%.1f x decoding; %.0f s)",
                label,
                method.name,
                info["deletion_area"],
                info["randomisation_spearman"],
                info["class_sensitivity_spearman"],
                info["seconds_per_volume"],
                info["cost_vs_decoding"],
                time.monotonic() - t_method,
            )
        reference_area = areas[self.published]
        for method in self.methods:
            info = summary[method.name]
            ratio = info["deletion_area"] / reference_area if reference_area > 0 else float("nan")
            info["deletion_area_ratio"] = ratio
            info["passes"] = bool(
                ratio >= FAITHFUL_SHARE
                and info["randomisation_spearman"] <= RANDOM_SPEARMAN_MAX
                and info["class_sensitivity_spearman"] <= CLASS_SPEARMAN_MAX
            )
            rows.append(
                self._row(
                    method, "deletion_area_ratio", ratio, len(chosen), f">= {FAITHFUL_SHARE}", ratio >= FAITHFUL_SHARE
                )
            )
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        frame = frame.sort_values("method", kind="stable", key=_method_order(self.methods)).reset_index(drop=True)
        if sums_path is not None:
            save_method_sums(sums_path, self._sums, root=root)
        write_tsv(outputs["attributions"], frame, root=root)
        write_json(outputs["attributions_json"], self.sidecar(chosen, summary), root=root)
        passing = [m for m, info in summary.items() if info["passes"]]
        LOGGER.info(
            "%s: attribution methods passing faithfulness, randomisation and class sensitivity: %s (%.0f s)",
            label,
            ", ".join(passing) or "none",
            time.monotonic() - t_start,
        )
        return summary

    def sidecar(self, chosen: Sequence[int] | np.ndarray, summary: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **COLUMNS,
            "Description": "attribution methods compared on the same volumes of the run: faithfulness (deletion "
            "curves), model randomisation as a cascade, class sensitivity, plausibility, cost; one row per method x "
            "check (x cascade stage)",
            "Volumes": [int(v) for v in chosen],
            "Seed": self.seed,
            "Fractions": list(faithfulness.FRACTIONS),
            "CascadeBlocks": self.blocks,
            "Randomisation": sanity.RANDOMISATION,
            "Criteria": {
                "faithfulness": f"deletion_area >= {FAITHFUL_SHARE} x the published rule's ({self.published})",
                "randomisation": f"randomisation_spearman (stage all) <= {RANDOM_SPEARMAN_MAX}",
                "class_sensitivity": f"class_sensitivity_spearman <= {CLASS_SPEARMAN_MAX}",
            },
            "Caveat": "a randomisation test alone cannot rank methods (Binder et al. 2023); faithful methods may "
            "align less with GLM or meta-analysis maps (Thomas, Re & Poldrack 2023)",
            "Methods": {m.name: m.sidecar(self.parameters) for m in self.methods},
            "Summary": summary,
            "SummaryKeys": {
                "checks": "deletion_area, deletion_area_ratio, decision_change_fraction, randomisation_spearman (stage "
                "all), class_sensitivity_spearman, plausibility_rank_accuracy, seconds_per_volume, cost_vs_decoding: "
                "as the table's check levels",
                "passes": "all three criteria met",
                "volumes": "volumes compared",
                "class_sensitivity_volumes": "volumes of the class check",
                "randomisation_volumes": "volumes of the randomisation cascade",
                "stages": "the cascade's stages (blocks randomised from the top; 'all': every block)",
                "cost_maps": "maps seconds_per_volume was timed on (the class check's; the first maps where it has none)",
                "not_finite_volumes": "volumes whose map was not finite (left out of the checks)",
            },
        }

    # -- the checks -------------------------------------------------------------------------------
    def _random_order_logits(self, x, mask_index, chosen):
        """Logits with in-mask voxels removed in a random order (per volume, seeded as the deletion curves)."""
        counts = faithfulness.removal_counts(len(mask_index))[1:]
        out = []
        for j, v in enumerate(chosen):
            order = np.random.default_rng([self.seed, int(v)]).permutation(mask_index)
            out.append(self.decoder.logits(_removed(x[j], order, counts)))
        return out

    def _one_method(self, method, x, chosen, target, logits, random_logits, mask_index, task_states):
        explainer, stage_explainer = self._explainers(method)
        t0 = time.monotonic()
        _, maps = explainer.explain(x, target=target)
        seconds = (time.monotonic() - t0) / len(chosen)  # includes compiling: replaced by a later call's below
        rows = []
        finite = np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)
        sums = self._sums.setdefault(method.name, {})
        for j in np.flatnonzero(finite):  # per-state sums of the maps inside the brain, NIfTI (x, y, z) order
            flat = np.zeros(maps[j].size, dtype=np.float64)
            flat[mask_index] = np.asarray(maps[j], dtype=np.float64).reshape(-1)[mask_index]
            state = self._state_name(int(target[j]))
            total, count = sums.get(state, (0.0, 0))
            sums[state] = (total + flat.reshape(maps[j].shape).transpose(2, 1, 0), count + 1)
        # faithfulness
        counts = faithfulness.removal_counts(len(mask_index))
        gaps, first_change = [], []
        for j, v in enumerate(chosen):
            if not finite[j]:
                continue
            rel = np.asarray(maps[j], dtype=np.float64).reshape(-1)[mask_index]
            order = mask_index[np.argsort(-rel, kind="stable")]
            removed = self.decoder.logits(_removed(x[j], order, counts[1:]))
            t = int(target[j])
            base = float(logits[v, t])
            curve_rel = np.concatenate([[base], removed[:, t]])
            curve_rnd = np.concatenate([[base], random_logits[j][:, t]])
            gaps.append(curve_rnd - curve_rel)
            decision = int(logits[v].argmax())
            changed = np.flatnonzero(removed.argmax(axis=1) != decision)
            first_change.append(float(faithfulness.FRACTIONS[changed[0] + 1]) if changed.size else 1.0)
        fractions = np.asarray(faithfulness.FRACTIONS)
        area = (
            float(np.trapezoid(np.mean(gaps, axis=0), fractions) / (fractions[-1] - fractions[0]))
            if gaps
            else float("nan")
        )
        rows.append(self._row(method, "deletion_area", area, len(gaps)))
        rows.append(
            self._row(
                method,
                "decision_change_fraction",
                float(np.mean(first_change)) if first_change else np.nan,
                len(first_change),
            )
        )
        # class sensitivity on every volume, the cascade on every other one; the costly methods: both on every
        # fourth volume (at least 2) and the cascade's first and last stage only
        costly = method.name in COSTLY
        step = 4 if costly else 1
        class_subset = _every(step, len(chosen), finite)
        cascade_subset = _every(2 * step if not costly else step, len(chosen), finite)
        stages = [self.stages[0], self.stages[-1]] if costly else self.stages
        # class sensitivity: the other states of the task, strongest logit first
        similarities, class_seconds, class_maps = [], 0.0, 0
        others = [
            [s for s in sorted(task_states, key=lambda s: -logits[chosen[j], s]) if s != target[j]][:MAX_OTHER_STATES]
            for j in class_subset
        ]
        for rank in range(max((len(o) for o in others), default=0)):
            rows_with = [k for k, o in enumerate(others) if len(o) > rank]
            if not rows_with:
                continue
            idx = class_subset[rows_with]
            t0 = time.monotonic()
            _, other_maps = explainer.explain(x[idx], target=np.asarray([others[k][rank] for k in rows_with]))
            class_seconds, class_maps = class_seconds + time.monotonic() - t0, class_maps + len(idx)
            for k, j in enumerate(idx):
                similarities.append(spearman_in_mask(maps[j], other_maps[k], mask_index))
        class_spearman = _median(similarities)
        if class_maps:  # the cost of a compiled explainer, without its first call's tracing
            seconds = class_seconds / class_maps
        rows.append(
            self._row(
                method,
                "class_sensitivity_spearman",
                class_spearman,
                len(class_subset),
                f"<= {CLASS_SPEARMAN_MAX}",
                class_spearman <= CLASS_SPEARMAN_MAX,
            )
        )
        # randomisation cascade
        mask = np.zeros(maps.shape[1:], dtype=bool)
        mask.reshape(-1)[mask_index] = True
        full_spearman = float("nan")
        prepared = {int(j): sanity.PreparedMap(maps[j], mask) for j in cascade_subset}  # compared at every stage
        for n_blocks in stages:
            _, random_maps = stage_explainer(n_blocks).explain(x[cascade_subset], target=target[cascade_subset])
            measures = [
                sanity.compare_maps(prepared[int(j)], random_maps[k])
                for k, j in enumerate(cascade_subset)
                if np.isfinite(random_maps[k][mask]).all()
            ]
            stage = "all" if n_blocks == len(self.blocks) else str(n_blocks)
            spearman = _median([m["spearman"] for m in measures])
            ssim = _median([m["ssim"] for m in measures])
            last = n_blocks == len(self.blocks)
            rows.append(
                self._row(
                    method,
                    "randomisation_spearman",
                    spearman,
                    len(measures),
                    f"<= {RANDOM_SPEARMAN_MAX}" if last else "n/a",
                    (spearman <= RANDOM_SPEARMAN_MAX) if last else None,
                    stage,
                )
            )
            rows.append(self._row(method, "randomisation_ssim", ssim, len(measures), stage=stage))
            if last:
                full_spearman = spearman
        # plausibility
        rank_accuracies = []
        for j in range(len(chosen)):
            reference = self.references.get(self._state_name(int(target[j])))
            if reference is None or not finite[j]:
                continue
            brain = np.zeros(maps.shape[1:], dtype=bool)
            brain.reshape(-1)[mask_index] = True
            brain_xyz, map_xyz = brain.transpose(2, 1, 0), np.asarray(maps[j]).transpose(2, 1, 0)
            region = plausibility.reference_region(reference, brain_xyz, self.reference_top_percent)
            rank, _ = plausibility.relevance_in_region(map_xyz, region, brain_xyz)
            rank_accuracies.append(rank)
        if rank_accuracies:
            rows.append(
                self._row(
                    method, "plausibility_rank_accuracy", float(np.nanmean(rank_accuracies)), len(rank_accuracies)
                )
            )
        rows.append(self._row(method, "seconds_per_volume", seconds, class_maps or len(chosen)))
        info = {
            "deletion_area": area,
            "decision_change_fraction": float(np.mean(first_change)) if first_change else float("nan"),
            "randomisation_spearman": full_spearman,
            "class_sensitivity_spearman": class_spearman,
            "seconds_per_volume": seconds,
            "cost_maps": class_maps or len(chosen),
            "volumes": len(chosen),
            "class_sensitivity_volumes": int(len(class_subset)),
            "randomisation_volumes": int(len(cascade_subset)),
            "stages": [("all" if s == len(self.blocks) else s) for s in stages],
            "not_finite_volumes": [int(chosen[j]) for j in np.flatnonzero(~finite)],
        }
        if rank_accuracies:
            info["plausibility_rank_accuracy"] = float(np.nanmean(rank_accuracies))
        return rows, info

    def _state_name(self, index):
        return self._states[index]

    @staticmethod
    def _row(method, check, value, n, criterion="n/a", passed=None, stage="n/a"):
        return {
            "method": method.name,
            "family": method.family,
            "check": check,
            "stage": stage,
            "value": value,
            "n_volumes": int(n),
            "criterion": criterion,
            "passed": "n/a" if passed is None else int(bool(passed)),
        }


def save_method_sums(
    path: str | os.PathLike,
    sums: Mapping[str, Mapping[str, tuple[np.ndarray, int]]],
    root: str | os.PathLike | None = None,
) -> None:
    """Store ``{method: {state: (sum (x, y, z), count)}}`` (float32 sums) atomically in an ``.npz``."""
    arrays: dict[str, np.ndarray] = {}
    for method, by_state in sums.items():
        for state, (total, count) in by_state.items():
            arrays[f"sum|{method}|{state}"] = np.ascontiguousarray(total, dtype=np.float32)
            arrays[f"count|{method}|{state}"] = np.array(int(count))
    with atomic_path(path, root=root) as tmp:
        with open(tmp, "wb") as fobj:
            np.savez_compressed(fobj, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle


def read_method_sums(path: str | os.PathLike) -> dict[str, dict[str, tuple[np.ndarray, int]]]:
    """``{method: {state: (sum float64 (x, y, z), count)}}`` from :func:`save_method_sums`; ``{}`` if absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[str, dict[str, tuple[np.ndarray, int]]] = {}
    try:
        with np.load(path) as data:
            for key in data.files:
                kind, method, state = key.split("|", 2)
                if kind == "sum":
                    out.setdefault(method, {})[state] = (
                        data[key].astype(np.float64),
                        int(data[f"count|{method}|{state}"]),
                    )
    except Exception as err:  # noqa: BLE001 - a damaged work file costs the GLM rows of the compared methods only
        LOGGER.warning(
            "%s: unreadable (%s); the compared methods get no GLM agreement rows: re-run with --overwrite to remake it",
            path,
            describe_error(err),
        )
        return {}
    return out


def _every(step, n, finite):
    """Indices ``0, step, 2 step, ...`` of ``n`` volumes whose maps are finite; at least 2 (where there are)."""
    picked = [j for j in range(0, n, step) if finite[j]]
    if len(picked) < 2:
        picked = sorted(set(picked) | set([j for j in range(n) if finite[j]][:2]))
    return np.asarray(picked, dtype=int)


def _removed(volume, order, counts):
    """Copies of ``volume`` with the first ``k`` voxels of ``order`` set to 0, one per ``k`` in ``counts``."""
    flat = np.asarray(volume, dtype=np.float32).reshape(-1)
    out = np.repeat(flat[None], len(counts), axis=0)
    for i, k in enumerate(counts):
        out[i, order[:k]] = 0.0
    return out.reshape((len(counts), *np.shape(volume)))


def _method_order(methods):
    rank = {m.name: i for i, m in enumerate(methods)}
    return lambda column: column.map(rank)


# -- pooled over runs (group level) -----------------------------------------------------------------

POOLED_COLUMNS = described(
    {
        "method": "attribution method",
        "family": "'lrp' or 'gradient'",
        "n_runs": "runs compared",
        "deletion_area": "median over runs of the area between the deletion curves (mean logit difference)",
        "deletion_area_ratio": "median over runs of the deletion area relative to the published rule's",
        "decision_change_fraction": "median over runs of the mean removed share at which the decision first changes",
        "randomisation_spearman": "median over runs of the median Spearman with the fully randomised model's maps",
        "randomisation_ssim": "median over runs of the median SSIM with the fully randomised model's maps",
        "class_sensitivity_spearman": "median over runs of the median Spearman with the other states' maps",
        "plausibility_rank_accuracy": "median over runs of the relevance rank accuracy (n/a without --reference-map)",
        "cost_vs_decoding": "median over runs of the seconds per map relative to decoding",
        "runs_passing": "runs in which the method passes all three checks",
        "passes": {
            "Description": "1 if the pooled medians pass all three checks (faithfulness, randomisation, class "
            "sensitivity)",
            "Levels": {"0": "no", "1": "yes"},
        },
    }
)


def _run_value(frame, check, stage="n/a"):
    stages = frame["stage"].fillna("n/a").astype(str)  # (read back, "n/a" is NaN)
    rows = frame[(frame["check"] == check) & (stages == stage)]
    return float(rows["value"].iloc[0]) if len(rows) else float("nan")


def pool(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """One row per method from the per-run comparison tables (medians over runs; see :data:`POOLED_COLUMNS`).

    Parameters
    ----------
    tables : sequence of pandas.DataFrame
        Per-run tables as written by :meth:`AttributionComparison.evaluate`.
    """
    per_run = []
    for frame in tables:
        for method, rows in frame.groupby("method", sort=False):
            values = {
                "method": method,
                "family": rows["family"].iloc[0],
                **{
                    c: _run_value(rows, c)
                    for c in (
                        "deletion_area",
                        "deletion_area_ratio",
                        "decision_change_fraction",
                        "class_sensitivity_spearman",
                        "plausibility_rank_accuracy",
                        "cost_vs_decoding",
                    )
                },
                "randomisation_spearman": _run_value(rows, "randomisation_spearman", "all"),
                "randomisation_ssim": _run_value(rows, "randomisation_ssim", "all"),
            }
            values["passing"] = bool(
                values["deletion_area_ratio"] >= FAITHFUL_SHARE
                and values["randomisation_spearman"] <= RANDOM_SPEARMAN_MAX
                and values["class_sensitivity_spearman"] <= CLASS_SPEARMAN_MAX
            )
            per_run.append(values)
    if not per_run:
        return pd.DataFrame(columns=list(POOLED_COLUMNS))
    frame = pd.DataFrame(per_run)
    order = list(dict.fromkeys(frame["method"]))
    rows = []
    for method in order:
        sel = frame[frame["method"] == method]
        row = {"method": method, "family": sel["family"].iloc[0], "n_runs": len(sel)}
        for column in POOLED_COLUMNS:
            if column in sel and column not in ("method", "family"):
                values = sel[column].to_numpy(dtype=float)
                row[column] = float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")
        row["runs_passing"] = int(sel["passing"].sum())
        row["passes"] = int(
            row["deletion_area_ratio"] >= FAITHFUL_SHARE
            and row["randomisation_spearman"] <= RANDOM_SPEARMAN_MAX
            and row["class_sensitivity_spearman"] <= CLASS_SPEARMAN_MAX
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(POOLED_COLUMNS))


def verdict(row: pd.Series | Mapping[str, Any]) -> str:
    """One sentence on a pooled row: which checks the method passes, with its numbers."""
    fails = []
    ratio, rnd, cls = row["deletion_area_ratio"], row["randomisation_spearman"], row["class_sensitivity_spearman"]
    faithful = f"deletion area {ratio:.2f} x the published rule's"
    random = f"Spearman {rnd:.2f} with the randomised model's maps"
    classes = f"Spearman {cls:.2f} with other states' maps"
    if not ratio >= FAITHFUL_SHARE:
        fails.append(f"faithfulness ({faithful}; needs {FAITHFUL_SHARE})")
    if not rnd <= RANDOM_SPEARMAN_MAX:
        fails.append(f"model randomisation ({random}; needs <= {RANDOM_SPEARMAN_MAX})")
    if not cls <= CLASS_SPEARMAN_MAX:
        fails.append(f"class sensitivity ({classes}; needs <= {CLASS_SPEARMAN_MAX})")
    if not fails:
        return f"{row['method']} passes all three checks: {faithful}, {random}, {classes}."
    meaning = (
        " Its maps show where the input drives the network rather than why it chose this state."
        if not cls <= CLASS_SPEARMAN_MAX
        else ""
    )
    return f"{row['method']} fails {' and '.join(fails)}.{meaning}"

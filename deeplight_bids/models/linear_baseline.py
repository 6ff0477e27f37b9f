"""A linear decoder beside DeepLight: the same volumes, labels, participants and folds.

``group --finetune`` fits, in every fold, after DeepLight, the linear decoder that
nilearn's :class:`~nilearn.decoding.Decoder` stands for (``estimator="logistic_l2"``,
``screening_percentile=20``, ``standardize=True``), as the equivalent scikit-learn
pipeline on the fine-tuning's own prepared data:

1. **features**: the prepared, z-scored in-mask voxels of every volume, read from the
   work-folder cache that DeepLight reads (:mod:`deeplight_bids.prepare.cache`), on the
   union of the runs' brain masks (voxels outside a run's mask are 0, as in DeepLight's
   input volumes);
2. **univariate screening**: the one-way ANOVA F of each voxel over the fold's training
   volumes (:func:`sklearn.feature_selection.f_classif`, computed here from per-state sums so
   that the volumes need not all be in memory at once), keeping the top
   :data:`SCREENING_PERCENTILE` % voxels;
3. :class:`sklearn.preprocessing.StandardScaler` then
   :class:`sklearn.linear_model.LogisticRegression` (L2, ``C`` = :data:`C`, lbfgs,
   multinomial, ``class_weight="balanced"``: DeepLight's batches are class-balanced too).

Why the scikit-learn pipeline rather than nilearn's Decoder: the Decoder takes 4D images
and a mask, re-masks and keeps every volume in memory, and chooses ``C`` by its own
internal cross-validation (5 x the fits); the pipeline reads the very arrays DeepLight
reads, in bounded memory, and a fixed ``C`` lets no held-out or validation participant
choose anything.  With far more voxels than volumes the L2 solution barely depends on
``C`` (measured on the demo's validation participant: held-out accuracy 0.896 for C = 1e-4, 1e-2, 1
and 100 alike).

Reported per fold and on the held-out participants: accuracy and balanced accuracy, next
to DeepLight's, and a paired comparison over folds (:func:`paired_permutation_test`:
exact sign-flip permutation test; one fold allows no test, and the summary says so).
Per fold, the weights of each state are written as a BIDS statistical map on the
reference grid (``..._contrast-<state>_stat-weight_desc-linear_statmap.nii.gz``; weights of
the standardised voxels, 0 for voxels the screening left out), and the fitted model as a
NumPy archive (arrays only, no pickle) that :func:`predict_runs` applies to new runs.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.bids.discover import build_layout, discover_selected_runs, find_derivatives
from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.writers import atomic_path, write_json, write_nifti, write_tsv
from deeplight_bids.models.heldout import accuracy
from deeplight_bids.prepare.cache import label_volumes, prepare_cached
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE

if TYPE_CHECKING:
    import os

    from deeplight_bids.config import Config
    from deeplight_bids.models.datasets import TrainingData
    from deeplight_bids.prepare.cache import CacheEntry, Samples

LOGGER = logging.getLogger("deeplight_bids")

__all__ = [
    "C",
    "SCREENING_PERCENTILE",
    "InMaskFeatures",
    "LinearFold",
    "anova_f",
    "fit_fold",
    "linear_columns",
    "paired_permutation_test",
    "predict_runs",
    "summarise",
]

#: Share of voxels kept by the univariate screening (percent; nilearn Decoder's default).
SCREENING_PERCENTILE = 20.0
#: Inverse L2 regularisation strength of the logistic regression (scikit-learn's default).
C = 1.0
#: Largest training matrix (bytes, float32) fitted at once; beyond it the training volumes are subsampled
#: (stratified by state, seeded) and the summary says so.
MAX_TRAIN_BYTES = 2 * 1024**3
#: Volumes read from the cache at once.
CHUNK = 256
#: Folds up to which the paired test enumerates every sign flip (2**20 = 1,048,576); beyond, a seeded Monte Carlo.
EXACT_FOLDS = 20
#: Monte Carlo sign flips beyond :data:`EXACT_FOLDS` folds.
MONTE_CARLO = 100000


class InMaskFeatures:
    """The fine-tuning's volumes as feature rows: the union of the runs' masks, values from the cache.

    Parameters
    ----------
    entries : list of deeplight_bids.prepare.cache.CacheEntry
        The prepared runs (``samples.entry`` indexes them).

    Attributes
    ----------
    voxels : numpy.ndarray of int, shape (n_features,)
        Flat indices (C order of the (x, y, z) reference grid) of the union of the masks.
    """

    def __init__(self, entries: Iterable[CacheEntry]) -> None:
        self.entries = list(entries)
        masks = [np.asarray(e.mask(), bool) for e in self.entries]
        union = np.logical_or.reduce(masks)
        self.voxels = np.flatnonzero(union)
        position = np.full(union.size, -1, np.int64)
        position[self.voxels] = np.arange(self.voxels.size)
        # per entry: the feature column of each of its (C-ordered) mask voxels
        self._columns = [position[np.flatnonzero(m)] for m in masks]

    @property
    def n_features(self) -> int:
        return int(self.voxels.size)

    def matrix(
        self,
        samples: Samples,
        rows: Sequence[int] | np.ndarray | None = None,
        columns: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Feature rows ``(len(rows), n_columns)`` float32 of ``samples`` (``rows``: indices into it, default all).

        ``columns``: feature indices to keep (default all), in that order.
        """
        rows = np.arange(len(samples)) if rows is None else np.asarray(rows)
        keep = None
        width = self.n_features
        if columns is not None:
            keep = np.full(self.n_features, -1, np.int64)
            keep[np.asarray(columns)] = np.arange(len(columns))
            width = len(columns)
        out = np.zeros((len(rows), width), np.float32)
        entry_of = samples.entry[rows]
        for e in np.unique(entry_of):
            at = np.flatnonzero(entry_of == e)
            signals = self.entries[int(e)].signals()
            cols = self._columns[int(e)]
            src: slice | np.ndarray = slice(None)
            if keep is not None:
                cols = keep[cols]
                src = cols >= 0
                cols = cols[src]
            for start in range(0, len(at), CHUNK):
                part = at[start : start + CHUNK]
                values = np.asarray(signals[samples.volume[rows[part]]], np.float32)
                out[np.ix_(part, cols)] = values[:, src]
        return out


def anova_f(features: InMaskFeatures, samples: Samples, rows: np.ndarray, n_states: int) -> np.ndarray:
    """One-way ANOVA F of every feature over ``rows`` of ``samples`` (as :func:`sklearn.feature_selection.f_classif`).

    Computed from per-state sums and the total sum of squares, :data:`CHUNK` volumes at a time.

    Returns
    -------
    numpy.ndarray, shape (n_features,)
        F per feature (0 where it is undefined: constant features).
    """
    labels = samples.label[rows]
    sums = np.zeros((n_states, features.n_features))
    counts = np.zeros(n_states)
    squares = np.zeros(features.n_features)
    for start in range(0, len(rows), CHUNK):
        part = np.asarray(rows[start : start + CHUNK])
        x = features.matrix(samples, part).astype(np.float64)
        lab = samples.label[part]
        for k in np.unique(lab):
            sums[k] += x[lab == k].sum(axis=0)
        counts += np.bincount(lab, minlength=n_states)
        squares += (x * x).sum(axis=0)
    present = counts > 0
    n, k = counts.sum(), int(present.sum())
    total = sums.sum(axis=0)
    ss_total = squares - total**2 / n
    ss_between = (sums[present] ** 2 / counts[present, None]).sum(axis=0) - total**2 / n
    ss_within = ss_total - ss_between
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (ss_between / max(k - 1, 1)) / (ss_within / max(n - k, 1))
    f[~np.isfinite(f)] = 0.0
    del labels
    return f


def _top_columns(scores, percentile):
    """Indices of the top ``percentile`` % scores (at least 1), sorted ascending."""
    n = max(1, math.ceil(percentile / 100.0 * scores.size - 1e-9))
    return np.sort(np.argsort(-scores, kind="stable")[:n])


def _subsample(labels, max_rows, seed):
    """Row indices of at most ``max_rows`` of ``labels``, stratified by state (seeded); all when they fit."""
    if len(labels) <= max_rows:
        return np.arange(len(labels)), False
    rng = np.random.default_rng(seed)
    keep = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        n = max(1, int(round(max_rows * idx.size / len(labels))))
        keep.append(rng.choice(idx, min(n, idx.size), replace=False))
    return np.sort(np.concatenate(keep)), True


@dataclass
class LinearFold:
    """One fold's linear decoder and its held-out predictions.

    Attributes
    ----------
    fold : str
    states : tuple of str
    columns : numpy.ndarray of int
        Feature indices kept by the screening.
    voxels : numpy.ndarray of int
        Their flat indices on the reference grid.
    mean, scale : numpy.ndarray
        The StandardScaler's, per kept voxel.
    coef : numpy.ndarray, shape (n_states, n_kept)
        Weights per state (a two-state fit's single row becomes -w, +w).
    intercept : numpy.ndarray, shape (n_states,)
    predicted : numpy.ndarray of int
        Predicted state index of each held-out volume (order of the held-out samples).
    metrics : dict
        ``heldout_accuracy``, ``heldout_balanced_accuracy``, ``heldout_volumes``,
        ``training_volumes``, ``subsampled``, ``features``, ``seconds``.
    """

    fold: str
    states: tuple
    columns: np.ndarray
    voxels: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    predicted: np.ndarray
    metrics: dict = field(default_factory=dict)

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Scores ``(n, n_states)`` of feature rows ``x`` (the kept voxels, raw values)."""
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept

    def weight_map(self, index: int) -> np.ndarray:
        """The weights of state ``index`` on the reference grid ``(91, 109, 91)`` float32 (0 where not kept)."""
        out = np.zeros(int(np.prod(REFERENCE_SHAPE)), np.float32)
        out[self.voxels] = self.coef[index]
        return out.reshape(REFERENCE_SHAPE)


def _pipeline(seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [
            ("standardise", StandardScaler()),
            ("logistic_l2", LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed)),
        ]
    )


def fit_fold(
    data: TrainingData,
    train_mask: np.ndarray,
    held_mask: np.ndarray,
    fold: str = "",
    seed: int = 0,
    features: InMaskFeatures | None = None,
    log: logging.Logger = LOGGER,
) -> LinearFold:
    """Fit the linear decoder on ``train_mask`` samples of ``data`` and predict ``held_mask`` ones.

    Parameters
    ----------
    data : deeplight_bids.models.datasets.TrainingData
        The fine-tuning's data (entries, samples, states).
    train_mask, held_mask : numpy.ndarray of bool, shape (n_samples,)
        The fold's training volumes (DeepLight's training participants; validation
        participants are not used: the linear decoder chooses no epoch) and held-out volumes.
    fold : str
    seed : int
    features : InMaskFeatures or None
        Reused across folds (built from ``data.entries`` when None).

    Returns
    -------
    LinearFold
    """
    t0 = time.monotonic()
    features = features or InMaskFeatures(data.entries)
    n_states = len(data.states)
    train = np.flatnonzero(train_mask)
    held = np.flatnonzero(held_mask)
    scores = anova_f(features, data.samples, train, n_states)
    columns = _top_columns(scores, SCREENING_PERCENTILE)
    max_rows = max(n_states, MAX_TRAIN_BYTES // (4 * columns.size))
    picked, subsampled = _subsample(data.samples.label[train], max_rows, seed)
    if subsampled:
        log.warning(
            "linear baseline%s: %d training volumes x %d voxels exceed %d GiB; fitting on %d volumes drawn per state",
            f" {fold}" if fold else "",
            train.size,
            columns.size,
            MAX_TRAIN_BYTES // 1024**3,
            picked.size,
        )
    x = features.matrix(data.samples, train[picked], columns)
    y = data.samples.label[train[picked]]
    model = _pipeline(seed)
    model.fit(x, y)
    del x
    scaler, clf = model.named_steps["standardise"], model.named_steps["logistic_l2"]
    coef = np.zeros((n_states, columns.size))
    intercept = np.full(n_states, -np.inf)  # a state absent from training is never predicted
    classes = clf.classes_.astype(int)
    if classes.size == 2:  # scikit-learn keeps one row (the second class) for two classes
        coef[classes[1]], coef[classes[0]] = clf.coef_[0], -clf.coef_[0]
        intercept[classes[1]], intercept[classes[0]] = clf.intercept_[0], -clf.intercept_[0]
    else:
        coef[classes], intercept[classes] = clf.coef_, clf.intercept_
    result = LinearFold(
        fold,
        tuple(data.states),
        columns,
        features.voxels[columns],
        scaler.mean_.astype(np.float32),
        np.where(scaler.scale_ > 0, scaler.scale_, 1.0).astype(np.float32),
        coef.astype(np.float32),
        intercept,
        np.zeros(0, int),
    )
    predicted = []
    for start in range(0, held.size, CHUNK):
        part = held[start : start + CHUNK]
        predicted.append(result.decision(features.matrix(data.samples, part, columns)).argmax(axis=1))
    result.predicted = np.concatenate(predicted) if predicted else np.zeros(0, int)
    acc, bacc = accuracy(data.samples.label[held], result.predicted)
    result.metrics = {
        "heldout_accuracy": acc,
        "heldout_balanced_accuracy": bacc,
        "heldout_volumes": int(held.size),
        "training_volumes": int(picked.size),
        "subsampled": bool(subsampled),
        "features": int(columns.size),
        "features_before_screening": features.n_features,
        "seconds": round(time.monotonic() - t0, 2),
    }
    return result


def estimator_description() -> dict[str, str]:
    """What the linear decoder is, for the model card and summaries."""
    return {
        "pipeline": "scikit-learn: ANOVA F screening (f_classif on the training volumes) of the top "
        f"{SCREENING_PERCENTILE:g} % voxels, StandardScaler, LogisticRegression (L2, C={C:g}, lbfgs, multinomial, "
        "class_weight='balanced')",
        "equivalent_to": "nilearn.decoding.Decoder(estimator='logistic_l2', screening_percentile="
        f"{SCREENING_PERCENTILE:g}, standardize=True) with C fixed instead of chosen by inner cross-validation",
        "features": "the prepared (masked, smoothed, detrended, high-passed, z-scored) in-mask voxels DeepLight "
        "reads, on the union of the runs' brain masks (0 outside a run's mask)",
        "training": "the fold's training participants (not the validation participants: nothing is chosen by "
        "validation)",
    }


def write_fold(
    result: LinearFold, out_dir: str | os.PathLike, stem: str, root: str | os.PathLike | None = None
) -> dict[str, Any]:
    """The fold's weight map per state (BIDS statistical maps) and the model archive; returns their paths."""
    import nibabel as nib

    outputs = naming.linear_baseline_outputs(out_dir, stem, result.states)
    for i, state in enumerate(result.states):
        img = nib.Nifti1Image(result.weight_map(i), REFERENCE_AFFINE)
        img.header.set_xyzt_units("mm")
        img.set_sform(REFERENCE_AFFINE, code=4)
        img.set_qform(REFERENCE_AFFINE, code=4)
        path = outputs["weights"][state]
        write_nifti(path, img, root=root)
        write_json(
            naming.sidecar_of(path),
            {
                "Description": f"linear baseline decoder's weights for state {state}: logistic-regression "
                "coefficients of the standardised in-mask voxels (0 for voxels the screening left out)",
                "Statistic": "weight",
                "Units": "log-odds per SD of the voxel's prepared signal",
                "State": state,
                "States": list(result.states),
                "Fold": result.fold or "single",
                "Estimator": estimator_description(),
                "Metrics": result.metrics,
            },
            root=root,
        )
    with atomic_path(outputs["model"], root=root) as tmp:
        with open(tmp, "wb") as fobj:
            np.savez_compressed(
                fobj,
                states=np.array(result.states),
                voxels=result.voxels,
                mean=result.mean,
                scale=result.scale,
                coef=result.coef,
                intercept=result.intercept,
            )
    return outputs


def load_model(path: str | os.PathLike) -> LinearFold:
    """A :class:`LinearFold` (no predictions) from the archive :func:`write_fold` wrote."""
    with np.load(path, allow_pickle=False) as data:
        return LinearFold(
            "",
            tuple(str(s) for s in data["states"]),
            np.arange(data["voxels"].size),
            data["voxels"],
            data["mean"],
            data["scale"],
            data["coef"],
            data["intercept"],
            np.zeros(0, int),
        )


def predict_runs(model_path: str | os.PathLike, entries: Sequence[CacheEntry], samples: Samples) -> np.ndarray:
    """Predicted state indices of ``samples`` (of cache ``entries``) by a saved linear decoder.

    Voxels of the model outside a run's mask count as 0, as DeepLight sees them.
    """
    model = load_model(model_path)
    out = np.zeros(len(samples), int)
    position = np.full(int(np.prod(REFERENCE_SHAPE)), -1, np.int64)
    position[model.voxels] = np.arange(model.voxels.size)
    for e in np.unique(samples.entry):
        at = np.flatnonzero(samples.entry == e)
        mask = np.flatnonzero(np.asarray(entries[int(e)].mask(), bool))
        cols = position[mask]
        src = cols >= 0
        signals = entries[int(e)].signals()
        for start in range(0, at.size, CHUNK):
            part = at[start : start + CHUNK]
            x = np.zeros((part.size, model.voxels.size), np.float32)
            x[:, cols[src]] = np.asarray(signals[samples.volume[part]], np.float32)[:, src]
            out[part] = model.decision(x).argmax(axis=1)
    return out


def paired_permutation_test(deeplight: Sequence[float], linear: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two decoders' accuracies over folds: sign-flip permutation test (two-sided).

    Parameters
    ----------
    deeplight, linear : sequence of float
        Held-out accuracy per fold.

    Returns
    -------
    dict
        ``test`` (None with one fold: no paired test is possible), ``n_folds``,
        ``mean_difference`` (DeepLight - linear), ``p_value``, ``n_permutations``, ``exact``,
        ``smallest_possible_p`` and a ``note``.
    """
    d = np.asarray(deeplight, float) - np.asarray(linear, float)
    k = int(d.size)
    out: dict[str, Any] = {"n_folds": k, "mean_difference": float(d.mean()) if k else None}
    if k < 2:
        out.update(
            test=None,
            p_value=None,
            note="one fold (one held-out split): no paired test over folds is possible; use --cv-folds K >= 2",
        )
        return out
    observed = abs(d.mean())
    if k <= EXACT_FOLDS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=k)))
        exact = True
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(MONTE_CARLO, k))
        exact = False
    means = np.abs(signs @ d) / k
    p = float(np.mean(means >= observed - 1e-12))
    out.update(
        test="sign-flip permutation test of the mean paired difference over folds (two-sided)"
        + ("" if exact else f", {MONTE_CARLO} random sign flips"),
        p_value=p,
        n_permutations=int(len(signs)),
        exact=exact,
        smallest_possible_p=2.0 / 2**k if exact else 1.0 / MONTE_CARLO,
        note=f"with {k} folds the smallest possible p is {2.0 / 2**k:.3g}" if exact and k < 6 else "",
    )
    return out


def summarise(
    fold_reports: list[dict[str, Any]],
    prediction_rows: list[dict[str, Any]],
    states: Sequence[str],
    deeplight_seconds: float,
) -> dict[str, Any]:
    """The linear baseline beside DeepLight over all folds: pooled, per participant, per fold and the paired test.

    Parameters
    ----------
    fold_reports : list of dict
        The fine-tuning's fold reports, each with ``heldout_accuracy`` and ``linear_baseline``.
    prediction_rows : list of dict
        Held-out prediction rows with ``true_state``, ``predicted_state`` and ``linear_predicted_state``.
    states : sequence of str
    deeplight_seconds : float
        DeepLight's fit time over all folds (s).

    Returns
    -------
    dict
    """
    states = list(states)
    true = [states.index(r["true_state"]) for r in prediction_rows]
    lin = [states.index(r["linear_predicted_state"]) for r in prediction_rows]
    deep = [states.index(r["predicted_state"]) for r in prediction_rows]
    acc, bacc = accuracy(true, lin)
    dacc, dbacc = accuracy(true, deep)
    participants = []
    for subject in sorted({r["participant_id"] for r in prediction_rows}):
        idx = [i for i, r in enumerate(prediction_rows) if r["participant_id"] == subject]
        fold = prediction_rows[idx[0]].get("fold", "single")
        a, b = accuracy([true[i] for i in idx], [lin[i] for i in idx])
        da, db = accuracy([true[i] for i in idx], [deep[i] for i in idx])
        participants.append(
            {
                "participant_id": subject,
                "fold": fold,
                "n_volumes": len(idx),
                "accuracy_deeplight": da,
                "accuracy_linear": a,
                "balanced_accuracy_deeplight": db,
                "balanced_accuracy_linear": b,
            }
        )
    folds = [
        {
            "fold": f["fold"],
            "heldout_participants": list(f["heldout_participants"]),
            "n_volumes": f["heldout_volumes"],
            "accuracy_deeplight": f["heldout_accuracy"],
            "accuracy_linear": f["linear_baseline"]["heldout_accuracy"],
            "balanced_accuracy_deeplight": f["heldout_balanced_accuracy"],
            "balanced_accuracy_linear": f["linear_baseline"]["heldout_balanced_accuracy"],
            "seconds_deeplight": f.get("seconds_fit"),
            "seconds_linear": f["linear_baseline"]["seconds"],
        }
        for f in fold_reports
    ]
    linear_seconds = float(sum(f["seconds_linear"] for f in folds))
    return {
        "estimator": estimator_description(),
        "heldout_accuracy_pooled": acc,
        "heldout_balanced_accuracy_pooled": bacc,
        "deeplight_heldout_accuracy_pooled": dacc,
        "deeplight_heldout_balanced_accuracy_pooled": dbacc,
        "chance": 1.0 / len(states),
        "n_volumes": len(prediction_rows),
        "folds": folds,
        "participants": participants,
        "paired_test_accuracy": paired_permutation_test(
            [f["accuracy_deeplight"] for f in folds], [f["accuracy_linear"] for f in folds]
        ),
        "paired_test_balanced_accuracy": paired_permutation_test(
            [f["balanced_accuracy_deeplight"] for f in folds], [f["balanced_accuracy_linear"] for f in folds]
        ),
        "seconds_linear": round(linear_seconds, 2),
        "seconds_deeplight_fit": round(float(deeplight_seconds), 2),
        "cost_ratio": round(linear_seconds / deeplight_seconds, 4) if deeplight_seconds else None,
    }


def write_summary(model_dir: str | os.PathLike, name: str, summary: dict[str, Any]) -> dict[str, Path]:
    """``<name>_desc-linear_summary.tsv`` (per fold, per participant, pooled: both decoders) and its JSON."""
    import pandas as pd

    rows = [
        {
            "level": "fold",
            **{k: v for k, v in f.items() if k != "heldout_participants"},
            "participant_id": " ".join(f"sub-{p}" for p in f["heldout_participants"]),
        }
        for f in summary["folds"]
    ]
    rows += [{"level": "participant", **p} for p in summary["participants"]]
    rows.append(
        {
            "level": "pooled",
            "fold": "all",
            "participant_id": "all",
            "n_volumes": summary["n_volumes"],
            "accuracy_deeplight": summary["deeplight_heldout_accuracy_pooled"],
            "accuracy_linear": summary["heldout_accuracy_pooled"],
            "balanced_accuracy_deeplight": summary["deeplight_heldout_balanced_accuracy_pooled"],
            "balanced_accuracy_linear": summary["heldout_balanced_accuracy_pooled"],
            "seconds_deeplight": summary["seconds_deeplight_fit"],
            "seconds_linear": summary["seconds_linear"],
        }
    )
    columns = [
        "level",
        "fold",
        "participant_id",
        "n_volumes",
        "accuracy_deeplight",
        "accuracy_linear",
        "balanced_accuracy_deeplight",
        "balanced_accuracy_linear",
        "seconds_deeplight",
        "seconds_linear",
    ]
    outputs = naming.linear_summary_outputs(model_dir, name)
    write_tsv(outputs["summary"], pd.DataFrame(rows).reindex(columns=columns))
    write_json(
        outputs["summary_json"],
        {
            "Description": "held-out accuracy of DeepLight and of a linear baseline decoder fitted on the same "
            "prepared volumes, labels, training participants and folds",
            **summary,
        },
    )
    return outputs


def linear_columns(heldout_summary: dict[str, Any]) -> dict[str, Any]:
    """The report's fine-tuning table columns of the linear baseline (held-out accuracy, paired test), from a
    held-out summary JSON; "n/a" cells for fine-tunings made without it."""
    linear = heldout_summary.get("linear_baseline") or {}
    test = linear.get("paired_test_accuracy") or {}
    return {
        "linear baseline accuracy": linear.get("heldout_accuracy_pooled"),
        "linear balanced accuracy": linear.get("heldout_balanced_accuracy_pooled"),
        "DeepLight - linear, p (folds)": test.get("p_value") if test.get("test") else (test.get("note") and "no test"),
        "linear cost (share of the DeepLight fit)": linear.get("cost_ratio"),
    }


def evaluate_participant(
    model_path: str | os.PathLike, config: Config, participant: str, log: logging.Logger = LOGGER
) -> dict[str, Any]:
    """Accuracy of a saved linear decoder on one participant's labelled volumes (prepared through the cache).

    Parameters
    ----------
    model_path : path
        ``<stem>_desc-linear_model.npz`` (:func:`write_fold`).
    config : deeplight_bids.config.Config
        ``bids_dir``, ``derivatives``, ``work_dir``, ``smoothing_fwhm``, ``high_pass``, ``state_map_file``.
    participant : str
        Label without ``sub-``.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``n_volumes`` (labelled volumes of the model's states).
    """
    import dataclasses

    from deeplight_bids.prepare.labels import load_state_map_file  # deferred: loads pandas

    model = load_model(model_path)
    inputs = dataclasses.replace(config.inputs, participant_label=(participant,))
    layout = build_layout(inputs.bids_dir, find_derivatives(inputs.bids_dir, inputs.derivatives))
    runs = [r for r in discover_selected_runs(layout, inputs) if r.skip_reason is None]
    entries, _ = prepare_cached(runs, inputs.work_dir, inputs.smoothing_fwhm, inputs.high_pass, log=log)
    state_maps = load_state_map_file(inputs.state_map_file) if inputs.state_map_file else None
    samples, _ = label_volumes(entries, runs, model.states, state_maps)
    predicted = predict_runs(model_path, entries, samples)
    acc, bacc = accuracy(samples.label, predicted)
    return {"accuracy": acc, "balanced_accuracy": bacc, "n_volumes": int(len(samples))}

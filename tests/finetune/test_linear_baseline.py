"""The linear baseline decoder: the scikit-learn pipeline it stands for, its features, the paired test."""

from dataclasses import dataclass

import numpy as np
import pytest

from deeplight_bids.models import linear_baseline as lb
from deeplight_bids.prepare.cache import Samples
from deeplight_bids.prepare.grid import REFERENCE_SHAPE


@dataclass
class FakeEntry:
    """A prepared run as the cache holds it: in-mask signals (float16) and the mask."""

    signals_: np.ndarray
    mask_: np.ndarray

    def signals(self):
        return self.signals_

    def mask(self):
        return self.mask_


@dataclass
class FakeData:
    entries: list
    samples: Samples
    states: tuple


def _data(seed=0, n_runs=4, n_volumes=40, n_states=3, n_voxels=1500):
    """Runs with partly different masks; each state raises its own block of voxels."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(REFERENCE_SHAPE)), size=n_voxels + 200, replace=False)
    entries, rows = [], []
    for e in range(n_runs):
        mask = np.zeros(int(np.prod(REFERENCE_SHAPE)), bool)
        mask[np.sort(flat[e * 50 : e * 50 + n_voxels])] = True  # runs share most voxels, not all
        mask = mask.reshape(REFERENCE_SHAPE)
        labels = rng.integers(0, n_states, n_volumes)
        signals = rng.standard_normal((n_volumes, int(mask.sum())))
        for k in range(n_states):
            signals[labels == k, 40 * k : 40 * k + 30] += 1.0
        entries.append(FakeEntry(signals.astype(np.float16), mask))
        rows += [(e, v, labels[v], f"{e + 1:02d}", f"run{e}") for v in range(n_volumes)]
    samples = Samples(*(np.array([r[i] for r in rows], dtype=object if i > 2 else int) for i in range(5)))
    return FakeData(entries, samples, tuple(f"S{k}" for k in range(n_states)))


def _dense(data, features):
    """All samples on the union of the masks, built the slow obvious way (0 outside a run's mask)."""
    out = np.zeros((len(data.samples), features.n_features), np.float32)
    for i in range(len(data.samples)):
        entry = data.entries[data.samples.entry[i]]
        volume = np.zeros(int(np.prod(REFERENCE_SHAPE)), np.float32)
        volume[np.flatnonzero(entry.mask())] = entry.signals()[data.samples.volume[i]]
        out[i] = volume[features.voxels]
    return out


def test_features_are_the_volumes_on_the_union_of_masks():
    data = _data()
    features = lb.InMaskFeatures(data.entries)
    assert features.n_features == 1500 + 150
    dense = _dense(data, features)
    rows = np.array([3, 70, 159, 5])
    np.testing.assert_array_equal(features.matrix(data.samples, rows), dense[rows])
    cols = np.array([7, 1000, 1600, 2])
    np.testing.assert_array_equal(features.matrix(data.samples, rows, cols), dense[rows][:, cols])


def test_screening_is_sklearn_f_classif():
    from sklearn.feature_selection import f_classif

    data = _data()
    features = lb.InMaskFeatures(data.entries)
    rows = np.flatnonzero(data.samples.entry < 3)
    ours = lb.anova_f(features, data.samples, rows, 3)
    theirs, _ = f_classif(_dense(data, features)[rows], data.samples.label[rows])
    np.testing.assert_allclose(ours, np.nan_to_num(theirs), rtol=1e-5, atol=1e-6)  # float32 data


def test_fit_fold_is_the_sklearn_pipeline():
    """Screening then StandardScaler then L2 logistic regression: the same predictions as scikit-learn's pipeline."""
    from sklearn.feature_selection import SelectPercentile, f_classif
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = _data()
    train = data.samples.entry < 3
    held = data.samples.entry == 3
    result = lb.fit_fold(data, train, held, "fold-1")
    dense = _dense(data, lb.InMaskFeatures(data.entries))
    reference = make_pipeline(
        StandardScaler(),
        SelectPercentile(f_classif, percentile=lb.SCREENING_PERCENTILE),
        LogisticRegression(C=lb.C, class_weight="balanced", max_iter=2000),
    ).fit(dense[train], data.samples.label[train])
    kept = np.flatnonzero(reference.named_steps["selectpercentile"].get_support())
    np.testing.assert_array_equal(result.columns, kept)
    np.testing.assert_array_equal(result.predicted, reference.predict(dense[held]))
    coef = reference.named_steps["logisticregression"].coef_
    np.testing.assert_allclose(result.coef, coef, rtol=1e-3, atol=1e-4 * np.abs(coef).max())
    assert result.metrics["heldout_accuracy"] == pytest.approx(np.mean(result.predicted == data.samples.label[held]))
    assert result.metrics["heldout_accuracy"] > 0.8  # the planted blocks are easy for a linear model
    weights = result.weight_map(0)
    assert weights.shape == REFERENCE_SHAPE and np.count_nonzero(weights) == kept.size


def test_two_states_give_opposite_weight_maps_and_the_archive_predicts_the_same(tmp_path):
    data = _data(n_states=2)
    train, held = data.samples.entry < 3, data.samples.entry == 3
    result = lb.fit_fold(data, train, held)
    np.testing.assert_array_equal(result.coef[0], -result.coef[1])
    outputs = lb.write_fold(result, tmp_path, "m")
    assert sorted(outputs["weights"]) == ["S0", "S1"] and all(p.is_file() for p in outputs["weights"].values())
    held_samples = data.samples.subset(held)
    np.testing.assert_array_equal(lb.predict_runs(outputs["model"], data.entries, held_samples), result.predicted)


def test_paired_permutation_test():
    one = lb.paired_permutation_test([0.8], [0.7])
    assert one["test"] is None and one["p_value"] is None and "no paired test" in one["note"]
    # all three folds favour the same decoder: only the all-plus and all-minus flips are as extreme, p = 2/8
    three = lb.paired_permutation_test([0.8, 0.9, 0.7], [0.7, 0.6, 0.65])
    assert three["exact"] and three["n_permutations"] == 8 and three["p_value"] == pytest.approx(0.25)
    assert three["mean_difference"] == pytest.approx((0.1 + 0.3 + 0.05) / 3)
    tied = lb.paired_permutation_test([0.5, 0.6], [0.5, 0.6])
    assert tied["p_value"] == 1.0
    big = lb.paired_permutation_test(np.full(8, 0.9), np.full(8, 0.5))
    assert big["p_value"] == pytest.approx(2 / 256)

"""Deletion curves on a linear model, where the exact relevance is known (w * x)."""

import numpy as np
import pandas as pd
import pytest

from deeplight_bids.quality import faithfulness as fa


@pytest.fixture
def linear():
    """A 3-state linear model on 10x10x10 volumes; relevance of state s is W[s] * x (exact decomposition)."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 10 * 10 * 10))
    volumes = rng.normal(size=(10, 10, 10, 10, 1)).astype(np.float32)
    mask = np.zeros((10, 10, 10), bool)
    mask[1:9, 1:9, 1:9] = True
    mask_index = np.flatnonzero(mask.ravel())

    def logits_fn(x):
        return x.reshape(len(x), -1) @ weights.T

    logits = logits_fn(volumes)
    targets = logits.argmax(axis=1)

    def relevance_of(v):
        return (weights[targets[v]] * volumes[v].reshape(-1)).reshape(10, 10, 10)

    return weights, volumes, mask_index, logits_fn, targets, relevance_of


def test_select_volumes_stratified_and_seeded():
    predicted = np.array([0] * 20 + [1] * 3 + [2] * 10)
    chosen = fa.select_volumes(predicted, 9, seed=1)
    assert len(chosen) == 9 and len(set(chosen)) == 9
    assert np.bincount(predicted[chosen], minlength=3).tolist() == [3, 3, 3]
    np.testing.assert_array_equal(chosen, fa.select_volumes(predicted, 9, seed=1))
    assert not np.array_equal(chosen, fa.select_volumes(predicted, 9, seed=2))
    # a rare state gives what it has; the others fill up
    assert np.bincount(predicted[fa.select_volumes(predicted, 15, seed=0)], minlength=3).tolist() == [6, 3, 6]
    assert len(fa.select_volumes(predicted, 100)) == len(predicted)


def test_deletion_inputs_zero_top_voxels_inside_mask_only(linear):
    _, volumes, mask_index, _, _, relevance_of = linear
    inputs, counts = fa.deletion_inputs(volumes[0], relevance_of(0), mask_index, np.random.default_rng(0))
    n_steps = len(fa.FRACTIONS) - 1
    assert inputs.shape == (1 + 2 * n_steps, 10, 10, 10, 1)
    assert counts.tolist() == [round(f * len(mask_index)) for f in fa.FRACTIONS]
    np.testing.assert_array_equal(inputs[0], volumes[0])
    flat = inputs.reshape(len(inputs), -1)
    outside = np.setdiff1d(np.arange(flat.shape[1]), mask_index)
    np.testing.assert_array_equal(
        flat[:, outside], np.broadcast_to(volumes[0].reshape(-1)[outside], (len(flat), len(outside)))
    )
    rel = relevance_of(0).reshape(-1)
    for step, k in enumerate(counts[1:], start=1):
        removed = np.flatnonzero(flat[step] != flat[0])
        assert len(removed) <= k and np.all(flat[step, removed] == 0)
        top = mask_index[np.argsort(-rel[mask_index], kind="stable")[:k]]
        assert set(removed) <= set(top)
        assert np.count_nonzero(flat[n_steps + step] != flat[0]) <= k


def test_relevance_order_drops_logit_faster_than_random(linear):
    _, volumes, mask_index, logits_fn, targets, relevance_of = linear
    frame = fa.deletion_curves(logits_fn, range(10), lambda v: volumes[v], relevance_of, targets, mask_index, seed=3)
    assert len(frame) == 10 * len(fa.FRACTIONS) * 2
    assert set(frame.columns) == set(fa.COLUMNS)
    zero = frame[frame["fraction"] == 0]
    assert (zero["logit_drop"] == 0).all() and (zero["decision_holds"] == 1).all()
    mean = frame.groupby(["order", "fraction"])["logit"].mean()
    # removing the voxels with the largest w*x lowers a linear logit by exactly their sum: the most possible
    assert all(mean["relevance"][f] < mean["random"][f] for f in fa.FRACTIONS[1:])
    summary = fa.area_between_curves(frame)
    assert summary["area_between_curves"] > 0
    # the run's area is the mean of the volumes' own areas; its standard error is theirs over sqrt(volumes)
    areas = []
    for _, part in frame.groupby("volume"):
        wide = part.pivot_table(index="fraction", columns="order", values="logit").sort_index()
        fr = wide.index.to_numpy()
        areas.append(np.trapezoid(wide["random"] - wide["relevance"], fr) / (fr[-1] - fr[0]))
    assert summary["area_between_curves"] == pytest.approx(np.mean(areas), rel=1e-9)
    assert summary["area_between_curves_se"] == pytest.approx(np.std(areas, ddof=1) / np.sqrt(10), rel=1e-3)
    assert summary["aopc_relevance"] > summary["aopc_random"]
    assert summary["n_volumes"] == 10
    # the exact drop at one step: the sum of the removed voxels' relevance
    row = frame[(frame["volume"] == 2) & (frame["order"] == "relevance") & (frame["fraction"] == 0.1)].iloc[0]
    rel = relevance_of(2).reshape(-1)
    top = np.sort(rel[mask_index])[::-1][: row["n_removed"]]
    assert row["logit_drop"] == pytest.approx(top.sum(), rel=1e-4)
    # seeded: the same table twice
    again = fa.deletion_curves(logits_fn, range(10), lambda v: volumes[v], relevance_of, targets, mask_index, seed=3)
    assert frame.equals(again)


def test_reversed_relevance_is_worse_than_random(linear):
    """A map that ranks voxels backwards must not look faithful (the measure can fail)."""
    _, volumes, mask_index, logits_fn, targets, relevance_of = linear
    frame = fa.deletion_curves(
        logits_fn, range(10), lambda v: volumes[v], lambda v: -relevance_of(v), targets, mask_index
    )
    assert fa.area_between_curves(frame)["area_between_curves"] < 0


def test_volumes_share_network_calls_and_the_table_is_the_same(linear):
    """Perturbed copies of several volumes go through the network together (up to ``max_inputs`` per call,
    whole volumes, at least one); the table does not depend on how they were grouped."""
    _, volumes, mask_index, logits_fn, targets, relevance_of = linear
    per_volume = 2 * (len(fa.FRACTIONS) - 1)
    tables = {}
    for max_inputs in (1, per_volume, 3 * per_volume + 1):
        seen = []

        def counting(x, seen=seen):
            seen.append(len(x))
            return logits_fn(x)

        tables[max_inputs] = fa.deletion_curves(
            counting,
            range(7),
            lambda v: volumes[v],
            relevance_of,
            targets,
            mask_index,
            known_logits=logits_fn(volumes),
            max_inputs=max_inputs,
        )
        expected_calls = [per_volume] * 7 if max_inputs <= per_volume else [3 * per_volume] * 2 + [per_volume]
        assert seen == expected_calls, (max_inputs, seen)
    for table in tables.values():
        pd.testing.assert_frame_equal(table, tables[1])


def test_fractions_must_start_at_zero(linear):
    _, volumes, mask_index, logits_fn, targets, relevance_of = linear
    with pytest.raises(ValueError, match="start with 0"):
        fa.deletion_curves(
            logits_fn, [0], lambda v: volumes[v], relevance_of, targets, mask_index, fractions=(0.1, 0.2)
        )


def test_known_logits_skip_the_unperturbed_pass(linear):
    """Given the decoding pass's logits, the unperturbed copy is not run again and the table is the same."""
    _, volumes, mask_index, logits_fn, targets, relevance_of = linear
    seen = []

    def counting(x):
        seen.append(len(x))
        return logits_fn(x)

    expected = fa.deletion_curves(logits_fn, range(4), lambda v: volumes[v], relevance_of, targets, mask_index)
    per_volume = 2 * (len(fa.FRACTIONS) - 1)
    frame = fa.deletion_curves(
        counting,
        range(4),
        lambda v: volumes[v],
        relevance_of,
        targets,
        mask_index,
        known_logits=logits_fn(volumes),
        max_inputs=per_volume,
    )
    assert seen == [per_volume] * 4
    np.testing.assert_allclose(frame["logit"], expected["logit"], rtol=1e-6)
    assert frame[["volume", "order", "fraction", "decision_holds"]].equals(
        expected[["volume", "order", "fraction", "decision_holds"]]
    )

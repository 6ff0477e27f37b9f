"""Block-permutation and binomial tests of decoding accuracy; the group t test."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deeplight_bids.quality import significance as sig


def _design(n_blocks, length=5, states=("a", "b", "c"), gap=2):
    true = []
    for b in range(n_blocks):
        true += [states[b % len(states)]] * length + [None] * gap
    return true


def test_blocks():
    assert sig.blocks(["a", "a", None, "b", "b", "a", float("nan"), "a"]) == [
        (0, 2, "a"),
        (3, 5, "b"),
        (5, 6, "a"),
        (7, 8, "a"),
    ]
    assert sig.blocks([None, None]) == []


def test_perfect_decoder_is_significant():
    true = _design(12)
    pred = [s if s is not None else "a" for s in true]
    res = sig.permutation_test([(true, pred)], n_permutations=1000, seed=0)
    assert res["accuracy"] == 1.0 and res["n_blocks"] == 12 and res["n_labelled"] == 60
    assert res["p_permutation"] < 0.01
    assert res["null_mean"] == pytest.approx(1 / 3, abs=0.05)


def test_few_blocks_cannot_be_significant():
    """Two blocks have two orderings: block permutation gives p >= 1/2, where volume shuffling would not."""
    true = ["a"] * 10 + ["b"] * 10
    res = sig.permutation_test([(true, list(true))], n_permutations=1000, seed=0)
    assert res["accuracy"] == 1.0 and res["p_permutation"] > 0.4
    binom = stats.binomtest(20, 20, 0.5, alternative="greater").pvalue
    table = sig.participant_table({"01": [(true, list(true))]}, n_permutations=200)
    assert table.loc[0, "p_binomial"] == pytest.approx(binom) and binom < 1e-5
    assert table.loc[0, "significant"] == 0


def test_chance_decoder_and_seed():
    rng = np.random.default_rng(0)
    true = _design(12)
    pred = list(rng.choice(["a", "b", "c"], size=len(true)))
    one = sig.participant_table({"01": [(true, pred)], "02": [(true, pred), (true, pred)]}, n_permutations=500, seed=4)
    two = sig.participant_table({"01": [(true, pred)], "02": [(true, pred), (true, pred)]}, n_permutations=500, seed=4)
    pd.testing.assert_frame_equal(one, two)
    assert list(one.columns) == list(sig.PARTICIPANT_COLUMNS)
    assert (one["p_permutation"] > 0.05).all() and one["n_runs"].tolist() == [1, 2]


def test_group_test_matches_scipy():
    table = pd.DataFrame(
        {
            "accuracy": [0.6, 0.7, 0.5, 0.8],
            "chance_level": [1 / 3] * 4,
            "significant": [1, 1, 0, 1],
            "p_binomial": [0.01, 0.001, 0.2, 0.0001],
        }
    )
    row = sig.group_test(table).iloc[0]
    ref = stats.ttest_1samp(table["accuracy"] - 1 / 3, 0, alternative="greater")
    assert row["t"] == pytest.approx(ref.statistic) and row["p_t"] == pytest.approx(ref.pvalue)
    assert row["n_significant"] == 3 and row["n_significant_binomial"] == 3 and row["df"] == 3
    assert np.isnan(sig.group_test(table.iloc[:1]).iloc[0]["t"])

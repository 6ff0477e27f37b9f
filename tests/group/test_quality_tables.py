"""Group level: significance, faithfulness and sanity tables, and their report section."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from .conftest import read_tsv


def test_significance_tables_match_the_accuracy_table(varied_out):
    out, code = varied_out
    assert code == 0
    group = out / "group"
    sig = read_tsv(group / "task-motor_desc-significance_summary.tsv")
    acc = read_tsv(group / "task-motor_desc-accuracy_summary.tsv")
    acc = acc[acc["level"] == "participant"].set_index("participant_id")
    assert len(sig) == 3 and (sig["n_permutations"] == 1000).all()
    for _, row in sig.iterrows():
        ref = acc.loc[row["participant_id"]]
        assert row["accuracy"] == pytest.approx(ref["accuracy"]) and row["n_labelled"] == ref["n_labelled"]
        binom = stats.binomtest(
            int(ref["n_correct"]), int(ref["n_labelled"]), ref["chance_level"], alternative="greater"
        ).pvalue
        assert row["p_binomial"] == pytest.approx(binom, rel=1e-4)  # TSV keeps 6 significant digits
        assert 0 < row["p_permutation"] <= 1
        # one block per state and run: 3 blocks, 6 orderings, so p cannot go below 1/6
        assert row["n_blocks"] == 3 and row["p_permutation"] > 1 / 7
    grp = read_tsv(group / "task-motor_desc-significancegroup_summary.tsv").iloc[0]
    diff = (sig["accuracy"] - sig["chance_level"]).to_numpy()
    ref = stats.ttest_1samp(diff, 0, alternative="greater")
    assert grp["t"] == pytest.approx(ref.statistic, rel=1e-4) and grp["p_t"] == pytest.approx(ref.pvalue, rel=1e-3)
    assert grp["n_significant"] == 0


def test_faithfulness_and_sanity_across_participants(varied_out):
    out, _ = varied_out
    group = out / "group"
    curves = read_tsv(group / "task-motor_desc-faithfulness_summary.tsv")
    assert set(curves["order"]) == {"relevance", "random"}
    # the group mean equals the mean of the participants' means, recomputed from the run tables
    runs = [
        pd.read_csv(p, sep="\t").assign(sub=p.name[:6])
        for p in sorted(out.glob("sub-*/func/*_desc-faithfulness_timeseries.tsv"))
    ]
    table = pd.concat(runs)
    row = curves.iloc[-1]
    sel = table[
        (table["state"] == row["state"]) & (table["order"] == row["order"]) & (table["fraction"] == row["fraction"])
    ]
    assert row["logit_drop_mean"] == pytest.approx(sel.groupby("sub")["logit_drop"].mean().mean())
    quality = read_tsv(group / "task-motor_desc-quality_summary.tsv")
    assert len(quality) == 3 and quality["median_spearman"].between(-1, 1).all()
    assert np.isfinite(quality["area_between_curves"]).all()
    html = (out / "deeplight_report.html").read_text()
    assert "Is decoding above chance?" in html and "Faithfulness of the relevance maps" in html
    assert "Sanity check" in html

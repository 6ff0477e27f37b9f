"""Group statistics: checked against values computed here from the TSVs and maps.

The expected numbers are computed independently with plain pandas/numpy (and
scipy.stats.ttest_1samp for the t-maps) from the participant outputs themselves.
"""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from deeplight_bids.group import stats
from deeplight_bids.models.metrics import decoding_metrics

from .conftest import STATES, read_tsv

GROUP = "group"
SPACE = "space-MNI152NLin6Asym_res-2"


def _predictions(out):
    frames = {}
    for path in sorted(out.glob("sub-*/func/*_desc-predictions_timeseries.tsv")):
        frames[path.name.split("_")[0]] = (path, read_tsv(path))
    return frames


# ------------------------------------------------------------------ small unit checks
def test_decoding_metrics_by_hand():
    true = ["a", "a", "a", "a", "b", "b"]
    pred = ["a", "a", "a", "b", "a", "b"]
    m = decoding_metrics(true, pred)
    assert m["n_labelled"] == 6 and m["n_correct"] == 4
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m["chance_level"] == pytest.approx(1 / 2)
    empty = decoding_metrics([], [])
    assert empty["n_labelled"] == 0 and np.isnan(empty["accuracy"])


def test_block_positions_by_hand():
    labels = [None, "a", "a", "a", "b", "b", None, "b", "a"]
    pos = stats.block_positions(labels)
    expected = [np.nan, 0, 1, 2, 0, 1, np.nan, 0, 0]
    np.testing.assert_array_equal(pos, expected)


def test_t_interval_matches_scipy():
    values = [0.4, 0.55, 0.61, 0.7]
    n, mean, sd, low, high = stats.t_interval(values)
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert n == 4 and mean == pytest.approx(np.mean(values)) and sd == pytest.approx(np.std(values, ddof=1))
    assert (low, high) == pytest.approx((lo, hi))
    n, mean, sd, low, high = stats.t_interval([0.5])
    assert n == 1 and mean == 0.5 and np.isnan(sd) and np.isnan(low)


# ------------------------------------------------------------------ end to end on generated data
def test_group_level_succeeds(varied_out):
    out, code = varied_out
    assert code == 0
    assert (out / "deeplight_report.html").is_file()
    manifest = json.loads((out / GROUP / "group_manifest.json").read_text())
    assert len(manifest["ModelGroups"]) == 1 and manifest["CorrectOnly"] is True
    assert manifest["Templates"]["Source"] in ("templateflow", "nilearn")


def test_accuracy_tables_match_independent_computation(varied_out):
    out, _ = varied_out
    table = read_tsv(out / GROUP / "task-motor_desc-accuracy_summary.tsv")
    part = table[table["level"] == "participant"].set_index("participant_id")
    accs, baccs = [], []
    for sub, (_, frame) in _predictions(out).items():
        lab = frame[frame["correct"].notna()]
        acc = (lab["true_state"] == lab["predicted_state"]).mean()
        recalls = [(g["predicted_state"] == s).mean() for s, g in lab.groupby("true_state")]
        bacc = float(np.mean(recalls))
        row = part.loc[sub]
        assert row["n_labelled"] == len(lab)
        assert row["n_correct"] == int(lab["correct"].sum())
        assert row["accuracy"] == pytest.approx(acc, abs=1e-6)
        assert row["balanced_accuracy"] == pytest.approx(bacc, abs=1e-6)
        assert row["chance_level"] == pytest.approx(1 / lab["true_state"].nunique(), abs=1e-6)
        accs.append(acc)
        baccs.append(bacc)
    assert len(set(np.round(accs, 6))) > 1, "the redrawn predictions should differ between participants"
    summary = read_tsv(out / GROUP / "task-motor_desc-accuracygroup_summary.tsv").set_index("metric")
    for metric, values in (("accuracy", accs), ("balanced_accuracy", baccs)):
        values = np.array(values)
        n = len(values)
        half = sps.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)
        row = summary.loc[metric]
        assert row["n_participants"] == n
        assert row["mean"] == pytest.approx(values.mean(), abs=1e-6)
        assert row["sd"] == pytest.approx(values.std(ddof=1), abs=1e-6)
        assert row["ci95_low"] == pytest.approx(values.mean() - half, abs=1e-6)
        assert row["ci95_high"] == pytest.approx(values.mean() + half, abs=1e-6)


def test_confusion_matrices_match(varied_out):
    out, _ = varied_out
    lab = pd.concat([f for _, f in _predictions(out).values()])
    lab = lab[lab["correct"].notna()]
    expected = pd.crosstab(lab["true_state"], lab["predicted_state"]).reindex(columns=STATES, fill_value=0)
    counts = read_tsv(out / GROUP / "task-motor_desc-confusion_counts.tsv").set_index("true_state")
    props = read_tsv(out / GROUP / "task-motor_desc-confusion_proportions.tsv").set_index("true_state")
    assert list(counts.columns) == STATES
    np.testing.assert_array_equal(counts.loc[expected.index, STATES].to_numpy(), expected.to_numpy())
    np.testing.assert_allclose(
        props.loc[expected.index, STATES].to_numpy(), (expected.T / expected.sum(axis=1)).T.to_numpy(), atol=1e-6
    )


def test_block_time_accuracy_matches(varied_out):
    out, _ = varied_out
    per_sub = {}
    for sub, (_, frame) in _predictions(out).items():
        # blocks: consecutive identical true_state labels; position counted independently here
        pos, prev, k = [], None, -1
        for s in frame["true_state"]:
            if not isinstance(s, str):
                pos.append(np.nan)
                prev = None
                continue
            k = k + 1 if s == prev else 0
            prev = s
            pos.append(k)
        frame = frame.assign(pos=pos)
        per_sub[sub] = frame[frame["correct"].notna()]
    table = read_tsv(out / GROUP / "task-motor_desc-blocktime_accuracy.tsv").set_index("volumes_since_onset")
    all_pos = sorted({int(p) for f in per_sub.values() for p in f["pos"]})
    assert list(table.index) == all_pos
    for k in all_pos:
        sel = pd.concat([f[f["pos"] == k] for f in per_sub.values()])
        assert table.loc[k, "n_volumes"] == len(sel)
        assert table.loc[k, "accuracy_pooled"] == pytest.approx(sel["correct"].mean(), abs=1e-6)
        accs = [f.loc[f["pos"] == k, "correct"].mean() for f in per_sub.values() if (f["pos"] == k).any()]
        assert table.loc[k, "accuracy_mean"] == pytest.approx(np.mean(accs), abs=1e-6)


def _mask(out):
    manifest = json.loads((out / GROUP / "group_manifest.json").read_text())
    from deeplight_bids.group.templates import load_templates

    templates = load_templates()
    assert templates.source == manifest["Templates"]["Source"]
    return np.asarray(templates.mask.dataobj) > 0


def _participant_maps(out, label):
    maps = sorted(out.glob(f"sub-*/func/*_task-motor_{SPACE}_label-{label}_desc-mean_relevance.nii.gz"))
    return {p.name.split("_")[0]: nib.load(p).get_fdata() for p in maps}


def test_state_means_are_averaged_not_tested(varied_out):
    """The published preset is not signed: each state's mean map is written, without a test against 0."""
    out, _ = varied_out
    inside = _mask(out)
    for state in STATES:
        label = state.replace("_", "")
        maps = _participant_maps(out, label)
        assert len(maps) == 3
        data = np.stack(list(maps.values()))
        path = out / GROUP / f"task-motor_{SPACE}_contrast-{label}_stat-effect_statmap.nii.gz"
        mean_img = nib.load(path)
        np.testing.assert_allclose(mean_img.affine, nib.load(next(out.glob("sub-01/func/*_relevance.nii.gz"))).affine)
        mean = mean_img.get_fdata()
        scale = np.abs(data).max()
        np.testing.assert_allclose(mean[inside], data.mean(axis=0)[inside], rtol=1e-5, atol=1e-6 * scale)
        assert np.all(mean[~inside] == 0)
        assert not list((out / GROUP).glob(f"task-motor_{SPACE}_contrast-{label}_stat-[tzp]_*"))
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["NumberOfParticipants"] == 3 and sidecar["Model"]["States"] == STATES
        assert sidecar["Attribution"]["Method"] == "preset_b_flat" and sidecar["Attribution"]["Signed"] is False
        assert "not signed" in sidecar["AgainstZero"] and sidecar["StatisticalModel"]["Correction"] == "not tested"


def test_contrasts_between_states_match_scipy(synthetic_out):
    """<state>VsOthers: paired t of the brain-mean-scaled differences, FDR-thresholded, with a cluster table."""
    out, code, region = synthetic_out
    assert code == 0
    inside = _mask(out)
    maps = {s: _participant_maps(out, s.replace("_", "")) for s in STATES}
    checked = 0
    for state in STATES:
        label = f"{state.replace('_', '')}VsOthers"
        others = [o for o in STATES if o != state]
        usable = sorted(maps[state])
        assert len(usable) == 3
        path = out / GROUP / f"task-motor_{SPACE}_contrast-{label}_stat-t_statmap.nii.gz"

        def scaled(s, sub):
            return maps[s][sub] / np.abs(maps[s][sub][inside]).mean()

        diffs = np.stack([scaled(state, sub) - np.mean([scaled(o, sub) for o in others], axis=0) for sub in usable])
        effect = nib.load(path.with_name(path.name.replace("stat-t", "stat-effect"))).get_fdata()
        np.testing.assert_allclose(effect[inside], diffs.mean(axis=0)[inside], rtol=1e-4, atol=1e-6)
        tested = inside & (diffs.std(axis=0) > 0)
        t_expected = sps.ttest_1samp(diffs[:, tested], 0.0, axis=0).statistic
        t_got = nib.load(path).get_fdata()
        np.testing.assert_allclose(t_got[tested], t_expected, rtol=1e-3, atol=1e-4)  # float32 maps; |t| up to 1e4
        assert np.all(t_got[~tested] == 0)
        z = nib.load(path.with_name(path.name.replace("stat-t", "stat-z"))).get_fdata()
        p_expected = sps.t.sf(t_expected, len(usable) - 1)
        np.testing.assert_allclose(z[tested], sps.norm.isf(p_expected), rtol=1e-3, atol=1e-3)
        side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        model = side["StatisticalModel"]
        assert model["Correction"] == "fdr" and model["Alpha"] == 0.05 and model["DegreesOfFreedom"] == len(usable) - 1
        assert side["Scaling"]["Method"] == "brain-mean" and side["ContrastWeights"][others[0]] == -0.5
        # FDR by hand: Benjamini-Hochberg on the one-sided p of the tested voxels
        p_sorted = np.sort(p_expected)
        m = len(p_sorted)
        below = np.nonzero(p_sorted <= 0.05 * np.arange(1, m + 1) / m)[0]
        n_expected = 0 if not len(below) else int((p_expected <= p_sorted[below[-1]]).sum())
        assert abs(model["VoxelsSurviving"] - n_expected) <= max(2, 0.002 * n_expected)  # float32 ties at the edge
        clusters = out / GROUP / f"task-motor_{SPACE}_contrast-{label}_stat-z_clusters.tsv"
        cluster_side = json.loads(naming_sidecar(clusters).read_text())
        assert all(cluster_side[c]["Description"] for c in read_tsv(clusters).columns)
        surviving = tested & (z >= model["Threshold"]) if model["Threshold"] is not None else tested & False
        if state == "MOTOR_lh":  # the known difference is found, and not much more
            assert (surviving & region).sum() >= 0.9 * region.sum()
            assert (surviving & ~region).sum() <= 0.05 * surviving.sum() + 5
            table = read_tsv(clusters)
            peak = np.linalg.inv(nib.load(path).affine) @ np.array([*table.loc[0, ["x", "y", "z"]], 1.0])
            assert region[tuple(int(round(v)) for v in peak[:3])]
        else:  # the others have less relevance there: nothing survives "state > others" but noise
            assert (surviving & region).sum() == 0 and surviving.sum() <= 5
        checked += 1
    summary = read_tsv(out / GROUP / "task-motor_desc-contrasts_summary.tsv")
    assert set(summary["contrast"]) >= {s.replace("_", "") for s in STATES}
    assert set(summary.loc[summary["kind"] == "mean", "correction"]) == {"not tested"}
    assert checked == 3


def naming_sidecar(path):
    from deeplight_bids.derivatives.naming import sidecar_of

    return sidecar_of(path)


def test_correct_only_maps_match(varied_out):
    out, _ = varied_out
    inside = _mask(out)
    means = {s: [] for s in STATES}
    for _sub, (path, frame) in _predictions(out).items():
        rel = path.with_name(
            path.name.replace("_desc-predictions_timeseries.tsv", f"_{SPACE}_desc-relevance_bold.nii.gz")
        )
        data = np.asarray(nib.load(rel).dataobj, dtype=np.float64)  # whole 4D: fine for 15 volumes
        for state in STATES:
            rows = frame.index[
                (frame["correct"] == 1) & (frame["true_state"] == state) & (frame["lrp_target"] == state)
            ]
            if len(rows):
                means[state].append(data[..., frame.loc[rows, "volume"].to_numpy()].mean(axis=-1))
    checked = 0
    for state, arrays in means.items():
        label = state.replace("_", "")
        path = out / GROUP / f"task-motor_{SPACE}_contrast-{label}_stat-effect_desc-correct_statmap.nii.gz"
        if not arrays:
            assert not path.exists()
            continue
        got = nib.load(path).get_fdata()
        expected = np.mean(arrays, axis=0)
        np.testing.assert_allclose(got[inside], expected[inside], rtol=1e-5, atol=1e-6 * np.abs(expected).max())
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["NumberOfParticipants"] == len(arrays) and sidecar["CorrectOnly"] is True
        checked += 1
    assert checked >= 2


def test_every_tsv_has_a_sidecar_describing_its_columns(varied_out):
    out, _ = varied_out
    tsvs = sorted((out / GROUP).glob("*.tsv"))
    # 5 + significance, significancegroup, faithfulness, quality (quality.group_quality) + contrasts (no cluster
    # table: the random model's maps are 0 for two states, so no contrast between states is computed) + the pooled
    # GLM agreement (glm.group) + the cluster table of each state's group GLM contrast (glm.group.write_glm_group_maps)
    glm_clusters = [p for p in tsvs if p.name.endswith("_desc-glm_clusters.tsv")]
    assert len(glm_clusters) == 3  # one per state (the GLM maps are not the random model's: all three are tested)
    assert len(tsvs) == 11 + len(glm_clusters)
    for path in tsvs:
        sidecar = json.loads(path.with_suffix(".json").read_text())
        for column in read_tsv(path).columns:
            assert sidecar.get(column, {}).get("Description"), (path.name, column)


def test_iter_volumes_matches_nibabel(varied_out):
    out, _ = varied_out
    path = next(out.glob(f"sub-01/func/*_{SPACE}_desc-relevance_bold.nii.gz"))
    full = np.asarray(nib.load(path).dataobj)
    wanted = [0, 3, 4, 14]
    from deeplight_bids.readback import iter_volumes

    got = dict(iter_volumes(path, wanted, chunk=4))
    assert sorted(got) == wanted
    for i in wanted:
        np.testing.assert_array_equal(got[i], full[..., i])

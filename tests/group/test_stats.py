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
    m = stats.decoding_metrics(true, pred)
    assert m["n_labelled"] == 6 and m["n_correct"] == 4
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m["chance_level"] == pytest.approx(1 / 2)
    empty = stats.decoding_metrics([], [])
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


def test_group_maps_match_scipy(varied_out):
    out, _ = varied_out
    inside = _mask(out)
    checked = 0
    for state in STATES:
        label = state.replace("_", "")
        maps = sorted(out.glob(f"sub-*/func/*_task-motor_{SPACE}_label-{label}_desc-mean_relevance.nii.gz"))
        assert len(maps) == 3
        data = np.stack([nib.load(p).get_fdata() for p in maps])
        mean_img = nib.load(out / GROUP / f"task-motor_{SPACE}_contrast-{label}_stat-effect_statmap.nii.gz")
        t_img = nib.load(out / GROUP / f"task-motor_{SPACE}_contrast-{label}_stat-t_statmap.nii.gz")
        np.testing.assert_allclose(mean_img.affine, nib.load(maps[0]).affine)
        mean = mean_img.get_fdata()
        scale = np.abs(data).max()
        np.testing.assert_allclose(mean[inside], data.mean(axis=0)[inside], rtol=1e-5, atol=1e-6 * scale)
        assert np.all(mean[~inside] == 0)
        sidecar = json.loads((out / GROUP / f"task-motor_{SPACE}_contrast-{label}_stat-t_statmap.json").read_text())
        assert sidecar["NumberOfParticipants"] == 3 and sidecar["DegreesOfFreedom"] == 2
        assert sidecar["Model"]["States"] == STATES and sidecar["Resolution"]
        t_expected = sps.ttest_1samp(data[:, inside], 0.0, axis=0).statistic
        t_got = t_img.get_fdata()[inside]
        ok = np.isfinite(t_expected) & (data[:, inside].std(axis=0) > 0)
        if not ok.any():  # the random model gives all-zero relevance for some targets: t is 0 then
            assert np.all(t_img.get_fdata() == 0)
            continue
        checked += 1
        # relevance is masked to each run's brain mask: template voxels outside every run's mask are 0
        assert ok[np.abs(data[:, inside]).max(axis=0) > 0].mean() > 0.9
        np.testing.assert_allclose(t_got[ok], t_expected[ok], rtol=1e-4, atol=1e-4)
        assert np.all(t_got[~ok] == 0) and np.all(t_img.get_fdata()[~inside] == 0)
    assert checked >= 1


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
    assert len(tsvs) == 9  # 5 + significance, significancegroup, faithfulness, quality (quality.group_quality)
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

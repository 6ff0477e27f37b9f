"""Second-level inference (group/inference.py) and contrasts between states (group/contrasts.py).

Synthetic per-participant maps on a small grid whose true differences are known: a region
added to one state's maps.  The statistics are checked against scipy / numpy formulas,
the corrected thresholds against their error rates over repeated seeds (a few seeds in the
fast lane, more under ``slow``).
"""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from deeplight_bids.derivatives import naming
from deeplight_bids.group import contrasts, inference
from deeplight_bids.prepare.grid import REFERENCE_AFFINE

SHAPE = (12, 12, 12)
REGION = np.zeros(SHAPE, bool)
REGION[3:6, 3:6, 3:6] = True  # 27 of 1728 voxels
STATES = ["A", "B", "C"]


def _mask():
    return nib.Nifti1Image(np.ones(SHAPE, np.uint8), REFERENCE_AFFINE)


def _state_maps(seed, n, effect=2.0, scale_c=1.0):
    """``{state: {subject: map}}``: a shared positive pattern + noise per map; ``effect`` added to A in REGION.

    Relevance-like: positive everywhere (1 + pattern), the noise of each map SD 0.25, the
    region's extra relevance ``effect`` times the noise SD of a participant's difference map.
    ``scale_c`` multiplies C's whole map (a state explained with larger logits).
    """
    rng = np.random.default_rng(seed)
    pattern = 1.0 + 0.2 * rng.random(SHAPE)
    out = {s: {} for s in STATES}
    sd = 0.25
    diff_sd = sd * np.sqrt(1 + 0.5)  # SD of A - mean(B, C) per voxel
    for i in range(n):
        sub = f"{i + 1:02d}"
        for s in STATES:
            data = pattern + sd * rng.standard_normal(SHAPE)
            if s == "A":
                data = data + effect * diff_sd * REGION
            if s == "C":
                data = data * scale_c
            out[s][sub] = data
    return out


def _test(label):
    return next(c for c in contrasts.state_contrasts(STATES) if c.label == label)


def _infer(per_state, label, scaling="brain-mean", **kwargs):
    subjects, arrays, left_out = contrasts.participant_maps(
        per_state, _test(label), mask=np.ones(SHAPE, bool), scaling=scaling
    )
    assert not left_out
    return inference.second_level_inference(arrays, _mask(), **kwargs)


# ------------------------------------------------------------------------------ statistics by formula
def test_one_sample_maps_match_scipy():
    rng = np.random.default_rng(3)
    maps = [rng.normal(0.3, 1.0, SHAPE) for _ in range(6)]
    res = inference.second_level_inference(maps, _mask(), correction="none")
    data = np.stack(maps)
    t = sps.ttest_1samp(data, 0.0, axis=0).statistic
    p = sps.t.sf(t, 5)
    np.testing.assert_allclose(res.effect, data.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.t, t, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.p, p, rtol=1e-3, atol=1e-6)  # one-sided, H1: effect > 0
    np.testing.assert_allclose(res.z, sps.norm.isf(p), rtol=1e-3, atol=1e-3)
    assert res.dof == 5 and res.correction == "none" and res.surviving is None and res.clusters is None
    assert res.n_tested == res.n_mask == np.prod(SHAPE)


def test_general_design_matches_ols():
    """A covariate's slope, tested with an intercept: t = c'b / sqrt(s2 c'(X'X)^-1 c), df = n - 2."""
    rng = np.random.default_rng(4)
    n = 9
    age = rng.normal(size=n)
    maps = [rng.normal(size=SHAPE) + 0.8 * a * REGION for a in age]
    design = pd.DataFrame({"intercept": np.ones(n), "age": age})
    res = inference.second_level_inference(maps, _mask(), design=design, contrast="age", correction="fdr")
    x = design.to_numpy()
    y = np.stack(maps).reshape(n, -1)
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    resid = y - x @ beta
    s2 = (resid**2).sum(axis=0) / (n - 2)
    c = np.array([0.0, 1.0])
    t = (c @ beta) / np.sqrt(s2 * (c @ np.linalg.inv(x.T @ x) @ c))
    np.testing.assert_allclose(res.effect.ravel(), c @ beta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.t.ravel(), t, rtol=1e-4, atol=1e-4)
    assert res.dof == 7
    # the same with a weight vector
    again = inference.second_level_inference(maps, _mask(), design=design, contrast=[0, 1], correction="none")
    np.testing.assert_allclose(again.t, res.t)
    with pytest.raises(ValueError, match="design column"):
        inference.second_level_inference(maps, _mask(), design=design, contrast="sex")
    with pytest.raises(ValueError, match="name the contrast"):
        inference.second_level_inference(maps, _mask(), design=design)


def test_constant_voxels_are_not_tested():
    rng = np.random.default_rng(5)
    maps = [rng.normal(size=SHAPE) for _ in range(4)]
    for m in maps:
        m[0] = 0.0  # the slab x = 0: the same value in every map (e.g. outside every run's mask)
    res = inference.second_level_inference(maps, _mask())
    assert res.n_tested == np.prod(SHAPE) - 144
    assert np.all(res.t[0] == 0) and np.all(res.z[0] == 0) and np.all(res.p[0] == 1)
    assert np.all(np.isfinite(res.t)) and np.all(np.isfinite(res.z))


def test_fwe_needs_enough_sign_patterns():
    per_state = _state_maps(0, 5)
    res = _infer(
        {s: dict(list(m.items())[:4]) for s, m in per_state.items()}, "AVsOthers", correction="fwe-permutation"
    )
    assert res.correction == "not applied" and res.surviving is None and res.fwe_p is None
    assert "4 participants" in res.note and "16 sign patterns" in res.note and "needs 5" in res.note
    assert inference.permutation_allowed(inference.intercept_design(5), 0.05)[0]
    assert not inference.permutation_allowed(inference.intercept_design(5), 0.01)[0]
    res = _infer(per_state, "AVsOthers", correction="fwe-permutation", n_permutations=100)
    assert res.correction == "fwe-permutation" and res.fwe_p is not None and res.n_permutations == 100
    # one-sided max-t over sign flips of 5 maps: no p below 1/32 (up to the random draw of the flips)
    assert res.fwe_p.min() >= 1 / 32 - 0.02


# ------------------------------------------------------------------------------ known differences
def _error_rates(seeds, n=10, effect=3.0, permutations=200):
    """Per seed: FDR and FWE results of AVsOthers (true region) and BVsOthers (no true positive effect)."""
    rows = []
    for seed in seeds:
        per_state = _state_maps(seed, n, effect=effect)
        fdr = _infer(per_state, "AVsOthers", correction="fdr")
        fwe = _infer(per_state, "AVsOthers", correction="fwe-permutation", n_permutations=permutations, seed=seed)
        null = _infer(per_state, "BVsOthers", correction="fdr")
        # unscaled, the voxels outside the region have no difference at all (scaled, A's extra relevance in the
        # region lowers the rest of A's map a little: conservative there)
        raw = _infer(per_state, "AVsOthers", scaling="none", correction="none")
        outside = ~REGION
        rows.append(
            {
                "fdr_power": (fdr.surviving & REGION).sum() / REGION.sum(),
                "fdr_fdp": (fdr.surviving & outside).sum() / max(fdr.n_surviving, 1),
                "p_outside": (raw.p[outside] < 0.05).mean(),
                "p_outside_scaled": (fdr.p[outside] < 0.05).mean(),
                "fwe_power": (fwe.surviving & REGION).sum() / REGION.sum(),
                "fwe_any_false": bool((fwe.surviving & outside).any()),
                "null_any": null.n_surviving > 0,
                "null_share": null.surviving_share,
            }
        )
    return pd.DataFrame(rows)


def _check_rates(rates, alpha=0.05):
    k = len(rates)
    # the region is found
    assert rates["fdr_power"].mean() >= 0.9 and rates["fwe_power"].mean() >= 0.5
    # uncorrected one-sided p outside the region is calibrated: about alpha of the null voxels, not more
    se = np.sqrt(alpha * (1 - alpha) / (k * (~REGION).sum()))
    assert abs(rates["p_outside"].mean() - alpha) <= 4 * se + 0.005
    assert rates["p_outside_scaled"].mean() <= alpha + 4 * se + 0.005
    # FDR: the mean false discovery proportion stays at q (BH: E[FDP] <= q m0/m); binomial slack for k seeds
    assert rates["fdr_fdp"].mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / k)
    # FWE: seeds with any false positive, and a contrast with no true positive effect, at most alpha (+ slack)
    slack = 3 * np.sqrt(alpha * (1 - alpha) / k)
    assert rates["fwe_any_false"].mean() <= alpha + slack
    assert rates["null_any"].mean() <= alpha + slack
    assert rates["null_share"].max() <= alpha


def test_region_is_found_at_the_nominal_error_rates():
    _check_rates(_error_rates(range(4)))


@pytest.mark.slow
def test_region_is_found_at_the_nominal_error_rates_many_seeds():
    _check_rates(_error_rates(range(100, 200)))


def test_brain_mean_scaling_compares_where_not_how_much():
    """C's maps are twice as large everywhere: unscaled, 'C > others' holds over the whole grid; scaled, nowhere."""
    per_state = _state_maps(7, 10, effect=3.0, scale_c=2.0)
    raw = _infer(per_state, "CVsOthers", scaling="none")
    scaled = _infer(per_state, "CVsOthers", scaling="brain-mean")
    assert raw.surviving_share > 0.9
    assert scaled.surviving_share <= 0.05
    region = _infer(per_state, "AVsOthers", scaling="brain-mean")
    assert (region.surviving & REGION).sum() >= 0.9 * REGION.sum()


def test_cluster_table_locates_the_region():
    per_state = _state_maps(11, 10, effect=3.0)
    res = _infer(per_state, "AVsOthers")
    table = res.clusters
    assert list(table.columns) == list(inference.CLUSTER_COLUMNS)
    first = table.iloc[0]
    peak = np.linalg.inv(REFERENCE_AFFINE) @ np.array([first["x"], first["y"], first["z"], 1.0])
    ijk = tuple(int(round(v)) for v in peak[:3])
    assert REGION[ijk]
    assert first["peak_stat"] == pytest.approx(res.z[res.surviving].max(), rel=1e-4)
    # the region's cluster holds its surviving voxels: 8 mm^3 each on the 2 mm grid
    assert first["cluster_size_mm3"] >= 8 * 0.9 * REGION.sum()
    none = inference.cluster_table(res.z, np.zeros(SHAPE, bool), REFERENCE_AFFINE)
    assert none.empty and list(none.columns) == list(inference.CLUSTER_COLUMNS)


def test_written_maps_tables_and_names(tmp_path):
    per_state = _state_maps(12, 6, effect=3.0)
    res = _infer(per_state, "AVsOthers", correction="fwe-permutation", n_permutations=100)
    paths = naming.group_contrast_outputs(tmp_path, "motor", naming.contrast_label("MOTOR_lh", "Others"))
    written = inference.write_inference(res, paths, {"Description": "test", "Task": "motor"})
    names = {k: p.name for k, p in written.items()}
    stem = "task-motor_space-MNI152NLin6Asym_res-2_contrast-MOTORlhVsOthers"
    assert names == {
        "effect": f"{stem}_stat-effect_statmap.nii.gz",
        "t": f"{stem}_stat-t_statmap.nii.gz",
        "z": f"{stem}_stat-z_statmap.nii.gz",
        "p": f"{stem}_stat-p_statmap.nii.gz",
        "fwe_p": f"{stem}_stat-p_desc-fwe_statmap.nii.gz",
        "clusters": f"{stem}_stat-z_clusters.tsv",
    }
    z = nib.load(written["z"])
    np.testing.assert_allclose(z.get_fdata(), res.z, rtol=1e-6)
    assert int(z.header["sform_code"]) == 4
    side = json.loads(naming.sidecar_of(written["z"]).read_text())
    model = side["StatisticalModel"]
    assert side["Statistic"] == "z" and side["Task"] == "motor"
    assert model["Correction"] == "fwe-permutation" and model["NumberOfPermutations"] == 100
    assert model["DegreesOfFreedom"] == 5 and model["Design"] == {"intercept": [1.0] * 6}
    assert model["VoxelsSurviving"] == res.n_surviving
    table = pd.read_csv(written["clusters"], sep="\t")
    assert list(table.columns) == list(inference.CLUSTER_COLUMNS) and len(table) == len(res.clusters)
    table_side = json.loads(naming.sidecar_of(written["clusters"]).read_text())
    assert set(inference.CLUSTER_COLUMNS) <= set(table_side) and "FWE alpha = 0.05" in table_side["Description"]
    # correct-only outputs keep their own names
    assert naming.group_contrast_outputs(tmp_path, "motor", "AVsB", desc="correct")["fwe_p"].name.endswith(
        "_contrast-AVsB_stat-p_desc-correctfwe_statmap.nii.gz"
    )


def test_effect_only_below_three_participants():
    per_state = _state_maps(1, 2)
    res = _infer(per_state, "AVsOthers")
    assert res.t is None and res.correction == "not tested" and res.clusters is None
    assert "effect map only" in res.note and "3 participants" in res.note
    assert res.threshold_text().startswith("effect only")


# ------------------------------------------------------------------------------ contrasts and attribution
def test_state_contrast_labels():
    three = contrasts.state_contrasts(["MOTOR_lh", "MOTOR_rh", "MOTOR_t"])
    assert [c.label for c in three] == ["MOTORlhVsOthers", "MOTORrhVsOthers", "MOTORtVsOthers"]
    assert three[0].weights() == {"MOTOR_lh": 1.0, "MOTOR_rh": -0.5, "MOTOR_t": -0.5}
    two = contrasts.state_contrasts(["MOTOR_lh", "MOTOR_rh"], pairwise=True)
    assert [c.label for c in two] == ["MOTORlhVsMOTORrh", "MOTORrhVsMOTORlh"]
    pairs = contrasts.state_contrasts(["a", "b", "c"], pairwise=True, against_zero=True)
    labels = [c.label for c in pairs]
    assert labels[:3] == ["a", "b", "c"] and len(labels) == 3 + 3 + 6 and "cVsb" in labels
    assert contrasts.state_contrasts(["a"]) == []


def test_participants_without_every_state_are_left_out():
    per_state = _state_maps(2, 4)
    del per_state["B"]["02"]
    per_state["C"]["03"] = np.zeros(SHAPE)
    subjects, arrays, left = contrasts.participant_maps(
        per_state, _test("AVsOthers"), mask=np.ones(SHAPE, bool), scaling="brain-mean"
    )
    assert subjects == ["01", "04"] and len(arrays) == 2
    assert left == {"02": "no map of B", "03": "relevance 0 everywhere in the brain mask for C"}
    s, a, _ = contrasts.participant_maps(per_state, _test("AVsOthers"), scaling="none")
    expected = per_state["A"]["01"] - (per_state["B"]["01"] + per_state["C"]["01"]) / 2
    np.testing.assert_allclose(a[0], expected)


def test_attribution_defaults_to_the_unsigned_presets():
    assert contrasts.attribution_of({"Model": {"Architecture": "2D"}})["Method"] == "deeplight_2d"
    record = contrasts.attribution_of({})
    assert record == {"Method": "preset_b_flat", "Signed": False, "Recorded": False}
    signed = {"Attribution": {"Method": "gradient", "Family": "gradient", "Signed": True, "Parameters": {}}}
    rec, is_signed = contrasts.task_attribution([signed, signed])
    assert is_signed and rec["Method"] == "gradient" and rec["Recorded"]
    rec, is_signed = contrasts.task_attribution([signed, {}])
    assert not is_signed and rec["Method"] == ["gradient", "preset_b_flat"]
    assert "not signed" in contrasts.against_zero_note(*contrasts.task_attribution([{}]))

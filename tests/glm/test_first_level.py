"""The GLM of one run: nilearn's FirstLevelModel's maps, computed in voxel chunks on the decoder's reading."""

import warnings

import numpy as np
import pandas as pd
import pytest

from deeplight_bids.glm.agreement import region_share_top
from deeplight_bids.glm.design import state_design
from deeplight_bids.glm.first_level import contrasts_of, design_matrix, fit_glm
from deeplight_bids.prepare.clean import masked_signals
from deeplight_bids.prepare.labels import read_events, resolve_state_map


@pytest.fixture(scope="module")
def run_data(synthetic_dataset):
    run = synthetic_dataset.runs[0]
    events = read_events(run.events)
    n_volumes = synthetic_dataset.n_volumes
    design = state_design(events, resolve_state_map("motor"), n_volumes, synthetic_dataset.t_r)
    matrix = design_matrix(design, n_volumes, synthetic_dataset.t_r, 1 / 128)
    signals, mask = masked_signals(run.bold, run.mask, 3.0)
    return run, design, matrix, signals, mask


def test_maps_equal_first_level_model(run_data, synthetic_dataset):
    """The same t, effect and variance as FirstLevelModel fitted on the whole image (OLS, its own masking and design)."""
    import nibabel as nib
    from nilearn.glm.first_level import FirstLevelModel

    run, design, matrix, signals, mask = run_data
    contrasts = contrasts_of(design)
    ours = fit_glm(signals, matrix, contrasts, "ols", chunk=7000)
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), nib.load(run.mask).affine)
    flm = FirstLevelModel(
        t_r=synthetic_dataset.t_r,
        mask_img=mask_img,
        smoothing_fwhm=3.0,
        noise_model="ols",
        hrf_model="glover",
        drift_model="cosine",
        high_pass=1 / 128,
        signal_scaling=0,
        minimize_memory=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "a mask was given at masker creation": the one we want
        flm.fit(run.bold, events=design.events)  # FirstLevelModel builds its own design from the same events
    assert list(flm.design_matrices_[0].columns) == list(matrix.columns)
    for contrast in contrasts:
        vector = contrast.vector(list(matrix.columns))
        for stat, output in (("t", "stat"), ("effect", "effect_size"), ("variance", "effect_variance")):
            theirs = np.asarray(flm.compute_contrast(vector, stat_type="t", output_type=output).dataobj)[mask]
            np.testing.assert_allclose(
                ours.maps[contrast.label][stat], theirs, rtol=2e-3, atol=2e-4 * np.abs(theirs).max()
            )
    assert ours.dof == len(matrix) - np.linalg.matrix_rank(matrix.to_numpy())
    # the planted region of a state is where its state-vs-others t-map peaks
    t = np.zeros(mask.shape, np.float32)
    t[mask] = ours.maps["MOTORlhVsOthers"]["t"]
    region = synthetic_dataset.regions["lh"]
    # as many top voxels as the region has: chance share = the region's share of the brain (0.2 %)
    assert region_share_top(t, region, mask, 100 * region.sum() / mask.sum()) > 0.3


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_voxel_chunks_change_nothing(run_data, noise_model):
    """Per-voxel fits (AR(1) coefficients are binned by value), so any chunking gives the same maps."""
    _, design, matrix, signals, _ = run_data
    contrasts = contrasts_of(design)[:2]
    part = signals[:, :6000]
    whole = fit_glm(part, matrix, contrasts, noise_model, chunk=6000)
    chunked = fit_glm(part, matrix, contrasts, noise_model, chunk=1000)
    for c in contrasts:
        for stat in ("effect", "variance", "t"):
            np.testing.assert_allclose(chunked.maps[c.label][stat], whole.maps[c.label][stat], rtol=1e-5, atol=1e-6)


def test_ar1_differs_from_ols(run_data):
    _, design, matrix, signals, _ = run_data
    contrast = contrasts_of(design)[:1]
    ols = fit_glm(signals[:, :3000], matrix, contrast, "ols").maps[contrast[0].label]["t"]
    ar1 = fit_glm(signals[:, :3000], matrix, contrast, "ar1").maps[contrast[0].label]["t"]
    assert not np.allclose(ols, ar1) and np.corrcoef(ols, ar1)[0, 1] > 0.9


def test_events_frame_is_what_nilearn_reads(run_data):
    _, design, _, _, _ = run_data
    assert list(design.events.columns) == ["onset", "duration", "trial_type"]
    assert isinstance(design.events, pd.DataFrame) and set(design.events["trial_type"]) == {
        "MOTORlh",
        "MOTORrh",
        "MOTORt",
    }

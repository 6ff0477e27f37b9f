"""Preprocessing of one run (reference section 2): mask, smooth, detrend, high-pass, z-score."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from scipy import signal as sp_signal

from deeplight_bids.exceptions import ImageError, MetadataError, UsageError
from deeplight_bids.prepare.clean import PreparedRun, min_volumes, prepare_run
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE

# A small box of brain so tests stay fast; voxel indices (x, y, z) on the reference grid.
BOX = (slice(40, 46), slice(50, 56), slice(40, 46))
CENTER = (43, 53, 43)


def _box_mask():
    mask = np.zeros(REFERENCE_SHAPE, dtype=np.uint8)
    mask[BOX] = 1
    return nib.Nifti1Image(mask, REFERENCE_AFFINE)


def _bold(series_by_voxel, n_volumes, rng=None, noise=0.0, base=100.0):
    """4D reference-grid image: ``base`` (+ optional noise) in the box, chosen voxels set."""
    data = np.zeros(REFERENCE_SHAPE + (n_volumes,), dtype=np.float32)
    box = base + (noise * rng.standard_normal((6, 6, 6, n_volumes)) if noise else 0.0)
    data[BOX] = box
    for voxel, series in series_by_voxel.items():
        data[voxel] = series
    return nib.Nifti1Image(data, REFERENCE_AFFINE)


def _zscore(x):
    x = np.asarray(x, dtype=float)
    return (x - x.mean()) / x.std()


def _column(prepared, voxel):
    """Time series of one voxel (x, y, z) of a PreparedRun."""
    return prepared.volumes(0, prepared.n_volumes)[(slice(None),) + voxel]


# ----------------------------------------------------------------------------- z-score


def test_zscore_inside_mask_and_zero_outside():
    rng = np.random.default_rng(1)
    n = 25
    prepared = prepare_run(_bold({}, n, rng, noise=5.0), _box_mask(), 2.0)
    assert isinstance(prepared, PreparedRun)
    assert prepared.signals.dtype == np.float32 and prepared.signals.shape == (n, 216)
    assert prepared.mask.dtype == bool and prepared.mask.shape == REFERENCE_SHAPE
    assert prepared.mask.sum() == 216 and prepared.mask[BOX].all()
    assert prepared.n_volumes == n and prepared.t_r == 2.0
    np.testing.assert_allclose(prepared.signals.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(prepared.signals.std(axis=0), 1.0, atol=1e-5)  # ddof=0
    assert not np.allclose(prepared.signals.std(axis=0, ddof=1), 1.0, atol=1e-3)
    volumes = prepared.volumes(0, n)
    assert volumes.shape == (n,) + REFERENCE_SHAPE and volumes.dtype == np.float32
    assert np.count_nonzero(volumes[:, ~prepared.mask]) == 0
    np.testing.assert_array_equal(volumes[:, prepared.mask], prepared.signals)


def test_volumes_batches_match_and_check_bounds():
    rng = np.random.default_rng(2)
    prepared = prepare_run(_bold({}, 22, rng, noise=1.0), _box_mask(), 2.0, high_pass=None)
    np.testing.assert_array_equal(prepared.volumes(5, 8), prepared.volumes(0, 22)[5:8])
    assert prepared.volumes(3, 3).shape == (0,) + REFERENCE_SHAPE
    for start, stop in ((-1, 2), (3, 2), (0, 23)):
        with pytest.raises(IndexError):
            prepared.volumes(start, stop)
    with pytest.raises(TypeError):
        prepared.volumes(0.0, 2)


def test_constant_voxel_is_zero_and_nan_becomes_finite():
    rng = np.random.default_rng(3)
    n = 24
    series = {(41, 51, 41): np.full(n, 7.0), (44, 54, 44): rng.standard_normal(n) + 100}
    img = _bold(series, n, rng, noise=1.0)
    data = np.asarray(img.dataobj)  # the in-memory array itself
    data[42, 52, 42, 5] = np.nan
    data[43, 52, 42, 6] = np.inf
    prepared = prepare_run(img, _box_mask(), 2.0, smoothing_fwhm=None, high_pass=None)
    assert np.isfinite(prepared.signals).all()
    np.testing.assert_array_equal(_column(prepared, (41, 51, 41)), 0.0)
    np.testing.assert_allclose(_column(prepared, (44, 54, 44)).std(), 1.0, atol=1e-5)


def test_threads_give_the_same_bits(monkeypatch):
    """The per-voxel cleaning on several threads (``--nprocs``) is bit-identical to one thread."""
    from deeplight_bids.prepare import clean

    monkeypatch.setattr(clean, "VOXEL_CHUNK", 50)  # 216 voxels: 5 blocks, the last one short
    rng = np.random.default_rng(4)
    img = _bold({(41, 51, 41): np.full(30, 7.0)}, 30, rng, noise=3.0)
    one = prepare_run(img, _box_mask(), 2.0, n_threads=1)
    several = prepare_run(img, _box_mask(), 2.0, n_threads=3)
    assert np.count_nonzero(one.signals) > 0
    np.testing.assert_array_equal(several.signals, one.signals)


def test_all_constant_run_is_all_zero():
    prepared = prepare_run(_bold({}, 20, base=50.0), _box_mask(), 2.0)
    assert np.count_nonzero(prepared.signals) == 0


# ----------------------------------------------------------------------------- detrend / filter / smooth


def test_detrend_removes_a_linear_trend():
    n = 40
    t = np.arange(n) * 2.0
    wiggle = np.sin(2 * np.pi * t / 12.0) + 0.3 * np.cos(2 * np.pi * t / 7.0)
    voxel = (43, 53, 43)
    prepared = prepare_run(
        _bold({voxel: 100 + 0.8 * t + wiggle}, n), _box_mask(), 2.0, smoothing_fwhm=None, high_pass=None
    )
    out = _column(prepared, voxel)
    expected = _zscore(sp_signal.detrend(100 + 0.8 * t + wiggle))
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert abs(np.corrcoef(out, t)[0, 1]) < 1e-3
    # the raw series is dominated by the trend: without detrending this test could not pass
    assert np.corrcoef(100 + 0.8 * t + wiggle, t)[0, 1] > 0.95


def test_high_pass_removes_a_slow_drift():
    n, t_r = 120, 2.0
    t = np.arange(n) * t_r
    slow = 3.0 * np.sin(2 * np.pi * t / 240.0)  # 0.0042 Hz, below 1/128 Hz
    fast = 0.5 * np.sin(2 * np.pi * t / 16.0)  # 0.0625 Hz
    voxel = (43, 53, 43)
    img = _bold({voxel: 100 + slow + fast}, n)
    filtered = _column(prepare_run(img, _box_mask(), t_r, smoothing_fwhm=None), voxel)
    unfiltered = _column(prepare_run(img, _box_mask(), t_r, smoothing_fwhm=None, high_pass=None), voxel)
    assert np.corrcoef(filtered, fast)[0, 1] > 0.95
    assert abs(np.corrcoef(filtered, slow)[0, 1]) < 0.1
    assert np.corrcoef(unfiltered, fast)[0, 1] < 0.5  # detrending alone leaves the drift


def test_smoothing_is_applied_with_the_given_fwhm():
    rng = np.random.default_rng(4)
    n = 24
    spike = rng.standard_normal(n) * 10 + 100
    img = _bold({CENTER: spike}, n)
    mask = _box_mask()
    neighbour, far = (44, 53, 43), (45, 55, 45)
    smooth = prepare_run(img, mask, 2.0, smoothing_fwhm=3.0, high_pass=None)
    sharp = prepare_run(img, mask, 2.0, smoothing_fwhm=None, high_pass=None)
    assert np.corrcoef(_column(smooth, neighbour), sp_signal.detrend(spike))[0, 1] > 0.9999
    np.testing.assert_array_equal(_column(sharp, neighbour), 0.0)  # constant without smoothing
    # amplitude before z-scoring: FWHM 3 mm = sigma 0.637 voxel of 2 mm -> neighbour gets
    # exp(-1 / (2 sigma^2)) of the centre's weight; check via the raw masking step.
    from nilearn.masking import apply_mask

    raw = apply_mask(img, mask, smoothing_fwhm=3.0)
    idx = np.flatnonzero(np.asarray(mask.dataobj, dtype=bool))
    flat = np.ravel_multi_index
    col = {v: int(np.searchsorted(idx, flat(v, REFERENCE_SHAPE))) for v in (CENTER, neighbour, far)}
    sigma = 3.0 / np.sqrt(8 * np.log(2)) / 2.0
    ratio = raw[:, col[neighbour]].std() / raw[:, col[CENTER]].std()
    assert ratio == pytest.approx(np.exp(-1 / (2 * sigma**2)), rel=0.05)
    far_ratio = raw[:, col[far]].std() / raw[:, col[CENTER]].std()
    assert far_ratio < 0.01  # (2, 2, 2) voxels away: exp(-12 / (2 sigma^2)) ~ 4e-7


def test_high_pass_none_and_zero_fwhm_work():
    rng = np.random.default_rng(5)
    prepared = prepare_run(_bold({}, 3, rng, noise=1.0), _box_mask(), 2.0, smoothing_fwhm=0, high_pass=None)
    assert prepared.n_volumes == 3
    np.testing.assert_allclose(prepared.signals.std(axis=0), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- boundary checks


def test_3d_bold_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "sub-01_task-x_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(REFERENCE_SHAPE, np.float32), REFERENCE_AFFINE), path)
    with pytest.raises(ImageError, match="expected a 4D BOLD series") as info:
        prepare_run(path, _box_mask(), 2.0)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_4d_mask_is_refused_and_single_volume_4d_mask_accepted(tmp_path):
    rng = np.random.default_rng(6)
    bold = _bold({}, 20, rng, noise=1.0)
    mask4 = np.repeat(np.asarray(_box_mask().dataobj)[..., None], 2, axis=3)
    path = tmp_path / "mask4d.nii.gz"
    nib.save(nib.Nifti1Image(mask4, REFERENCE_AFFINE), path)
    with pytest.raises(ImageError, match="expected a 3D brain mask") as info:
        prepare_run(bold, path, 2.0)
    assert str(path) in str(info.value)
    one = nib.Nifti1Image(mask4[..., :1], REFERENCE_AFFINE)
    assert prepare_run(bold, one, 2.0).mask.sum() == 216


def test_empty_mask_is_refused():
    empty = nib.Nifti1Image(np.zeros(REFERENCE_SHAPE, np.uint8), REFERENCE_AFFINE)
    with pytest.raises(ImageError, match="mask is empty"):
        prepare_run(_bold({}, 20), empty, 2.0)


def test_mask_not_overlapping_the_bold_is_refused():
    shifted = np.zeros(REFERENCE_SHAPE, np.uint8)
    shifted[10:16, 10:16, 10:16] = 1  # brain box elsewhere: BOLD is 0 there
    shifted[BOX][:2] = 1  # a third of the box overlaps: still refused (> 50 % empty)
    with pytest.raises(ImageError, match="same space") as info:
        prepare_run(_bold({}, 20), nib.Nifti1Image(shifted, REFERENCE_AFFINE), 2.0, source="sub-01_bold.nii.gz")
    assert "sub-01_bold.nii.gz" in str(info.value)
    shifted[BOX] = 1  # box fully inside: 216 of 432 voxels empty = 50 %, accepted
    assert prepare_run(_bold({}, 20), nib.Nifti1Image(shifted, REFERENCE_AFFINE), 2.0).mask.sum() == 432


def test_too_few_volumes():
    assert min_volumes(2.0, None) == 3
    needed = min_volumes(2.0, 1 / 128)
    assert needed > 3
    with pytest.raises(ImageError, match=f"need at least {needed}") as info:
        prepare_run(_bold({}, needed - 1), _box_mask(), 2.0, source="run-xyz")
    assert "run-xyz" in str(info.value)
    prepare_run(_bold({}, needed), _box_mask(), 2.0)  # exactly enough
    with pytest.raises(ImageError, match="need at least 3"):
        prepare_run(_bold({}, 2), _box_mask(), 2.0, high_pass=None)


@pytest.mark.parametrize("t_r", [0, -1.0, float("nan"), float("inf"), None, "two"])
def test_bad_repetition_time(t_r):
    with pytest.raises(MetadataError, match="RepetitionTime") as info:
        prepare_run(_bold({}, 20), _box_mask(), t_r, source="sub-01_bold.nii.gz")
    assert "sub-01_bold.nii.gz" in str(info.value)


def test_bad_options():
    with pytest.raises(UsageError, match="high-pass"):
        prepare_run(_bold({}, 20), _box_mask(), 2.0, high_pass=0.3)  # Nyquist is 0.25 Hz
    with pytest.raises(UsageError, match="FWHM"):
        prepare_run(_bold({}, 20), _box_mask(), 2.0, smoothing_fwhm=-1)


def test_unreadable_files_name_the_file(tmp_path, synthetic_dataset):
    run = synthetic_dataset.runs[0]
    missing = tmp_path / "nope_bold.nii.gz"
    with pytest.raises(ImageError, match="not found") as info:
        prepare_run(missing, run.mask, 2.0)
    assert str(missing) in str(info.value)

    garbage = tmp_path / "garbage_bold.nii.gz"
    garbage.write_bytes(gzip.compress(b"this is not a nifti file" * 20))
    with pytest.raises(ImageError) as info:
        prepare_run(garbage, run.mask, 2.0)
    assert str(garbage) in str(info.value) and "\n" not in str(info.value)

    truncated = tmp_path / "truncated_bold.nii.gz"
    truncated.write_bytes(run.bold.read_bytes()[:200_000])  # header intact, data cut
    with pytest.raises(ImageError, match="truncated or corrupt") as info:
        prepare_run(truncated, run.mask, 2.0)
    assert str(truncated) in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- on the synthetic dataset


def test_synthetic_run_keeps_the_planted_signal(synthetic_dataset, prepared_synthetic_run):
    from deeplight_bids.prepare.labels import read_events, resolve_state_map, volume_labels

    info, prepared = synthetic_dataset, prepared_synthetic_run
    assert prepared.n_volumes == info.n_volumes
    np.testing.assert_array_equal(prepared.mask, info.brain_mask)
    np.testing.assert_allclose(prepared.signals.std(axis=0), 1.0, atol=1e-4)
    labels = volume_labels(read_events(info.runs[0].events), prepared.n_volumes, info.t_r, resolve_state_map(info.task))
    volumes = prepared.volumes(0, prepared.n_volumes)
    for trial_type, region in info.regions.items():
        in_region = volumes[:, region].mean(axis=1)  # (n_volumes,)
        active = labels == info.state_map[trial_type]
        assert in_region[active].mean() - in_region[~active].mean() > 0.8  # ~0 without signal

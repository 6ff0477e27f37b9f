"""The reference grid: exact re-ordering of RAS copies, resampling of other grids, never mirrored."""

import nibabel as nib
import numpy as np
import pytest

from deeplight_bids.exceptions import ImageError
from deeplight_bids.prepare.clean import prepare_run
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE, is_on_reference_grid, to_reference_grid

RAS_AFFINE = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
AFFINE_3MM = np.array([[3.0, 0, 0, -90], [0, 3.0, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])
SHAPE_3MM = (61, 73, 61)
LEFT_BLOB = (-40.0, -20.0, 50.0)  # MNI mm: left hemisphere (x < 0)


def _world(shape, affine):
    ijk = np.indices(shape, dtype=float).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).T.reshape(shape + (3,))


def _blob_image(shape, affine, n_volumes=None, seed=0):
    """Image with value 1000 within 10 mm of LEFT_BLOB, small noise elsewhere (x, y, z[, t])."""
    blob = np.linalg.norm(_world(shape, affine) - np.array(LEFT_BLOB), axis=-1) <= 10.0
    rng = np.random.default_rng(seed)
    tail = () if n_volumes is None else (n_volumes,)
    data = rng.uniform(0, 1, shape + tail).astype(np.float32)
    data[blob] += 1000.0
    return nib.Nifti1Image(data, affine)


def _blob_world_x(img, threshold=500.0):
    data = np.asarray(img.dataobj)
    data = data if data.ndim == 3 else data[..., 0]
    return _world(img.shape[:3], img.affine)[data > threshold][:, 0]


def test_reference_grid_constants():
    assert REFERENCE_SHAPE == (91, 109, 91)
    assert REFERENCE_AFFINE[0, 0] < 0  # x stored right-to-left (LAS)
    # voxel (45, 63, 36) is the MNI origin
    np.testing.assert_allclose(REFERENCE_AFFINE @ [45, 63, 36, 1], [0, 0, 0, 1])


def test_is_on_reference_grid():
    assert is_on_reference_grid(nib.Nifti1Image(np.zeros(REFERENCE_SHAPE, np.uint8), REFERENCE_AFFINE))
    assert not is_on_reference_grid(nib.Nifti1Image(np.zeros(REFERENCE_SHAPE, np.uint8), RAS_AFFINE))
    assert not is_on_reference_grid(nib.Nifti1Image(np.zeros(SHAPE_3MM, np.uint8), AFFINE_3MM))


@pytest.mark.parametrize("n_volumes", [None, 3])
def test_ras_copy_is_bit_identical_and_not_mirrored(n_volumes):
    las = _blob_image(REFERENCE_SHAPE, REFERENCE_AFFINE, n_volumes)
    ras = nib.Nifti1Image(np.asarray(las.dataobj)[::-1].copy(), RAS_AFFINE)
    # same voxels in world space: the blob is at x < 0 in both files
    assert (_blob_world_x(las) < 0).all() and (_blob_world_x(ras) < 0).all()
    out = to_reference_grid(ras)
    assert is_on_reference_grid(out)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(las.dataobj))
    x = _blob_world_x(out)
    assert x.size > 400 and (x < 0).all()
    np.testing.assert_allclose(x.mean(), LEFT_BLOB[0], atol=1.0)
    # in the LAS array the left hemisphere is at high x indices (x_mm = 90 - 2 i)
    data = np.asarray(out.dataobj)
    blob_i = np.nonzero((data if data.ndim == 3 else data[..., 0]) > 500)[0]
    assert (blob_i > 45).all()


def test_reference_image_is_returned_unchanged():
    las = _blob_image(REFERENCE_SHAPE, REFERENCE_AFFINE)
    assert to_reference_grid(las) is las


def test_other_grid_is_resampled_and_the_blob_stays_on_its_side():
    img = _blob_image(SHAPE_3MM, AFFINE_3MM, n_volumes=2)
    out = to_reference_grid(img)
    assert is_on_reference_grid(out) and out.shape == REFERENCE_SHAPE + (2,)
    x = _blob_world_x(out)
    assert x.size > 300 and (x < 0).all()
    np.testing.assert_allclose(x.mean(), LEFT_BLOB[0], atol=2.0)


def test_mask_from_other_grid_stays_binary_with_nearest():
    blob = np.linalg.norm(_world(SHAPE_3MM, AFFINE_3MM) - np.array(LEFT_BLOB), axis=-1) <= 10.0
    out = to_reference_grid(nib.Nifti1Image(blob.astype(np.uint8), AFFINE_3MM), interpolation="nearest")
    values = np.unique(np.asarray(out.dataobj))
    assert set(values.tolist()) == {0, 1}
    assert (_world(REFERENCE_SHAPE, REFERENCE_AFFINE)[np.asarray(out.dataobj) > 0][:, 0] < 0).all()


def test_wrong_dimensionality():
    with pytest.raises(ImageError, match="expected a 3D or 4D image"):
        to_reference_grid(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)))


def test_3d_where_4d_expected_names_the_file(tmp_path):
    path = tmp_path / "sub-01_task-motor_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz"
    nib.save(_blob_image(REFERENCE_SHAPE, REFERENCE_AFFINE), path)
    mask = nib.Nifti1Image(np.ones(REFERENCE_SHAPE, np.uint8), REFERENCE_AFFINE)
    with pytest.raises(ImageError, match="expected a 4D BOLD series") as info:
        prepare_run(path, mask, 2.0)
    assert path.name in str(info.value)


# ----------------------------------------------------------------------------- whole runs


def test_prepared_ras_run_is_bit_identical_to_las(synthetic_dataset_ras, prepared_synthetic_run):
    run = synthetic_dataset_ras.runs[0]
    assert nib.load(run.bold).affine[0, 0] > 0  # really stored RAS
    prepared = prepare_run(run.bold, run.mask, synthetic_dataset_ras.t_r)
    np.testing.assert_array_equal(prepared.mask, prepared_synthetic_run.mask)
    np.testing.assert_array_equal(prepared.signals, prepared_synthetic_run.signals)


@pytest.mark.slow  # a full-grid run resampled from another grid
def test_prepared_other_grid_run_keeps_left_and_right(tmp_path_factory):
    from deeplight_bids.demo.synth import make_synthetic_dataset
    from deeplight_bids.prepare.labels import read_events, resolve_state_map, volume_labels

    info = make_synthetic_dataset(
        tmp_path_factory.mktemp("synth_3mm") / "bids", n_participants=1, n_volumes=24, blocks_per_state=1, grid="other"
    )
    run = info.runs[0]
    assert nib.load(run.bold).shape[:3] == (61, 73, 61)
    prepared = prepare_run(run.bold, run.mask, info.t_r)
    labels = volume_labels(read_events(run.events), prepared.n_volumes, info.t_r, resolve_state_map(info.task))
    left_hand = labels == info.state_map["lh"]

    def contrast(region):
        series = prepared.signals[:, region[prepared.mask]].mean(axis=1)
        return series[left_hand].mean() - series[~left_hand].mean()

    # lh drives the right motor cortex (x > 0); a mirror would move it to rh's region.
    assert contrast(info.regions["lh"]) > 0.8
    assert contrast(info.regions["lh"]) > contrast(info.regions["rh"]) + 0.8

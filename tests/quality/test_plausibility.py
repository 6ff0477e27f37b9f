"""Plausibility numbers, reference-map discovery and loading."""

import nibabel as nib
import numpy as np
import pytest

from deeplight_bids.exceptions import InputDataError
from deeplight_bids.quality import plausibility as pl


def test_region_mass_rank_and_r():
    shape = (10, 10, 10)
    brain = np.ones(shape, bool)
    reference = np.zeros(shape)
    reference[:2] = 1.0  # 200 voxels = top 20 %
    region = pl.reference_region(reference, brain, 20)
    assert region.sum() == 200 and region[:2].all()
    # a map that puts all positive relevance in the region: mass 1, rank 1
    inside = np.where(region, 1.0 + np.random.default_rng(0).random(shape), -0.5)
    got = pl.compare(inside, reference, brain, 20)
    assert got["mass_accuracy"] == 1 and got["rank_accuracy"] == 1 and got["pearson_r"] > 0.9
    assert got["region_share"] == pytest.approx(0.2)
    # half the positive mass outside, and the top voxels outside
    half = np.zeros(shape)
    half[0, 0, :5] = 1.0  # in the region
    half[9, :5, 0] = 2.0  # outside, larger
    got = pl.compare(half, reference, brain, 20)
    assert got["mass_accuracy"] == pytest.approx(5 / 15)
    assert got["rank_accuracy"] == pytest.approx(5 / 200)
    # a small top percentage takes the highest values only, never non-positive ones
    graded = np.arange(1000, dtype=float).reshape(shape) - 990  # 9 positive voxels
    assert pl.reference_region(graded, brain, 5).sum() == 9
    assert pl.compare(-inside, reference, brain, 20)["mass_accuracy"] == 0  # all positive relevance outside
    assert np.isnan(pl.compare(-np.abs(inside), reference, brain, 20)["mass_accuracy"])  # none positive


def test_table_has_group_rows():
    brain = np.ones((4, 4, 4), bool)
    ref = np.zeros((4, 4, 4))
    ref[0] = 1
    maps = [("01", "a", ref + 0.1), ("02", "a", ref * 2), ("01", "b", ref)]
    table = pl.plausibility_table(maps, {"a": ref}, brain, 25)
    assert list(table["participant_id"]) == ["sub-01", "sub-02", "group"]
    assert list(table.columns) == list(pl.COLUMNS)


def _save(path, data, affine=None):
    nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4) if affine is None else affine).to_filename(path)
    return path


def test_find_and_load_reference_files(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    _save(folder / "label-MOTORlh_desc-glm_map.nii.gz", np.ones((3, 3, 3)))
    _save(folder / "MOTOR_rh.nii", np.ones((3, 3, 3)))
    (folder / "notes.txt").write_text("x")
    found = pl.find_reference_files(folder, ["MOTOR_lh", "MOTOR_rh", "MOTOR_t"])
    assert {k: v.name for k, v in found.items()} == {
        "MOTOR_lh": "label-MOTORlh_desc-glm_map.nii.gz",
        "MOTOR_rh": "MOTOR_rh.nii",
    }
    single = _save(tmp_path / "all.nii.gz", np.ones((3, 3, 3)))
    assert set(pl.find_reference_files(single, ["a", "b"])) == {"a", "b"}
    with pytest.raises(InputDataError, match="label-<state>"):
        pl.find_reference_files(folder, ["WM"])
    with pytest.raises(InputDataError, match="NIfTI"):
        pl.find_reference_files(folder / "notes.txt", ["a"])
    # another grid is resampled (world coordinates kept): a 4 mm map onto a 2 mm grid
    coarse = np.zeros((5, 5, 5))
    coarse[2, 2, 2] = 1
    src = _save(tmp_path / "coarse.nii.gz", coarse, np.diag([4, 4, 4, 1]))
    out = pl.load_reference(src, (10, 10, 10), np.diag([2, 2, 2, 1]))
    assert out.shape == (10, 10, 10) and np.unravel_index(out.argmax(), out.shape) == (4, 4, 4)
    with pytest.raises(InputDataError, match="one 3D map per state"):
        pl.load_reference(_save(tmp_path / "four.nii.gz", np.ones((3, 3, 3, 2))), (3, 3, 3), np.eye(4))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputDataError, match="cannot read"):
        pl.load_reference(bad, (3, 3, 3), np.eye(4))

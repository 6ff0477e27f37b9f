"""The default work folder (OUTPUT_DIR/.work): pybids and bids-validator see each output once, and the
per-volume maps stay reusable on OUTPUT_DIR's file system."""

import logging

from deeplight_bids.config import WORK_FOLDER, default_work_dir
from deeplight_bids.derivatives.stale import adopt_legacy_work_dir


def _legacy(out):
    legacy = out / "work"
    (legacy / "relevance_volumes").mkdir(parents=True)
    (legacy / "relevance_volumes" / "x_desc-relevance_bold.nii.gz").write_bytes(b"maps")
    return legacy


def test_default_is_a_dot_folder_inside_output_dir(tmp_path):
    assert WORK_FOLDER.startswith(".")
    assert default_work_dir(tmp_path / "out") == tmp_path / "out" / ".work"


def test_earlier_versions_work_folder_is_moved_once(tmp_path, caplog):
    out = tmp_path / "out"
    legacy = _legacy(out)
    inode = (legacy / "relevance_volumes" / "x_desc-relevance_bold.nii.gz").stat().st_ino
    with caplog.at_level(logging.INFO, logger="deeplight_bids"):
        assert adopt_legacy_work_dir(out, default_work_dir(out))
    moved = out / ".work" / "relevance_volumes" / "x_desc-relevance_bold.nii.gz"
    assert not legacy.exists() and moved.stat().st_ino == inode  # renamed, not copied
    assert "moved" in caplog.text and "pybids" in caplog.text
    assert not adopt_legacy_work_dir(out, default_work_dir(out))  # nothing left to move


def test_legacy_folder_left_alone_when_not_ours_or_not_the_default(tmp_path):
    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)
    (out / "work" / "notes.txt").write_text("the user's own folder")
    assert not adopt_legacy_work_dir(out, default_work_dir(out))
    assert (out / "work" / "notes.txt").is_file()
    other = tmp_path / "o2"
    _legacy(other)
    assert not adopt_legacy_work_dir(other, tmp_path / "scratch")  # --work-dir given: not touched
    assert (other / "work").is_dir()
    (other / ".work").mkdir()
    assert not adopt_legacy_work_dir(other, default_work_dir(other))  # both exist: nothing is merged


def test_pybids_sees_one_relevance_file_and_one_predictions_table_per_run(participant_run, synthetic_dataset):
    """As users query the outputs: BIDSLayout over BIDS_DIR with OUTPUT_DIR as its derivatives."""
    from bids import BIDSLayout

    out, code, _ = participant_run
    assert code == 0
    layout = BIDSLayout(synthetic_dataset.bids_dir, derivatives=out, validate=False)
    relevance = layout.get(subject="01", desc="relevance", suffix="bold", extension=".nii.gz")
    predictions = layout.get(subject="01", desc="predictions", suffix="timeseries", extension=".tsv")
    assert [f.path for f in relevance] == [str(out / "sub-01" / "func" / relevance[0].filename)]
    assert [f.path for f in predictions] == [str(out / "sub-01" / "func" / predictions[0].filename)]
    # the work folder keeps the per-volume maps for another --relevance-maps choice, on OUTPUT_DIR's file
    # system (the output is linked to it, not a second copy)
    kept = out / WORK_FOLDER / "relevance_volumes" / relevance[0].filename
    assert kept.is_file() and kept.stat().st_dev == (out / "sub-01").stat().st_dev

"""Atomic writers, streamed 4D NIfTI, names, dataset-level files."""

import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.writers import StreamingNifti4D, atomic_path, write_dataset_files, write_json, write_tsv
from deeplight_bids.exceptions import OutputError
from deeplight_bids.prepare.grid import REFERENCE_AFFINE


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a" / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert os.listdir(target.parent) == []


def test_refuses_symlink_target(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(outside)
    with pytest.raises(OutputError, match="symbolic link"):
        write_json(link, {"a": 1})
    assert outside.read_text() == "{}"


def test_unwritable_output_is_one_line_error(tmp_path):
    # A parent that is a regular file cannot be written into, also as root.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write here") as exc:
        write_json(blocker / "sub" / "x.json", {})
    assert "\n" not in str(exc.value)


def test_tsv_uses_bids_na(tmp_path):
    path = write_tsv(tmp_path / "t.tsv", pd.DataFrame({"a": [1.0, None], "b": ["x", None]}))
    assert path.read_text().splitlines() == ["a\tb", "1\tx", "n/a\tn/a"]


def test_streaming_nifti_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5, 6, 7, 4)).astype(np.float32)
    affine = REFERENCE_AFFINE
    stream = StreamingNifti4D(tmp_path / "r.nii.gz", data.shape, affine, t_r=0.72, scratch_dir=tmp_path / "work")
    stream.write(0, np.moveaxis(data[..., :3], -1, 0))
    stream.write(3, np.moveaxis(data[..., 3:], -1, 0))
    path = stream.close()
    img = nib.load(path)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), data)
    np.testing.assert_allclose(img.affine, affine)
    assert img.header.get_zooms()[3] == pytest.approx(0.72)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert img.dataobj.offset == 352  # a valid single-file NIfTI: data right after the header
    assert os.listdir(tmp_path / "work") == []  # the uncompressed temporary is gone


def test_run_output_names():
    out = naming.run_outputs("/o", {"subject": "01", "session": "2", "task": "motor", "run": 1, "direction": "LR"})
    assert (
        out["predictions"].as_posix()
        == "/o/sub-01/ses-2/func/sub-01_ses-2_task-motor_dir-LR_run-1_desc-predictions_timeseries.tsv"
    )
    assert (
        out["relevance"].name
        == "sub-01_ses-2_task-motor_dir-LR_run-1_space-MNI152NLin6Asym_res-2_desc-relevance_bold.nii.gz"
    )
    assert naming.state_map_output("/o", "01", "motor", "MOTOR_lf").name == (
        "sub-01_task-motor_space-MNI152NLin6Asym_res-2_label-MOTORlf_desc-mean_relevance.nii.gz"
    )


def test_dataset_files_idempotent(tmp_path):
    write_dataset_files(tmp_path, [tmp_path / "bids"])
    first = (tmp_path / "dataset_description.json").stat().st_mtime_ns
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "deeplight-bids"
    assert desc["DatasetLinks"] == {"raw": "bids"}  # relative to OUTPUT_DIR, no machine path
    assert desc["SourceDatasets"] == [{"URL": "bids"}]
    assert "CodeURL" not in desc["GeneratedBy"][0]  # no address is made up
    write_dataset_files(tmp_path, [tmp_path / "bids"])
    assert (tmp_path / "dataset_description.json").stat().st_mtime_ns == first
    assert "*_timeseries.tsv" in (tmp_path / ".bidsignore").read_text()


def test_outputs_get_umask_permissions(tmp_path):
    path = write_json(tmp_path / "perm.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    """Only temporaries of dead processes on this host go; live ones, other hosts' and outputs stay."""
    import subprocess
    import sys

    from deeplight_bids.derivatives.writers import atomic_path, owner_tag, remove_stale_temporaries

    with atomic_path(tmp_path / "sub-01" / "x.tsv") as live:  # this process's own temporary
        live.write_text("a")
        dead_pid = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout.strip()
        host = owner_tag().rsplit("-", 1)[0]
        dead = tmp_path / "sub-01" / f".x.{host}-{dead_pid}.abc_12.tmp.tsv"
        stream = tmp_path / "work" / f".stream.{host}-{dead_pid}.k9.stream.nii"
        other_host = tmp_path / "sub-01" / f".x.elsewhere-{dead_pid}.abc.tmp.tsv"
        output = tmp_path / "sub-01" / "sub-01_task-a_desc-predictions_timeseries.tsv"
        for path in (dead, stream, other_host, output):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted([dead, stream])
        assert live.exists() and other_host.exists() and output.exists()
    assert (tmp_path / "sub-01" / "x.tsv").read_text() == "a"


def test_output_root_guards_writers_given_no_root(tmp_path):
    from deeplight_bids.derivatives.writers import output_root

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "group").symlink_to(elsewhere, target_is_directory=True)
    write_json(out / "group" / "free.json", {})  # no root, no context: only the file itself is checked
    assert (elsewhere / "free.json").is_file()
    with output_root(out):
        with pytest.raises(OutputError, match="below a symbolic link"):
            write_json(out / "group" / "guarded.json", {})
        with pytest.raises(OutputError, match="below a symbolic link"):
            write_tsv(out / "group" / "model-x" / "t.tsv", pd.DataFrame({"a": [1]}))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["free.json"]


def test_streaming_nifti_reads_back_before_close(tmp_path):
    """read(t) gives volume t as written, in (z, y, x) order (the quality measures use it before close)."""
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)  # (n, x, y, z)
    stream = StreamingNifti4D(tmp_path / "m.nii.gz", (4, 5, 6, 3), np.eye(4), 2.0)
    stream.write(0, vols)
    for t in range(3):
        np.testing.assert_array_equal(stream.read(t), vols[t].transpose(2, 1, 0))
    stream.close()

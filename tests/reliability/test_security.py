"""Writes never leave OUTPUT_DIR through symbolic links; untrusted pickles are never loaded."""

import numpy as np
import pytest

from deeplight_bids.derivatives.writers import StreamingNifti4D, atomic_path, write_json, write_text
from deeplight_bids.exceptions import OutputError

from .conftest import assert_clean_error, cli_inprocess, files_under


def test_symlinked_subfolder_is_refused(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "sub-01").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputError, match=r"sub-01: refusing to write below a symbolic link"):
        write_json(root / "sub-01" / "func" / "x.json", {"a": 1}, root=root)
    with pytest.raises(OutputError, match="refusing to write below a symbolic link"):
        StreamingNifti4D(root / "sub-01" / "func" / "x.nii.gz", (2, 2, 2, 2), np.eye(4), 2.0, root=root)
    with pytest.raises(OutputError, match="refusing to write below a symbolic link"):
        StreamingNifti4D(root / "y.nii.gz", (2, 2, 2, 2), np.eye(4), 2.0, scratch_dir=root / "sub-01", root=root)
    with pytest.raises(OutputError, match="refusing to write below a symbolic link"):
        with atomic_path(root / "sub-01" / "deep" / "z.txt", root=root):
            pass
    assert files_under(outside) == [] and list(outside.iterdir()) == []  # not even a folder was made


def test_linked_output_dir_itself_is_fine(tmp_path):
    """OUTPUT_DIR may itself be a link (e.g. to scratch); files inside it are written normally."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "out"
    link.symlink_to(real, target_is_directory=True)
    write_text(link / "sub-01" / "a.txt", "x\n", root=link)
    assert (real / "sub-01" / "a.txt").read_text() == "x\n"
    with pytest.raises(OutputError, match="through a symbolic link"):
        (real / "b.txt").symlink_to(tmp_path / "target.txt")
        write_text(link / "b.txt", "y\n", root=link)
    assert not (tmp_path / "target.txt").exists()


def test_cli_refuses_symlinked_participant_folder(small_dataset, rel_model, tmp_path):
    out, outside = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    outside.mkdir()
    (out / "sub-01").symlink_to(outside, target_is_directory=True)
    code, stderr = cli_inprocess(
        [
            small_dataset.bids_dir,
            out,
            "participant",
            "--participant-label",
            "01",
            "--weights",
            rel_model,
            "--no-lrp",
            "--skip-bids-validation",
            "--batch-size",
            "10",
        ]
    )
    assert code == 5
    assert_clean_error(
        stderr, str(out / "sub-01"), "refusing to write below a symbolic link", "replace the link with a folder"
    )
    assert list(outside.iterdir()) == []


class _Boom:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cli_refuses_untrusted_2d_pickle(small_dataset, tmp_path):
    """A .npy that is not the published 2D file (checksum) is never unpickled."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "model-2D_DeepLight_desc-pretrained_model.npy"
    np.save(evil, np.array({"w": _Boom(marker)}, dtype=object), allow_pickle=True)
    code, stderr = cli_inprocess(
        [
            small_dataset.bids_dir,
            tmp_path / "out",
            "participant",
            "--participant-label",
            "01",
            "--architecture",
            "2D",
            "--weights",
            evil,
            "--skip-bids-validation",
        ]
    )
    assert code == 4
    assert_clean_error(stderr, str(evil), "sha256")
    assert not marker.exists()

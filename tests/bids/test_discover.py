"""Discovery edge cases with pybids: inheritance, skips with reasons, nothing found."""

import json
import shutil

import pytest

from deeplight_bids.bids.discover import build_layout, discover_runs, find_derivatives, format_run_table
from deeplight_bids.exceptions import NoRunsFoundError


@pytest.fixture
def dataset(synthetic_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(synthetic_dataset.bids_dir, root)
    return root


def _runs(root, **kwargs):
    return discover_runs(build_layout(root, find_derivatives(root)), **kwargs)


def test_finds_bold_mask_events_and_tr(dataset):
    runs = _runs(dataset)
    assert [r.label for r in runs] == ["sub-01_task-motor", "sub-02_task-motor"]
    for run in runs:
        assert run.skip_reason is None
        assert run.bold.name.endswith("_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz")
        assert run.mask.name.endswith("_desc-brain_mask.nii.gz")
        assert run.events.name == f"sub-{run.subject}_task-motor_events.tsv"
        assert run.t_r == 2.0


def test_events_inherited_from_the_top_level(dataset):
    # inheritance principle: a dataset-level task-motor_events.tsv serves runs without their own
    top = dataset / "task-motor_events.tsv"
    shutil.copy(dataset / "sub-01" / "func" / "sub-01_task-motor_events.tsv", top)
    (dataset / "sub-02" / "func" / "sub-02_task-motor_events.tsv").unlink()
    runs = {r.subject: r for r in _runs(dataset)}
    assert runs["02"].events == top
    assert runs["01"].events.name == "sub-01_task-motor_events.tsv"  # the more specific file wins


def test_skips_with_reasons(dataset):
    deriv = dataset / "derivatives" / "fmriprep"
    next((deriv / "sub-01" / "func").glob("*_desc-brain_mask.nii.gz")).unlink()
    (dataset / "sub-02" / "func" / "sub-02_task-motor_events.tsv").unlink()
    runs = {r.subject: r for r in _runs(dataset)}
    assert "brain mask" in runs["01"].skip_reason
    assert "events" in runs["02"].skip_reason
    table = format_run_table(list(runs.values()))
    assert "0 run(s) to process, 2 skipped" in table


def test_wrong_space_is_reported(dataset):
    deriv = dataset / "derivatives" / "fmriprep" / "sub-01" / "func"
    for path in list(deriv.iterdir()):
        path.rename(path.with_name(path.name.replace("MNI152NLin6Asym", "MNI152NLin2009cAsym")))
    runs = {r.subject: r for r in _runs(dataset)}
    assert "MNI152NLin2009cAsym" in runs["01"].skip_reason
    assert runs["02"].skip_reason is None
    # asking for that space processes it (resampled onto the reference grid later)
    runs = {r.subject: r for r in _runs(dataset, space="MNI152NLin2009cAsym")}
    assert runs["01"].skip_reason is None


def test_participant_task_and_filters(dataset):
    assert [r.subject for r in _runs(dataset, participant_label=["02"])] == ["02"]
    assert [r.subject for r in _runs(dataset, task=["MOTOR"])] == ["01", "02"]  # case-insensitive
    with pytest.raises(NoRunsFoundError, match="sub-07 not found"):
        _runs(dataset, participant_label=["07"])
    with pytest.raises(NoRunsFoundError, match="no preprocessed BOLD found"):
        _runs(dataset, task=["rest"])


def test_raw_dataset_without_derivatives_is_a_clear_error(dataset, tmp_path, capsys):
    from deeplight_bids.cli.run import run as cli

    shutil.rmtree(dataset / "derivatives")
    code = cli([str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 3
    assert "no derivatives dataset found" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_bids_dir_that_is_a_derivative_dataset(dataset, synthetic_dataset):
    # fMRIPrep outputs alone (no raw dataset): BIDS_DIR is the derivatives folder, events beside the BOLD
    deriv = dataset / "derivatives" / "fmriprep"
    for sub in ("01", "02"):
        shutil.copy(dataset / f"sub-{sub}" / "func" / f"sub-{sub}_task-motor_events.tsv", deriv / f"sub-{sub}" / "func")
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    runs = discover_runs(build_layout(deriv, find_derivatives(deriv)))
    assert [r.skip_reason for r in runs] == [None, None]


def test_bids_dir_that_is_a_file_is_one_plain_line(tmp_path, capsys):
    from deeplight_bids.cli.run import run as cli

    bids = tmp_path / "dataset.txt"
    bids.write_text("not a folder\n")
    capsys.readouterr()
    code = cli([str(bids), str(tmp_path / "out"), "participant"])  # validation on: the validator must not speak
    err = capsys.readouterr().err.strip()
    assert code == 3
    assert err.splitlines() == [err] and "\x1b" not in err and "deno" not in err and ".ts:" not in err
    assert str(bids) in err and "is a file, not a folder" in err

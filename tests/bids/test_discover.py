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
    runs = {r.subject: r for r in _runs(dataset, space="MNI152NLin6Asym")}
    assert "MNI152NLin2009cAsym" in runs["01"].skip_reason
    assert runs["02"].skip_reason is None
    # by default each run uses MNI152NLin6Asym where it has it, else MNI152NLin2009cAsym (transformed later)
    runs = {r.subject: r for r in _runs(dataset)}
    assert runs["01"].skip_reason is None and runs["01"].space == "MNI152NLin2009cAsym"
    assert runs["02"].space == "MNI152NLin6Asym"


def _rename(folder, old, new):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and old in path.name:
            path.rename(path.with_name(path.name.replace(old, new)))


@pytest.mark.parametrize("space", ["T1w", "func", None])
def test_native_and_unknown_spaces_are_refused(dataset, space):
    deriv = dataset / "derivatives" / "fmriprep" / "sub-01"
    _rename(deriv, "_space-MNI152NLin6Asym_res-2", f"_space-{space}" if space else "")
    runs = {r.subject: r for r in _runs(dataset)}
    reason = runs["01"].skip_reason
    assert reason.startswith(f"BOLD in {'space ' + space if space else 'native space'}")
    assert "DeepLight needs MNI152NLin6Asym (or MNI152NLin2009cAsym)" in reason
    assert "--output-spaces MNI152NLin6Asym:res-2" in reason and "\n" not in reason
    assert runs["02"].skip_reason is None  # other runs go on
    if space:
        # asking for it explicitly is refused the same way
        assert _runs(dataset, space=space)[0].skip_reason == reason


def _add_runs(root, raw_run, deriv_run):
    """Give sub-01's raw files ``run-<raw_run>`` and its derivatives ``run-<deriv_run>``."""
    _rename(root / "sub-01", "_task-motor_", f"_task-motor_run-{raw_run}_")
    _rename(root / "derivatives" / "fmriprep" / "sub-01", "_task-motor_", f"_task-motor_run-{deriv_run}_")


@pytest.mark.parametrize(("raw_run", "deriv_run"), [("01", "1"), ("1", "01"), ("001", "1")])
def test_runs_match_by_value_across_raw_and_derivatives(dataset, raw_run, deriv_run):
    _add_runs(dataset, raw_run, deriv_run)
    sidecar = next((dataset / "derivatives" / "fmriprep" / "sub-01" / "func").glob("*_bold.json"))
    meta = json.loads(sidecar.read_text())
    meta.pop("RepetitionTime")  # only the raw sidecar has it now: found by value too
    sidecar.write_text(json.dumps(meta))
    raw_json = dataset / "sub-01" / "func" / f"sub-01_task-motor_run-{raw_run}_bold.json"
    raw_json.write_text(json.dumps({"RepetitionTime": 2.0, "TaskName": "motor"}))
    # the mask padded differently from its BOLD (two derivative tools): matched by value as well
    _rename(
        dataset / "derivatives" / "fmriprep" / "sub-01",
        f"_run-{deriv_run}_space-MNI152NLin6Asym_res-2_desc-brain",
        f"_run-{raw_run}_space-MNI152NLin6Asym_res-2_desc-brain",
    )
    run = {r.subject: r for r in _runs(dataset)}["01"]
    assert run.skip_reason is None
    assert run.mask.name.startswith(f"sub-01_task-motor_run-{raw_run}_space")
    assert run.events.name == f"sub-01_task-motor_run-{raw_run}_events.tsv"
    assert run.t_r == 2.0
    # one convention for outputs: the derivative's own entity string
    assert run.label == f"sub-01_task-motor_run-{deriv_run}"
    from deeplight_bids.derivatives.naming import run_outputs

    assert f"_run-{deriv_run}_desc-predictions" in run_outputs("/o", run.entities)["predictions"].name


def test_runs_by_value_with_sessions_and_inherited_events(dataset):
    # raw: ses-1/run-01 with events inherited from the session level (no run entity);
    # derivatives: ses-1/run-1
    for tree in (dataset / "sub-01", dataset / "derivatives" / "fmriprep" / "sub-01"):
        ses = tree / "ses-1"
        ses.mkdir()
        (tree / "func").rename(ses / "func")
        _rename(ses, "sub-01_task", "sub-01_ses-1_task")
    _rename(dataset / "sub-01" / "ses-1", "_task-motor_bold", "_task-motor_run-01_bold")
    _rename(dataset / "derivatives" / "fmriprep" / "sub-01" / "ses-1", "_task-motor_", "_task-motor_run-1_")
    run = {r.subject: r for r in _runs(dataset)}["01"]
    assert run.skip_reason is None
    assert run.entities["session"] == "1" and run.entities["run"] == "1"
    assert run.events.name == "sub-01_ses-1_task-motor_events.tsv"  # inherited: no run entity
    # a second events file for another run (run-02) must not be picked for run-1
    other = run.events.with_name("sub-01_ses-1_task-motor_run-02_events.tsv")
    shutil.copy(run.events, other)
    assert {r.subject: r for r in _runs(dataset)}["01"].events == run.events


def test_participant_task_and_filters(dataset):
    assert [r.subject for r in _runs(dataset, participant_label=["02"])] == ["02"]
    assert [r.subject for r in _runs(dataset, task=["MOTOR"])] == ["01", "02"]  # case-insensitive
    with pytest.raises(NoRunsFoundError, match="sub-07 not found"):
        _runs(dataset, participant_label=["07"])
    with pytest.raises(NoRunsFoundError, match="no preprocessed BOLD found"):
        _runs(dataset, task=["rest"])


def test_raw_dataset_without_derivatives_is_a_clear_error(dataset, tmp_path, capsys):
    from deeplight_bids.cli.main import run as cli

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
    from deeplight_bids.cli.main import run as cli

    bids = tmp_path / "dataset.txt"
    bids.write_text("not a folder\n")
    capsys.readouterr()
    code = cli([str(bids), str(tmp_path / "out"), "participant"])  # validation on: the validator must not speak
    err = capsys.readouterr().err.strip()
    assert code == 3
    assert err.splitlines() == [err] and "\x1b" not in err and "deno" not in err and ".ts:" not in err
    assert str(bids) in err and "is a file, not a folder" in err


def test_checked_access_to_a_runs_files_names_the_run_and_the_reason():
    """``Run.bold_file`` and friends: the path of a processable run, one clear error for a skipped one."""
    from pathlib import Path

    from deeplight_bids.bids.discover import Run
    from deeplight_bids.exceptions import InputDataError

    ok = Run(entities={"subject": "01", "task": "motor"}, bold=Path("b.nii.gz"), mask=Path("m.nii.gz"), t_r=0.72)
    assert (ok.bold_file, ok.mask_file, ok.repetition_time) == (Path("b.nii.gz"), Path("m.nii.gz"), 0.72)
    skipped = Run(entities={"subject": "01", "task": "motor"}, skip_reason="no brain mask next to b.nii.gz")
    with pytest.raises(InputDataError, match=r"sub-01_task-motor: no brain mask found .*\(no brain mask next to"):
        _ = skipped.mask_file
    with pytest.raises(InputDataError, match="no events.tsv found"):
        _ = ok.events_file

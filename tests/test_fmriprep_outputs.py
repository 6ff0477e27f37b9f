"""A real user's fMRIPrep outputs, through the command line (issue: real fMRIPrep outputs, end to end).

Runs named ``run-1`` beside raw ``run-01``; BOLD in MNI152NLin2009cAsym (a synthetic transform
in TemplateFlow's format stands in for the real file, which cannot be downloaded here); native
spaces refused; state maps checked before compute; the group level on outputs with no labels.
A random-weight 3D model, ``--no-lrp`` where relevance maps are not the point (speed).
"""

import json
import shutil

import pytest

from deeplight_bids.cli.main import run as cli
from deeplight_bids.prepare import spaces

from .group.conftest import stage_templateflow_home
from .prepare import synthetic_warp
from .prepare.test_spaces import install_transform


@pytest.fixture
def dataset(synthetic_dataset, tmp_path):
    """sub-01 of the synthetic dataset (full grid, 30 volumes), copied."""
    root = tmp_path / "ds"
    shutil.copytree(synthetic_dataset.bids_dir, root)
    shutil.rmtree(root / "sub-02")
    shutil.rmtree(root / "derivatives" / "fmriprep" / "sub-02")
    return root


def _rename(folder, old, new):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and old in path.name:
            path.rename(path.with_name(path.name.replace(old, new)))


def _deriv(root):
    return root / "derivatives" / "fmriprep" / "sub-01" / "func"


def _base(root, out, model, *extra):
    return [str(root), str(out), "participant", "--weights", str(model), "--no-lrp", "--skip-bids-validation", *extra]


def _sidecar(out):
    return json.loads(next((out / "sub-01" / "func").glob("*_desc-predictions_timeseries.json")).read_text())


@pytest.mark.slow
def test_run_1_beside_raw_run_01_is_processed(dataset, random_3d_model, tmp_path):
    _rename(dataset / "sub-01", "_task-motor_", "_task-motor_run-01_")
    _rename(_deriv(dataset), "_task-motor_", "_task-motor_run-1_")
    out = tmp_path / "out"
    assert cli(_base(dataset, out, random_3d_model)) == 0
    side = _sidecar(out)
    assert side["NumberOfLabelledVolumes"] > 0  # events found
    assert any(s.endswith("sub-01_task-motor_run-01_events.tsv") for s in side["Sources"])
    assert (out / "sub-01" / "func" / "sub-01_task-motor_run-1_desc-predictions_timeseries.tsv").is_file()
    assert side["SourceSpace"] == {"Space": "MNI152NLin6Asym", "Resolution": "2"}
    assert side["SpaceTransform"] is None
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["Authors"]


def test_space_t1w_is_refused_with_nothing_written(dataset, random_3d_model, tmp_path, capsys):
    _rename(_deriv(dataset), "_space-MNI152NLin6Asym_res-2", "_space-T1w")
    out = tmp_path / "out"
    code = cli(_base(dataset, out, random_3d_model, "--space", "T1w"))
    err = capsys.readouterr().err
    assert code == 3
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1
    assert (
        "sub-01_task-motor: BOLD in space T1w; DeepLight needs MNI152NLin6Asym (or MNI152NLin2009cAsym): "
        "rerun fMRIPrep with --output-spaces MNI152NLin6Asym:res-2"
    ) in error_lines[0]
    assert "Traceback" not in err
    assert not (out / "sub-01").exists()
    assert list((out / "logs").glob("runs-*.tsv"))  # the full table is kept


def _to_2009c(root):
    _rename(_deriv(root), "_space-MNI152NLin6Asym_res-2", "_space-MNI152NLin2009cAsym_res-2")


@pytest.mark.slow
def test_mni2009c_run_uses_the_transform(dataset, random_3d_model, tmp_path, monkeypatch):
    _to_2009c(dataset)
    path = synthetic_warp.write_itk_displacement_h5(tmp_path / "x.h5", synthetic_warp.forward, spacing=8.0)
    target = install_transform(monkeypatch, tmp_path, path)
    out = tmp_path / "out"
    assert cli(_base(dataset, out, random_3d_model)) == 0
    side = _sidecar(out)
    assert side["SourceSpace"] == {"Space": "MNI152NLin2009cAsym", "Resolution": "2"}
    assert side["SpaceTransform"]["Name"] == "tpl-MNI152NLin6Asym/" + spaces.MNI2009C_TO_6ASYM.filename
    assert side["SpaceTransform"]["Sha256"] == spaces.sha256sum(target)


@pytest.mark.slow
def test_mni2009c_offline_fails_clearly_or_runs_approximate(dataset, random_3d_model, tmp_path, monkeypatch, capsys):
    _to_2009c(dataset)
    monkeypatch.setattr(spaces, "_templateflow_get", lambda xfm: None)  # offline
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "tf-empty"))
    out = tmp_path / "out"
    code = cli(_base(dataset, out, random_3d_model))
    err = capsys.readouterr().err
    assert code == 3
    assert spaces.MNI2009C_TO_6ASYM.filename in err and "TEMPLATEFLOW_HOME" in err and "Traceback" not in err
    assert not (out / "sub-01").exists()
    assert cli(_base(dataset, out, random_3d_model, "--allow-approximate-space")) == 0
    assert _sidecar(out)["SpaceTransform"] == "approximate"
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "WARNING" in line and "approximate" in line]) == 1


def test_state_map_with_unknown_state_fails_at_start_up(dataset, random_3d_model, tmp_path, capsys):
    state_map = tmp_path / "map.json"
    state_map.write_text(json.dumps({"motor": {"lh": "MOTOR_right_hand"}}))
    out = tmp_path / "out"
    code = cli(_base(dataset, out, random_3d_model, "--state-map", str(state_map)))
    err = capsys.readouterr().err
    assert code == 3
    assert "MOTOR_right_hand" in err and "MOTOR_lh, MOTOR_rh, MOTOR_t" in err
    assert not (out / "sub-01").exists()
    for bad, name in (({"nback": {"lh": "MOTOR_lh"}}, "nback"), ({"motor": {"left": "MOTOR_lh"}}, "left")):
        state_map.write_text(json.dumps(bad))
        assert cli(_base(dataset, out, random_3d_model, "--state-map", str(state_map))) == 3
        err = capsys.readouterr().err
        assert name in err and "valid:" in err
    assert not (out / "sub-01").exists()


@pytest.mark.slow
def test_labels_that_map_to_nothing_warn_once_and_group_reports(dataset, random_3d_model, tmp_path, capsys):
    events = dataset / "sub-01" / "func" / "sub-01_task-motor_events.tsv"
    events.write_text(
        events.read_text().replace("\tlh", "\tleft").replace("\trh", "\tright").replace("\tt\n", "\ttongue\n")
    )
    out = tmp_path / "out"
    assert cli(_base(dataset, out, random_3d_model)) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "WARNING" in line and "--state-map" in line]
    assert len(warnings) == 1
    assert '{"motor": {"left": "MOTOR_lh"' in warnings[0] and "MOTOR_lh, MOTOR_rh, MOTOR_t" in warnings[0]
    assert "labels nothing" in err and any(line.split()[:3] == ["motor", "left", "-"] for line in err.splitlines())
    assert _sidecar(out)["NumberOfLabelledVolumes"] == 0
    # the group level on it: no traceback, tables with headers, a report that says what is missing
    assert cli([str(dataset), str(out), "group", "--skip-bids-validation"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # offline (no TemplateFlow here unless staged): the fallback warning is shown once, not also as a Python warning
    assert len([line for line in err.splitlines() if "templates: TemplateFlow's MNI152NLin6Asym" in line]) <= 1
    assert "https://" not in err and "Error(" not in err  # one plain line, no URL or exception repr
    report = (out / "deeplight_report.html").read_text()
    assert "no labelled volumes" in report and "--state-map" in report
    for table in (out / "group").glob("*.tsv"):
        assert table.read_text().splitlines()[0].strip(), table


def test_templates_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(spaces, "_templateflow_get", lambda xfm: None)  # offline
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    assert cli(["templates", "fetch"]) == 3
    err = capsys.readouterr().err
    assert "error:" in err and spaces.MNI2009C_TO_6ASYM.filename in err and "Traceback" not in err
    path = synthetic_warp.write_itk_displacement_h5(tmp_path / "x.h5", synthetic_warp.forward, spacing=16.0)
    target = install_transform(monkeypatch, tmp_path, path)
    assert cli(["templates", "list"]) == 3  # the group level's T1w and mask are not there yet
    capsys.readouterr()
    stage_templateflow_home(target.parents[1])
    assert cli(["templates", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "transform" in line)
    assert "present, verified (MD5)" in line and line.endswith(str(target))

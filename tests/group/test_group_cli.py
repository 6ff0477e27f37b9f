"""Group level from the command line: options, bad input, BIDS validity of the outputs."""

import shutil

import pytest

from deeplight_bids.cli.main import run as cli
from deeplight_bids.cli.parser import parse_args
from deeplight_bids.config import Config

from ..bids_validation import validator_errors


def test_group_options_reach_the_config(tmp_path):
    args = parse_args([str(tmp_path), str(tmp_path.parent / "out"), "group", "--correct-only", "--reports-only"])
    config = Config.from_args(args)
    assert config.analysis_level == "group" and config.correct_only and config.reports_only
    config = Config.from_args(parse_args([str(tmp_path), str(tmp_path.parent / "out"), "group"]))
    assert not config.correct_only and not config.reports_only


@pytest.mark.parametrize("what", ["missing", "empty", "description_only"])
def test_no_participant_outputs_is_a_one_line_error(what, tmp_path, capsys, participant_out):
    bids = tmp_path / "bids"
    bids.mkdir()
    out = tmp_path / "out"
    if what != "missing":
        out.mkdir()
    if what == "description_only":
        shutil.copy(participant_out / "dataset_description.json", out)
    code = cli([str(bids), str(out), "group"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code == 3
    assert len(err) == 1 and err[0].startswith("deeplight-bids: error:")
    assert str(out) in err[0] and "participant" in err[0]


def test_reports_only_needs_group_outputs(participant_out, group_bids, tmp_path, capsys):
    from .conftest import link_copy

    out = link_copy(participant_out, tmp_path / "deeplight")
    code = cli([str(group_bids.bids_dir), str(out), "group", "--reports-only"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code == 3 and len(err) == 1 and "without --reports-only" in err[0] and str(out) in err[0]


def test_group_outputs_pass_the_bids_validator(varied_out):
    out, _ = varied_out
    errors, returncode = validator_errors(out)
    assert errors == []
    assert returncode == 0

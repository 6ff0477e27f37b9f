"""Command-line parsing: BIDS-Apps positionals, label prefixes, filters, cross-checks."""

import json

import pytest

from deeplight_bids.cli.parser import parse_args
from deeplight_bids.config import Config


@pytest.fixture
def bids_dir(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    return root


def test_participant_label_accepts_both_spellings(bids_dir, tmp_path):
    args = parse_args([str(bids_dir), str(tmp_path / "out"), "participant", "--participant-label", "sub-01", "02"])
    assert args.participant_label == ["01", "02"]
    # removeprefix, not lstrip: a label that starts with s/u/b keeps its letters
    args = parse_args([str(bids_dir), str(tmp_path / "out"), "participant", "--participant-label", "sub-bus"])
    assert args.participant_label == ["bus"]


def test_defaults_match_reference(bids_dir, tmp_path):
    config = Config.from_args(parse_args([str(bids_dir), str(tmp_path / "out"), "participant"]))
    assert config.smoothing_fwhm == 3.0
    assert config.high_pass == pytest.approx(1 / 128)
    assert config.space is None  # per run: MNI152NLin6Asym, else MNI152NLin2009cAsym
    assert not config.allow_approximate_space
    assert config.lrp and config.lrp_target == "predicted" and config.lrp_rule == "published"
    signed = Config.from_args(parse_args([str(bids_dir), str(tmp_path / "out"), "participant", "--lrp-rule", "signed"]))
    assert signed.lrp_rule == "signed"
    assert config.work_dir == tmp_path / "out" / ".work"  # hidden from pybids and bids-validator


def test_high_pass_fraction_and_none(bids_dir, tmp_path):
    base = [str(bids_dir), str(tmp_path / "out"), "participant", "--high-pass"]
    assert parse_args(base + ["1/100"]).high_pass == pytest.approx(0.01)
    assert parse_args(base + ["none"]).high_pass is None


def test_output_inside_bids_dir_is_refused(bids_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([str(bids_dir), str(bids_dir / "derivatives" / "deeplight"), "participant"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "inside the input BIDS folder" in err and "Traceback" not in err


def test_missing_bids_dir(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"])
    assert exc.value.code == 2
    assert "path does not exist" in capsys.readouterr().err


def test_bids_filter_file(bids_dir, tmp_path, capsys):
    good = tmp_path / "filter.json"
    good.write_text(json.dumps({"run": 1, "acquisition": None, "echo": "*"}))
    args = parse_args([str(bids_dir), str(tmp_path / "out"), "participant", "--bids-filter-file", str(good)])
    from bids.layout import Query

    assert args.bids_filter_file["run"] == 1
    assert args.bids_filter_file["acquisition"] is Query.NONE
    assert args.bids_filter_file["echo"] is Query.ANY

    bad = tmp_path / "bad.json"
    bad.write_text("{run: 1")
    with pytest.raises(SystemExit) as exc:
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant", "--bids-filter-file", str(bad)])
    assert exc.value.code == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--batch-size", "0"), ("--nprocs", "x"), ("--smoothing-fwhm", "-1")])
def test_bad_numbers(bids_dir, tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant", option, value])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    from deeplight_bids.cli.parser import build_parser

    text = build_parser().format_help()
    for option in (
        "--participant-label",
        "--session-label",
        "--task",
        "--bids-filter-file",
        "--derivatives",
        "--space",
        "--allow-approximate-space",
        "--work-dir",
        "--nprocs",
        "--batch-size",
        "--weights",
        "--state-map",
        "--smoothing-fwhm",
        "--high-pass",
        "--lrp-target",
        "--no-lrp",
        "--lrp-rule",
        "--backend",
        "--skip-bids-validation",
        "--verbose",
        "--version",
        "--overwrite",
        "--architecture",
        "exit codes",
    ):
        assert option in text, option


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--batch-size", "0", "argument --batch-size: expected a whole number >= 1, got '0'"),
        ("--smoothing-fwhm", "nan", "argument --smoothing-fwhm: expected a number >= 0, got 'nan'"),
        (
            "--reference-top-percent",
            "0",
            "argument --reference-top-percent: expected a percentage in (0, 100], got '0'",
        ),
        ("--learning-rate", "0", "argument --learning-rate: expected a number > 0, got '0'"),
        ("--cv-folds", "two", "argument --cv-folds: expected a whole number, got 'two'"),
    ],
)
def test_number_errors_name_the_option(bids_dir, tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exc:
        parse_args([str(bids_dir), str(tmp_path / "out"), "group", option, value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attribution", "deeplift"], "invalid choice: 'deeplift'"),
        (["--ig-steps", "0"], "argument --ig-steps: expected a whole number >= 2, got '0'"),
        (["--smoothgrad-noise", "-1"], "argument --smoothgrad-noise"),
        (["--compare-attributions", "gradient", "nope"], "invalid choice: 'nope'"),
        (["--architecture", "2D", "--attribution", "preset_b_flat"], "applies to 3D-DeepLight only"),
        (["--no-lrp", "--attribution", "gradient"], "--no-lrp writes no maps"),
        (["--no-lrp", "--compare-attributions"], "--no-lrp writes no maps"),
    ],
)
def test_bad_attribution_options_give_one_line_and_exit_2(bids_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        parse_args([str(bids_dir), str(tmp_path / "out"), "participant", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_attribution_options_reach_the_config(bids_dir, tmp_path):
    from deeplight_bids.config import Config

    args = parse_args(
        [
            str(bids_dir),
            str(tmp_path / "out"),
            "participant",
            "--attribution",
            "integrated_gradients",
            "--ig-steps",
            "8",
            "--compare-attributions",
            "--compare-volumes",
            "3",
            "--lrp-epsilon",
            "0.5",
        ]
    )
    config = Config.from_args(args)
    assert config.attribution == "integrated_gradients" and config.ig_steps == 8 and config.lrp_epsilon == 0.5
    assert config.compare_attributions == () and config.compare_volumes == 3  # () = the standard set
    assert (
        Config.from_args(parse_args([str(bids_dir), str(tmp_path / "out"), "participant"])).compare_attributions is None
    )
    back = Config.from_dict(config.to_dict())
    assert back.compare_attributions == () and back.attribution == "integrated_gradients"

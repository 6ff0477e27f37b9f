"""Group contrasts from the command line: options, signed attributions, FWE refusal, old outputs, validity."""

import json
import shutil

import pytest

from deeplight_bids.cli.main import run as cli
from deeplight_bids.cli.parser import parse_args
from deeplight_bids.config import Config
from deeplight_bids.derivatives.writers import write_json

from ..bids_validation import validator_errors
from .conftest import STATES, link_copy, read_tsv

SPACE = "space-MNI152NLin6Asym_res-2"
LABELS = [s.replace("_", "") for s in STATES]
SIGNED = {"Method": "gradient", "Family": "gradient", "Signed": True, "Parameters": {}}


def test_contrast_options_reach_the_config(tmp_path):
    base = [str(tmp_path), str(tmp_path.parent / "out"), "group"]
    config = Config.from_args(parse_args(base))
    assert (config.group_threshold, config.group_alpha, config.group_permutations) == ("fdr", 0.05, 5000)
    assert config.pairwise_contrasts is False and config.contrast_scaling == "brain-mean"
    config = Config.from_args(
        parse_args(
            base
            + [
                "--group-threshold",
                "fwe-permutation",
                "--group-alpha",
                "0.01",
                "--group-permutations",
                "200",
                "--pairwise-contrasts",
                "--contrast-scaling",
                "none",
            ]
        )
    )
    assert (config.group_threshold, config.group_alpha, config.group_permutations) == ("fwe-permutation", 0.01, 200)
    assert config.pairwise_contrasts is True and config.contrast_scaling == "none"
    assert Config.from_dict(config.to_dict()).group == config.group  # the settings TOML keeps them


@pytest.mark.parametrize(
    "option, value",
    [
        ("--group-threshold", "bonferroni"),
        ("--group-alpha", "0"),
        ("--group-alpha", "1.5"),
        ("--group-alpha", "q"),
        ("--group-permutations", "0"),
        ("--contrast-scaling", "zscore"),
    ],
)
def test_bad_contrast_options_are_one_line_errors(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([str(tmp_path), str(tmp_path.parent / "out"), "group", option, value])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and option in err[0] and value in err[0]


@pytest.fixture(scope="module")
def signed_out(synthetic_out, group_bids, tmp_path_factory):
    """The synthetic maps as if made by a signed attribution, grouped with FWE + pairwise contrasts."""
    src, _, _ = synthetic_out
    out = link_copy(
        src,
        tmp_path_factory.mktemp("signed") / "deeplight",
        ignore=shutil.ignore_patterns("group", "deeplight_report.html"),
    )
    for path in out.glob("sub-*/func/*_desc-mean_relevance.json"):
        meta = json.loads(path.read_text())
        write_json(path, {**meta, "Attribution": SIGNED})
    args = ["--group-threshold", "fwe-permutation", "--group-permutations", "50", "--pairwise-contrasts"]
    code = cli([str(group_bids.bids_dir), str(out), "group", *args])
    return out, code


def test_signed_attribution_tests_the_state_means_against_zero(signed_out):
    out, code = signed_out
    assert code == 0
    group = out / "group"
    for label in LABELS:
        for stat in ("effect", "t", "z", "p"):
            path = group / f"task-motor_{SPACE}_contrast-{label}_stat-{stat}_statmap.nii.gz"
            assert path.is_file(), path.name
        side = json.loads((group / f"task-motor_{SPACE}_contrast-{label}_stat-t_statmap.json").read_text())
        assert side["Attribution"]["Method"] == "gradient" and "is signed" in side["AgainstZero"]
        assert side["StatisticalModel"]["DegreesOfFreedom"] == 2
    text = (out / "deeplight_report.html").read_text()
    assert "attribution gradient is signed" in text
    assert "Each state&#x27;s mean map was also tested against 0" in text


def test_fwe_with_three_participants_is_refused_with_the_reason(signed_out):
    out, _ = signed_out
    summary = read_tsv(out / "group" / "task-motor_desc-contrasts_summary.tsv")
    tested = summary[summary["dof"].notna()]
    assert len(tested) == 3 + 3 + 6 and set(tested["correction"]) == {"not applied"}
    assert tested["note"].str.contains("impossible with 3 participants").all()
    assert not list((out / "group").glob("*_clusters.tsv")) and not list((out / "group").glob("*desc-fwe*"))
    text = (out / "deeplight_report.html").read_text()
    assert "FWE correction by sign flipping was requested but not possible with 3 participants" in text


def test_pairwise_contrasts_are_written(signed_out):
    out, _ = signed_out
    summary = read_tsv(out / "group" / "task-motor_desc-contrasts_summary.tsv")
    pairs = set(summary.loc[summary["kind"] == "pair", "contrast"])
    assert pairs == {f"{a}Vs{b}" for a in LABELS for b in LABELS if a != b}
    for label in pairs:
        for stat in ("effect", "t", "z", "p"):
            assert (out / "group" / f"task-motor_{SPACE}_contrast-{label}_stat-{stat}_statmap.nii.gz").is_file()
    side = json.loads(
        (out / "group" / f"task-motor_{SPACE}_contrast-MOTORlhVsMOTORt_stat-effect_statmap.json").read_text()
    )
    assert side["ContrastWeights"] == {"MOTOR_lh": 1.0, "MOTOR_t": -1.0} and side["ContrastKind"] == "state vs state"


def test_old_group_outputs_still_make_a_report(varied_out, group_bids, tmp_path):
    """A group manifest written before contrasts (state means and t-maps only) is still reported."""
    src, _ = varied_out
    out = link_copy(src, tmp_path / "deeplight")
    manifest_path = out / "group" / "group_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for group in manifest["ModelGroups"]:
        for entry in group["Tasks"].values():
            for key in ("contrasts", "attribution", "contrast_table"):
                entry.pop(key, None)
            entry["maps"] = [
                {k: m[k] for k in ("state", "label", "correct_only", "n_participants", "participants", "mean", "t")}
                for m in entry["maps"]
            ]
    write_json(manifest_path, manifest)
    (out / "deeplight_report.html").unlink()
    assert cli([str(group_bids.bids_dir), str(out), "group", "--reports-only"]) == 0
    text = (out / "deeplight_report.html").read_text()
    assert "one-sample t statistic (intercept-only second-level model" in text
    assert "Contrasts between states" not in text


def test_participant_outputs_without_attribution_records(synthetic_out):
    """Outputs made before attribution methods were recorded (no Attribution): the published preset, not signed."""
    out, code, _ = synthetic_out
    assert code == 0
    assert not any("Attribution" in p.read_text() for p in out.glob("sub-*/func/*_desc-mean_relevance.json"))
    summary = read_tsv(out / "group" / "task-motor_desc-contrasts_summary.tsv")
    assert set(summary.loc[summary["kind"] == "mean", "correction"]) == {"not tested"}
    assert set(summary.loc[summary["kind"] == "others", "correction"]) == {"fdr"}
    text = (out / "deeplight_report.html").read_text().replace("&#x27;", "'")
    assert (
        "attribution preset_b_flat (no Attribution record in the sidecars: the published preset) is not signed" in text
    )
    assert "FDR q = 0.05 (Benjamini-Hochberg, one-sided; z ≥" in text
    assert "The mean maps were not tested against 0" in text


def test_synthetic_group_outputs_pass_the_bids_validator(synthetic_out):
    out, _, _ = synthetic_out
    errors, returncode = validator_errors(out)
    assert errors == [] and returncode == 0

"""Small, fast end-to-end checks: the fast lane (``-m "not slow"``) reaches every module with them.

The full-grid runs with LRP are ``slow``; here one participant of 20 volumes is decoded
without LRP (seconds) and the group level runs on it, which goes through the group
orchestration, integrity screening, statistics and the report.
"""

import json
import runpy
import sys

import pandas as pd
import pytest

from deeplight_bids.cli.main import run as cli


@pytest.fixture(scope="module")
def decode_only_out(random_3d_model, tmp_path_factory):
    """sub-01 decoded without LRP, then the group level; returns (bids_dir, output_dir, group exit code)."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    base = tmp_path_factory.mktemp("smoke")
    ds = make_synthetic_dataset(base / "bids", n_participants=1, n_volumes=20, seed=0, blocks_per_state=1)
    out = base / "deeplight"
    code = cli(
        [
            str(ds.bids_dir),
            str(out),
            "participant",
            "--weights",
            str(random_3d_model),
            "--no-lrp",
            "--skip-bids-validation",
            "--batch-size",
            "10",
        ]
    )
    assert code == 0
    return ds.bids_dir, out, cli([str(ds.bids_dir), str(out), "group"])


def test_decode_only_participant_outputs(decode_only_out):
    _, out, _ = decode_only_out
    func = out / "sub-01" / "func"
    frame = pd.read_csv(func / "sub-01_task-motor_desc-predictions_timeseries.tsv", sep="\t")
    assert len(frame) == 20
    assert not list(func.glob("*relevance*"))
    sidecar = json.loads((func / "sub-01_task-motor_desc-predictions_timeseries.json").read_text())
    assert "volume" in sidecar


def test_group_level_on_decode_only_outputs(decode_only_out):
    _, out, code = decode_only_out
    assert code == 0
    report = (out / "deeplight_report.html").read_text()
    assert "sub-01" in report
    assert list((out / "group").rglob("*.tsv"))


def test_reports_only_rebuilds_the_report(decode_only_out):
    bids, out, _ = decode_only_out
    report = out / "deeplight_report.html"
    report.unlink()
    assert cli([str(bids), str(out), "group", "--reports-only"]) == 0
    assert "sub-01" in report.read_text()


def test_weights_list_names_every_published_model(tmp_path, monkeypatch, capsys):
    from deeplight_bids.models.weights import REGISTRY

    monkeypatch.setenv("DEEPLIGHT_WEIGHTS_DIR", str(tmp_path))
    assert cli(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out
    for name in REGISTRY:
        assert name in out and "missing" in out


def test_python_m_deeplight_bids_prints_the_version(monkeypatch, capsys):
    import deeplight_bids

    monkeypatch.setattr(sys, "argv", ["deeplight-bids", "--version"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("deeplight_bids", run_name="__main__")
    assert info.value.code in (0, None)
    assert deeplight_bids.__version__ in capsys.readouterr().out


def test_remove_stale_takes_the_sidecar_along(tmp_path, caplog):
    from deeplight_bids.derivatives.stale import remove_stale, stale_state_maps

    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    names = [
        f"sub-01_task-motor_space-MNI152NLin6Asym_res-2_label-{s}_desc-mean_relevance" for s in ("MOTORlh", "MOTORrh")
    ]
    for name in names:
        (func / f"{name}.nii.gz").write_bytes(b"x")
        (func / f"{name}.json").write_text("{}")
    stale = stale_state_maps(tmp_path, "01", "motor", [func / f"{names[0]}.nii.gz"])
    assert stale == [func / f"{names[1]}.nii.gz"]
    removed = remove_stale(stale, "not produced by these settings")
    assert sorted(p.name for p in removed) == sorted([f"{names[1]}.nii.gz", f"{names[1]}.json"])
    assert sorted(p.name for p in func.iterdir()) == sorted([f"{names[0]}.nii.gz", f"{names[0]}.json"])
    assert "not produced by these settings" in caplog.text

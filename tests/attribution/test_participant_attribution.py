"""--attribution and --compare-attributions through the participant level (full grid, one short run)."""

import json

import numpy as np
import pandas as pd
import pytest

from deeplight_bids.cli.main import run as cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gradient_run(synthetic_dataset, random_3d_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("attribution") / "deeplight"
    argv = [
        str(synthetic_dataset.bids_dir),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "--weights",
        str(random_3d_model),
        "--batch-size",
        "8",
        "--quality-volumes",
        "2",
        "--attribution",
        "gradient_x_input",
        "--compare-attributions",
        "gradient_x_input",
        "--compare-volumes",
        "2",
        "--skip-bids-validation",
    ]
    return out, cli(argv), argv


def _files(out):
    func = out / "sub-01" / "func"
    return {
        "rel_json": next(func.glob("*desc-relevance_bold.json")),
        "mean_json": sorted(func.glob("*desc-mean_relevance.json")),
        "pred_json": next(func.glob("*desc-predictions_timeseries.json")),
        "compare": next(func.glob("*desc-attributions_summary.tsv")),
    }


def test_the_method_is_recorded_and_the_maps_are_readable(gradient_run):
    from deeplight_bids import load_relevance

    out, code, _ = gradient_run
    assert code == 0
    files = _files(out)
    sidecar = json.loads(files["rel_json"].read_text())
    assert sidecar["Attribution"]["Method"] == "gradient_x_input" and sidecar["Attribution"]["Signed"] is True
    assert "LRP" not in sidecar and sidecar["Description"].startswith("attribution (gradient_x_input)")
    for path in files["mean_json"]:
        assert json.loads(path.read_text())["Attribution"]["Method"] == "gradient_x_input"
    image, rows = load_relevance(out, "01", "motor")
    data = np.asarray(image.dataobj)
    assert data.shape[3] == len(rows) > 0
    assert np.isfinite(data).all() and (data < 0).any() and (data > 0).any()  # a signed method's maps


def test_the_comparison_table_holds_the_published_rule_and_the_method(gradient_run):
    out, _, _ = gradient_run
    files = _files(out)
    table = pd.read_csv(files["compare"], sep="\t", keep_default_na=False)
    assert list(dict.fromkeys(table["method"])) == ["preset_b_flat", "gradient_x_input"]
    summary = json.loads(files["pred_json"].read_text())["Quality"]["AttributionComparison"]
    assert set(summary) == {"preset_b_flat", "gradient_x_input"}


def test_rerun_skips_and_another_method_recomputes(gradient_run, tmp_path):
    import shutil

    out, _, argv = gradient_run
    copy = tmp_path / "deeplight"
    shutil.copytree(out, copy)
    files = _files(copy)
    stamp = files["rel_json"].stat().st_mtime_ns
    argv = [copy if a == str(out) else a for a in argv]
    assert cli([str(a) for a in argv]) == 0
    assert files["rel_json"].stat().st_mtime_ns == stamp  # same settings: skipped
    other = [str(a) for a in argv]
    other[other.index("gradient_x_input")] = "gradient"  # --attribution gradient
    assert cli(other) == 0
    assert json.loads(files["rel_json"].read_text())["Attribution"]["Method"] == "gradient"

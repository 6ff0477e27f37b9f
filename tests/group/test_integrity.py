"""Nothing mixed, nothing stale, nothing outside (issue 18), end to end through the group level.

One module-scoped story on generated data (full grid, 15 volumes, random-weight model):

1. dataset A (sub-01, sub-02) and dataset B (sub-01 only, other data) are processed into
   their own OUTPUT_DIRs with one shared ``--work-dir`` and ``--lrp-target true``; A is
   then re-run (its runs are complete: only the summaries are rewritten).  A's mean maps
   must stay A's own, not B's (B's run has the same label and settings).
2. A copy of A's outputs is re-run for sub-01 with ``--lrp-target predicted``: the mean
   maps of states the new settings explain no volume for are removed and reported; the
   group level then refuses to pool sub-01's maps (predicted) with sub-02's (true) and
   says which; after sub-02 is re-run too, the group level pools only predicted maps.
3. On copies of that: ``OUTPUT_DIR/group`` as a link to elsewhere (nothing written there,
   one-line error) and a truncated participant mean map (left out, listed in the report).
"""

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deeplight_bids.cli.main import run as cli

from .conftest import N_VOLUMES, link_copy


def _mean_maps(out, subject="01"):
    folder = Path(out) / f"sub-{subject}" / "func"
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*_desc-mean_relevance.nii.gz"))}


def _latest_log(out):
    return sorted((Path(out) / "logs").glob("config-*.log"), key=os.path.getmtime)[-1].read_text()


def _error_line(err):
    """The one ``deeplight-bids: error:`` line of stderr (log lines aside), no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("deeplight-bids: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _args(model, work, target="true"):
    return [
        "--weights",
        str(model),
        "--batch-size",
        "8",
        "--lrp-target",
        target,
        "--high-pass",
        "none",
        "--skip-bids-validation",
        "-w",
        str(work),
    ]


@pytest.fixture(scope="module")
def shared_work(tmp_path_factory, group_model):
    """Datasets A and B processed with one work folder; A re-run after B."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    base = tmp_path_factory.mktemp("integrity")
    data_a = make_synthetic_dataset(base / "A", n_participants=2, n_volumes=N_VOLUMES, seed=1, blocks_per_state=1)
    data_b = make_synthetic_dataset(base / "B", n_participants=1, n_volumes=N_VOLUMES, seed=2, blocks_per_state=1)
    work = base / "work"
    out_a, out_b = base / "out_a", base / "out_b"
    assert cli([str(data_a.bids_dir), str(out_a), "participant", *_args(group_model, work)]) == 0
    maps_a = _mean_maps(out_a)
    assert cli([str(data_b.bids_dir), str(out_b), "participant", *_args(group_model, work)]) == 0
    maps_b = _mean_maps(out_b)
    assert cli([str(data_a.bids_dir), str(out_a), "participant", *_args(group_model, work)]) == 0
    return {
        "a": data_a,
        "b": data_b,
        "work": work,
        "out_a": out_a,
        "out_b": out_b,
        "maps_a": maps_a,
        "maps_b": maps_b,
        "maps_a_rerun": _mean_maps(out_a),
        "base": base,
    }


def test_two_datasets_sharing_a_work_folder_keep_their_own_maps(shared_work):
    maps_a, maps_b, rerun = shared_work["maps_a"], shared_work["maps_b"], shared_work["maps_a_rerun"]
    assert sorted(maps_a) and sorted(maps_b) == sorted(maps_a)  # same names: sub-01, task motor, same states
    scale = max(float(np.abs(m).max()) for m in maps_a.values())  # relevance of a random model: ~1e-10
    assert scale > 0
    # (a state the random model never favours has a 0 map in both; the others differ by a few %)
    assert any(np.abs(maps_a[n] - maps_b[n]).max() > 1e-3 * scale for n in maps_a), "datasets A and B should differ"
    for name in maps_a:
        np.testing.assert_allclose(rerun[name], maps_a[name], rtol=1e-5, atol=1e-6 * scale, err_msg=name)
    assert "made from other inputs or settings" in _latest_log(shared_work["out_a"])


@pytest.fixture(scope="module")
def settings_changed(shared_work, group_model):
    """A copy of A's outputs; sub-01 re-run with --lrp-target predicted, then the group level."""
    out = link_copy(shared_work["out_a"], shared_work["base"] / "out_c", ignore=shutil.ignore_patterns("logs"))
    bids = shared_work["a"].bids_dir
    before = _mean_maps(out)
    code = cli(
        [
            str(bids),
            str(out),
            "participant",
            "--participant-label",
            "01",
            *_args(group_model, shared_work["work"], "predicted"),
        ]
    )
    assert code == 0
    log = _latest_log(out)
    return {"out": out, "bids": bids, "before": before, "after": _mean_maps(out), "log": log}


def test_rerun_with_other_settings_removes_and_reports_stale_maps(settings_changed):
    before, after, out = settings_changed["before"], settings_changed["after"], settings_changed["out"]
    removed = sorted(set(before) - set(after))
    assert removed, "the random model should explain fewer states with --lrp-target predicted"
    for name in removed:
        assert f"removed {out / 'sub-01' / 'func' / name}" in settings_changed["log"]
        assert not (out / "sub-01" / "func" / name.replace(".nii.gz", ".json")).exists()
    for path in (out / "sub-01" / "func").glob("*_desc-mean_relevance.json"):
        assert json.loads(path.read_text())["LRPTarget"] == "predicted"


def test_group_refuses_maps_of_other_settings_then_pools_one_setting(
    settings_changed, group_model, shared_work, capsys
):
    out, bids = settings_changed["out"], settings_changed["bids"]
    capsys.readouterr()
    code = cli([str(bids), str(out), "group"])
    err = _error_line(capsys.readouterr().err)
    assert code == 3
    assert "different settings" in err and "LRPTarget predicted" in err and "LRPTarget true" in err
    assert "sub-01" in err and "sub-02" in err
    assert not (out / "group").exists()  # refused before writing anything

    assert (
        cli(
            [
                str(bids),
                str(out),
                "participant",
                "--participant-label",
                "02",
                *_args(group_model, shared_work["work"], "predicted"),
            ]
        )
        == 0
    )
    assert cli([str(bids), str(out), "group"]) == 0
    manifest = json.loads((out / "group" / "group_manifest.json").read_text())
    pooled = {m["state"] for m in manifest["ModelGroups"][0]["Tasks"]["motor"]["maps"]}
    present = {json.loads(p.read_text())["State"] for p in out.glob("sub-*/func/*_desc-mean_relevance.json")}
    assert pooled == present
    for path in out.glob("sub-*/func/*_desc-mean_relevance.json"):
        assert json.loads(path.read_text())["LRPTarget"] == "predicted"


@pytest.fixture(scope="module")
def pooled_out(settings_changed, group_model, shared_work):
    """The outputs with both participants re-run with 'predicted' (done by the test above, else here)."""
    out = settings_changed["out"]
    hashes = {
        json.loads(p.read_text())["SettingsHash"] for p in out.glob("sub-*/func/*_desc-predictions_timeseries.json")
    }
    if len(hashes) > 1:
        assert (
            cli(
                [
                    str(settings_changed["bids"]),
                    str(out),
                    "participant",
                    "--participant-label",
                    "02",
                    *_args(group_model, shared_work["work"], "predicted"),
                ]
            )
            == 0
        )
    return out


def test_group_folder_linked_elsewhere_writes_nothing_there(pooled_out, settings_changed, tmp_path, capsys):
    out = link_copy(pooled_out, tmp_path / "out", ignore=shutil.ignore_patterns("group", "logs", "*.html"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "group").symlink_to(elsewhere, target_is_directory=True)
    capsys.readouterr()
    code = cli([str(settings_changed["bids"]), str(out), "group"])
    err = _error_line(capsys.readouterr().err)
    assert code == 5
    assert "symbolic link" in err and str(out / "group") in err
    assert list(elsewhere.iterdir()) == []
    assert not (out / "deeplight_report.html").exists()


def test_truncated_participant_map_is_left_out_and_listed(pooled_out, settings_changed, tmp_path, capsys):
    out = link_copy(pooled_out, tmp_path / "out", ignore=shutil.ignore_patterns("group", "logs", "*.html"))
    victim = sorted((out / "sub-01" / "func").glob("*_desc-mean_relevance.nii.gz"))[0]
    data = victim.read_bytes()
    victim.unlink()  # a hard link: replace it, never edit the shared file
    victim.write_bytes(data[: len(data) // 2])
    state = json.loads(victim.with_name(victim.name.replace(".nii.gz", ".json")).read_text())["State"]
    code = cli([str(settings_changed["bids"]), str(out), "group"])
    assert code == 0
    manifest = json.loads((out / "group" / "group_manifest.json").read_text())
    maps = manifest["ModelGroups"][0]["Tasks"]["motor"]["maps"]
    assert all("sub-01" not in m["participants"] for m in maps if m["state"] == state)
    assert victim.name in (out / "deeplight_report.html").read_text()


def test_changed_events_make_a_finished_run_out_of_date(
    pooled_out, settings_changed, group_model, shared_work, tmp_path
):
    """Same settings, same paths, but an edited events file: the run is recomputed, not skipped."""
    import pandas as pd

    bids = link_copy(settings_changed["bids"], tmp_path / "bids")
    out = link_copy(pooled_out, tmp_path / "out", ignore=shutil.ignore_patterns("group", "logs", "*.html"))
    events = sorted((bids / "sub-02").rglob("*_events.tsv"))[0]
    text = events.read_text()
    events.unlink()  # a hard link: replace it
    events.write_text(text.replace("\tlh\n", "\trh\n"))
    assert events.read_text() != text
    args = [str(bids), str(out), "participant", "--participant-label", "02"]
    assert cli([*args, *_args(group_model, shared_work["work"], "predicted")]) == 0
    table = pd.read_csv(sorted((out / "logs").glob("runs-*.tsv"))[-1], sep="\t")
    assert list(table["status"]) == ["done"]
    assert "changed since its outputs were made" in _latest_log(out)

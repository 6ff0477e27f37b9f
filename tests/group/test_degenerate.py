"""Group statistics on degenerate participant outputs: no labelled volumes, few participants."""

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd

from deeplight_bids.group import report, stats
from deeplight_bids.prepare.grid import REFERENCE_AFFINE
from deeplight_bids.utils.tsv import read_tsv

N = 12


def _record(subject, labelled=True):
    states = ["MOTOR_lh"] * 6 + ["MOTOR_rh"] * 6
    frame = pd.DataFrame(
        {
            "volume": range(N),
            "true_state": states if labelled else [None] * N,
            "predicted_state": ["MOTOR_lh"] * N,
            "correct": [int(s == "MOTOR_lh") for s in states] if labelled else [None] * N,
        }
    )
    frame["correct"] = frame["correct"].astype("Int64")
    return SimpleNamespace(subject=subject, label=f"sub-{subject}_task-x", entities={}, read=lambda: frame)


def test_no_labelled_volumes_gives_tables_with_headers(tmp_path):
    runs = [_record("01", labelled=False)]
    block = stats.block_time_table(runs)
    assert len(block) == 0 and list(block.columns)[:3] == ["volumes_since_onset", "n_volumes", "n_correct"]
    table = stats.accuracy_table(runs)
    assert table["n_labelled"].tolist() == [0, 0] and table["accuracy"].isna().all()
    summary = stats.group_summary(table)
    assert list(summary["metric"]) == ["accuracy", "balanced_accuracy", "chance_level"]
    counts, _ = stats.confusion_tables(runs, ["MOTOR_lh", "MOTOR_rh"])
    assert len(counts) == 0 and "true_state" in counts.columns
    path = tmp_path / "b.tsv"
    block.to_csv(path, sep="\t", index=False)
    assert read_tsv(path).columns[0] == "volumes_since_onset"
    path.write_text("")  # an empty file (written by older versions) reads as an empty table, no exception
    assert read_tsv(path).empty
    note = report._not_computed_html(table, "x")
    assert "no labelled volumes" in note and "--state-map" in note
    assert report._not_computed_html(stats.accuracy_table([_record("01")]), "x") == ""


def test_single_state_and_one_run():
    frame_runs = [_record("01")]
    table = stats.accuracy_table(frame_runs)
    assert table.loc[0, "accuracy"] == 0.5
    assert len(stats.block_time_table(frame_runs)) == 6


def test_t_maps_need_three_participants():
    from deeplight_bids.group.inference import second_level_inference

    rng = np.random.default_rng(0)
    mask = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), REFERENCE_AFFINE)
    maps = [rng.normal(size=(4, 4, 4)) for _ in range(3)]
    two = second_level_inference(maps[:2], mask)
    assert two.t is None and two.z is None and two.correction == "not tested"
    assert np.allclose(two.effect, np.mean(maps[:2], axis=0), atol=1e-6)
    assert "effect map only" in two.note and str(stats.MIN_T_PARTICIPANTS) in two.note
    three = second_level_inference(maps, mask)
    assert three.t is not None and three.t.shape == (4, 4, 4) and three.dof == 2


def test_volume_counts_are_plural_aware():
    assert report._volumes(1) == "1 volume" and report._volumes(3) == "3 volumes"
    assert report._volumes(None) == "? volumes"

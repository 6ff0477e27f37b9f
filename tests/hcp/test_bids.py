"""BIDS side of ``deeplight-bids-hcp``: events from HCP EV files, validity, discoverability."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deeplight_bids.exceptions import EventsError
from deeplight_bids.hcp import bids as hcp_bids
from deeplight_bids.states import HCP_TASK_STATES

VALIDATOR = Path(sys.executable).with_name("bids-validator-deno")


def write_evs(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def all_evs(task, **contents):
    """Every state EV file of ``task`` (empty unless given), plus the given extra files."""
    files = {name: "" for name in hcp_bids.HCP_EV_FILES[task]}
    files.update({name.replace("__", "."): text for name, text in contents.items()})
    return files


# --------------------------------------------------------------------------- events


def test_every_task_maps_its_ev_files_onto_exactly_its_states():
    for task, states in HCP_TASK_STATES.items():
        assert sorted(set(hcp_bids.HCP_EV_FILES[task].values())) == sorted(states)


def test_gambling_uses_event_files_not_blocks(tmp_path):
    evs = all_evs(
        "GAMBLING",
        win_event__txt="12.5\t3.5\t1\n4.0\t3.5\t1\n",
        loss_event__txt="8.25\t3.5\t1\n",
        win__txt="4.0\t28.0\t1\n",
        loss__txt="40\t28\t1\n",
    )
    events = hcp_bids.events_from_ev_dir(write_evs(tmp_path / "EVs", evs), "GAMBLING")
    assert events == [(4.0, 3.5, "win"), (8.25, 3.5, "loss"), (12.5, 3.5, "win")]


def test_wm_merges_0bk_and_2bk_and_ignores_response_files(tmp_path):
    evs = all_evs(
        "WM",
        **{
            "0bk_body__txt": "36.5\t27.5\t1\n",
            "2bk_body__txt": "7.98\t27.5\t1\n",
            "2bk_tools__txt": "65.1\t27.5\t1\n",
            "0bk_cor__txt": "37\t2\t1\n",
            "all_bk_cor__txt": "7\t2\t1\n",
        },
    )
    events = hcp_bids.events_from_ev_dir(write_evs(tmp_path / "EVs", evs), "WM")
    assert events == [(7.98, 27.5, "body"), (36.5, 27.5, "body"), (65.1, 27.5, "tools")]


def test_social_uses_response_files_and_motor_ignores_cue(tmp_path):
    social = all_evs("SOCIAL", mental_resp__txt="23.1 23.0 1\n", other_resp__txt="80.2 23 1\n", mental__txt="9 9 1\n")
    assert hcp_bids.events_from_ev_dir(write_evs(tmp_path / "s", social), "SOCIAL") == [
        (23.1, 23.0, "mental"),
        (80.2, 23.0, "other"),
    ]
    motor = all_evs("MOTOR", t__txt="0\t0\t0\n", rh__txt="71.617\t12\t1\n", cue__txt="69.6\t3\t1\n")
    assert hcp_bids.events_from_ev_dir(write_evs(tmp_path / "m", motor), "MOTOR") == [(71.617, 12.0, "rh")]


def test_events_tsv_text():
    text = hcp_bids.format_events_tsv([(7.98, 27.5, "body"), (71.617, 12.0, "rh"), (100.0, 0.5, "t")])
    assert text == "onset\tduration\ttrial_type\n7.98\t27.5\tbody\n71.617\t12\trh\n100\t0.5\tt\n"


def test_missing_or_malformed_ev_file_is_an_events_error(tmp_path):
    evs = all_evs("LANGUAGE")
    del evs["math.txt"]
    with pytest.raises(EventsError, match="math.txt: EV file missing"):
        hcp_bids.events_from_ev_dir(write_evs(tmp_path / "a", evs), "LANGUAGE")
    evs = all_evs("LANGUAGE", story__txt="12.0 abc 1\n")
    with pytest.raises(EventsError, match=r"story.txt, line 1: expected 3 numbers"):
        hcp_bids.events_from_ev_dir(write_evs(tmp_path / "b", evs), "LANGUAGE")


def test_fetched_events_match_the_ev_files(fetched_dataset):
    root, _ = fetched_dataset
    motor = (root / hcp_bids.run_files("100307", "MOTOR", "RL").events).read_text()
    assert motor == "onset\tduration\ttrial_type\n2.5\t6.25\trf\n10\t12\tlf\n20.125\t3\trh\n"
    wm = (root / hcp_bids.run_files("100307", "WM", "LR").events).read_text()
    assert wm == "onset\tduration\ttrial_type\n3.5\t7.5\tbody\n15\t7.5\tbody\n24\t2.5\tfaces\n"


# --------------------------------------------------------------------------- layout


def test_sidecars_and_descriptions(fetched_dataset):
    root, _ = fetched_dataset
    assert json.loads((root / "task-MOTOR_bold.json").read_text()) == {"TaskName": "MOTOR", "RepetitionTime": 0.72}
    bold_json = json.loads((root / hcp_bids.run_files("100307", "WM", "RL").bold_json).read_text())
    assert bold_json["RepetitionTime"] == 0.72 and bold_json["SkullStripped"] is False and bold_json["Resolution"]
    assert json.loads((root / "dataset_description.json").read_text())["DatasetType"] == "raw"
    deriv = json.loads((root / "derivatives/hcp/dataset_description.json").read_text())
    assert deriv["DatasetType"] == "derivative" and deriv["GeneratedBy"][0]["Name"] == "HCP Pipelines"
    assert (root / "participants.tsv").read_text() == "participant_id\nsub-100307\n"


def test_raw_bold_is_the_derivative_file_not_a_copy(fetched_dataset):
    root, _ = fetched_dataset
    files = hcp_bids.run_files("100307", "MOTOR", "LR")
    assert (root / files.raw_bold).stat().st_ino == (root / files.bold).stat().st_ino


def test_fetched_dataset_passes_the_bids_validator(fetched_dataset):
    root, _ = fetched_dataset
    proc = subprocess.run(
        [str(VALIDATOR), "--recursive", "--format", "json", str(root)], capture_output=True, text=True, timeout=120
    )
    report = json.loads(proc.stdout)
    issues = list(report["issues"]["issues"])
    for sub in report.get("derivativesSummary", {}).values():
        issues += sub["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == []
    assert proc.returncode == 0
    assert "/derivatives/hcp/" in report.get("derivativesSummary", {}), "derivatives were not validated"


def test_validator_catches_a_broken_dataset(fetched_dataset, tmp_path):
    # The validity test above is only worth something if the validator sees our files.
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(fetched_dataset[0], root)
    (root / hcp_bids.run_files("100307", "MOTOR", "LR").bold_json).write_text('{"RepetitionTime": 0.72}')
    proc = subprocess.run(
        [str(VALIDATOR), "--recursive", "--format", "json", str(root)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "SkullStripped" in proc.stdout


def test_pybids_finds_runs_masks_and_events_with_the_same_entities(fetched_dataset):
    from bids import BIDSLayout

    root, _ = fetched_dataset
    layout = BIDSLayout(root, derivatives=True)
    bolds = layout.get(suffix="bold", desc="preproc", space="MNI152NLin6Asym", extension=".nii.gz")
    assert sorted((b.entities["task"], b.entities["direction"]) for b in bolds) == [
        ("MOTOR", "LR"),
        ("MOTOR", "RL"),
        ("WM", "LR"),
        ("WM", "RL"),
    ]
    for bold in bolds:
        ents = {k: bold.entities[k] for k in ("subject", "task", "direction")}
        masks = layout.get(suffix="mask", desc="brain", space="MNI152NLin6Asym", extension=".nii.gz", **ents)
        events = layout.get(suffix="events", extension=".tsv", **ents)
        assert len(masks) == 1 and len(events) == 1
        assert "derivatives" not in Path(events[0].path).relative_to(root).parts
        assert layout.get_metadata(bold.path)["RepetitionTime"] == 0.72

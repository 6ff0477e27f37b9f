"""Participants a model was fitted on have no outputs by design: not problems, not warnings, but
"training participants (not decoded)" in the log and the report."""

from pathlib import Path

from deeplight_bids.group.integrity import (
    describe_fitting_participants,
    fitting_participants,
    set_aside_fitting_participants,
)
from deeplight_bids.group.report import _processing_section
from deeplight_bids.group.stats import Inventory, RunRecord


def _inventory(tmp_path, model):
    inv = Inventory(Path(tmp_path), expected=["01", "02", "03", "04", "05", "06"])
    inv.runs.append(RunRecord({"subject": "05", "task": "motor"}, tmp_path / "x.tsv", {"Model": model}, None))
    inv.models["3D:abc"] = model
    # what collect_inventory lists for every participant of BIDS_DIR without outputs
    for label in ("01", "02", "03", "04", "06"):
        inv.problems.append(
            {
                "participant": label,
                "item": f"sub-{label}",
                "problem": "no participant-level outputs (not processed, or failed)",
            }
        )
    inv.problems.append({"participant": "02", "item": "sub-02_task-motor_x.nii.gz", "problem": "corrupt"})
    return inv


MODEL = {
    "Architecture": "3D-DeepLight",
    "WeightsSHA256": "abc",
    "Name": "demo-3D",
    "TrainingParticipants": ["01", "02", "sub-03"],
    "ValidationParticipants": ["04"],
}


def test_training_and_validation_participants_are_set_aside(tmp_path):
    inv = _inventory(tmp_path, MODEL)
    assert fitting_participants(inv) == {"01": "training", "02": "training", "03": "training", "04": "validation"}
    roles = set_aside_fitting_participants(inv)
    assert list(roles) == ["01", "02", "03", "04"]
    # 06 was expected and is not a training participant: still a problem; so is 02's corrupt file
    assert sorted((p["participant"], p["item"]) for p in inv.problems) == [
        ("02", "sub-02_task-motor_x.nii.gz"),
        ("06", "sub-06"),
    ]
    line = describe_fitting_participants(roles)
    assert line == "training participants (not decoded; the model was fitted on them): 01, 02, 03, 04 (validation)"


def test_published_weights_name_no_training_participants(tmp_path):
    model = {k: v for k, v in MODEL.items() if "Participants" not in k}
    inv = _inventory(tmp_path, model)
    assert set_aside_fitting_participants(inv) == {}
    assert len(inv.problems) == 6


def test_report_lists_them_as_training_participants(tmp_path):
    inv = _inventory(tmp_path, MODEL)
    set_aside_fitting_participants(inv)
    html = _processing_section(inv)
    assert html.count("training participant (not decoded)") == 4
    assert "Training participants (not decoded; the model was fitted on them): 01, 02, 03, 04 (validation)." in html
    assert "<td>sub-06</td><td class='bad'>skipped</td>" in html

"""Events -> per-volume labels (reference section 3), state maps, events.tsv checks."""

import json

import numpy as np
import pandas as pd
import pytest

from deeplight_bids.exceptions import EventsError, InputDataError
from deeplight_bids.prepare.labels import (
    load_state_map_file,
    read_events,
    resolve_state_map,
    unmapped_trial_types,
    volume_labels,
)

A, B = "STATE_a", "STATE_b"
MAP = {"a": A, "b": B}


def _events(*rows):
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])


def _expected(n, spans):
    """Hand-written expectation: list of (first, last, label) inclusive volume spans."""
    out = [None] * n
    for first, last, label in spans:
        for i in range(first, last + 1):
            out[i] = label
    return out


# ----------------------------------------------------------------------------- the rule


def test_window_bounds_are_inclusive():
    # TR 2: window [4 + 2, 4 + 4 + 4] = [6, 12] s -> volumes 3, 4, 5, 6 (t = 6, 8, 10, 12).
    labels = volume_labels(_events((4.0, 4.0, "a")), 10, 2.0, MAP)
    assert labels.dtype == object and labels.shape == (10,)
    assert list(labels) == _expected(10, [(3, 6, A)])


def test_window_with_hcp_tr():
    # TR 0.72, onset 1.0, duration 2.0: window [1.72, 4.44] s; t_i = 0.72 i -> i = 3..6
    # (2.16, 2.88, 3.60, 4.32); volume 2 (1.44) and 7 (5.04) are outside.
    labels = volume_labels(_events((1.0, 2.0, "a")), 9, 0.72, MAP)
    assert list(labels) == _expected(9, [(3, 6, A)])


def test_tolerance_of_a_microsecond():
    # onset written 0.5 us late still includes the bound volumes; 10 us late does not.
    assert list(volume_labels(_events((4.0000005, 4.0, "a")), 10, 2.0, MAP)) == _expected(10, [(3, 6, A)])
    assert list(volume_labels(_events((4.00001, 4.0, "a")), 10, 2.0, MAP)) == _expected(10, [(4, 6, A)])
    # end bound: duration 0.5 us short still includes t = 12; 10 us short does not.
    assert list(volume_labels(_events((4.0, 3.9999995, "a")), 10, 2.0, MAP)) == _expected(10, [(3, 6, A)])
    assert list(volume_labels(_events((4.0, 3.99999, "a")), 10, 2.0, MAP)) == _expected(10, [(3, 5, A)])


def test_zero_duration_event():
    # window [o + TR, o + 2 TR] = [2, 4] -> volumes 1 and 2.
    assert list(volume_labels(_events((0.0, 0.0, "a")), 5, 2.0, MAP)) == _expected(5, [(1, 2, A)])


@pytest.mark.parametrize("reverse_rows", [False, True])
def test_overlap_later_onset_wins(reverse_rows):
    # a: onset 0, dur 10 -> [2, 14] s -> volumes 1..7; b: onset 6, dur 2 -> [8, 12] -> 4..6.
    rows = [(0.0, 10.0, "a"), (6.0, 2.0, "b")]
    events = _events(*(rows[::-1] if reverse_rows else rows))
    labels = volume_labels(events, 10, 2.0, MAP)
    assert list(labels) == _expected(10, [(1, 3, A), (4, 6, B), (7, 7, A)])


def test_overlap_equal_onsets_later_row_wins():
    events = _events((0.0, 4.0, "a"), (0.0, 2.0, "b"))  # a: volumes 1..4, b: 1..3
    assert list(volume_labels(events, 6, 2.0, MAP)) == _expected(6, [(1, 3, B), (4, 4, A)])


def test_consecutive_blocks_tail_overwritten_by_next_onset():
    # a: [2, 2+4+2] = onset 0 dur 4 -> [2, 8] -> 1..4; b onset 4 dur 4 -> [6, 12] -> 3..6.
    events = _events((0.0, 4.0, "a"), (4.0, 4.0, "b"))
    assert list(volume_labels(events, 8, 2.0, MAP)) == _expected(8, [(1, 2, A), (3, 6, B)])


def test_unmapped_trial_types_label_nothing_and_overwrite_nothing():
    events = _events((0.0, 10.0, "a"), (4.0, 2.0, "cue"), (20.0, 4.0, "cue"))
    labels = volume_labels(events, 15, 2.0, MAP)
    # cue would cover 3..5 and 11..14: a keeps 1..7, the rest stays None.
    assert list(labels) == _expected(15, [(1, 7, A)])
    assert unmapped_trial_types(events, MAP) == ["cue"]
    assert unmapped_trial_types(_events((0.0, 1.0, "z"), (0.0, 1.0, "c"), (1.0, 1.0, "z")), {}) == ["c", "z"]
    assert unmapped_trial_types(events, {"a": A, "cue": "x"}) == []


def test_events_past_the_end_of_the_run():
    events = _events((100.0, 10.0, "a"), (6.0, 10.0, "b"))  # b: [8, 22] -> volumes 4..11, run has 8
    labels = volume_labels(events, 8, 2.0, MAP)
    assert list(labels) == _expected(8, [(4, 7, B)])
    assert list(volume_labels(_events((100.0, 10.0, "a")), 8, 2.0, MAP)) == [None] * 8


def test_event_before_the_run_start():
    # onset -10, dur 8 -> [-8, 2] -> volumes 0 and 1.
    assert list(volume_labels(_events((-10.0, 8.0, "a")), 4, 2.0, MAP)) == _expected(4, [(0, 1, A)])


def test_empty_inputs():
    assert list(volume_labels(_events(), 3, 2.0, MAP)) == [None] * 3
    assert volume_labels(_events((0.0, 1.0, "a")), 0, 2.0, MAP).shape == (0,)


@pytest.mark.parametrize("t_r", [0, -2.0, float("nan"), float("inf"), None, "x"])
def test_bad_t_r(t_r):
    with pytest.raises(ValueError, match="t_r"):
        volume_labels(_events((0.0, 1.0, "a")), 3, t_r, MAP)


def test_bad_n_volumes():
    with pytest.raises(ValueError, match="n_volumes"):
        volume_labels(_events((0.0, 1.0, "a")), -1, 2.0, MAP)
    with pytest.raises(ValueError, match="n_volumes"):
        volume_labels(_events((0.0, 1.0, "a")), 2.5, 2.0, MAP)


# ----------------------------------------------------------------------------- state maps


@pytest.mark.parametrize(
    ("task", "trial_type", "state"),
    [
        ("gambling", "win_event", "GAMBLING_win"),
        ("GAMBLING", "loss_event", "GAMBLING_loss"),
        ("gambling", "neut_event", "GAMBLING_neut"),
        ("social", "mental_resp", "SOCIAL_mental"),
        ("social", "other_resp", "SOCIAL_other"),
        ("wm", "0bk_body", "WM_body"),
        ("wm", "2bk_tools", "WM_tools"),
        ("motor", "lh", "MOTOR_lh"),
        ("tfMRI_MOTOR", "t", "MOTOR_t"),
        ("emotion", "fear", "EMOTION_fear"),
    ],
)
def test_hcp_aliases(task, trial_type, state):
    assert resolve_state_map(task)[trial_type] == state


def test_hcp_map_leaves_cue_and_responses_unmapped():
    assert "cue" not in resolve_state_map("motor")
    assert "2bk_body_resp" not in resolve_state_map("wm")


def test_hcp_labels_through_aliases():
    events = _events((0.0, 2.0, "win_event"), (10.0, 2.0, "loss_event"))
    labels = volume_labels(events, 8, 2.0, resolve_state_map("gambling"))
    assert list(labels) == _expected(8, [(1, 3, "GAMBLING_win"), (6, 7, "GAMBLING_loss")])


def test_user_map_first_then_hcp_then_empty():
    user = {"motor": {"left": "MOTOR_lh"}, "Faces": {"face": "WM_faces"}}
    assert resolve_state_map("motor", user) == {"left": "MOTOR_lh"}  # replaces the HCP map
    assert resolve_state_map("faces", user) == {"face": "WM_faces"}  # case-insensitive fallback
    assert resolve_state_map("gambling", user)["win_event"] == "GAMBLING_win"  # task not in the user map
    assert resolve_state_map("stroop", user) == {}
    assert resolve_state_map("stroop") == {}


def test_load_state_map_file(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"motor": {"left": "MOTOR_lh", "cue": None}, "n": {"x": " X "}}))
    assert load_state_map_file(path) == {"motor": {"left": "MOTOR_lh"}, "n": {"x": "X"}}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object of tasks"),
        ("{}", "JSON object of tasks"),
        ('{"motor": ["lh"]}', "task 'motor' must map"),
        ('{"motor": {"lh": 3}}', "non-empty string or null"),
        ('{"motor": {"lh": ""}}', "non-empty string or null"),
    ],
)
def test_load_state_map_file_errors(tmp_path, content, match):
    path = tmp_path / "bad_map.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputDataError, match=match) as info:
        load_state_map_file(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


# ----------------------------------------------------------------------------- read_events


def _write(tmp_path, text, name="sub-01_task-x_events.tsv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_events(tmp_path):
    path = _write(
        tmp_path,
        "onset\tduration\ttrial_type\tresponse_time\n0\t2.5\ta\tn/a\n3.5\t1\tn/a\t0.4\n10\t0\tb\t1\n",
    )
    events = read_events(path)
    assert list(events.columns) == ["onset", "duration", "trial_type"]
    assert events["onset"].tolist() == [0.0, 10.0]
    assert events["duration"].tolist() == [2.5, 0.0]
    assert events["trial_type"].tolist() == ["a", "b"]
    assert events["onset"].dtype == np.float64


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "not found"),
        ("", "empty"),
        ("onset\tduration\ttrial_type\n", "no events"),
        ("duration\ttrial_type\n1\ta\n", "no 'onset' column"),
        ("onset\ttrial_type\n1\ta\n", "no 'duration' column"),
        ("onset\tduration\n1\t2\n", "no 'trial_type' column"),
        ("onset,duration,trial_type\n1,2,a\n", "no 'onset' column"),
        ("onset\tduration\ttrial_type\nn/a\t2\ta\n", "onset 'n/a' in data row 1"),
        ("onset\tduration\ttrial_type\n1\t2\ta\n3\tn/a\tb\n", "duration 'n/a' in data row 2"),
        ("onset\tduration\ttrial_type\n1\tlong\ta\n", "duration 'long'"),
        ("onset\tduration\ttrial_type\ninf\t1\ta\n", "onset 'inf'"),
        ("onset\tduration\ttrial_type\n1\t-2\ta\n", "negative duration"),
    ],
)
def test_read_events_errors(tmp_path, text, match):
    path = tmp_path / "sub-01_task-x_events.tsv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(EventsError, match=match) as info:
        read_events(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_read_events_all_rows_na_trial_type_is_empty_not_an_error(tmp_path):
    events = read_events(_write(tmp_path, "onset\tduration\ttrial_type\n0\t1\tn/a\n"))
    assert len(events) == 0
    assert list(volume_labels(events, 3, 2.0, MAP)) == [None] * 3


def test_events_with_trial_type_na_everywhere_warn(tmp_path):
    import logging

    path = tmp_path / "sub-01_task-x_events.tsv"
    path.write_text("onset\tduration\ttrial_type\n0\t10\tn/a\n20\t10\tn/a\n")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("deeplight_bids")  # the CLI turns propagation off: listen on it directly
    logger.addHandler(handler)
    try:
        events = read_events(path)
    finally:
        logger.removeHandler(handler)
    assert events.empty
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "n/a in all 2 row(s)" in warnings[0]

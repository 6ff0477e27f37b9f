"""From events to the states of a run's GLM design, and the runs that cannot make one."""

import numpy as np
import pandas as pd
import pytest

from deeplight_bids.glm.design import regressor_names, state_design
from deeplight_bids.glm.first_level import contrasts_of, design_matrix

MOTOR = {"lh": "MOTOR_lh", "rh": "MOTOR_rh", "t": "MOTOR_t"}


def _events(rows):
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])


def test_states_are_mapped_trial_types_and_contrasts_sum_to_zero():
    events = _events([(4, 12, "t"), (22, 12, "rh"), (40, 12, "lh"), (58, 12, "cue"), (76, 12, "rh")])
    design = state_design(events, MOTOR, 60, 2.0)
    assert design.skip_reason is None
    assert design.states == ("MOTOR_lh", "MOTOR_rh", "MOTOR_t")
    assert design.regressors == {"MOTOR_lh": "MOTORlh", "MOTOR_rh": "MOTORrh", "MOTOR_t": "MOTORt"}
    assert design.unmapped == ["cue"]  # unmapped trial types are baseline, as they label no volume
    assert list(design.events["trial_type"]) == ["MOTORt", "MOTORrh", "MOTORlh", "MOTORrh"]
    contrasts = contrasts_of(design)
    assert [c.label for c in contrasts] == [
        "MOTORlhVsOthers",
        "MOTORrhVsOthers",
        "MOTORtVsOthers",
        "MOTORlhVsBaseline",
        "MOTORrhVsBaseline",
        "MOTORtVsBaseline",
    ]
    matrix = design_matrix(design, 60, 2.0, 1 / 128)
    columns = list(matrix.columns)
    assert columns[:3] == ["MOTORlh", "MOTORrh", "MOTORt"] and "constant" in columns
    others = contrasts[0].vector(columns)
    assert others.sum() == pytest.approx(0) and others[0] == 1 and others[1] == others[2] == -0.5
    assert not others[3:].any()  # drifts and constant get no weight
    assert contrasts[3].vector(columns).tolist() == [1.0] + [0.0] * (len(columns) - 1)


def test_several_trial_types_of_one_state_are_one_regressor():
    events = _events([(4, 10, "left_hand"), (30, 10, "lh"), (60, 10, "rh")])
    design = state_design(events, {"left_hand": "MOTOR_lh", "lh": "MOTOR_lh", "rh": "MOTOR_rh"}, 50, 2.0)
    assert design.states == ("MOTOR_lh", "MOTOR_rh")
    assert design.trial_types["MOTOR_lh"] == ["left_hand", "lh"]


def test_high_pass_none_models_a_linear_trend_as_the_decoder_detrends():
    design = state_design(_events([(4, 10, "lh"), (30, 10, "rh")]), MOTOR, 30, 2.0)
    columns = list(design_matrix(design, 30, 2.0, None).columns)
    assert columns == ["MOTORlh", "MOTORrh", "drift_1", "constant"]


@pytest.mark.parametrize(
    "rows, state_map, words",
    [
        # ds000001-like balloon task: every trial type a parametric-modulator name nobody maps
        ([(0, 2, "pumps_demean"), (5, 2, "control_pumps_demean"), (9, 2, "explode_demean")], MOTOR, "no trial type"),
        # ds000114-like verb task: one condition
        ([(0, 30, "Task"), (60, 30, "Task")], {"Task": "MOTOR_lh"}, "only one state (MOTOR_lh)"),
        # the second state's events all lie after the end of the run (60 s)
        ([(0, 10, "lh"), (70, 10, "rh")], MOTOR, "only one state"),
        ([(0, 10, "lh"), (0, 10, "rh"), (30, 5, "lh"), (30, 5, "rh")], MOTOR, "coincide"),
        ([], MOTOR, "no trial type"),  # all rows were n/a (read_events dropped them)
    ],
)
def test_runs_that_cannot_make_a_design_say_why(rows, state_map, words):
    design = state_design(_events(rows), state_map, 30, 2.0)
    assert design.skip_reason is not None and words in design.skip_reason


def test_regressor_names_are_unique_identifiers():
    names = regressor_names(["MOTOR_lh", "MOTOR-lh", "2back", "@@"])
    assert names == {"MOTOR_lh": "MOTORlh", "MOTOR-lh": "state1", "2back": "state2", "@@": "state3"}
    assert all(n.isidentifier() for n in names.values())


def test_events_starting_before_the_run_still_count():
    design = state_design(_events([(-4, 10, "lh"), (20, 10, "rh")]), MOTOR, 30, 2.0)
    assert design.states == ("MOTOR_lh", "MOTOR_rh")
    matrix = design_matrix(design, 30, 2.0, 1 / 128)
    assert np.abs(matrix["MOTORlh"].to_numpy()).max() > 0

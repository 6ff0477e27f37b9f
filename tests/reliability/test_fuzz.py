"""Property-based tests: events parsing/labelling and command-line handling never give a traceback."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deeplight_bids.exceptions import EventsError
from deeplight_bids.prepare.labels import read_events, volume_labels

FUZZ = settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.too_slow])

_cell = st.one_of(
    st.sampled_from(
        [
            "0",
            "1.5",
            "-3",
            "12",
            "n/a",
            "",
            "nan",
            "inf",
            "-inf",
            "1e400",
            " 4 ",
            "lh",
            "rh",
            "t",
            "cue",
            '"q"',
            "1,5",
            "#",
            "\u00e9",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"), max_size=6),
)
_header = st.lists(
    st.sampled_from(["onset", "duration", "trial_type", "response_time", "onset ", "x", ""]), min_size=0, max_size=5
)


@st.composite
def events_text(draw):
    header = draw(_header)
    width = max(1, len(header))
    rows = draw(st.lists(st.lists(_cell, min_size=width - 1, max_size=width + 1), max_size=6))
    lines = ["\t".join(header)] if header or draw(st.booleans()) else []
    lines += ["\t".join(r) for r in rows]
    ending = draw(st.sampled_from(["\n", "\r\n", ""]))
    return ending.join(lines) + (ending if lines else "")


@FUZZ
@given(text=events_text(), raw=st.binary(max_size=40), use_raw=st.booleans())
def test_read_events_clean_error_or_valid(text, raw, use_raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sub-01_task-x_events.tsv"
        path.write_bytes(raw if use_raw else text.encode("utf-8"))
        try:
            frame = read_events(path)
        except EventsError as err:
            message = str(err)
            assert message.startswith(str(path)) and "\n" not in message and ";" in message
            return
    assert list(frame.columns) == ["onset", "duration", "trial_type"]
    assert np.isfinite(frame["onset"].to_numpy(dtype=float)).all()
    durations = frame["duration"].to_numpy(dtype=float)
    assert np.isfinite(durations).all() and (durations >= 0).all()
    assert all(isinstance(t, str) and t not in ("", "n/a") for t in frame["trial_type"])


_events_frame = st.lists(
    st.tuples(st.floats(-50, 200, allow_nan=False), st.floats(0, 60, allow_nan=False), st.sampled_from("abcd")),
    max_size=8,
).map(lambda rows: pd.DataFrame(rows, columns=["onset", "duration", "trial_type"]))


@FUZZ
@given(
    events=_events_frame,
    n_volumes=st.integers(0, 60),
    t_r=st.floats(0.2, 4.0),
    mapping=st.dictionaries(st.sampled_from("abcd"), st.sampled_from(["A", "B"]), max_size=4),
)
def test_volume_labels_match_brute_force(events, n_volumes, t_r, mapping):
    labels = volume_labels(events, n_volumes, t_r, mapping)
    assert labels.shape == (n_volumes,)
    expected = [None] * n_volumes
    mapped = [(o, d, t) for o, d, t in events.itertuples(index=False) if t in mapping]
    for onset, duration, trial_type in sorted(mapped, key=lambda e: e[0]):  # stable: later row wins ties
        for i in range(n_volumes):
            if onset + t_r - 1e-6 <= i * t_r <= onset + duration + 2 * t_r + 1e-6:
                expected[i] = mapping[trial_type]
    assert list(labels) == expected


@pytest.fixture(scope="module")
def argv_world(tmp_path_factory):
    base = tmp_path_factory.mktemp("argv")
    bids = base / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    good = base / "filter.json"
    good.write_text('{"run": 1, "session": null}')
    bad = base / "bad.json"
    bad.write_text("[1, 2")
    return {
        "bids": str(bids),
        "out": str(base / "out"),
        "good": str(good),
        "bad": str(bad),
        "missing": str(base / "missing"),
    }


_OPTIONS = [
    "--participant-label",
    "--participant_label",
    "--session-label",
    "-t",
    "--task",
    "--bids-filter-file",
    "-d",
    "--derivatives",
    "--space",
    "--architecture",
    "--weights",
    "--state-map",
    "--lrp-target",
    "--no-lrp",
    "--smoothing-fwhm",
    "--high-pass",
    "--nprocs",
    "--batch-size",
    "-w",
    "--work-dir",
    "--overwrite",
    "-v",
    "-vv",
    "--skip-bids-validation",
    "--correct-only",
    "--reports-only",
    "--bogus",
]
_VALUES = [
    "01",
    "sub-01",
    "0",
    "-1",
    "1/128",
    "1/0",
    "none",
    "nan",
    "inf",
    "3D",
    "2D",
    "true",
    "predicted",
    "",
    "x" * 300,
    "\u00e9\u00e8",
    "{good}",
    "{bad}",
    "{missing}",
    "{bids}",
    "{bids}/derivatives/x",
    "{out}",
]


@FUZZ
@given(
    tokens=st.lists(st.sampled_from(_OPTIONS + _VALUES), max_size=8),
    head=st.sampled_from(
        [
            ["{bids}", "{out}", "participant"],
            ["{bids}", "{out}", "group"],
            ["{bids}", "{bids}/o", "participant"],
            ["{missing}", "{out}", "participant"],
            ["{bids}", "{out}", "sideways"],
            ["{bids}"],
            [],
        ]
    ),
)
def test_cli_arguments_never_traceback(argv_world, tokens, head):
    from deeplight_bids.cli.parser import parse_args
    from deeplight_bids.config import Config

    argv = [t.format(**argv_world) for t in head + tokens]
    devnull = open(os.devnull, "w")
    import contextlib

    try:
        with contextlib.redirect_stderr(devnull), contextlib.redirect_stdout(devnull):
            args = parse_args(argv)
    except SystemExit as exc:
        assert exc.code in (0, 2), (argv, exc.code)
        return
    finally:
        devnull.close()
    config = Config.from_args(args)  # a parsed command line always makes a valid settings object
    assert config.batch_size >= 1 and config.nprocs >= 1
    assert config.high_pass is None or config.high_pass > 0
    assert config.to_dict()["inputs"]["bids_dir"] == str(Path(argv_world["bids"]))

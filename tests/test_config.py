"""Settings in sections: one source of defaults, flat access, and TOML that reads back the same."""

import dataclasses
import json

import pytest

from deeplight_bids.cli.parser import build_parser, parse_args
from deeplight_bids.config import SECTIONS, Config, FinetuneConfig, ParticipantConfig, default


def _argv(tmp_path, *options):
    bids = tmp_path / "bids"
    bids.mkdir(exist_ok=True)
    return [str(bids), str(tmp_path / "out"), "participant", *options]


def test_parser_defaults_are_the_sections_defaults():
    parser = build_parser()
    for dest in (
        "architecture",
        "lrp_target",
        "lrp_rule",
        "smoothing_fwhm",
        "high_pass",
        "batch_size",
        "relevance_maps",
        "reference_top_percent",
        "significance_permutations",
        "finetune",
        "finetune_init",
        "epochs",
        "finetune_batch_size",
        "cv_folds",
        "early_stopping_patience",
        "seed",
        "freeze_body",
    ):
        assert parser.get_default(dest) == default(dest), dest
    # (--quality-volumes is left out: its parser default is lowered for this test session by the
    # fewer_quality_volumes fixture of tests/conftest.py; test_parser_quality_volumes_in_tests checks it)
    assert default("batch_size") == ParticipantConfig().batch_size == 4  # decoding's, not fine-tuning's
    assert default("finetune_batch_size") == FinetuneConfig().batch_size == 8
    from deeplight_bids.models.train import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS

    assert (DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE) == (default("epochs"), default("finetune_batch_size"))


def test_parser_quality_volumes_in_tests(tmp_path):
    """The fewer_quality_volumes fixture acts: in-process CLI calls get 4 quality volumes unless they ask, while
    the configuration's own default (the demo's) stays the participant level's."""
    from tests.conftest import TEST_QUALITY_VOLUMES

    argv = _argv(tmp_path)
    assert TEST_QUALITY_VOLUMES < default("quality_volumes") == ParticipantConfig().quality_volumes
    assert Config.from_args(parse_args(argv)).participant.quality_volumes == TEST_QUALITY_VOLUMES
    asked = Config.from_args(parse_args([*argv, "--quality-volumes", "9"]))
    assert asked.participant.quality_volumes == 9


def test_flat_and_sectioned_access(tmp_path):
    config = Config(
        bids_dir=tmp_path,
        output_dir=tmp_path / "out",
        epochs=3,
        finetune=True,
        finetune_init="scratch",
        batch_size=2,
        finetune_batch_size=5,
        seed=7,
    )
    assert config.finetune.enabled and config.finetune.init == "scratch" and config.finetune_init == "scratch"
    assert (config.epochs, config.finetune.epochs) == (3, 3)
    assert (config.batch_size, config.participant.batch_size, config.finetune_batch_size) == (2, 2, 5)
    assert config.inputs.bids_dir == tmp_path and config.seed == 7
    assert getattr(config, "no_such_setting", None) is None
    with pytest.raises(TypeError, match="no_such_setting"):
        Config(bids_dir=tmp_path, no_such_setting=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nprocs = 3


def test_the_package_reads_settings_through_their_sections():
    """Inside the package a setting is read from its section (``config.participant.batch_size``), not through
    the flat view (``config.batch_size``, kept for users and tests): what a stage depends on shows in its code."""
    import re
    from pathlib import Path

    from deeplight_bids.config import FLAT_NAMES, SECTIONS

    package = Path(__file__).resolve().parents[1] / "deeplight_bids"
    pattern = re.compile(r"(?<![\w])(?:self\.|job\.)?(?:config|cfg)\.([a-z_]+)\b")
    flat = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "config.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for name in pattern.findall(line)
        if name in FLAT_NAMES and name not in SECTIONS
    ]
    assert not flat, "\n".join(flat)


def test_toml_round_trip_of_a_parsed_command_line(tmp_path):
    """Every kind of value survives save -> load: paths, tuples, None over a non-None default, pybids queries."""
    from bids.layout import Query

    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"echo": None, "acquisition": "*", "run": [1, 2], "desc": "preproc"}))
    state_map = tmp_path / "map.json"
    state_map.write_text("{}")
    args = parse_args(
        _argv(
            tmp_path,
            "--participant-label",
            "sub-01",
            "02",
            "--task",
            "motor",
            "--high-pass",
            "none",
            "--smoothing-fwhm",
            "0",
            "--bids-filter-file",
            str(filters),
            "--state-map",
            str(state_map),
            "--no-lrp",
            "--relevance-maps",
            "blocks",
            "--nprocs",
            "3",
            "--finetune",
            "--states",
            "A",
            "B",
            "--epochs",
            "2",
            "--learning-rate",
            "0.01",
            "--val-participants",
            "sub-03",
        )
    )
    config = Config.from_args(args)
    assert config.high_pass is None and config.bids_filters["echo"] is Query.NONE
    path = config.save(tmp_path / "out" / "logs" / "config-test.toml")
    loaded = Config.load(path)
    assert loaded == config
    assert isinstance(loaded.state_map_file, type(config.state_map_file)) and isinstance(loaded.smoothing_fwhm, float)
    assert loaded.bids_filters["acquisition"] == Query.ANY and loaded.bids_filters["run"] == [1, 2]
    assert set(loaded.to_dict()) >= set(SECTIONS)  # one table per section


def test_defaults_round_trip(tmp_path):
    config = Config.from_args(parse_args(_argv(tmp_path)))
    assert Config.load(config.save(tmp_path / "c.toml")) == config
    assert config.high_pass == default("high_pass") and config.quality and config.lrp


def test_unknown_setting_in_toml_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('analysis_level = "participant"\n[participant]\nbatch_sise = 3\n')
    with pytest.raises(ValueError, match="batch_sise"):
        Config.load(path)

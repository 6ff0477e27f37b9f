"""--no-glm, --glm-noise-model and --no-linear-baseline: defaults, values, the settings file, bad values."""

import pytest

from deeplight_bids.cli.parser import parse_args
from deeplight_bids.config import Config


@pytest.fixture
def argv(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    return [str(root), str(tmp_path / "out"), "participant"]


def test_defaults_on_and_ols(argv):
    config = Config.from_args(parse_args(argv))
    assert config.glm and config.glm_noise_model == "ols" and config.linear_baseline


def test_switches_and_toml_round_trip(argv, tmp_path):
    config = Config.from_args(parse_args([*argv, "--no-glm", "--glm-noise-model", "ar1", "--no-linear-baseline"]))
    assert not config.glm and config.glm_noise_model == "ar1" and not config.linear_baseline
    path = config.save(tmp_path / "config.toml")
    assert Config.load(path) == config


def test_bad_noise_model_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([*argv, "--glm-noise-model", "ar2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--glm-noise-model" in err and "'ols', 'ar1'" in err and "Traceback" not in err


def test_glm_settings_enter_their_own_hash_not_the_decoder_s(argv):
    """Changing the GLM refits the GLM only: the decoder's settings hash (its resume key) does not move."""
    from deeplight_bids.derivatives.resume import settings_hash
    from deeplight_bids.glm.first_level import glm_settings, glm_settings_hash

    ols = Config.from_args(parse_args(argv))
    ar1 = Config.from_args(parse_args([*argv, "--glm-noise-model", "ar1"]))
    assert settings_hash(ols, "sha", "3D") == settings_hash(ar1, "sha", "3D")
    assert glm_settings_hash(glm_settings(ols)) != glm_settings_hash(glm_settings(ar1))
    smoother = Config.from_args(parse_args([*argv, "--smoothing-fwhm", "6"]))
    assert glm_settings_hash(glm_settings(smoother)) != glm_settings_hash(glm_settings(ols))
    assert glm_settings_hash(glm_settings(ols), {"motor": {"a": "MOTOR_lh"}}) != glm_settings_hash(glm_settings(ols))

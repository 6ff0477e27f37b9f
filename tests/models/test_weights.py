"""Loading 3D-DeepLight weights: published-layout HDF5, native .keras + model card, errors."""

import json

import numpy as np
import pytest

from deeplight_bids.exceptions import WeightsError
from deeplight_bids.models import weights as w
from deeplight_bids.models.three import build_3d_deeplight
from deeplight_bids.states import PRETRAINED_STATES

from .legacy_h5 import randomise_weights, write_keras2_whole_model_h5


@pytest.fixture(scope="module")
def random_3d():
    return randomise_weights(build_3d_deeplight(n_states=16), seed=1)


def test_model_shape_and_parameters(random_3d):
    assert random_3d.input_shape == (None, 91, 109, 91, 1)
    assert random_3d.output_shape == (None, 16)
    # 13 convolutions and 12 batch norms of reference section 5
    assert random_3d.count_params() == 891304


def test_published_hdf5_layout_loads(random_3d, tmp_path, monkeypatch):
    path = tmp_path / "model-3D_DeepLight_desc-pretrained_model.hdf5"
    write_keras2_whole_model_h5(random_3d, path)
    loaded = w.load_deeplight(str(path))
    assert loaded.architecture == "3D" and loaded.states == PRETRAINED_STATES
    x = np.random.default_rng(0).standard_normal((1, 91, 109, 91, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.model(x, training=False), random_3d(x, training=False), rtol=1e-5, atol=1e-5)


def test_registry_verifies_checksum(tmp_path, monkeypatch, random_3d):
    monkeypatch.setenv("DEEPLIGHT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="weights fetch 3D-pretrained"):
        w.load_deeplight(None, "3D")
    # a file with the right name but other content is refused (git blob mismatch)
    write_keras2_whole_model_h5(random_3d, tmp_path / "model-3D_DeepLight_desc-pretrained_model.hdf5")
    with pytest.raises(WeightsError, match="checksum does not match"):
        w.load_deeplight("3D-pretrained")


def test_git_blob_matches_git(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello\n")
    # `printf 'hello\n' | git hash-object --stdin`
    assert w.git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_keras_file_with_card_round_trip(tmp_path):
    model = randomise_weights(build_3d_deeplight(n_states=3, input_shape=(16, 20, 16, 1)), seed=2)
    path = w.save_model(
        model, tmp_path / "m" / "demo.keras", {"architecture": "3D", "states": ["a", "b", "c"], "name": "demo"}
    )
    loaded = w.load_deeplight(str(path.parent))
    assert loaded.states == ("a", "b", "c") and loaded.name == "demo"
    x = np.random.default_rng(0).standard_normal((2, 16, 20, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.model(x), model(x), rtol=1e-6, atol=1e-6)


def test_keras_file_without_card_or_mismatched_card(tmp_path):
    model = build_3d_deeplight(n_states=3, input_shape=(16, 20, 16, 1))
    path = tmp_path / "m.keras"
    model.save(path)
    with pytest.raises(WeightsError, match="no model card"):
        w.load_deeplight(str(path))
    path.with_suffix(".json").write_text(json.dumps({"states": ["a", "b"]}))
    with pytest.raises(WeightsError, match="3 outputs but its card lists 2"):
        w.load_deeplight(str(path))


@pytest.mark.parametrize("content,match", [(b"not a model", "cannot read 3D-DeepLight weights"), (None, "not found")])
def test_bad_weights_files(tmp_path, content, match):
    path = tmp_path / "weights.hdf5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=match) as exc:
        w.load_deeplight(str(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_functional_keras_model_with_valid_card_is_a_one_line_error(tmp_path):
    import keras

    inputs = keras.Input((16, 20, 16, 1))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    path = tmp_path / "functional.keras"
    keras.Model(inputs, outputs).save(path)
    path.with_suffix(".json").write_text(json.dumps({"architecture": "3D", "states": ["a", "b", "c"]}))
    with pytest.raises(WeightsError, match="not a keras.Sequential") as exc:
        w.load_deeplight(str(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value) and "Sequential(" in str(exc.value)


def _zip(path, members):
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_keras_archive_with_oversized_config_is_refused(tmp_path):
    path = _zip(tmp_path / "bomb.keras", {"metadata.json": "{}", "config.json": b" " * (20 << 20)})
    path.with_suffix(".json").write_text(json.dumps({"architecture": "3D", "states": ["a", "b", "c"]}))
    assert path.stat().st_size < (1 << 20)  # 20 MiB of config in a file of a few kB
    with pytest.raises(WeightsError, match="config.json inflates to 20 MiB") as exc:
        w.load_deeplight(str(path))
    assert str(path) in str(exc.value) and "refusing" in str(exc.value) and "\n" not in str(exc.value)


def test_keras_archive_total_bound(tmp_path):
    path = _zip(tmp_path / "big.keras", {"config.json": "{}", "model.weights.h5": b"\0" * (3 << 20)})
    w.check_keras_archive(path)  # within the default bounds
    with pytest.raises(WeightsError, match="members inflate to"):
        w.check_keras_archive(path, max_total=2 << 20)
    (tmp_path / "not.keras").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="not a .keras zip archive"):
        w.check_keras_archive(tmp_path / "not.keras")

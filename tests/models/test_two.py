"""2D-DeepLight: Keras build, published-weight conversion, equivalence with the original equations.

Needs the published weights (reference section 6), found by the ``published_2d_weights``
fixture of tests/conftest.py (skipped where absent, failed under ``DEEPLIGHT_REQUIRE_WEIGHTS=1``).
"""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deeplight_bids.exceptions import WeightsError  # noqa: E402
from deeplight_bids.models.published_2d import (  # noqa: E402
    PUBLISHED_2D_FILENAME,
    PUBLISHED_2D_SHA256,
    check_arrays_2d,
    convert_published_2d,
    expected_shapes_2d,
    load_converted,
    load_published_2d,
    save_converted,
    variable_name,
)
from deeplight_bids.models.two import build_2d_deeplight, slice_feature_shape  # noqa: E402
from deeplight_bids.states import PRETRAINED_STATES  # noqa: E402
from deeplight_bids.utils.identity import sha256sum  # noqa: E402

try:
    from . import reference_2d_numpy as reference
except ImportError:  # tests/models is not a package: pytest put it on sys.path
    import reference_2d_numpy as reference

FULL_SHAPE = (91, 109, 91, 1)


def published_weights_path():
    """The published 2D weights (tests/conftest.py: skips where absent); prefer the ``published_2d_weights`` fixture."""
    from tests.conftest import find_published_2d_weights

    return find_published_2d_weights()


def brain_like_volumes(rng, n, shape=FULL_SHAPE):
    """``(n, z, y, x, 1)``: z-scored noise inside an ellipsoid 'brain', zeros outside."""
    nz, ny, nx = shape[:3]
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, s) for s in (nz, ny, nx)), indexing="ij")
    mask = (z / 0.8) ** 2 + (y / 0.9) ** 2 + (x / 0.8) ** 2 <= 1
    volumes = rng.standard_normal((n, nz, ny, nx)) * mask
    volumes[:, : nz // 2] += 0.5 * mask[: nz // 2]  # bottom-top asymmetry
    return volumes[..., None].astype(np.float32)


@pytest.fixture(scope="module")
def published_path(published_2d_weights):
    return published_2d_weights


@pytest.fixture(scope="module")
def published_arrays(published_path):
    return load_published_2d(published_path)


@pytest.fixture(scope="module")
def converted(published_arrays):
    return convert_published_2d(published_arrays)


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(42)
    return np.concatenate([brain_like_volumes(rng, 1), rng.standard_normal((1, *FULL_SHAPE)).astype(np.float32)])


def test_published_file_loads_with_short_names(published_path, published_arrays):
    assert sha256sum(published_path) == PUBLISHED_2D_SHA256
    assert {k: v.shape for k, v in published_arrays.items()} == expected_shapes_2d()
    assert len(published_arrays) == 34


def test_converted_logits_equal_original_equations(converted, published_arrays, volumes):
    keras_logits = np.asarray(converted.predict(volumes, verbose=0))
    numpy_logits = reference.forward_original(published_arrays, volumes)
    assert keras_logits.shape == numpy_logits.shape == (len(volumes), 16)
    assert numpy_logits.std() > 0.1  # meaningful logits, not a degenerate comparison
    max_abs_diff = np.abs(keras_logits - numpy_logits).max()
    print(f"2D-DeepLight Keras vs NumPy reference: max abs logit diff {max_abs_diff:.3g}")
    assert max_abs_diff < 1e-4
    np.testing.assert_array_equal(keras_logits.argmax(1), numpy_logits.argmax(1))


def test_slice_order_matters(converted, volumes):
    # The sequence runs bottom-to-top; flipping z must change the answer, else the
    # equivalence test above could not detect a reversed reading order.
    flipped = np.ascontiguousarray(volumes[:1, ::-1])
    assert np.abs(converted.predict(flipped, verbose=0) - converted.predict(volumes[:1], verbose=0)).max() > 1e-2


def test_decoding_is_deterministic(converted, volumes):
    first = np.asarray(converted(volumes, training=False))
    second = np.asarray(converted(volumes, training=False))
    np.testing.assert_array_equal(first, second)
    alone = np.asarray(converted(volumes[1:], training=False))
    np.testing.assert_allclose(alone, first[1:], atol=1e-5)


def test_save_converted_round_trip(converted, published_path, volumes, tmp_path):
    model_path, card_path = save_converted(converted, tmp_path / "model-2D_DeepLight.keras", published_path)
    assert model_path.is_file() and card_path == tmp_path / "model-2D_DeepLight.json"
    reloaded = load_converted(model_path)
    np.testing.assert_array_equal(
        np.asarray(reloaded(volumes, training=False)), np.asarray(converted(volumes, training=False))
    )
    card = json.loads(card_path.read_text())
    assert card["architecture"] == "2D"
    assert card["states"] == list(PRETRAINED_STATES)
    assert card["source"] == {"file": PUBLISHED_2D_FILENAME, "sha256": PUBLISHED_2D_SHA256}
    assert card["model_sha256"] == sha256sum(model_path)
    assert {"keras", "tensorflow", "numpy", "deeplight_bids"} <= set(card["software"])
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


# ----------------------------------------------------------------------------- converter errors


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_key_is_named(published_arrays):
    arrays = dict(published_arrays)
    del arrays["lstm_bw_27/weights_hh"]
    with pytest.raises(WeightsError) as error:
        check_arrays_2d(arrays)
    message = _one_line(error)
    assert "lstm_bw_27/weights_hh" in message and "(256, 64)" in message


def test_extra_key_is_named(published_arrays):
    arrays = dict(published_arrays)
    arrays["<tf.Variable 'model/linear_30/weights:0' shape=(16, 4) dtype=float32_ref>"] = np.zeros((16, 4))
    with pytest.raises(WeightsError) as error:
        convert_published_2d(arrays)
    message = _one_line(error)
    assert "linear_30/weights" in message and "(16, 4)" in message


def test_wrong_shape_is_named(published_arrays):
    arrays = dict(published_arrays)
    arrays["conv2d_5/weights"] = np.zeros((3, 3, 8, 32), np.float32)
    with pytest.raises(WeightsError) as error:
        convert_published_2d(arrays)
    message = _one_line(error)
    assert "conv2d_5/weights" in message and "(3, 3, 8, 16)" in message and "(3, 3, 8, 32)" in message


def test_wrong_number_of_states_is_named(published_arrays):
    with pytest.raises(WeightsError, match=r"linear_29/weights .*expected shape \(128, 20\)"):
        check_arrays_2d(published_arrays, n_states=20)


def test_variable_names_are_parsed():
    key = "<tf.Variable 'model/conv2d_1/weights:0' shape=(3, 3, 1, 8) dtype=float32_ref>"
    assert variable_name(key) == "conv2d_1/weights"
    assert variable_name("model/lstm_fw_26/biases_xh:0") == "lstm_fw_26/biases_xh"
    assert variable_name("linear_29/biases") == "linear_29/biases"


# ----------------------------------------------------------------------------- checksum


class _CreatesFileWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unknown_file_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / PUBLISHED_2D_FILENAME
    np.save(path, np.array({"payload": _CreatesFileWhenUnpickled(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError) as error:
        load_published_2d(path)
    message = _one_line(error)
    assert "sha256" in message and sha256sum(path) in message and "trusted=True" in message
    assert not marker.exists()


def test_trusted_file_is_loaded(tmp_path, published_arrays):
    path = tmp_path / "fine-tuned.npy"
    keys = {
        f"<tf.Variable 'model/{name}:0' shape={value.shape} dtype=float32_ref>": value * 2
        for name, value in published_arrays.items()
    }
    np.save(path, np.array(keys, dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError, match="sha256"):
        load_published_2d(path)
    loaded = load_published_2d(path, trusted=True)
    np.testing.assert_array_equal(loaded["linear_29/biases"], 2 * published_arrays["linear_29/biases"])


def test_missing_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_published_2d(tmp_path / "absent.npy")


# ----------------------------------------------------------------------------- small shapes


def test_small_shape_builds_and_matches_reference():
    shape = (5, 13, 10, 1)
    assert slice_feature_shape(shape) == (1, 1, 64)
    assert slice_feature_shape(FULL_SHAPE) == (4, 3, 64)
    rng = np.random.default_rng(7)
    arrays = {
        name: rng.normal(0, 0.3 if len(s) > 1 else 0.1, s).astype(np.float32)
        for name, s in expected_shapes_2d(n_states=3, lstm_input=64).items()
    }
    model = convert_published_2d(arrays, n_states=3, input_shape=shape)
    x = brain_like_volumes(rng, 2, shape)
    np.testing.assert_allclose(np.asarray(model(x, training=False)), reference.forward_original(arrays, x), atol=1e-4)

    bare = build_2d_deeplight(n_states=3, input_shape=(4, 20, 18, 1), dropout=False)
    assert bare.output_shape == (None, 3)
    assert not [layer for layer in bare.layers if "dropout" in layer.name]
    assert [layer.name for layer in bare.layers if layer.weights] == [f"conv_{k}" for k in range(1, 13)] + [
        "bilstm",
        "linear",
    ]
    assert bare.get_layer("bilstm").input.shape == (None, 4, 1 * 1 * 64)

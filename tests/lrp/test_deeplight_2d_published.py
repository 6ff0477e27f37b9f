"""``deeplight_2d`` is the original 2D-DeepLight's LRP, on the published weights, full grid.

The reference is :func:`tests.models.reference_2d_numpy.lrp_original`, a float64 NumPy
port of the original code (athms/evaluating-deeplight-transfer@4a8eeaa:
``src/deeplight/two/_lstm.py`` lines 188-208 and 240-296, ``src/modules/linear.py``
line 123, ``src/modules/convolution.py`` lines 119-126, ``src/deeplight/two/model.py``
lines 369-383), written from those lines, independent of :mod:`deeplight_bids.lrp`.

The published stabiliser (``+eps`` whatever the sign) divides by near-zero numbers
where a cell state or candidate pre-activation is near ``-eps``, so the rule is
ill-conditioned: float32 rounding of the forward pass moves the map by up to ~0.5 % of
max |R| on these volumes (measured 0.25-0.43 %).  The equations are therefore checked
on a float64 copy of the model, whose parameters are exactly the reference's (to 1e-4
of max |R|; measured ~5e-8), and the float32 model as deployed is checked to that
conditioning.  Needs the published weights (the ``published_2d_weights`` fixture of
tests/conftest.py).
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deeplight_bids.lrp.analyzer import LRPAnalyzer
from deeplight_bids.models.published_2d import (
    LSTM_SCOPES_2D,
    convert_published_2d,
    load_published_2d,
    lstm_to_keras,
)
from tests.models import reference_2d_numpy as reference
from tests.models.test_two import FULL_SHAPE, brain_like_volumes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arrays(published_2d_weights):
    return load_published_2d(published_2d_weights)


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    return np.concatenate([brain_like_volumes(rng, 1), rng.standard_normal((1, *FULL_SHAPE)).astype(np.float32)])


@pytest.fixture(scope="module")
def expected(arrays, volumes):
    """``[(logits, relevance (z, y, x))]`` of the original's equations, one per volume."""
    return [reference.lrp_original(arrays, volume, eps=1e-3) for volume in volumes]


def float64_model(arrays):
    """The published model in float64, the LSTM biases summed in float64 as the reference sums them."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        model = convert_published_2d(arrays)
    finally:
        keras.config.set_dtype_policy(previous)
    bilstm = model.get_layer("bilstm")
    for direction, layer in (("forward", bilstm.forward_layer), ("backward", bilstm.backward_layer)):
        scope = LSTM_SCOPES_2D[direction]
        names = ("weights_xh", "biases_xh", "weights_hh", "biases_hh")
        layer.set_weights(lstm_to_keras(*(arrays[f"{scope}/{n}"] for n in names), dtype=np.float64))
    return model


def test_deeplight_2d_equals_the_original_equations_in_float64(arrays, volumes, expected):
    logits, relevance = LRPAnalyzer(float64_model(arrays), composite="deeplight_2d").explain(volumes)
    for k, (expected_logits, expected_relevance) in enumerate(expected):
        scale = np.abs(expected_relevance).max()
        assert scale > 0 and np.count_nonzero(expected_relevance) > expected_relevance.size // 4
        np.testing.assert_allclose(logits[k], expected_logits, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(relevance[k], expected_relevance, rtol=0, atol=1e-4 * scale)


def test_deeplight_2d_float32_model_matches_to_the_rule_conditioning(arrays, volumes, expected):
    logits, relevance = LRPAnalyzer(convert_published_2d(arrays), composite="deeplight_2d").explain(volumes)
    for k, (expected_logits, expected_relevance) in enumerate(expected):
        np.testing.assert_allclose(logits[k], expected_logits, rtol=1e-5, atol=1e-5)
        scale = np.abs(expected_relevance).max()
        np.testing.assert_allclose(relevance[k], expected_relevance, rtol=0, atol=1e-2 * scale)
        assert np.corrcoef(relevance[k].ravel(), expected_relevance.ravel())[0, 1] > 0.9999


def test_signed_variant_is_a_different_rule(arrays, volumes, expected):
    _, relevance = LRPAnalyzer(convert_published_2d(arrays), composite="deeplight_2d_signed").explain(volumes)
    for k, (_, expected_relevance) in enumerate(expected):
        difference = np.abs(relevance[k] - expected_relevance).max() / np.abs(expected_relevance).max()
        assert difference > 0.1, f"volume {k}: the signed rule differs by only {difference:.3g} of max |R|"

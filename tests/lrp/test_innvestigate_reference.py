"""Faithfulness to the published LRP: our preset_b_flat vs iNNvestigate itself.

``tests/data/innvestigate_3d_reference.npz`` holds a small-grid 3D-DeepLight's weights,
inputs, logits and the relevance iNNvestigate 2.1.2 computed with
``LRPSequentialPresetBFlat(model, neuron_selection_mode="index", epsilon=1e-6,
bn_layer_rule=None)`` (the published configuration; written by
``tools/innvestigate_reference/make_reference.py``, see its README).

Tolerance: the two runs use different TensorFlow builds (2.14 graph mode vs 2.21
eager/tf.function), whose convolutions sum in different orders; the logits already
differ by ~1.5e-5 relative after 13 layers, and relevance inherits that: about 2e-5 of
its largest magnitude.  We allow 1e-4 relative plus 1e-4 of the largest magnitude
absolute.  A different bias convention in AlphaBeta changes relevance by ~17% of the
largest magnitude and a pass-through BN by >100%, far outside this tolerance.
"""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from deeplight_bids.lrp import LRPAnalyzer  # noqa: E402
from deeplight_bids.models.three import build_3d_deeplight  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "innvestigate_3d_reference.npz"
RTOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {name: data[name] for name in data.files}


def stored_weights(reference):
    """The weights in layer order; kernels are int8 levels times a power-of-two scale."""
    weights = []
    for i in range(len(reference["weight_names"])):
        if f"kernel_levels_{i}" in reference:
            weights.append(reference[f"kernel_levels_{i}"].astype(np.float32) * reference[f"kernel_scale_{i}"])
        else:
            weights.append(reference[f"weight_{i}"])
    return weights


@pytest.fixture(scope="module")
def model(reference):
    model = build_3d_deeplight(n_states=int(reference["n_states"]), input_shape=tuple(reference["input_shape"]))
    names = [f"{layer.name}/{variable.path.split('/')[-1]}" for layer in model.layers for variable in layer.weights]
    assert names == list(reference["weight_names"])  # same layer sequence and weight order
    model.set_weights(stored_weights(reference))
    return model


@pytest.fixture(scope="module")
def analyzer(model):
    return LRPAnalyzer(model, "preset_b_flat")


def assert_close_to_innvestigate(ours, theirs):
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=RTOL * np.abs(theirs).max())


def test_reference_is_non_trivial(reference):
    assert reference["innvestigate_version"] == "2.1.2"
    for key in ("predicted", "second"):
        targets = reference[f"targets_{key}"]
        assert np.all(reference["logits"][np.arange(len(targets)), targets] > 0)
        assert np.all(np.abs(reference[f"relevance_{key}"]).max(axis=(1, 2, 3)) > 0)
    assert not np.array_equal(reference["targets_predicted"], reference["targets_second"])


def test_logits_match_tf_keras_2(model, reference):
    logits = np.asarray(model(reference["inputs"], training=False))
    np.testing.assert_allclose(logits, reference["logits"], rtol=RTOL, atol=RTOL * np.abs(reference["logits"]).max())


@pytest.mark.parametrize("key", ["predicted", "second"])
def test_relevance_matches_innvestigate_preset_b_flat(key, analyzer, reference):
    _, relevance = analyzer.explain(reference["inputs"], target=reference[f"targets_{key}"])
    assert_close_to_innvestigate(relevance, reference[f"relevance_{key}"])


def test_default_target_is_innvestigates_predicted_index(analyzer, reference):
    _, relevance = analyzer.explain(reference["inputs"])
    assert_close_to_innvestigate(relevance, reference["relevance_predicted"])

"""LRPAnalyzer: targets, conservation, gradient x input, errors, tracing, description."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deeplight_bids.lrp import LRPAnalyzer, UnmappedLayerError, composites, rules, types  # noqa: E402
from deeplight_bids.models.three import build_3d_deeplight  # noqa: E402

SMALL_GRID = (8, 10, 8, 1)


def randomise(model, rng, bias_scale=0.1):
    """Random weights; BN with non-trivial statistics."""
    weights = []
    for layer in model.layers:
        for variable in layer.weights:
            shape, name = tuple(variable.shape), variable.path.split("/")[-1]
            if name == "moving_variance":
                weights.append(rng.uniform(0.5, 2.0, shape))
            elif name == "gamma":
                weights.append(rng.uniform(0.5, 1.5, shape))
            elif name in ("beta", "moving_mean", "bias"):
                weights.append(rng.normal(0.0, bias_scale, shape))
            else:
                fan_in = np.prod(shape[:-1])
                weights.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape))
    model.set_weights([w.astype(np.float32) for w in weights])
    return model


def bias_free_relu_net(rng):
    """Conv3D (stride 1, 2) + ReLU + GAP, no biases: a net for which LRP conserves."""
    model = keras.Sequential(
        [
            keras.Input(SMALL_GRID),
            keras.layers.Conv3D(4, 3, padding="same", activation="relu", use_bias=False),
            keras.layers.SpatialDropout3D(0.5),
            keras.layers.Conv3D(6, 3, strides=2, padding="same", activation="relu", use_bias=False),
            keras.layers.Conv3D(3, 1, padding="same", use_bias=False),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling3D(),
        ]
    )
    return randomise(model, rng)


def small_inputs(rng, batch=3):
    return rng.normal(size=(batch, *SMALL_GRID)).astype(np.float32)


def test_logits_are_the_inference_forward_pass_and_relevance_drops_the_channel_axis(rng):
    model = randomise(build_3d_deeplight(n_states=4, input_shape=SMALL_GRID), rng)
    x = small_inputs(rng)
    logits, relevance = LRPAnalyzer(model).explain(x)
    np.testing.assert_allclose(logits, np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6)
    assert relevance.shape == (3, *SMALL_GRID[:3]) and relevance.dtype == np.float32
    assert np.abs(relevance).max() > 0


def test_target_none_explains_the_predicted_state(rng):
    model = randomise(build_3d_deeplight(n_states=4, input_shape=SMALL_GRID), rng, bias_scale=0.3)
    x = small_inputs(rng)
    analyzer = LRPAnalyzer(model)
    logits, relevance_none = analyzer.explain(x)
    predicted = logits.argmax(axis=1)
    other = (predicted + 1) % 4
    assert np.all(np.take_along_axis(logits, other[:, None], 1) != logits.max(axis=1, keepdims=True))
    _, relevance_predicted = analyzer.explain(x, target=predicted)
    _, relevance_other = analyzer.explain(x, target=other)
    np.testing.assert_array_equal(relevance_none, relevance_predicted)
    assert not np.allclose(relevance_none, relevance_other)


@pytest.mark.parametrize("first_rule", [rules.Epsilon(1e-9), rules.Flat()], ids=repr)
def test_input_relevance_sums_to_the_target_logit_for_a_bias_free_net(first_rule, rng):
    # (AlphaBeta is left out: on ReLU outputs (x >= 0) a unit may have no inhibiting
    # input at all, z_i = 0, and then passes alpha * R; its conservation is tested per rule.)
    model = bias_free_relu_net(rng)
    composite = composites.Composite(
        first_map=[(types.Conv, first_rule)],
        layer_map=[
            (types.Linear, rules.Epsilon(1e-9)),
            (types.GlobalAvgPool, rules.ZRule()),
            (types.PassThrough, rules.Pass()),
        ],
    )
    x = small_inputs(rng)
    target = np.array([0, 1, 2])
    logits, relevance = LRPAnalyzer(model, composite).explain(x, target=target)
    target_logits = logits[np.arange(3), target]
    assert np.all(target_logits > 0)
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), target_logits, rtol=1e-4)


def test_epsilon_on_a_bias_free_relu_net_is_gradient_times_input(rng):
    model = bias_free_relu_net(rng)
    composite = composites.Composite(
        [(types.Linear + types.GlobalAvgPool, rules.Epsilon(1e-9)), (types.PassThrough, rules.Pass())]
    )
    x = small_inputs(rng)
    target = np.array([2, 0, 1])
    _, relevance = LRPAnalyzer(model, composite).explain(x, target=target)
    from deeplight_bids import backend

    x_tensor = keras.ops.convert_to_tensor(x)
    one_hot = keras.ops.one_hot(target, 3)
    (gradient,) = backend.vjp(lambda a: model(a, training=False), [x_tensor], one_hot)  # the backend's autodiff
    gradient_x_input = np.asarray(gradient * x_tensor)[..., 0]
    np.testing.assert_allclose(relevance, gradient_x_input, rtol=1e-4, atol=1e-4 * np.abs(gradient_x_input).max())


def test_dropout_is_off(rng):
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dropout(0.9), keras.layers.Dense(2)]
    )
    randomise(model, rng)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    analyzer = LRPAnalyzer(model, "epsilon")
    first, second = analyzer.explain(x), analyzer.explain(x)
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_allclose(first[0], np.asarray(model(x, training=False)), rtol=1e-6)
    assert first[1].shape == (4, 6)  # no channel axis to drop


def test_unmapped_layer_type_raises_at_construction():
    model = keras.Sequential(
        [
            keras.Input(SMALL_GRID),
            keras.layers.Conv3D(2, 3, name="c"),
            keras.layers.MaxPooling3D(name="max_pool"),
            keras.layers.GlobalAveragePooling3D(),
        ]
    )
    with pytest.raises(UnmappedLayerError, match="max_pool"):
        LRPAnalyzer(model)


def test_softmax_output_raises_at_construction():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name="probabilities")])
    with pytest.raises(ValueError, match="probabilities.*softmax"):
        LRPAnalyzer(model, "epsilon")


def test_model_must_be_a_built_sequential():
    inputs = keras.Input((4,))
    with pytest.raises(TypeError, match="Sequential"):
        LRPAnalyzer(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    with pytest.raises(TypeError, match="not built"):
        LRPAnalyzer(keras.Sequential([keras.layers.Dense(2)]))


def test_bad_inputs_and_targets_are_refused(rng):
    analyzer = LRPAnalyzer(bias_free_relu_net(rng))
    x = small_inputs(rng, batch=2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        analyzer.explain(x, target=[0, 3])
    with pytest.raises(ValueError, match="2 integer output indices"):
        analyzer.explain(x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="expected input of shape"):
        analyzer.explain(x[..., 0])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="counts tf.function traces (TensorFlow only)")
def test_traces_once_per_input_shape(rng):
    analyzer = LRPAnalyzer(bias_free_relu_net(rng))
    analyzer.explain(small_inputs(rng, 2))
    analyzer.explain(small_inputs(rng, 2), target=[1, 2])
    assert analyzer._explain_graph.experimental_get_tracing_count() == 1
    analyzer.explain(small_inputs(rng, 1))
    assert analyzer._explain_graph.experimental_get_tracing_count() == 2


def test_description_is_json_and_names_every_layer_rule(rng):
    model = build_3d_deeplight(n_states=4, input_shape=SMALL_GRID)
    description = json.loads(json.dumps(LRPAnalyzer(model).description))
    assert description["composite"] == "preset_b_flat"
    assert "logit" in description["relevance_start"] and "0" in description["relevance_start"]
    assert "x*(y-beta)/((x-mean)*y)" in description["batch_norm"]
    layers = {entry["layer"]: entry for entry in description["layers"]}
    assert [entry["layer"] for entry in description["layers"]] == [layer.name for layer in model.layers]
    assert layers["conv_1"]["rule"] == "Flat"
    assert layers["conv_13"] == {**layers["conv_13"], "rule": "AlphaBeta", "alpha": 2.0, "beta": 1.0}
    assert layers["global_average"]["rule"] == "ZRule"
    epsilon_description = LRPAnalyzer(bias_free_relu_net(rng), "epsilon").description
    assert epsilon_description["epsilons"] == [1e-3] and epsilon_description["batch_norm"] is None


def test_max_batch_splits_without_changing_results(rng):
    """A batch larger than ``max_batch`` is explained (and decoded) in pieces, with the same numbers."""
    from deeplight_bids.models.decode import Decoder, in_chunks

    assert in_chunks(5, 2) == [(0, 2), (2, 4), (4, 5)] and in_chunks(5, None) == [(0, 5)]
    model = randomise(build_3d_deeplight(n_states=4, input_shape=SMALL_GRID), rng, bias_scale=0.3)
    x = small_inputs(rng, batch=5)
    target = np.array([0, 3, 1, 2, 0])
    whole_logits, whole = LRPAnalyzer(model).explain(x, target=target)
    split = LRPAnalyzer(model, max_batch=2)
    split_logits, parts = split.explain(x, target=target)
    np.testing.assert_allclose(split_logits, whole_logits, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-9)
    _, predicted = split.explain(x)
    np.testing.assert_allclose(predicted, LRPAnalyzer(model).explain(x)[1], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(Decoder(model, max_batch=2).logits(x), Decoder(model).logits(x), rtol=1e-6, atol=1e-7)

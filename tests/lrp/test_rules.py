"""Each rule against a NumPy re-derivation from its formula (see conftest.py) on tiny layers."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deeplight_bids.lrp import rules  # noqa: E402

IN_SHAPE = (5, 6, 5, 2)  # odd and even sizes: TF's asymmetric 'same' padding at stride 2


def make_conv(rng, stride, use_bias=True, activation="relu", filters=3):
    layer = keras.layers.Conv3D(filters, 3, strides=stride, padding="same", activation=activation, use_bias=use_bias)
    layer.build((None, *IN_SHAPE))
    weights = [rng.normal(0.0, 0.4, size=w.shape).astype(np.float32) for w in layer.get_weights()]
    if use_bias:
        weights[1] *= 0.25
    layer.set_weights(weights)
    return layer, IN_SHAPE


def make_dense(rng, use_bias=True, n_in=7, n_out=4):
    layer = keras.layers.Dense(n_out, activation="relu", use_bias=use_bias)
    layer.build((None, n_in))
    weights = [rng.normal(0.0, 0.5, size=w.shape).astype(np.float32) for w in layer.get_weights()]
    if use_bias:
        weights[1] *= 0.25
    layer.set_weights(weights)
    return layer, (n_in,)


LAYERS = {
    "dense": lambda rng, **kw: make_dense(rng, **kw),
    "conv3d_stride1": lambda rng, **kw: make_conv(rng, 1, **kw),
    "conv3d_stride2": lambda rng, **kw: make_conv(rng, 2, **kw),
}


def random_case(rng, ref, layer, in_shape, batch=2):
    """Inputs of both signs, output relevance of both signs, and the NumPy matrix form."""
    matrix, bias, out_shape = ref.layer_matrix(layer, in_shape)
    x = rng.normal(size=(batch, *in_shape)).astype(np.float32)
    relevance_out = rng.normal(size=(batch, *out_shape)).astype(np.float32)
    return x, relevance_out, matrix, bias


def per_sample(function, x, relevance_out, *args):
    return np.stack(
        [
            function(*args, xi.ravel().astype(np.float64), ri.ravel().astype(np.float64)).reshape(xi.shape)
            for xi, ri in zip(x, relevance_out)
        ]
    )


def assert_relevance_close(actual, expected, rtol=1e-4):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("kind", LAYERS)
def test_epsilon_matches_numpy(kind, rng, ref):
    layer, in_shape = LAYERS[kind](rng)
    x, relevance_out, matrix, bias = random_case(rng, ref, layer, in_shape)
    eps = 0.05
    actual = np.asarray(rules.Epsilon(eps)(layer, x, relevance_out))
    expected = per_sample(lambda m, b, xi, ri: ref.epsilon_rule(m, b, xi, ri, eps), x, relevance_out, matrix, bias)
    assert_relevance_close(actual, expected)


@pytest.mark.parametrize("alpha, beta", [(2, 1), (1, 0)])
@pytest.mark.parametrize("kind", LAYERS)
def test_alpha_beta_matches_numpy(kind, alpha, beta, rng, ref):
    layer, in_shape = LAYERS[kind](rng)
    x, relevance_out, matrix, bias = random_case(rng, ref, layer, in_shape)
    actual = np.asarray(rules.AlphaBeta(alpha, beta)(layer, x, relevance_out))
    expected = per_sample(
        lambda m, b, xi, ri: ref.alpha_beta_rule(m, b, xi, ri, alpha, beta), x, relevance_out, matrix, bias
    )
    assert_relevance_close(actual, expected)


@pytest.mark.parametrize("kind", LAYERS)
def test_flat_matches_numpy(kind, rng, ref):
    layer, in_shape = LAYERS[kind](rng)
    x, relevance_out, matrix, _ = random_case(rng, ref, layer, in_shape)
    actual = np.asarray(rules.Flat()(layer, x, relevance_out))
    expected = per_sample(lambda m, xi, ri: ref.flat_rule(m, ri), x, relevance_out, matrix)
    assert_relevance_close(actual, expected)


@pytest.mark.parametrize(
    "pool, shape",
    [(keras.layers.GlobalAveragePooling3D, (4, 3, 5, 3)), (keras.layers.GlobalAveragePooling2D, (4, 3, 2))],
)
def test_z_rule_on_global_average_pooling_matches_numpy(pool, shape, rng, ref):
    layer = pool()
    x = rng.uniform(-0.5, 1.0, size=(2, *shape)).astype(np.float32)
    relevance_out = rng.normal(size=(2, shape[-1])).astype(np.float32)
    actual = np.asarray(rules.ZRule()(layer, x, relevance_out))
    expected = np.stack([ref.z_rule_global_average(xi, ri) for xi, ri in zip(x, relevance_out)])
    assert_relevance_close(actual, expected)


def test_epsilon_on_global_average_pooling_matches_numpy(rng, ref):
    shape = (3, 4, 2, 3)
    layer = keras.layers.GlobalAveragePooling3D()
    x = rng.normal(size=(2, *shape)).astype(np.float32)
    relevance_out = rng.normal(size=(2, shape[-1])).astype(np.float32)
    n_voxels = int(np.prod(shape[:-1]))
    averaging = np.kron(np.ones((1, n_voxels)) / n_voxels, np.eye(shape[-1]))  # (channels, voxels*channels)
    actual = np.asarray(rules.Epsilon(0.1)(layer, x, relevance_out))
    expected = per_sample(
        lambda m, b, xi, ri: ref.epsilon_rule(m, b, xi, ri, 0.1), x, relevance_out, averaging, np.zeros(shape[-1])
    )
    assert_relevance_close(actual, expected)


@pytest.mark.parametrize("shape", [(3, 4, 3, 5), (6,)])
@pytest.mark.parametrize("pass_output", [True, False])
def test_batch_norm_scale_matches_numpy(shape, pass_output, rng, ref):
    n_channels = shape[-1]
    layer = keras.layers.BatchNormalization(epsilon=1e-3)
    layer.build((None, *shape))
    gamma = rng.uniform(0.5, 1.5, n_channels) * rng.choice([-1.0, 1.0], n_channels)
    beta, mean = rng.normal(0.0, 0.5, n_channels), rng.normal(0.0, 0.5, n_channels)
    var = rng.uniform(0.3, 2.0, n_channels)
    layer.set_weights([w.astype(np.float32) for w in (gamma, beta, mean, var)])
    x = rng.normal(size=(2, *shape)).astype(np.float32)
    relevance_out = rng.normal(size=(2, *shape)).astype(np.float32)
    y_out = layer(x, training=False) if pass_output else None
    actual = np.asarray(rules.BatchNormScale()(layer, x, relevance_out, y_out=y_out))
    expected, y = ref.batch_norm_scale_rule(x.astype(np.float64), relevance_out, gamma, beta, mean, var, 1e-3)
    # The rule evaluates (y-beta)/(x-mean) literally (iNNvestigate) instead of scale: float32
    # rounding there grows where x ~ mean or y ~ 0, so compare where both are away from 0.
    well_posed = (np.abs(x - mean) > 1e-3) & (np.abs(y) > 1e-3)
    assert well_posed.mean() > 0.95
    assert_relevance_close(actual[well_posed], expected[well_posed], rtol=1e-4)
    assert not np.allclose(actual, relevance_out, atol=1e-2)  # not a pass-through


@pytest.mark.parametrize(
    "layer, in_shape",
    [
        (keras.layers.ReLU(), (3, 4)),
        (keras.layers.Activation("relu"), (3, 4)),
        (keras.layers.Activation("linear"), (3, 4)),
        (keras.layers.SpatialDropout3D(0.5), (2, 3, 2, 4)),
        (keras.layers.Dropout(0.5), (5,)),
        (keras.layers.Flatten(), (2, 3, 4)),
    ],
)
def test_pass_hands_relevance_through_in_the_input_shape(layer, in_shape, rng):
    x = rng.normal(size=(2, *in_shape)).astype(np.float32)
    output_shape = np.asarray(layer(x, training=False)).shape
    relevance_out = rng.normal(size=output_shape).astype(np.float32)
    actual = np.asarray(rules.Pass()(layer, x, relevance_out))
    np.testing.assert_array_equal(actual, relevance_out.reshape(x.shape))


@pytest.mark.parametrize(
    "layer",
    [keras.layers.Activation("softmax"), keras.layers.Activation("tanh"), keras.layers.ReLU(negative_slope=0.1)],
)
def test_pass_refuses_activations_that_are_not_relu_or_linear(layer):
    with pytest.raises(ValueError, match="activation"):
        rules.Pass().check(layer)


def test_linear_rules_refuse_a_fused_activation_other_than_relu(rng):
    layer = keras.layers.Dense(3, activation="tanh")
    layer.build((None, 4))
    with pytest.raises(ValueError, match="tanh"):
        rules.Epsilon()(layer, np.ones((1, 4), np.float32), np.ones((1, 3), np.float32))


def test_rule_refuses_a_layer_type_it_does_not_cover():
    layer = keras.layers.BatchNormalization()
    layer.build((None, 4))
    with pytest.raises(TypeError, match="AlphaBeta applies to"):
        rules.AlphaBeta().check(layer)


@pytest.mark.parametrize("alpha, beta", [(1, 1), (3, 1), (-1, -2), (0.5, -0.5)])
def test_alpha_beta_needs_alpha_minus_beta_one_and_both_non_negative(alpha, beta):
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        rules.AlphaBeta(alpha, beta)


def test_epsilon_needs_positive_eps():
    with pytest.raises(ValueError, match="eps > 0"):
        rules.Epsilon(0.0)


@pytest.mark.parametrize(
    "rule", [rules.Epsilon(1e-9), rules.AlphaBeta(2, 1), rules.AlphaBeta(1, 0), rules.Flat()], ids=repr
)
@pytest.mark.parametrize("kind", LAYERS)
def test_conservation_without_bias(kind, rule, rng, ref):
    layer, in_shape = LAYERS[kind](rng, use_bias=False)
    x, relevance_out, _, _ = random_case(rng, ref, layer, in_shape)
    relevance_in = np.asarray(rule(layer, x, relevance_out))
    axes = tuple(range(1, x.ndim))
    np.testing.assert_allclose(
        relevance_in.sum(axis=axes), relevance_out.sum(axis=tuple(range(1, relevance_out.ndim))), rtol=1e-4, atol=1e-4
    )


def test_z_rule_conserves_on_global_average_pooling(rng):
    layer = keras.layers.GlobalAveragePooling3D()
    x = rng.uniform(0.0, 1.0, size=(3, 4, 3, 2, 5)).astype(np.float32)
    relevance_out = rng.normal(size=(3, 5)).astype(np.float32)
    relevance_in = np.asarray(rules.ZRule()(layer, x, relevance_out))
    np.testing.assert_allclose(relevance_in.sum(axis=(1, 2, 3)), relevance_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", [rules.AlphaBeta(), rules.Flat(), rules.Epsilon()], ids=repr)
def test_rules_leave_the_layer_variables_untouched(rule, rng, ref):
    layer, in_shape = make_conv(rng, 2)
    before = [w.copy() for w in layer.get_weights()]
    x, relevance_out, _, _ = random_case(rng, ref, layer, in_shape)
    rule(layer, x, relevance_out)
    for old, new in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(old, new)

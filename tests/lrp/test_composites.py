"""Which rule each layer gets: presets, first-layer rule, first match, unmapped layers."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deeplight_bids.lrp import composites, rules, types  # noqa: E402
from deeplight_bids.models.three import CONV_BLOCKS_3D, build_3d_deeplight  # noqa: E402


@pytest.fixture(scope="module")
def full_3d_model():
    return build_3d_deeplight()


def test_every_layer_of_the_3d_model_is_mapped_by_preset_b_flat(full_3d_model):
    assigned = composites.get_composite("preset_b_flat").assign(full_3d_model.layers)
    by_name = {layer.name: rule for layer, rule in assigned}
    assert len(assigned) == len(full_3d_model.layers)
    n_convs = len(CONV_BLOCKS_3D) + 1
    assert isinstance(by_name["conv_1"], rules.Flat)
    for i in range(2, n_convs + 1):
        rule = by_name[f"conv_{i}"]
        assert isinstance(rule, rules.AlphaBeta) and (rule.alpha, rule.beta) == (2.0, 1.0), f"conv_{i}"
    for i in range(1, n_convs):
        assert isinstance(by_name[f"bn_{i}"], rules.BatchNormScale)
    for i in range(1, n_convs + 1):
        assert isinstance(by_name[f"dropout_{i}"], rules.Pass)
    assert isinstance(by_name["relu_out"], rules.Pass)
    assert isinstance(by_name["global_average"], rules.ZRule)
    for layer, rule in assigned:
        rule.check(layer)  # every rule accepts its layer (fused ReLU, channels_last, ...)


def dense_and_conv_model():
    return keras.Sequential(
        [
            keras.Input((4, 4, 4, 1)),
            keras.layers.Conv3D(2, 3, padding="same", activation="relu", name="first"),
            keras.layers.Conv3D(2, 3, padding="same", activation="relu", name="second"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(3, name="dense"),
        ]
    )


def test_first_map_applies_to_the_first_matching_layer_only():
    assigned = dict(
        (layer.name, rule)
        for layer, rule in composites.get_composite("preset_b_flat").assign(dense_and_conv_model().layers)
    )
    assert isinstance(assigned["first"], rules.Flat)
    assert isinstance(assigned["second"], rules.AlphaBeta)
    assert isinstance(assigned["flatten"], rules.Pass)
    assert isinstance(assigned["dense"], rules.Epsilon) and assigned["dense"].eps == 1e-6


def test_first_map_skips_layers_it_does_not_cover():
    model = keras.Sequential(
        [
            keras.Input((3, 4)),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(5, name="d1"),
            keras.layers.Dense(2, name="d2"),
        ]
    )
    assigned = dict(
        (layer.name, rule) for layer, rule in composites.get_composite("preset_b_flat").assign(model.layers)
    )
    assert isinstance(assigned["flatten"], rules.Pass)
    assert isinstance(assigned["d1"], rules.Flat)
    assert isinstance(assigned["d2"], rules.Epsilon)


def test_first_match_wins():
    first, second = rules.Epsilon(0.5), rules.ZRule()
    composite = composites.Composite(
        layer_map=[(types.Conv, first), (types.Linear, second), (types.PassThrough, rules.Pass())]
    )
    assigned = dict((layer.name, rule) for layer, rule in composite.assign(dense_and_conv_model().layers))
    assert assigned["first"] is first and assigned["second"] is first and assigned["dense"] is second


def test_epsilon_preset_uses_epsilon_1e_3_for_every_layer_with_weights():
    assigned = composites.get_composite("epsilon").assign(dense_and_conv_model().layers)
    for layer, rule in assigned:
        if isinstance(layer, types.Linear):
            assert isinstance(rule, rules.Epsilon) and rule.eps == 1e-3
        else:
            assert isinstance(rule, rules.Pass)


@pytest.mark.parametrize("preset", ["preset_b_flat", "epsilon"])
def test_unmapped_layer_raises_naming_the_layer(preset):
    model = keras.Sequential(
        [keras.Input((4, 4, 4, 1)), keras.layers.MaxPooling3D(name="the_pool"), keras.layers.GlobalAveragePooling3D()]
    )
    with pytest.raises(composites.UnmappedLayerError, match="the_pool.*MaxPooling3D"):
        composites.get_composite(preset).assign(model.layers)


def test_epsilon_preset_does_not_cover_batch_norm(full_3d_model):
    with pytest.raises(composites.UnmappedLayerError, match="bn_1"):
        composites.get_composite("epsilon").assign(full_3d_model.layers)


def test_registry_names_and_unknown_name():
    assert {"preset_b_flat", "epsilon"} <= set(composites.COMPOSITES)
    assert composites.get_composite("epsilon") is not composites.get_composite("epsilon")
    custom = composites.Composite(layer_map=[], name="mine")
    assert composites.get_composite(custom) is custom
    with pytest.raises(ValueError, match="unknown LRP composite 'nope'"):
        composites.get_composite("nope")


# -- 2D-DeepLight: preset "deeplight_2d" (reference section 7) ---------------------------------


def test_every_layer_of_the_2d_model_is_mapped_by_deeplight_2d():
    from deeplight_bids.lrp.lstm import LSTMEpsilon
    from deeplight_bids.models.two import CONV_BLOCKS_2D, build_2d_deeplight

    model = build_2d_deeplight()
    assigned = composites.get_composite("deeplight_2d").assign(model.layers)
    by_name = {layer.name: rule for layer, rule in assigned}
    assert len(assigned) == len(model.layers)
    for i in range(1, len(CONV_BLOCKS_2D) + 1):
        assert isinstance(by_name[f"conv_{i}"], rules.Epsilon) and by_name[f"conv_{i}"].eps == 1e-3, f"conv_{i}"
    for i in range(5, len(CONV_BLOCKS_2D) + 1):
        assert isinstance(by_name[f"conv_dropout_{i}"], rules.Pass)
    assert isinstance(by_name["bilstm"], LSTMEpsilon) and by_name["bilstm"].eps == 1e-3
    for name in ("fold_slices", "unfold_slices", "dropout"):
        assert isinstance(by_name[name], rules.Pass), name
    assert isinstance(by_name["linear"], rules.PlusEpsilon) and by_name["linear"].eps == 1e-3
    for layer, rule in assigned:
        check = getattr(rule, "check", None)
        if check is not None:
            check(layer)


def test_deeplight_2d_signed_uses_the_sign_aware_rules():
    from deeplight_bids.lrp.lstm import LSTMSignedEpsilon
    from deeplight_bids.models.two import build_2d_deeplight

    model = build_2d_deeplight(n_states=3, input_shape=(2, 8, 6, 1))
    by_name = {layer.name: rule for layer, rule in composites.get_composite("deeplight_2d_signed").assign(model.layers)}
    assert isinstance(by_name["bilstm"], LSTMSignedEpsilon)
    assert type(by_name["linear"]) is rules.Epsilon and type(by_name["conv_1"]) is rules.Epsilon


def test_3d_presets_do_not_cover_the_lstm():
    from deeplight_bids.models.two import build_2d_deeplight

    model = build_2d_deeplight(n_states=3, input_shape=(2, 8, 6, 1))
    for preset in ("preset_b_flat", "epsilon"):
        with pytest.raises(composites.UnmappedLayerError, match="bilstm.*Bidirectional"):
            composites.get_composite(preset).assign(model.layers)
    assert composites.get_composite("deeplight_2d") is not composites.get_composite("deeplight_2d")


TINY_2D_SHAPE = (3, 8, 6, 1)  # 3 slices of 8 x 6: the 12 convs end at 1 x 1 x 64 per slice


def conv2d_matrix(kernel, in_shape, stride):
    """Explicit matrix of a 'same'-padded 2D convolution over row-major ``(y, x, channel)``."""
    k, _, n_in_ch, n_out_ch = kernel.shape
    sizes, pads = [], []
    for size in in_shape[:2]:
        out = -(-size // stride)
        sizes.append(out)
        pads.append(max((out - 1) * stride + k - size, 0) // 2)
    out_shape = (*sizes, n_out_ch)
    matrix = np.zeros((int(np.prod(out_shape)), int(np.prod(in_shape))))
    for oy, ox in np.ndindex(*sizes):
        for ty, tx in np.ndindex(k, k):
            iy, ix = oy * stride + ty - pads[0], ox * stride + tx - pads[1]
            if not (0 <= iy < in_shape[0] and 0 <= ix < in_shape[1]):
                continue
            for c_in in range(n_in_ch):
                rows = np.ravel_multi_index((oy, ox, np.arange(n_out_ch)), out_shape)
                matrix[rows, np.ravel_multi_index((iy, ix, c_in), in_shape)] += kernel[ty, tx, c_in]
    return matrix, out_shape


def tiny_2d_model(seed, with_bias=True):
    """2D-DeepLight on TINY_2D_SHAPE with random weights; LSTM weights also in the original layout.

    ``with_bias=False``: every bias zero, the LSTM's forget bias included (for conservation).
    """
    from deeplight_bids.models.published_2d import lstm_to_keras
    from deeplight_bids.models.two import build_2d_deeplight

    rng = np.random.default_rng(seed)
    model = build_2d_deeplight(n_states=4, input_shape=TINY_2D_SHAPE)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            kernel = rng.normal(0, np.sqrt(2.0 / np.prod(kernel.shape[:3])), kernel.shape)
            bias = rng.normal(0.05, 0.05, bias.shape) if with_bias else np.zeros(bias.shape)
            layer.set_weights([kernel.astype("float32"), bias.astype("float32")])
    bilstm = model.get_layer("bilstm")
    units, features = bilstm.forward_layer.units, bilstm.forward_layer.cell.kernel.shape[0]
    original = {}
    for direction, layer in (("fw", bilstm.forward_layer), ("bw", bilstm.backward_layer)):
        # float32-exact values (biases on a 1/64 grid) so the float64 reference sees Keras' weights
        bias_scale = 0.3 if with_bias else 0.0
        original[direction] = (
            rng.normal(0, 0.3, (4 * units, features)).astype(np.float32).astype(np.float64),
            np.round(rng.normal(0, bias_scale, 4 * units) * 64) / 64,
            rng.normal(0, 0.3, (4 * units, units)).astype(np.float32).astype(np.float64),
            np.round(rng.normal(0, bias_scale, 4 * units) * 64) / 64,
        )
        layer.set_weights(lstm_to_keras(*original[direction], forget_bias=1.0 if with_bias else 0.0))
    linear = model.get_layer("linear")
    kernel, bias = linear.get_weights()
    linear.set_weights(
        [
            rng.normal(0, 0.5, kernel.shape).astype("float32"),
            (rng.normal(0, 0.2, bias.shape) if with_bias else np.zeros(bias.shape)).astype("float32"),
        ]
    )
    return model, original, rng


def numpy_2d_lrp(model, original, volume, ref, eps, signed=False):
    """Slow float64 LRP of one volume (z, y, x, 1): per-slice conv matrices -> LSTM reference -> dense.

    Epsilon rule on every conv (the ReLU passes relevance), the LSTM rule of
    tests/lrp/test_lstm.py (original layout, forward + backward summed), epsilon on the
    linear layer (``z + eps`` unless ``signed``); relevance starts at the predicted logit.
    Returns (logits, relevance).
    """
    from .test_lstm import reference_bidirectional

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    per_slice = []  # for every slice: [(matrix, bias, input), ...] per conv
    features = []
    for z in range(volume.shape[0]):
        a, shape, records = volume[z].astype(np.float64).ravel(), volume.shape[1:], []
        for layer in convs:
            matrix, out_shape = conv2d_matrix(np.asarray(layer.kernel, np.float64), shape, layer.strides[0])
            bias = np.broadcast_to(np.asarray(layer.bias, np.float64), out_shape).ravel()
            records.append((matrix, bias, a))
            a, shape = np.maximum(matrix @ a + bias, 0.0), out_shape
        per_slice.append(records)
        features.append(a)  # row-major (y', x', channel)
    sequence = np.stack(features)  # (z, features), bottom to top
    linear = model.get_layer("linear")
    w_lin, b_lin = np.asarray(linear.kernel, np.float64), np.asarray(linear.bias, np.float64)

    # LSTM forward through the reference (its hidden output), then the linear layer.
    _, hidden = reference_bidirectional(original, sequence[None], np.zeros((1, w_lin.shape[0])), eps, signed)
    logits = hidden[0] @ w_lin + b_lin
    relevance_logits = np.zeros_like(logits)
    relevance_logits[logits.argmax()] = logits.max()
    if signed:
        relevance_hidden = ref.epsilon_rule(w_lin.T, b_lin, hidden[0], relevance_logits, eps)
    else:  # the original's linear layer, src/modules/linear.py:123: R / (a + eps)
        relevance_hidden = hidden[0] * (w_lin @ (relevance_logits / (logits + eps)))
    relevance_seq, _ = reference_bidirectional(original, sequence[None], relevance_hidden[None], eps, signed)
    relevance = []
    for z, records in enumerate(per_slice):
        r = relevance_seq[0, z]
        for matrix, bias, a in reversed(records):
            r = ref.epsilon_rule(matrix, bias, a, r, eps)
        relevance.append(r.reshape(volume.shape[1:3]))
    return logits, np.stack(relevance)


@pytest.mark.parametrize("composite", ["deeplight_2d", "deeplight_2d_signed"])
@pytest.mark.parametrize("seed", [0, 1])
def test_deeplight_2d_matches_numpy_reference_through_the_whole_network(seed, composite, ref):
    from deeplight_bids.lrp.analyzer import LRPAnalyzer

    model, original, rng = tiny_2d_model(seed)
    x = rng.normal(0, 1, (2, *TINY_2D_SHAPE)).astype("float32")
    analyzer = LRPAnalyzer(model, composite=composite)
    logits, relevance = analyzer.explain(x)
    assert relevance.shape == (2, *TINY_2D_SHAPE[:3])
    for sample in range(2):
        expected_logits, expected = numpy_2d_lrp(
            model, original, x[sample], ref, eps=1e-3, signed=composite.endswith("signed")
        )
        np.testing.assert_allclose(logits[sample], expected_logits, rtol=1e-4, atol=1e-5)
        assert np.abs(expected).max() > 0 and np.count_nonzero(expected) > expected.size // 4
        np.testing.assert_allclose(relevance[sample], expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    assert analyzer.description["composite"] == composite and analyzer.description["epsilons"] == [1e-3]


def test_deeplight_2d_conserves_relevance_without_biases():
    from deeplight_bids.lrp.analyzer import LRPAnalyzer

    model, _, rng = tiny_2d_model(3, with_bias=False)
    for layer in model.layers:  # every bias exactly zero, the LSTM's forget bias included
        for weight in layer.weights:
            if "bias" in weight.path:
                weight.assign(np.zeros(weight.shape, "float32"))
    x = rng.normal(0, 1, (3, *TINY_2D_SHAPE)).astype("float32")
    analyzer = LRPAnalyzer(model, composite=composites.deeplight_2d(epsilon=1e-9))
    logits, relevance = analyzer.explain(x)
    target_logit = logits.max(axis=1)
    assert np.all(np.abs(target_logit) > 1e-3)
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), target_logit, rtol=1e-3)
    # an explicit target other than the argmax is explained too, and conserved as well
    other = (logits.argmax(axis=1) + 1) % logits.shape[1]
    logits_other, relevance_other = analyzer.explain(x, target=other)
    np.testing.assert_allclose(relevance_other.sum(axis=(1, 2, 3)), logits_other[np.arange(3), other], rtol=1e-3)

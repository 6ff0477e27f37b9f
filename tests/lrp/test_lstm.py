"""LRP through the bidirectional LSTM (reference section 7) against a slow NumPy re-derivation.

The reference below is written from the equations with explicit loops, in the ORIGINAL
layout (gate rows i, j, f, o, separate ``b_xh`` and ``b_hh``, forget bias +1.0 at run
time); the Keras layer gets the same weights through the converter's
``lstm_to_keras``, so gate order and bias handling are checked too.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deeplight_bids.lrp.lstm import lstm_relevance  # noqa: E402
from deeplight_bids.models.published_2d import lstm_to_keras  # noqa: E402

T, FEATURES, UNITS = 5, 6, 3
# float64 agreement: TensorFlow computes float64 inputs in float64 (1e-6); under JAX these
# tests measured float32-level agreement (up to 4e-4 relative on the ill-conditioned +eps
# rule), so there the float64 checks hold to the float32 tolerance (not a float64 claim).
FLOAT64 = keras.backend.backend() == "tensorflow"
RTOL64 = 1e-6 if FLOAT64 else 1e-3


def _stab(z, eps, signed):
    """``z + eps * sign(z)`` (signed) or ``z + eps`` (the original, src/deeplight/two/_lstm.py:198-206)."""
    return z + eps * (1.0 if z >= 0 or not signed else -1.0)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_direction(w_xh, b_xh, w_hh, b_hh, xs, relevance_h, eps, signed=False):
    """Slow LRP for one direction of the original LSTM; xs (T, features) in reading order."""
    units = w_hh.shape[1]
    n_steps, n_features = xs.shape
    h = [np.zeros(units)]  # h[t + 1] is h_t; h[0] is the zero initial state
    c = [np.zeros(units)]
    saved = []
    for t in range(n_steps):
        pre = w_xh @ xs[t] + b_xh + w_hh @ h[-1] + b_hh
        i = _sigmoid(pre[:units])
        j = np.tanh(pre[units : 2 * units])
        f = _sigmoid(pre[2 * units : 3 * units] + 1.0)
        o = _sigmoid(pre[3 * units :])
        c.append(f * c[-1] + i * j)
        h.append(o * np.tanh(c[-1]))
        saved.append((i, j, f, pre[units : 2 * units]))

    relevance_x = np.zeros((n_steps, n_features))
    r_h = np.array(relevance_h, dtype=float)  # relevance of h_t, t = T-1 first
    r_c = np.zeros(units)  # relevance handed from c_{t+1} to c_t
    for t in reversed(range(n_steps)):
        i, j, f, z_j = saved[t]
        c_t, c_prev, h_prev = c[t + 1], c[t], h[t]
        r_c_t = r_c + r_h  # h_t = o * tanh(c_t): all of h_t's relevance to c_t
        r_c_prev = np.zeros(units)
        r_j = np.zeros(units)
        for u in range(units):
            denominator = _stab(c_t[u], eps, signed)
            r_c_prev[u] = f[u] * c_prev[u] / denominator * r_c_t[u]
            r_j[u] = i[u] * j[u] / denominator * r_c_t[u]
        r_h_prev = np.zeros(units)
        for u in range(units):
            denominator = _stab(z_j[u], eps, signed)  # both biases are inside z_j
            for k in range(n_features):
                relevance_x[t, k] += xs[t, k] * w_xh[units + u, k] / denominator * r_j[u]
            for v in range(units):
                r_h_prev[v] += h_prev[v] * w_hh[units + u, v] / denominator * r_j[u]
        r_h, r_c = r_h_prev, r_c_prev
    return relevance_x, h[-1]


def reference_bidirectional(original, xs_batch, relevance_out, eps, signed=False):
    units = original["fw"][2].shape[1]
    out, hidden = [], []
    for xs, r in zip(xs_batch, relevance_out):
        r_fw, h_fw = reference_direction(*original["fw"], xs, r[:units], eps, signed)
        r_bw, h_bw = reference_direction(*original["bw"], xs[::-1], r[units:], eps, signed)
        out.append(r_fw + r_bw[::-1])
        hidden.append(np.concatenate([h_fw, h_bw]))
    return np.stack(out), np.stack(hidden)


def make_bilstm(rng, bias_scale=0.5, weight_scale=0.7):
    """A Keras Bidirectional LSTM plus the same weights in the original layout."""
    original = {}
    for direction in ("fw", "bw"):
        # Keras keeps float32 weights: the reference gets the same rounded values, and
        # biases on a 1/64 grid so that b_xh + b_hh + 1.0 is exact in float32 too.
        original[direction] = (
            rng.normal(0, weight_scale, (4 * UNITS, FEATURES)).astype(np.float32).astype(np.float64),
            np.round(rng.normal(0, bias_scale, 4 * UNITS) * 64) / 64,
            rng.normal(0, weight_scale, (4 * UNITS, UNITS)).astype(np.float32).astype(np.float64),
            np.round(rng.normal(0, bias_scale, 4 * UNITS) * 64) / 64,
        )
    layer = keras.layers.Bidirectional(keras.layers.LSTM(UNITS, name="lstm"), name="bilstm")
    layer.build((None, T, FEATURES))
    layer.forward_layer.set_weights(lstm_to_keras(*original["fw"]))
    layer.backward_layer.set_weights(lstm_to_keras(*original["bw"]))
    return layer, original


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lstm_relevance_matches_numpy_reference(seed, signed):
    rng = np.random.default_rng(seed)
    layer, original = make_bilstm(rng)
    xs = rng.normal(0, 1, (3, T, FEATURES))
    relevance_out = rng.normal(0, 1, (3, 2 * UNITS))

    expected, hidden = reference_bidirectional(original, xs, relevance_out, eps=1e-3, signed=signed)
    # The reference's forward pass is the layer's (same gates, order, forget bias).
    np.testing.assert_allclose(np.asarray(layer(xs.astype("float32"))), hidden, atol=1e-5)

    got64 = np.asarray(lstm_relevance(layer, xs, relevance_out, eps=1e-3, signed=signed))
    assert got64.shape == (3, T, FEATURES)
    np.testing.assert_allclose(got64, expected, rtol=RTOL64, atol=1e-9 if FLOAT64 else 1e-4 * np.abs(expected).max())

    got32 = np.asarray(lstm_relevance(layer, xs.astype("float32"), relevance_out.astype("float32"), signed=signed))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_lstm_relevance_directions_and_eps_matter():
    rng = np.random.default_rng(3)
    layer, original = make_bilstm(rng)
    xs = rng.normal(0, 1, (2, T, FEATURES))
    relevance_out = np.zeros((2, 2 * UNITS))
    relevance_out[:, :UNITS] = rng.normal(0, 1, (2, UNITS))  # forward half only

    got = np.asarray(lstm_relevance(layer, xs, relevance_out))
    expected_fw, _ = reference_bidirectional(original, xs, relevance_out, eps=1e-3)
    np.testing.assert_allclose(
        got, expected_fw, rtol=RTOL64, atol=1e-9 if FLOAT64 else 1e-4 * np.abs(expected_fw).max()
    )
    # The forward cell's last slice reaches h_T most directly; reversed order would differ.
    swapped = np.concatenate([relevance_out[:, UNITS:], relevance_out[:, :UNITS]], axis=1)
    assert not np.allclose(np.asarray(lstm_relevance(layer, xs, swapped)), got)
    assert not np.allclose(np.asarray(lstm_relevance(layer, xs, relevance_out, eps=1.0)), got)


def test_lstm_relevance_conserves_without_bias():
    rng = np.random.default_rng(4)
    layer = keras.layers.Bidirectional(keras.layers.LSTM(UNITS, use_bias=False, name="lstm"), name="bilstm")
    layer.build((None, T, FEATURES))
    for direction in (layer.forward_layer, layer.backward_layer):
        direction.set_weights([rng.normal(0, 0.7, w.shape) for w in direction.get_weights()])
    xs = rng.normal(0, 1, (4, T, FEATURES))
    relevance_out = rng.normal(0, 1, (4, 2 * UNITS))

    relevance_in = np.asarray(lstm_relevance(layer, xs, relevance_out, eps=1e-12))
    np.testing.assert_allclose(relevance_in.sum(axis=(1, 2)), relevance_out.sum(axis=1), rtol=RTOL64)
    # Per direction too: the forward half alone is conserved.
    forward_only = relevance_out * np.r_[np.ones(UNITS), np.zeros(UNITS)]
    np.testing.assert_allclose(
        np.asarray(lstm_relevance(layer, xs, forward_only, eps=1e-12)).sum(axis=(1, 2)),
        forward_only.sum(axis=1),
        rtol=RTOL64,
    )


def test_lstm_relevance_refuses_unsupported_layers():
    with pytest.raises(TypeError, match="Bidirectional"):
        lstm_relevance(keras.layers.LSTM(UNITS), np.zeros((1, T, FEATURES)), np.zeros((1, UNITS)))
    summed = keras.layers.Bidirectional(keras.layers.LSTM(UNITS), merge_mode="sum")
    summed.build((None, T, FEATURES))
    with pytest.raises(ValueError, match="merge_mode"):
        lstm_relevance(summed, np.zeros((1, T, FEATURES)), np.zeros((1, UNITS)))
    layer, _ = make_bilstm(np.random.default_rng(5))
    with pytest.raises(ValueError, match=r"relevance_out \(batch, 6\)"):
        lstm_relevance(layer, np.zeros((1, T, FEATURES)), np.zeros((1, UNITS)))


@pytest.mark.parametrize("signed", [False, True])
def test_rule_adapter_works_inside_a_compiled_function(signed):
    from deeplight_bids import backend
    from deeplight_bids.lrp.lstm import LSTMEpsilon, LSTMSignedEpsilon

    rng = np.random.default_rng(6)
    layer, original = make_bilstm(rng)
    xs = rng.normal(0, 1, (2, T, FEATURES)).astype(np.float32)
    relevance_out = rng.normal(0, 1, (2, 2 * UNITS)).astype(np.float32)
    rule_class = LSTMSignedEpsilon if signed else LSTMEpsilon
    rule = rule_class(eps=1e-3)
    assert rule.describe()["epsilon"] == 1e-3 and rule.describe()["rule"] == rule_class.__name__
    graph = backend.compile_function(lambda x, r: rule(layer, x, r))
    expected, _ = reference_bidirectional(
        original, xs.astype(np.float64), relevance_out.astype(np.float64), eps=1e-3, signed=signed
    )
    np.testing.assert_allclose(
        np.asarray(graph(xs, relevance_out)), expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max()
    )
    with pytest.raises(ValueError, match="eps > 0"):
        rule_class(eps=0)


def test_stabilisers_differ_where_a_denominator_is_negative():
    """The published +eps and the signed stabiliser give different maps (cell states of both signs)."""
    rng = np.random.default_rng(7)
    layer, _ = make_bilstm(rng)
    xs = rng.normal(0, 1, (2, T, FEATURES))
    relevance_out = rng.normal(0, 1, (2, 2 * UNITS))
    published = np.asarray(lstm_relevance(layer, xs, relevance_out, eps=0.1))
    signed = np.asarray(lstm_relevance(layer, xs, relevance_out, eps=0.1, signed=True))
    assert np.abs(published - signed).max() > 1e-3 * np.abs(published).max()

"""LRP through a bidirectional LSTM, as published for 2D-DeepLight (reference section 7).

The rule (Arras et al. 2017, epsilon variant, no bias relevance), for one direction
with ``c_t = f_t * c_{t-1} + i_t * j_t`` and ``h_t = o_t * tanh(c_t)``:

- the relevance of the final hidden state ``h_T`` all goes to ``c_T`` (``o`` and the
  ``tanh`` pass it unchanged: gates pass none);
- the relevance of ``c_t`` (from ``h_t`` plus what ``c_{t+1}`` handed down) splits
  between ``f_t * c_{t-1}`` and ``i_t * j_t`` by the epsilon rule on the sum ``c_t``:
  ``R(a) = a / (c_t + eps * sign(c_t)) * R(c_t)``;
- all of ``i_t * j_t``'s relevance goes to the candidate ``j_t``;
- the candidate's relevance goes to ``x_t`` and ``h_{t-1}`` by the epsilon rule on its
  pre-activation ``z = W_x x_t + W_h h_{t-1} + b`` (``b`` holding both original
  biases): ``R(x_t)_k = x_tk * sum_u W_x[k, u] R(j_t)_u / (z_u + eps * sign(z_u))``;
- ``R(h_{t-1})`` joins ``R(c_{t-1})`` for the next step; at ``t = 0`` the zero initial
  state absorbs nothing.

The backward direction is the same computation on the time-reversed sequence; the
input relevances of both directions are summed.  ``sign(0)`` counts as +1, as in the
original.  With zero biases and ``eps -> 0`` the total input relevance equals the
total output relevance.

Everything is computed from the layer's weights with TensorFlow ops (one
``tf.function``, a ``tf.scan`` over time), batched; the layer's variables are only read.
"""

import tensorflow as tf


def _stabilize(z, eps):
    """``z + eps * sign(z)``, with sign(0) = +1."""
    return z + eps * tf.where(z >= 0, tf.ones_like(z), -tf.ones_like(z))


@tf.function(reduce_retracing=True)
def _direction_relevance(kernel, recurrent_kernel, bias, x_seq, relevance_h, eps):
    """LRP for one LSTM direction reading ``x_seq`` in the given order.

    Parameters
    ----------
    kernel : Tensor, shape (features, 4 * units)
        Keras layout, gate blocks i, f, c, o.
    recurrent_kernel : Tensor, shape (units, 4 * units)
    bias : Tensor, shape (4 * units,)
    x_seq : Tensor, shape (batch, T, features)
    relevance_h : Tensor, shape (batch, units)
        Relevance at the final hidden state.
    eps : Tensor, scalar

    Returns
    -------
    Tensor, shape (batch, T, features)
    """
    units = tf.shape(recurrent_kernel)[0]
    batch = tf.shape(x_seq)[0]
    x_time = tf.transpose(x_seq, (1, 0, 2))  # (T, batch, features)
    zx = tf.einsum("tbf,fg->tbg", x_time, kernel) + bias

    def step(state, zx_t):
        h_prev, c_prev = state[0], state[1]
        z = zx_t + tf.matmul(h_prev, recurrent_kernel)
        z_i, z_f, z_j, z_o = tf.split(z, 4, axis=-1)
        i, f, o = tf.sigmoid(z_i), tf.sigmoid(z_f), tf.sigmoid(z_o)
        j = tf.tanh(z_j)
        c = f * c_prev + i * j
        h = o * tf.tanh(c)
        # Kept per step: h_t, c_t, f*c_{t-1}, i*j, z_j.
        return tf.stack([h, c, f * c_prev, i * j, z_j])

    zeros = tf.zeros(tf.stack([batch, units]), dtype=x_seq.dtype)
    init = tf.stack([zeros, zeros, zeros, zeros, zeros])
    states = tf.scan(step, zx, initializer=init)  # (T, 5, batch, units)
    h_all, c_all, fc_all, ij_all, zj_all = tf.unstack(states, axis=1)
    h_prev_all = tf.concat([zeros[None], h_all[:-1]], axis=0)  # h_{t-1}, zero at t = 0

    w_x_j = kernel[:, 2 * units : 3 * units]  # (features, units)
    w_h_j = recurrent_kernel[:, 2 * units : 3 * units]  # (units, units)

    def back(carry, per_t):
        relevance_h_t, relevance_c_next = carry[0], carry[1]
        c_t, fc_t, ij_t, zj_t, h_prev = per_t[0], per_t[1], per_t[2], per_t[3], per_t[4]
        relevance_c = relevance_c_next + relevance_h_t
        share = relevance_c / _stabilize(c_t, eps)
        relevance_c_prev = fc_t * share
        relevance_j = ij_t * share
        s_j = relevance_j / _stabilize(zj_t, eps)
        relevance_h_prev = h_prev * tf.matmul(s_j, w_h_j, transpose_b=True)
        return tf.stack([relevance_h_prev, relevance_c_prev, s_j])

    per_t = tf.stack([c_all, fc_all, ij_all, zj_all, h_prev_all], axis=1)  # (T, 5, batch, units)
    init_back = tf.stack([relevance_h, tf.zeros_like(relevance_h), tf.zeros_like(relevance_h)])
    carried = tf.scan(back, per_t, initializer=init_back, reverse=True)  # (T, 3, batch, units)
    s_j_all = carried[:, 2]  # (T, batch, units)
    relevance_x = x_time * tf.einsum("tbu,fu->tbf", s_j_all, w_x_j)
    return tf.transpose(relevance_x, (1, 0, 2))


def _lstm_weights(lstm, dtype):
    """``kernel, recurrent_kernel, bias`` of a Keras LSTM layer as tensors of ``dtype``."""
    import keras

    if not isinstance(lstm, keras.layers.LSTM):
        raise TypeError(f"expected a keras.layers.LSTM, got {type(lstm).__name__} ({getattr(lstm, 'name', '?')})")
    cell = lstm.cell
    activation = keras.activations.serialize(cell.activation)
    recurrent = keras.activations.serialize(cell.recurrent_activation)
    if activation != "tanh" or recurrent != "sigmoid":
        raise ValueError(
            f"LSTM {lstm.name}: the LRP rule needs activation tanh and recurrent_activation sigmoid; "
            f"got {activation} and {recurrent}"
        )
    kernel = tf.cast(tf.convert_to_tensor(cell.kernel), dtype)
    recurrent_kernel = tf.cast(tf.convert_to_tensor(cell.recurrent_kernel), dtype)
    if cell.use_bias:
        bias = tf.cast(tf.convert_to_tensor(cell.bias), dtype)
    else:
        bias = tf.zeros((4 * cell.units,), dtype=dtype)
    return kernel, recurrent_kernel, bias


def lstm_relevance(bilstm_layer, x_seq, relevance_out, eps=1e-3):
    """Relevance at the input sequence of a bidirectional LSTM (reference section 7).

    Parameters
    ----------
    bilstm_layer : keras.layers.Bidirectional
        Wrapping an LSTM (tanh / sigmoid), ``merge_mode="concat"``,
        ``return_sequences=False``; e.g. layer ``bilstm`` of 2D-DeepLight.
    x_seq : array or Tensor, shape (batch, T, features)
        The layer's input (2D-DeepLight: the ``T = z`` flattened slices, bottom to top).
        Computation runs in its dtype when that is float32/float64, else float32.
    relevance_out : array or Tensor, shape (batch, 2 * units)
        Relevance at the concatenated final hidden states, forward first.
    eps : float
        Epsilon of the stabiliser (1e-3 as published).

    Returns
    -------
    Tensor, shape (batch, T, features)
        Input relevance, forward and backward directions summed.
    """
    import keras

    if not isinstance(bilstm_layer, keras.layers.Bidirectional):
        raise TypeError(f"expected a keras.layers.Bidirectional, got {type(bilstm_layer).__name__}")
    if bilstm_layer.merge_mode != "concat" or bilstm_layer.return_sequences:
        raise ValueError(
            f"{bilstm_layer.name}: LSTM relevance needs merge_mode='concat' and return_sequences=False; "
            f"got merge_mode={bilstm_layer.merge_mode!r}, return_sequences={bilstm_layer.return_sequences}"
        )
    forward, backward = bilstm_layer.forward_layer, bilstm_layer.backward_layer
    if forward.go_backwards or not backward.go_backwards:
        raise ValueError(f"{bilstm_layer.name}: expected a forward layer and a go_backwards=True backward layer")

    x_seq = tf.convert_to_tensor(x_seq)
    dtype = x_seq.dtype if x_seq.dtype in (tf.float32, tf.float64) else tf.float32
    x_seq = tf.cast(x_seq, dtype)
    relevance_out = tf.cast(tf.convert_to_tensor(relevance_out), dtype)
    units = forward.units
    if x_seq.shape.rank != 3 or relevance_out.shape.rank != 2 or relevance_out.shape[-1] != 2 * units:
        raise ValueError(
            f"expected x_seq (batch, T, features) and relevance_out (batch, {2 * units}); "
            f"got {tuple(x_seq.shape)} and {tuple(relevance_out.shape)}"
        )
    eps = tf.constant(eps, dtype=dtype)

    relevance_fw = _direction_relevance(*_lstm_weights(forward, dtype), x_seq, relevance_out[:, :units], eps)
    x_reversed = tf.reverse(x_seq, axis=[1])
    relevance_bw = _direction_relevance(*_lstm_weights(backward, dtype), x_reversed, relevance_out[:, units:], eps)
    return relevance_fw + tf.reverse(relevance_bw, axis=[1])


class LSTMEpsilon:
    """:func:`lstm_relevance` as a layer rule, called like the rules of :mod:`deeplight_bids.lrp.rules`.

    ``relevance_in = rule(layer, x_in, relevance_out, y_out=None)`` for a
    ``keras.layers.Bidirectional`` LSTM layer (e.g. ``bilstm`` of 2D-DeepLight), so a
    composite can map ``(keras.layers.Bidirectional,)`` to it.  Works eagerly and inside
    a ``tf.function``.

    Parameters
    ----------
    eps : float
        Epsilon of the stabiliser (1e-3 as published for 2D-DeepLight).
    """

    def __init__(self, eps=1e-3):
        if not eps > 0:
            raise ValueError(f"LSTMEpsilon needs eps > 0; got {eps}")
        self.eps = float(eps)

    def __call__(self, layer, x_in, relevance_out, y_out=None):
        return lstm_relevance(layer, x_in, relevance_out, eps=self.eps)

    def describe(self):
        """JSON-serialisable description for output sidecars."""
        return {
            "rule": "LSTMEpsilon",
            "epsilon": self.eps,
            "formula": (
                "h_T -> c_T; R(c_t) split between f*c_{t-1} and i*j by epsilon on c_t; gates get none; "
                "R(j) -> x_t, h_{t-1} by epsilon on j's pre-activation (both biases); directions summed"
            ),
        }

    def __repr__(self):
        return f"LSTMEpsilon(eps={self.eps!r})"

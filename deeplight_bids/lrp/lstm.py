"""LRP through a bidirectional LSTM, as published for 2D-DeepLight (reference section 7).

The rule (Arras et al. 2017, epsilon variant, no bias relevance), for one direction
with ``c_t = f_t * c_{t-1} + i_t * j_t`` and ``h_t = o_t * tanh(c_t)``:

- the relevance of the final hidden state ``h_T`` all goes to ``c_T`` (``o`` and the
  ``tanh`` pass it unchanged: gates pass none);
- the relevance of ``c_t`` (from ``h_t`` plus what ``c_{t+1}`` handed down) splits
  between ``f_t * c_{t-1}`` and ``i_t * j_t`` by the epsilon rule on the sum ``c_t``:
  ``R(a) = a / stab(c_t) * R(c_t)``;
- all of ``i_t * j_t``'s relevance goes to the candidate ``j_t``;
- the candidate's relevance goes to ``x_t`` and ``h_{t-1}`` by the epsilon rule on its
  pre-activation ``z = W_x x_t + W_h h_{t-1} + b`` (``b`` holding both original
  biases): ``R(x_t)_k = x_tk * sum_u W_x[k, u] R(j_t)_u / stab(z_u)``;
- ``R(h_{t-1})`` joins ``R(c_{t-1})`` for the next step; at ``t = 0`` the zero initial
  state absorbs nothing.

Two stabilisers, two rules:

- :class:`LSTMEpsilon` (published): ``stab(z) = z + eps`` whatever the sign of ``z``, as
  the original code does (athms/evaluating-deeplight-transfer at 4a8eeaa,
  ``src/deeplight/two/_lstm.py`` lines 198-206: ``sign_out`` is +1 in both branches of
  its ``tf.where``);
- :class:`LSTMSignedEpsilon` (a deliberate deviation): ``stab(z) = z + eps * sign(z)``
  with ``sign(0) = +1`` (Arras et al.'s ``lrp_linear``), which never divides by a
  near-zero ``z`` near ``-eps``.

The backward direction is the same computation on the time-reversed sequence; the
input relevances of both directions are summed.  With zero biases and ``eps -> 0`` the
total input relevance equals the total output relevance.

Everything is computed from the layer's weights with ``keras.ops`` (a ``keras.ops.scan``
over time, forward then backward), batched, on any Keras backend; the layer's
variables are only read.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from deeplight_bids import backend


def _stabilize(z, eps, signed):
    """``z + eps * sign(z)`` (sign(0) = +1) when ``signed``, else ``z + eps`` (the original's)."""
    if not signed:
        return z + eps
    return z + eps * ops.where(z >= 0, ops.ones_like(z), -ops.ones_like(z))


def _direction_relevance(kernel, recurrent_kernel, bias, x_seq, relevance_h, eps, signed):
    """LRP for one LSTM direction reading ``x_seq`` in the given order.

    Parameters
    ----------
    kernel : tensor, shape (features, 4 * units)
        Keras layout, gate blocks i, f, c, o.
    recurrent_kernel : tensor, shape (units, 4 * units)
    bias : tensor, shape (4 * units,)
    x_seq : tensor, shape (batch, T, features)
    relevance_h : tensor, shape (batch, units)
        Relevance at the final hidden state.
    eps : tensor, scalar
    signed : bool
        Stabiliser ``z + eps * sign(z)`` (True) or ``z + eps`` (False, the original's).

    Returns
    -------
    tensor, shape (batch, T, features)
    """
    units = recurrent_kernel.shape[0]
    x_time = ops.transpose(x_seq, (1, 0, 2))  # (T, batch, features)
    zx = ops.einsum("tbf,fg->tbg", x_time, kernel) + bias

    # TensorFlow's scan wants each step's output shaped like the carry: both are the
    # stacked per-step state.
    def step(state, zx_t):
        h_prev, c_prev = state[0], state[1]
        z = zx_t + ops.matmul(h_prev, recurrent_kernel)
        z_i, z_f, z_j, z_o = ops.split(z, 4, axis=-1)
        i, f, o = ops.sigmoid(z_i), ops.sigmoid(z_f), ops.sigmoid(z_o)
        j = ops.tanh(z_j)
        c = f * c_prev + i * j
        h = o * ops.tanh(c)
        # Kept per step: h_t, c_t, f*c_{t-1}, i*j, z_j.
        new = ops.stack([h, c, f * c_prev, i * j, z_j])
        return new, new

    zeros = ops.zeros_like(relevance_h)  # (batch, units)
    init = ops.stack([zeros, zeros, zeros, zeros, zeros])
    _, states = ops.scan(step, init, zx)  # (T, 5, batch, units)
    h_all, c_all, fc_all, ij_all, zj_all = (states[:, k] for k in range(5))
    h_prev_all = ops.concatenate([zeros[None], h_all[:-1]], axis=0)  # h_{t-1}, zero at t = 0

    w_x_j = kernel[:, 2 * units : 3 * units]  # (features, units)
    w_h_j = recurrent_kernel[:, 2 * units : 3 * units]  # (units, units)

    def back(carry, per_t):
        relevance_h_t, relevance_c_next = carry[0], carry[1]
        c_t, fc_t, ij_t, zj_t, h_prev = per_t[0], per_t[1], per_t[2], per_t[3], per_t[4]
        relevance_c = relevance_c_next + relevance_h_t
        share = relevance_c / _stabilize(c_t, eps, signed)
        relevance_c_prev = fc_t * share
        relevance_j = ij_t * share
        s_j = relevance_j / _stabilize(zj_t, eps, signed)
        relevance_h_prev = h_prev * ops.matmul(s_j, ops.transpose(w_h_j))
        new = ops.stack([relevance_h_prev, relevance_c_prev, s_j])
        return new, new

    per_t = ops.stack([c_all, fc_all, ij_all, zj_all, h_prev_all], axis=1)  # (T, 5, batch, units)
    init_back = ops.stack([relevance_h, zeros, zeros])
    _, carried = ops.scan(back, init_back, per_t, reverse=True)  # (T, 3, batch, units)
    s_j_all = carried[:, 2]  # (T, batch, units)
    relevance_x = x_time * ops.einsum("tbu,fu->tbf", s_j_all, w_x_j)
    return ops.transpose(relevance_x, (1, 0, 2))


def _lstm_weights(lstm: Any, dtype: str) -> tuple[Any, Any, Any]:
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
    kernel = ops.cast(backend.read(cell.kernel), dtype)
    recurrent_kernel = ops.cast(backend.read(cell.recurrent_kernel), dtype)
    if cell.use_bias:
        bias = ops.cast(backend.read(cell.bias), dtype)
    else:
        bias = ops.zeros((4 * cell.units,), dtype=dtype)
    return kernel, recurrent_kernel, bias


def lstm_relevance(bilstm_layer: Any, x_seq: Any, relevance_out: Any, eps: float = 1e-3, signed: bool = False) -> Any:
    """Relevance at the input sequence of a bidirectional LSTM (reference section 7).

    Parameters
    ----------
    bilstm_layer : keras.layers.Bidirectional
        Wrapping an LSTM (tanh / sigmoid), ``merge_mode="concat"``,
        ``return_sequences=False``; e.g. layer ``bilstm`` of 2D-DeepLight.
    x_seq : array or tensor, shape (batch, T, features)
        The layer's input (2D-DeepLight: the ``T = z`` flattened slices, bottom to top).
        Computation runs in its dtype when that is float32/float64, else float32.
    relevance_out : array or tensor, shape (batch, 2 * units)
        Relevance at the concatenated final hidden states, forward first.
    eps : float
        Epsilon of the stabiliser (1e-3 as published).
    signed : bool
        False (published): stabiliser ``z + eps``; True: ``z + eps * sign(z)``.

    Returns
    -------
    tensor, shape (batch, T, features)
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

    x_seq = ops.convert_to_tensor(x_seq)
    dtype = "float64" if keras.backend.standardize_dtype(x_seq.dtype) == "float64" else "float32"
    x_seq = ops.cast(x_seq, dtype)
    relevance_out = ops.cast(ops.convert_to_tensor(relevance_out), dtype)
    units = forward.units
    if len(x_seq.shape) != 3 or len(relevance_out.shape) != 2 or relevance_out.shape[-1] != 2 * units:
        raise ValueError(
            f"expected x_seq (batch, T, features) and relevance_out (batch, {2 * units}); "
            f"got {tuple(x_seq.shape)} and {tuple(relevance_out.shape)}"
        )
    eps = ops.cast(eps, dtype)

    relevance_fw = _direction_relevance(
        *_lstm_weights(forward, dtype), x_seq, relevance_out[:, :units], eps, bool(signed)
    )
    x_reversed = ops.flip(x_seq, axis=1)
    relevance_bw = _direction_relevance(
        *_lstm_weights(backward, dtype), x_reversed, relevance_out[:, units:], eps, bool(signed)
    )
    return relevance_fw + ops.flip(relevance_bw, axis=1)


class LSTMEpsilon:
    """:func:`lstm_relevance` as a layer rule, stabilised as published (``z + eps``).

    ``relevance_in = rule(layer, x_in, relevance_out, y_out=None)`` for a
    ``keras.layers.Bidirectional`` LSTM layer (e.g. ``bilstm`` of 2D-DeepLight), so a
    composite can map ``(keras.layers.Bidirectional,)`` to it.  Works eagerly and inside
    a compiled function, on any Keras backend.  The cell-state split and the candidate's pre-activation are
    stabilised with ``+eps`` whatever their sign, as in the original code
    (``src/deeplight/two/_lstm.py`` lines 198-206 at 4a8eeaa).

    Parameters
    ----------
    eps : float
        Epsilon of the stabiliser (1e-3 as published for 2D-DeepLight).
    """

    #: Stabiliser ``z + eps * sign(z)`` (True) or ``z + eps`` (False).
    signed = False

    def __init__(self, eps: float = 1e-3) -> None:
        if not eps > 0:
            raise ValueError(f"{type(self).__name__} needs eps > 0; got {eps}")
        self.eps = float(eps)

    def __call__(self, layer: Any, x_in: Any, relevance_out: Any, y_out: Any | None = None) -> Any:
        return lstm_relevance(layer, x_in, relevance_out, eps=self.eps, signed=self.signed)

    def describe(self) -> dict:
        """JSON-serialisable description for output sidecars."""
        stabiliser = "eps*sign(z)" if self.signed else "eps (whatever the sign of z, as the original code)"
        return {
            "rule": type(self).__name__,
            "epsilon": self.eps,
            "formula": (
                "h_T -> c_T; R(c_t) split between f*c_{t-1} and i*j by epsilon on c_t; gates get none; "
                "R(j) -> x_t, h_{t-1} by epsilon on j's pre-activation (both biases); directions summed; "
                f"denominators z + {stabiliser}"
            ),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps!r})"


class LSTMSignedEpsilon(LSTMEpsilon):
    """:class:`LSTMEpsilon` with the sign-aware stabiliser ``z + eps * sign(z)`` (``sign(0) = +1``).

    A deliberate deviation from the published code (Arras et al.'s ``lrp_linear``): no
    denominator comes near zero when ``z`` is near ``-eps``.  Changes 2D maps
    substantially on the published weights.
    """

    signed = True

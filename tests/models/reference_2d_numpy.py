"""Slow NumPy forward pass of the ORIGINAL 2D-DeepLight (reference section 6).

Written from the equations, independent of the Keras model: it reads the published
arrays in their original layout (``conv2d_k/weights`` (3, 3, in, out),
``lstm_*/weights_xh`` (4 * units, n_in) with row blocks i, j, f, o, ``linear_29/weights``
(128, n_states)) and applies them as the original code did:

- convolution with TensorFlow's SAME padding (for stride 2 the odd padding pixel goes
  after the data), by explicit im2col;
- LSTM: ``pre = W_xh x_t + b_xh + W_hh h_{t-1} + b_hh``, ``i = sigmoid``,
  ``j = tanh``, ``f = sigmoid(pre_f + 1.0)``, ``o = sigmoid``,
  ``c_t = f c_{t-1} + i j``, ``h_t = o tanh(c_t)``, zero initial state; the forward cell
  reads slices bottom-to-top (z = 0 first), the backward cell top-to-bottom;
- logits = ``[h_fw_last, h_bw_last] @ W_linear + b_linear``.
"""

import numpy as np

CONV_SCOPES = tuple(f"conv2d_{k}" for k in range(1, 24, 2))
STRIDES = (1, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)
FORGET_BIAS = 1.0


def conv2d_same(images, kernel, bias, stride):
    """``(n, h, w, c_in)`` -> ``(n, ceil(h/s), ceil(w/s), c_out)``, TF SAME padding, float64."""
    n, h, w, c_in = images.shape
    kh, kw, _, c_out = kernel.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + kh - h, 0)
    pad_w = max((out_w - 1) * stride + kw - w, 0)
    padded = np.pad(images, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    # im2col: one column block per kernel offset (dy, dx).
    columns = np.empty((n, out_h, out_w, kh, kw, c_in), dtype=np.float64)
    for dy in range(kh):
        for dx in range(kw):
            columns[:, :, :, dy, dx, :] = padded[
                :, dy : dy + stride * (out_h - 1) + 1 : stride, dx : dx + stride * (out_w - 1) + 1 : stride, :
            ]
    out = columns.reshape(n * out_h * out_w, kh * kw * c_in) @ kernel.reshape(kh * kw * c_in, c_out)
    return out.reshape(n, out_h, out_w, c_out) + bias


def sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))  # 1 / (1 + exp(-x)) without overflow


def lstm_original(sequence, weights_xh, biases_xh, weights_hh, biases_hh):
    """Run the original LSTM over ``(T, n_in)`` in the given order; return the last ``h`` (units,)."""
    units = weights_hh.shape[1]
    h = np.zeros(units)
    c = np.zeros(units)
    for x_t in sequence:
        pre = weights_xh @ x_t + biases_xh + weights_hh @ h + biases_hh
        i = sigmoid(pre[:units])
        j = np.tanh(pre[units : 2 * units])
        f = sigmoid(pre[2 * units : 3 * units] + FORGET_BIAS)
        o = sigmoid(pre[3 * units :])
        c = f * c + i * j
        h = o * np.tanh(c)
    return h


def forward_original(arrays, volumes_zyx):
    """Logits of the original 2D-DeepLight.

    Parameters
    ----------
    arrays : dict
        Short name (``"conv2d_1/weights"``) -> array, original layout.
    volumes_zyx : array, shape (batch, z, y, x) or (batch, z, y, x, 1)
        Model-order volumes.

    Returns
    -------
    numpy.ndarray, shape (batch, n_states), float64
    """
    a = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    volumes = np.asarray(volumes_zyx, dtype=np.float64)
    if volumes.ndim == 4:
        volumes = volumes[..., None]
    logits = []
    for volume in volumes:
        slices = volume  # (z, y, x, 1): the slices are the conv batch
        for scope, stride in zip(CONV_SCOPES, STRIDES):
            slices = np.maximum(conv2d_same(slices, a[f"{scope}/weights"], a[f"{scope}/biases"], stride), 0.0)
        sequence = slices.reshape(slices.shape[0], -1)  # row-major (y, x, channel) per slice
        fw = [a[f"lstm_fw_26/{n}"] for n in ("weights_xh", "biases_xh", "weights_hh", "biases_hh")]
        bw = [a[f"lstm_bw_27/{n}"] for n in ("weights_xh", "biases_xh", "weights_hh", "biases_hh")]
        h = np.concatenate([lstm_original(sequence, *fw), lstm_original(sequence[::-1], *bw)])
        logits.append(h @ a["linear_29/weights"] + a["linear_29/biases"])
    return np.stack(logits)

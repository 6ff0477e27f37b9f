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

:func:`lrp_original` re-derives the original's LRP (epsilon 1e-3 through every layer) from
its code, athms/evaluating-deeplight-transfer at commit 4a8eeaa; each step cites the
file and lines it ports.  Every denominator is ``activation + eps`` whatever its sign,
as there.
"""

import numpy as np

CONV_SCOPES = tuple(f"conv2d_{k}" for k in range(1, 24, 2))
STRIDES = (1, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)
FORGET_BIAS = 1.0


def _same_geometry(h, w, kh, kw, stride):
    """Output size and (top, bottom, left, right) padding of TF SAME padding."""
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + kh - h, 0)
    pad_w = max((out_w - 1) * stride + kw - w, 0)
    return out_h, out_w, (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)


def image_patches(images, kh, kw, stride):
    """im2col: ``(n, h, w, c)`` -> ``(n, out_h, out_w, kh, kw, c)`` patches of the SAME-padded images."""
    n, h, w, c_in = images.shape
    out_h, out_w, (top, bottom, left, right) = _same_geometry(h, w, kh, kw, stride)
    padded = np.pad(images, ((0, 0), (top, bottom), (left, right), (0, 0)))
    columns = np.empty((n, out_h, out_w, kh, kw, c_in), dtype=np.float64)
    for dy in range(kh):
        for dx in range(kw):
            columns[:, :, :, dy, dx, :] = padded[
                :, dy : dy + stride * (out_h - 1) + 1 : stride, dx : dx + stride * (out_w - 1) + 1 : stride, :
            ]
    return columns


def restitch_image(patches, image_shape, stride):
    """col2im, the adjoint of :func:`image_patches`: overlapping patches summed back into images."""
    n, h, w, c_in = image_shape
    _, out_h, out_w, kh, kw, _ = patches.shape
    _, _, (top, bottom, left, right) = _same_geometry(h, w, kh, kw, stride)
    padded = np.zeros((n, h + top + bottom, w + left + right, c_in))
    for dy in range(kh):
        for dx in range(kw):
            padded[:, dy : dy + stride * (out_h - 1) + 1 : stride, dx : dx + stride * (out_w - 1) + 1 : stride, :] += (
                patches[:, :, :, dy, dx, :]
            )
    return padded[:, top : top + h, left : left + w, :]


def conv2d_same(images, kernel, bias, stride):
    """``(n, h, w, c_in)`` -> ``(n, ceil(h/s), ceil(w/s), c_out)``, TF SAME padding, float64."""
    kh, kw, c_in, c_out = kernel.shape
    columns = image_patches(images, kh, kw, stride)
    n, out_h, out_w = columns.shape[:3]
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


# -- LRP of the original (athms/evaluating-deeplight-transfer@4a8eeaa) -------------------------


def conv_epsilon_lrp(images, kernel, activations, relevance, stride, eps):
    """``src/modules/convolution.py`` lines 119-126 (``_epsilon_lrp``).

    ``image_patches * sum(W * R / (activations + eps), -1)`` restitched, with
    ``activations`` the layer's post-ReLU output.
    """
    kh, kw = kernel.shape[:2]
    patches = image_patches(images, kh, kw, stride)  # (n, oh, ow, kh, kw, c_in)
    weights = relevance / (activations + eps)  # (n, oh, ow, c_out)
    per_patch = np.einsum("nyxo,abco->nyxabc", weights, kernel)
    return restitch_image(patches * per_patch, images.shape, stride)


def linear_epsilon_lrp(inputs, weights, activations, relevance, eps):
    """``src/modules/linear.py`` line 123: ``x * sum(W * R / (activations + eps), -1)``."""
    return inputs * ((relevance / (activations + eps)) @ weights.T)


def _epsilon_message(hin, weights, hout, rout, eps):
    """``src/deeplight/two/_lstm.py`` lines 198-208 (``__epsilon_lrp``): ``sign_out`` is +1 in
    both branches of its ``tf.where``, so the denominator is ``hout + eps``.

    ``R_in_i = sum_j weights[i, j] * hin_i * R_j / (hout_j + eps)``; ``hin`` (n_in,),
    ``weights`` (n_in, n_out), ``hout``, ``rout`` (n_out,).
    """
    return hin * (weights @ (rout / (hout + eps)))


def lstm_epsilon_lrp(sequence, weights_xh, biases_xh, weights_hh, biases_hh, relevance_h, eps):
    """One original LSTM cell: ``sequence`` (T, n_in) in the cell's reading order -> (T, n_in).

    Forward as ``_lstm.py`` lines 154-172; LRP as lines 240-283: ``Rc[t] += Rh[t]``; the
    cell state's relevance splits onto ``f * c[t-1]`` and ``i * j`` by epsilon on ``c[t]``
    (identity weights, lines 252-267); the candidate's relevance ``Rg`` goes to ``x_t``
    and ``h[t-1]`` by epsilon on the candidate's pre-activation (both biases in it,
    lines 268-283).
    """
    units = weights_hh.shape[1]
    h, c, gates, j_pre = [np.zeros(units)], [np.zeros(units)], [], []  # h[t + 1] is step t's
    for x_t in sequence:
        pre = weights_xh @ x_t + biases_xh + weights_hh @ h[-1] + biases_hh
        i = sigmoid(pre[:units])
        j = np.tanh(pre[units : 2 * units])
        f = sigmoid(pre[2 * units : 3 * units] + FORGET_BIAS)
        o = sigmoid(pre[3 * units :])
        c.append(f * c[-1] + i * j)
        h.append(o * np.tanh(c[-1]))
        gates.append((i, j, f))
        j_pre.append(pre[units : 2 * units])
    w_xj = weights_xh[units : 2 * units].T  # (n_in, units): tf.transpose(tf.gather(Wxh, j_idx))
    w_hj = weights_hh[units : 2 * units].T  # (units, units)
    eye = np.eye(units)
    relevance_x = np.zeros_like(sequence)
    r_h = np.asarray(relevance_h, dtype=np.float64)
    r_c = np.zeros(units)
    for t in reversed(range(len(sequence))):
        i, j, f = gates[t]
        c_t, c_prev, h_prev = c[t + 1], c[t], h[t]
        r_c = r_c + r_h  # line 251
        r_g = _epsilon_message(i * j, eye, c_t, r_c, eps)  # lines 260-267
        r_c = _epsilon_message(f * c_prev, eye, c_t, r_c, eps)  # lines 252-259: Rc[t-1]
        relevance_x[t] = _epsilon_message(sequence[t], w_xj, j_pre[t], r_g, eps)  # lines 268-275
        r_h = _epsilon_message(h_prev, w_hj, j_pre[t], r_g, eps)  # lines 276-283: Rh[t-1]
    return relevance_x, h[-1]


def lrp_original(arrays, volume_zyx, eps=1e-3, chunk=16):
    """Logits and relevance of one volume, as the original's ``setup_lrp`` computes them.

    ``src/deeplight/two/model.py`` lines 369-383: relevance starts at the predicted
    logit (others 0) and goes back through every module with ``lrp_var='epsilon'``,
    ``param=1e-3``.  Float64 throughout.

    Parameters
    ----------
    arrays : dict
        Short name -> array, original layout (as :func:`forward_original`).
    volume_zyx : array, shape (z, y, x) or (z, y, x, 1)
    chunk : int
        Slices per conv batch (memory only; slices are independent in the convs).

    Returns
    -------
    logits : numpy.ndarray, shape (n_states,)
    relevance : numpy.ndarray, shape (z, y, x)
    """
    a = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    volume = np.asarray(volume_zyx, dtype=np.float64)
    if volume.ndim == 3:
        volume = volume[..., None]

    def conv_stack(slices):
        inputs, outputs = [], []
        for scope, stride in zip(CONV_SCOPES, STRIDES):
            inputs.append(slices)
            slices = np.maximum(conv2d_same(slices, a[f"{scope}/weights"], a[f"{scope}/biases"], stride), 0.0)
            outputs.append(slices)
        return inputs, outputs

    n_slices = volume.shape[0]
    chunks = [(s, min(s + chunk, n_slices)) for s in range(0, n_slices, chunk)]
    features = np.concatenate([conv_stack(volume[s:e])[1][-1] for s, e in chunks])
    feature_shape = features.shape[1:]
    sequence = features.reshape(n_slices, -1)  # row-major (y, x, channel) per slice

    fw = [a[f"lstm_fw_26/{n}"] for n in ("weights_xh", "biases_xh", "weights_hh", "biases_hh")]
    bw = [a[f"lstm_bw_27/{n}"] for n in ("weights_xh", "biases_xh", "weights_hh", "biases_hh")]
    units = fw[2].shape[1]
    _, h_fw = lstm_epsilon_lrp(sequence, *fw, np.zeros(units), eps)
    _, h_bw = lstm_epsilon_lrp(sequence[::-1], *bw, np.zeros(units), eps)
    hidden = np.concatenate([h_fw, h_bw])
    logits = hidden @ a["linear_29/weights"] + a["linear_29/biases"]
    relevance_logits = np.where(np.arange(len(logits)) == logits.argmax(), logits, 0.0)  # model.py:370-376
    relevance_hidden = linear_epsilon_lrp(hidden, a["linear_29/weights"], logits, relevance_logits, eps)
    # _lstm.py lines 392-396 (sum of both cells), 233-238 (fw reads R[:dim], bw R[dim:]) and
    # 285-294 (the backward cell's relevances put back into bottom-to-top order).
    r_fw, _ = lstm_epsilon_lrp(sequence, *fw, relevance_hidden[:units], eps)
    r_bw, _ = lstm_epsilon_lrp(sequence[::-1], *bw, relevance_hidden[units:], eps)
    relevance_sequence = (r_fw + r_bw[::-1]).reshape(n_slices, *feature_shape)

    relevance = []
    for s, e in chunks:
        inputs, outputs = conv_stack(volume[s:e])
        r = relevance_sequence[s:e]
        for k in reversed(range(len(CONV_SCOPES))):
            r = conv_epsilon_lrp(inputs[k], a[f"{CONV_SCOPES[k]}/weights"], outputs[k], r, STRIDES[k], eps)
        relevance.append(r[..., 0])
    return logits, np.concatenate(relevance)

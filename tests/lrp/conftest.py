"""Fixtures and slow, explicit NumPy re-derivations of the LRP rules.

Everything here is written from the formulas (reference section 7, iNNvestigate's
conventions) with explicit linear maps and loops, independent of the TensorFlow code
in ``deeplight_bids.lrp``: a layer becomes a matrix ``M`` (outputs x inputs) on one
flattened sample, and each rule a few lines on ``M``.  Tests reach them through the
``ref`` fixture.
"""

import os
import sys

import numpy as np
import pytest

KERAS_EPSILON = 1e-7

if os.environ.get("KERAS_BACKEND") == "jax":
    # the float64 checks need float64 arrays; JAX makes them float32 unless x64 is on
    import jax

    jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.fixture(scope="session")
def ref():
    """This module: the NumPy re-derivations below, for tests (``ref.alpha_beta_rule(...)``)."""
    return sys.modules[__name__]


def same_padding_before(size, kernel, stride):
    """TensorFlow's 'same' padding before the first element (the odd extra pad goes after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2


def conv3d_matrix(kernel, in_shape, stride):
    """The linear map of a 'same'-padded 3D convolution as an explicit matrix.

    Parameters
    ----------
    kernel : np.ndarray
        ``(k, k, k, in_channels, out_channels)``.
    in_shape : tuple of int
        ``(z, y, x, in_channels)`` of one sample.
    stride : int

    Returns
    -------
    matrix : np.ndarray
        ``(n_out, n_in)`` float64 over row-major flattened ``(z, y, x, channel)``.
    out_shape : tuple of int
        ``(z', y', x', out_channels)``.
    """
    k = kernel.shape[0]
    n_in_ch, n_out_ch = kernel.shape[3], kernel.shape[4]
    sizes, pads = zip(*(same_padding_before(s, k, stride) for s in in_shape[:3]))
    out_shape = (*sizes, n_out_ch)
    matrix = np.zeros((int(np.prod(out_shape)), int(np.prod(in_shape))))
    for out_pos in np.ndindex(*sizes):
        for tap in np.ndindex(k, k, k):
            in_pos = [o * stride + t - p for o, t, p in zip(out_pos, tap, pads)]
            if not all(0 <= i < s for i, s in zip(in_pos, in_shape[:3])):
                continue
            for c_in in range(n_in_ch):
                for c_out in range(n_out_ch):
                    row = np.ravel_multi_index((*out_pos, c_out), out_shape)
                    col = np.ravel_multi_index((*in_pos, c_in), in_shape)
                    matrix[row, col] += kernel[(*tap, c_in, c_out)]
    return matrix, out_shape


def layer_matrix(layer, in_shape):
    """``(matrix, bias per output, out_shape)`` of a Keras Conv3D (stride 1 or 2) or Dense layer."""
    kernel = np.asarray(layer.kernel, dtype=np.float64)
    if kernel.ndim == 5:
        matrix, out_shape = conv3d_matrix(kernel, in_shape, layer.strides[0])
    else:
        matrix, out_shape = kernel.T, (kernel.shape[1],)
    bias = np.asarray(layer.bias, dtype=np.float64) if layer.use_bias else np.zeros(out_shape[-1])
    bias_per_output = np.broadcast_to(bias, out_shape).ravel()
    return matrix, bias_per_output, out_shape


def safe_divide(a, b):
    return a / (b + KERAS_EPSILON * (b == 0))


def epsilon_rule(matrix, bias, x, relevance_out, eps):
    """``R_i = sum_j x_i M_ji R_j / (z_j + eps sign z_j)``, ``sign(0) = 1``."""
    z = matrix @ x + bias
    denominator = z + eps * np.where(z >= 0, 1.0, -1.0)
    contributions = matrix * x[None, :]  # (out, in): M_ji x_i
    return contributions.T @ (relevance_out / denominator)


def alpha_beta_rule(matrix, bias, x, relevance_out, alpha, beta):
    """Contribution form: ``c_ji = M_ji x_i`` split by sign; each denominator holds the full bias."""
    contributions = matrix * x[None, :]
    activating = np.maximum(contributions, 0.0)
    inhibiting = np.minimum(contributions, 0.0)
    z_activating = activating.sum(axis=1) + bias
    z_inhibiting = inhibiting.sum(axis=1) + bias
    return alpha * activating.T @ safe_divide(relevance_out, z_activating) - beta * inhibiting.T @ safe_divide(
        relevance_out, z_inhibiting
    )


def flat_rule(matrix, relevance_out):
    """Uniform over the in-bounds receptive field: ``R_i = sum_j [i in field(j)] R_j / |field(j)|``."""
    in_field = (matrix != 0).astype(np.float64)  # a random kernel has no exact zeros
    return in_field.T @ (relevance_out / in_field.sum(axis=1))


def z_rule_global_average(x, relevance_out):
    """GAP on one sample ``x (..., channels)``: ``R_ic = x_ic / (n mean_c) R_c`` (safe division)."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    total = flat.sum(axis=0)
    return (flat * safe_divide(relevance_out, total)[None, :]).reshape(x.shape)


def batch_norm_scale_rule(x, relevance_out, gamma, beta, mean, var, eps):
    """BN's multiplicative part: ``R_in = x * scale * (x - mean) / stab((x - mean) * y) * R_out``.

    ``scale = gamma / sqrt(var + eps)``, ``y = (x - mean) * scale + beta`` the BN output and
    ``stab(d) = d + 1e-7 sign(d)`` iNNvestigate's stabiliser; without it this is
    ``x * scale / y * R_out``.  Returns ``(relevance_in, y)``.
    """
    scale = gamma / np.sqrt(var + eps)
    y = (x - mean) * scale + beta
    denominator = (x - mean) * y
    denominator = denominator + KERAS_EPSILON * np.where(denominator >= 0, 1.0, -1.0)
    return x * scale * (x - mean) / denominator * relevance_out, y

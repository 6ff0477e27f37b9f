"""LRP rules: how one layer hands relevance from its output back to its input.

A rule is called as ``relevance_in = rule(layer, x_in, relevance_out)``:

- ``layer``: the Keras layer (its variables are read, never assigned);
- ``x_in``: the layer's input recorded in the forward pass, e.g. ``(batch, z, y, x, c)``;
- ``relevance_out``: relevance of the layer's output, same shape as the output;
- returns the relevance of the input, same shape as ``x_in``.

Most rules are one recipe (:class:`Rule`), as in zennit's ``BasicHook``: a *modified
forward* ``z = f'(x')`` of the layer's linear part on modified copies of its input and
parameters, the relevance divided by a stabilised ``z``, one gradient back to ``x'``, and
``x' * gradient``.  A subclass only states what it modifies.  Rules on a convolution or
dense layer with a fused ReLU use the linear part only (``conv(x) + bias``); the ReLU
itself hands relevance through unchanged.

Numerical conventions follow iNNvestigate (the published 3D-DeepLight analysis,
reference section 7), which the test ``tests/lrp/test_innvestigate_reference.py`` checks
against iNNvestigate 2.1.2 itself:

- ``sign_stabilise(z, eps) = z + eps * (+1 if z >= 0 else -1)`` (epsilon rule, BN);
- ``safe_divide(a, b) = a / (b + 1e-7 * (b == 0))`` (alpha-beta, flat, z-rule, BN), where
  1e-7 is Keras' ``backend.epsilon()``.

Everything is written with ``keras.ops`` and runs on the TensorFlow, JAX and PyTorch
backends; the gradient and the fused element-wise kernels come from
:mod:`deeplight_bids.backend`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops
from keras.layers import Layer

from deeplight_bids import backend

from . import types

#: A backend tensor (TensorFlow, JAX or PyTorch) or a NumPy array.
Tensor = Any

#: Keras' ``backend.epsilon()``, iNNvestigate's factor for safe division.
KERAS_EPSILON = 1e-7


def sign_stabilise(z: Tensor, eps: float | Tensor) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = +1`` (same shape as ``z``)."""
    return z + eps * ops.where(z >= 0, ops.ones_like(z), -ops.ones_like(z))


def safe_divide(a: Tensor, b: Tensor, factor: float = KERAS_EPSILON) -> Tensor:
    """``a / b`` where exact zeros of ``b`` are replaced by ``factor`` (iNNvestigate's ``safe_divide``)."""
    # where(b == 0, factor, b) is b + factor * (b == 0) exactly, in two element-wise ops instead of four
    return a / ops.where(ops.equal(b, 0), ops.cast(factor, b.dtype), b)


# Element-wise parts of the rules, each compiled by XLA into one fused loop: on the full
# grid an unfused chain of a dozen element-wise ops over (batch, 91, 109, 91, 8) tensors
# costs about as much as the convolutions themselves.  The convolutions stay outside
# (TensorFlow's oneDNN kernels are much faster on CPU than XLA's).  Under JAX the whole
# analyzer is one XLA program anyway; under PyTorch these stay eager (backend.fused).
def _alpha_beta_weights(z_plain, z_abs, relevance_out, bias, alpha, beta):
    """``(alpha s_a - beta s_i, alpha s_a + beta s_i)`` from ``W x``, ``|W| |x|`` and the bias."""
    z_activating = 0.5 * (z_plain + z_abs)
    z_inhibiting = 0.5 * (z_plain - z_abs)
    if bias is not None:
        z_activating = z_activating + bias
        z_inhibiting = z_inhibiting + bias
    s_activating = alpha * safe_divide(relevance_out, z_activating)
    s_inhibiting = beta * safe_divide(relevance_out, z_inhibiting)
    return s_activating - s_inhibiting, s_activating + s_inhibiting


def _epsilon_weights(z, relevance_out, eps):
    """``relevance_out / (z + eps * sign(z))`` in one fused loop."""
    return relevance_out / sign_stabilise(z, eps)


def _alpha_beta_reduce(x, abs_x, grad_plain, grad_abs):  # (XLA measured slower here than plain ops)
    return 0.5 * (x * grad_plain + abs_x * grad_abs)


def _sign_stack(x):
    """``[x+, x-]`` along the channels: ``(..., C)`` -> ``(..., 2C)``."""
    zero = ops.zeros((), dtype=x.dtype)
    return ops.concatenate([ops.maximum(x, zero), ops.minimum(x, zero)], axis=-1)


def _sign_stacked_weights(z_stacked, relevance_out, bias, alpha, beta, eps, inhibiting):
    """zennit's ``alpha s_a`` (and ``-beta s_i``) from ``[z_a]`` (or ``[z_a, z_i]``) along the channels."""
    zero = ops.zeros((), dtype=z_stacked.dtype)
    # (ops.split, not slicing by shape: the fused function is traced with unknown sizes)
    z_activating, z_inhibiting = ops.split(z_stacked, 2, axis=-1) if inhibiting else (z_stacked, None)
    if bias is not None:
        z_activating = z_activating + ops.maximum(bias, zero)
    s_activating = alpha * (relevance_out / sign_stabilise(z_activating, eps))
    if not inhibiting:
        return s_activating
    if bias is not None:
        z_inhibiting = z_inhibiting + ops.minimum(bias, zero)
    return ops.concatenate([s_activating, -beta * (relevance_out / sign_stabilise(z_inhibiting, eps))], axis=-1)


def _sign_stacked_reduce(x, grad_stacked):
    """``x+ * g[x+] + x- * g[x-]``: each input's own half of the stacked gradient (one is zero)."""
    grad_pos, grad_neg = ops.split(grad_stacked, 2, axis=-1)
    return x * ops.where(x > 0, grad_pos, grad_neg)


def _batch_norm_scale(x, y, relevance_out, mean, beta):
    numerator = x * (y - beta) * relevance_out if beta is not None else x * y * relevance_out
    return safe_divide(numerator, sign_stabilise((x - mean) * y, KERAS_EPSILON))


def _box_sum(t, half_widths):
    """Sum over each element's neighbours within ``half_widths`` along the spatial axes, zeros outside.

    ``t``: ``(batch, *spatial, channels)``; ``half_widths``: one int per spatial axis.
    """
    rank = len(t.shape)
    for axis, half in enumerate(half_widths, start=1):
        if half == 0:
            continue
        padding = [[0, 0]] * rank
        padding[axis] = [half, half]
        padded = ops.pad(t, padding)
        total = None
        for offset in range(2 * half + 1):
            index = [slice(None)] * rank
            index[axis] = slice(offset, offset - 2 * half if offset < 2 * half else None)  # (sizes may be unknown)
            total = padded[tuple(index)] if total is None else total + padded[tuple(index)]
        t = total
    return t


def _flat_box_spread(relevance_out, counts, half_widths):
    """Flat rule's input relevance on one channel: box sum of ``sum_c safe_divide(R_c, counts)``."""
    weights = ops.sum(safe_divide(relevance_out, counts), axis=-1, keepdims=True)
    return _box_sum(weights, half_widths)


def _in_bounds_counts(spatial_shape, half_widths):
    """``(1, *spatial, 1)`` float64: how many inputs of a 'same' box of ``half_widths`` lie inside the grid."""
    import numpy as np

    counts = np.ones((1,), dtype=np.float64)
    for size, half in zip(spatial_shape, half_widths):
        i = np.arange(size)
        counts = np.multiply.outer(counts, np.minimum(i + half, size - 1) - np.maximum(i - half, 0) + 1)
    return counts.reshape((1, *spatial_shape, 1))


def _is_box_conv(layer):
    """Whether the all-ones kernel of ``layer`` is a centred box sum (stride 1, 'same', no dilation, odd sizes)."""
    return (
        isinstance(layer, types.Conv)
        and layer.padding == "same"
        and all(s == 1 for s in layer.strides)
        and all(d == 1 for d in layer.dilation_rate)
        and all(k % 2 == 1 for k in layer.kernel_size)
    )


_FUSED: dict[Callable[..., Any], Callable[..., Any]] = {}


def _fused(fn):
    """``fn`` through :func:`deeplight_bids.backend.fused`, wrapped once per process (on first use)."""
    if fn not in _FUSED:
        _FUSED[fn] = backend.fused(fn)
    return _FUSED[fn]


def _check_linear(layer):
    """Refuse kernels the linear-part helpers below do not reproduce exactly."""
    if isinstance(layer, types.Conv):
        if layer.data_format != "channels_last":
            raise ValueError(
                f"LRP supports channels_last convolutions only; layer {layer.name!r} is {layer.data_format}"
            )
        if getattr(layer, "groups", 1) != 1:
            raise ValueError(f"LRP does not support grouped convolutions (layer {layer.name!r})")
    if not types.has_passable_activation(layer):
        raise ValueError(
            f"layer {layer.name!r} has activation {types.activation_name(layer)!r}; LRP rules use the linear part and "
            "pass relevance through ReLU/linear activations only"
        )


def linear_forward(layer: Layer, x: Tensor, kernel: Tensor, bias: Tensor | None) -> Tensor:
    """Linear part of a conv or dense layer with the given (modified) parameters.

    Parameters
    ----------
    layer : keras.layers.Conv2D | Conv3D | Dense
        Supplies strides, padding, dilation (its own variables are not used).
    x : tensor
        ``(batch, ..., in_channels)``.
    kernel : tensor
        ``(*kernel_size, in_channels, out_channels)`` (conv) or ``(in, out)`` (dense).
    bias : tensor or None
        ``(out_channels,)``; ``None`` for no bias.

    Returns
    -------
    tensor
        ``(batch, ..., out_channels)``, no activation applied.
    """
    if isinstance(layer, types.Conv):
        z = layer.convolution_op(x, kernel)
    else:
        z = ops.matmul(x, kernel) if len(x.shape) == 2 else ops.tensordot(x, kernel, axes=[[-1], [0]])
    if bias is not None:
        z = z + bias
    return z


def layer_parameters(layer: Layer) -> tuple[Tensor, Tensor | None]:
    """``(kernel, bias)`` of a conv or dense layer as tensors (bias ``None`` when unused)."""
    kernel = backend.read(layer.kernel)
    bias = backend.read(layer.bias) if layer.use_bias else None
    return kernel, bias


class Rule:
    """Base rule: modified forward, divide by stabilised denominator, gradient x input.

    Subclasses override :meth:`modify_input`, :meth:`forward`, :meth:`output_gradient`
    and :meth:`reduce` as needed.  For a layer with output ``z = f(x)`` the default is
    the z-rule ``R_in = x * df/dx^T (R_out / z)``.

    Attributes
    ----------
    supported : tuple of type
        Layer classes the rule applies to; others raise ``TypeError``.
    """

    supported: tuple[type, ...] = types.Linear

    def __call__(self, layer: Layer, x_in: Tensor, relevance_out: Tensor, y_out: Tensor | None = None) -> Tensor:
        """Relevance of the input of ``layer``.

        Parameters
        ----------
        layer : keras.layers.Layer
            One of :attr:`supported`.
        x_in : tensor
            The layer's input from the forward pass, ``(batch, ...)``.
        relevance_out : tensor
            Relevance of the layer's output, the output's shape.
        y_out : tensor, optional
            The layer's output from the forward pass (used by rules that need it).

        Returns
        -------
        tensor
            Relevance of the input, ``x_in``'s shape and dtype.
        """
        self.check(layer)
        x_in = ops.convert_to_tensor(x_in)
        relevance_out = ops.cast(relevance_out, x_in.dtype)
        inputs = self.modify_input(x_in)
        (gradient,) = backend.vjp(
            lambda a: self.forward(layer, a), [inputs], lambda z: self.output_gradient(z, relevance_out)
        )
        return self.reduce(inputs, gradient)

    def check(self, layer: Layer) -> None:
        """Raise ``TypeError``/``ValueError`` if the rule cannot be applied to ``layer``."""
        if not isinstance(layer, self.supported):
            names = ", ".join(cls.__name__ for cls in self.supported)
            raise TypeError(f"{type(self).__name__} applies to {names}; layer {layer.name!r} is {type(layer).__name__}")
        if isinstance(layer, types.Linear):
            _check_linear(layer)

    def modify_input(self, x: Tensor) -> Tensor:
        """The input the modified forward starts from (default: ``x``)."""
        return x

    def forward(self, layer: Layer, inputs: Tensor) -> Tensor:
        """Modified forward (default: linear part of the layer with its own parameters)."""
        kernel, bias = layer_parameters(layer)
        return linear_forward(layer, inputs, kernel, bias)

    def output_gradient(self, z: Tensor, relevance_out: Tensor) -> Tensor:
        """Weights sent back through the gradient (default: ``safe_divide(R_out, z)``)."""
        return safe_divide(relevance_out, z)

    def reduce(self, inputs: Tensor, gradient: Tensor) -> Tensor:
        """Input relevance from the gradient (default: ``inputs * gradient``)."""
        return inputs * gradient

    def describe(self) -> dict:
        """JSON-serialisable description of the rule and its parameters."""
        return {"rule": type(self).__name__}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k not in ("rule", "formula"))
        return f"{type(self).__name__}({params})"


class Epsilon(Rule):
    """Epsilon rule: ``R_in = x * W^T (R_out / (z + eps * sign(z)))``, ``z = Wx + b``.

    The bias is part of ``z`` (it absorbs relevance), ``sign(0) = +1`` (iNNvestigate's
    ``EpsilonRule``, zennit's ``Epsilon``).  On a global average pooling layer ``z`` is
    the mean.

    Parameters
    ----------
    eps : float
        Stabiliser added to the denominator, > 0.
    """

    supported: tuple[type, ...] = types.Linear + types.GlobalAvgPool
    #: The rule as written in the sidecars (``describe()["formula"]``).
    formula = "R_in = x * W^T (R_out / (z + eps*sign(z))), bias in z"

    def __init__(self, eps: float = 1e-6) -> None:
        if not eps > 0:
            raise ValueError(f"Epsilon needs eps > 0; got {eps}")
        self.eps = float(eps)

    def forward(self, layer: Layer, inputs: Tensor) -> Tensor:
        if isinstance(layer, types.GlobalAvgPool):
            return layer(inputs)
        return super().forward(layer, inputs)

    def output_gradient(self, z: Tensor, relevance_out: Tensor) -> Tensor:
        return _fused(_epsilon_weights)(z, relevance_out, ops.cast(self.eps, z.dtype))

    def describe(self) -> dict:
        return {**super().describe(), "epsilon": self.eps, "formula": self.formula}


class PlusEpsilon(Epsilon):
    """Epsilon rule stabilised with ``+eps`` whatever the sign: ``R_in = x * W^T (R_out / (z + eps))``.

    2D-DeepLight's original code (athms/evaluating-deeplight-transfer at 4a8eeaa,
    ``src/modules/linear.py`` line 123: ``self.R/(self.activations+epsilon)``) for its
    linear output layer.  It differs from :class:`Epsilon` only where ``z < 0`` (e.g. a
    negative explained logit), and a ``z`` near ``-eps`` makes the denominator near zero:
    reproduce the published maps with it; :class:`Epsilon` is the sign-aware choice.

    Parameters
    ----------
    eps : float
        Added to the denominator, > 0.
    """

    formula = "R_in = x * W^T (R_out / (z + eps)), +eps whatever the sign of z (2D-DeepLight's code), bias in z"

    def output_gradient(self, z: Tensor, relevance_out: Tensor) -> Tensor:
        return relevance_out / (z + ops.cast(self.eps, z.dtype))


class AlphaBeta(Rule):
    """Alpha-beta rule on the linear part of a conv / dense layer.

    With ``x+ = max(x, 0)``, ``x- = min(x, 0)``, ``W+ = max(W, 0)``, ``W- = min(W, 0)``::

        z_a = W+ x+ + W- x- + b        (activating contributions)
        z_i = W- x+ + W+ x- + b        (inhibiting contributions)
        R_in = alpha * [x+ * W+^T s_a + x- * W-^T s_a] - beta * [x+ * W-^T s_i + x- * W+^T s_i]
        s_a = safe_divide(R_out, z_a),  s_i = safe_divide(R_out, z_i)

    The bias convention is iNNvestigate's (1.0.8 and 2.x ``AlphaBetaRule``, the
    published analysis): it splits ``b`` into ``b+`` (kept by the positive-weight copy)
    and ``b-`` (kept by the negative-weight copy), and each of ``z_a``, ``z_i`` sums one
    positive- and one negative-weight copy, so *both* denominators contain the full
    bias ``b``.  No epsilon is added; only exact zeros are replaced (``safe_divide``).
    Without bias the rule conserves relevance (``alpha - beta = 1``) wherever an output
    has both activating and inhibiting contributions; where it has none of one kind
    (e.g. ``z_i = 0`` on non-negative inputs and positive weights) that part passes
    nothing.

    With ``convention="zennit"`` the rule is zennit's ``AlphaBeta`` instead (zennit 0.5.1
    ``rules.AlphaBeta``): ``z_a`` holds ``b+ = max(b, 0)`` only and ``z_i`` holds
    ``b- = min(b, 0)`` only, and every denominator is stabilised as ``z + eps * sign(z)``
    (``sign(0) = +1``, ``eps`` 1e-6) instead of replacing exact zeros.

    Parameters
    ----------
    alpha, beta : float
        Weights of the activating and inhibiting parts; ``alpha, beta >= 0`` and
        ``alpha - beta == 1``.
    convention : {"innvestigate", "zennit"}
        Bias and stabiliser convention (see above).
    eps : float
        The stabiliser of the ``"zennit"`` convention, > 0.
    """

    def __init__(
        self, alpha: float = 2.0, beta: float = 1.0, convention: str = "innvestigate", eps: float = 1e-6
    ) -> None:
        if alpha < 0 or beta < 0 or alpha - beta != 1:
            raise ValueError(f"AlphaBeta needs alpha - beta = 1 with alpha, beta >= 0; got alpha={alpha}, beta={beta}")
        if convention not in ("innvestigate", "zennit"):
            raise ValueError(f"AlphaBeta convention must be 'innvestigate' or 'zennit'; got {convention!r}")
        if not eps > 0:
            raise ValueError(f"AlphaBeta needs eps > 0; got {eps}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.convention = convention
        self.eps = float(eps)

    # The four (input part, weight part) terms need not be computed one by one.  With
    # W+ = (W + |W|) / 2, W- = (W - |W|) / 2 and x+ = (x + |x|) / 2, x- = (x - |x|) / 2:
    #
    #     z_a - b = (W x + |W| |x|) / 2,    z_i - b = (W x - |W| |x|) / 2
    #     R_in = x / 2 * W^T (alpha s_a - beta s_i) + |x| / 2 * |W|^T (alpha s_a + beta s_i)
    #
    # so the rule costs two convolutions (W x, |W| |x|) and two transposed convolutions
    # of the layer's own size, instead of one of each at four times the size (the block
    # kernel [[W+, W-], [W-, W+]] on [x+, x-]).  W x is the layer's own forward, which the
    # analyzer records and passes as ``linear_out``: its recomputation below then has no
    # consumer (the gradient of a convolution needs its input and kernel, not its
    # output) and a compiled graph drops it.  Exact zeros stay exact: where every
    # contribution is activating (or inhibiting), W x and |W| |x| are the same sum of the
    # same products (up to sign), so z_i (or z_a) minus the bias is exactly 0.

    #: The analyzer passes the layer's linear output without bias (``W x``) as ``linear_out``.
    uses_linear_output = True

    def __call__(
        self,
        layer: Layer,
        x_in: Tensor,
        relevance_out: Tensor,
        y_out: Tensor | None = None,
        linear_out: Tensor | None = None,
    ) -> Tensor:
        self.check(layer)
        x_in = ops.convert_to_tensor(x_in)
        relevance_out = ops.cast(relevance_out, x_in.dtype)
        if self.convention == "zennit":
            return self._term_wise(layer, x_in, relevance_out)
        kernel, bias = layer_parameters(layer)
        abs_x = ops.abs(x_in)
        abs_kernel = ops.abs(kernel)

        def weights(outputs):
            z_plain, z_abs = outputs
            recorded = z_plain if linear_out is None else ops.cast(linear_out, x_in.dtype)
            return _fused(_alpha_beta_weights)(recorded, z_abs, relevance_out, bias, self.alpha, self.beta)

        # Both transposed convolutions from one vector-Jacobian product of the two forwards.
        grad_plain, grad_abs = backend.vjp(
            lambda a, b: [linear_forward(layer, a, kernel, None), linear_forward(layer, b, abs_kernel, None)],
            [x_in, abs_x],
            weights,
        )
        return _alpha_beta_reduce(x_in, abs_x, grad_plain, grad_abs)

    def _term_wise(self, layer, x_in, relevance_out):
        """zennit's convention, each (input part, weight part) term summed without cancellation.

        ``z_a = W+ x+ + W- x-`` and ``z_i = W- x+ + W+ x-`` are sums of terms of one sign,
        so they are computed without cancellation (the two-convolution form above gets them
        as half-sums of ``W x`` and ``|W| |x|``, whose float32 rounding dominates where a
        unit's contributions nearly cancel: up to 3e-3 of the largest relevance against zennit, 1e-7 in
        float64).  The terms are one convolution on the channel-stacked input ``[x+, x-]``
        with the block kernel ``[[W+, W-], [W-, W+]]`` (``[W+; W-]`` for :class:`ZPlus`),
        and one transposed convolution back: the same arithmetic as four (two) separate
        convolutions, but oneDNN's channel blocks are filled where the layer has few
        channels (measured on 3D-DeepLight's full-grid layers: a 2-to-8-channel
        convolution costs what a 1-to-8 one does, a 16-to-16 one about twice an 8-to-8).
        """
        kernel, bias = layer_parameters(layer)
        zero = ops.zeros((), dtype=kernel.dtype)
        kernel_pos, kernel_neg = ops.maximum(kernel, zero), ops.minimum(kernel, zero)
        inhibiting = self.beta != 0
        # rows: input parts [x+, x-]; columns: [z_a] or [z_a, z_i]
        stacked_kernel = ops.concatenate([kernel_pos, kernel_neg], axis=-2)
        if inhibiting:
            stacked_kernel = ops.concatenate(
                [stacked_kernel, ops.concatenate([kernel_neg, kernel_pos], axis=-2)], axis=-1
            )

        def weights(z_stacked):
            return _fused(_sign_stacked_weights)(
                z_stacked, relevance_out, bias, self.alpha, self.beta, self.eps, inhibiting
            )

        (grad_stacked,) = backend.vjp(
            lambda a: linear_forward(layer, a, stacked_kernel, None), [_fused(_sign_stack)(x_in)], weights
        )
        return _fused(_sign_stacked_reduce)(x_in, grad_stacked)

    @staticmethod
    def linear_output(layer: Layer, x: Tensor) -> Tensor:
        """``W x`` of ``layer`` (no bias, no activation): what :meth:`__call__` takes as ``linear_out``."""
        kernel, _ = layer_parameters(layer)
        return linear_forward(layer, x, kernel, None)

    @staticmethod
    def finish_forward(layer: Layer, linear: Tensor) -> Tensor:
        """The layer's output from its :meth:`linear_output`: bias added, fused activation applied."""
        if layer.use_bias:
            linear = linear + backend.read(layer.bias)
        return layer.activation(linear) if getattr(layer, "activation", None) is not None else linear

    def describe(self) -> dict:
        if self.convention == "zennit":
            return {
                "rule": type(self).__name__,
                "alpha": self.alpha,
                "beta": self.beta,
                "bias": "b+ in the activating and b- in the inhibiting denominator (zennit)",
                "stabiliser": f"z + {self.eps:g}*sign(z)",
            }
        return {
            "rule": "AlphaBeta",
            "alpha": self.alpha,
            "beta": self.beta,
            "bias": "full bias in both the activating and the inhibiting denominator (iNNvestigate)",
            "stabiliser": f"exact zeros of the denominator replaced by {KERAS_EPSILON}",
        }


class ZPlus(AlphaBeta):
    """z+ rule as in zennit 0.5.1 (``rules.ZPlus``): only the activating contributions.

    ``z = W+ x+ + W- x- + b+``, ``R_in = x+ * W+^T s + x- * W-^T s`` with
    ``s = R_out / (z + eps * sign(z))``: :class:`AlphaBeta` with ``alpha = 1``,
    ``beta = 0`` and zennit's conventions.

    Parameters
    ----------
    eps : float
        Stabiliser, > 0.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__(alpha=1.0, beta=0.0, convention="zennit", eps=eps)

    def describe(self) -> dict:
        return {
            "rule": "ZPlus",
            "formula": "R_in = x+ * W+^T s + x- * W-^T s, s = R_out / (W+ x+ + W- x- + b+)",
            "stabiliser": f"z + {self.eps:g}*sign(z)",
        }


class Flat(Rule):
    """Flat rule: relevance spread uniformly over each output's receptive field.

    ``R_in_i = sum_j R_out_j / n_j`` over the outputs ``j`` whose receptive field holds
    input ``i``, with ``n_j`` the number of *in-bounds* inputs of ``j`` (zero padding
    counts nothing): all weights set to one, bias dropped, input ignored
    (iNNvestigate's ``FlatRule``).
    """

    def __call__(self, layer: Layer, x_in: Tensor, relevance_out: Tensor, y_out: Tensor | None = None) -> Tensor:
        if not isinstance(layer, types.Conv):
            return super().__call__(layer, x_in, relevance_out, y_out)
        # On a convolution the all-ones kernel makes every output channel the same box
        # sum, so it is computed once, on one sample of one channel: z_j = in_channels *
        # (in-bounds inputs of j), and W1^T s = box sum of the channel sum of s, the same
        # for every input channel (the same sums as the generic recipe, in another order).
        self.check(layer)
        x_in = ops.convert_to_tensor(x_in)
        relevance_out = ops.cast(relevance_out, x_in.dtype)
        kernel_shape = tuple(layer.kernel.shape)
        in_channels = kernel_shape[-2]
        if _is_box_conv(layer):
            # Stride 1, 'same', odd kernel: the transposed all-ones convolution is a box sum,
            # done as separable shifted adds (one fused loop; issue 19: on the full grid the
            # one-channel transposed convolution cost more than the rest of this rule).
            half_widths = tuple(k // 2 for k in kernel_shape[:-2])
            counts = ops.convert_to_tensor(
                _in_bounds_counts(tuple(x_in.shape[1:-1]), half_widths) * in_channels, dtype=x_in.dtype
            )
            spread = _fused(_flat_box_spread)(relevance_out, counts, half_widths)
            return ops.broadcast_to(spread, ops.shape(x_in)) if in_channels != 1 else spread
        ones_kernel = ops.ones((*kernel_shape[:-2], 1, 1), dtype=x_in.dtype)
        one_sample = ops.ones((1, *x_in.shape[1:-1], 1), dtype=x_in.dtype)
        counts = layer.convolution_op(one_sample, ones_kernel)
        weights = ops.sum(safe_divide(relevance_out, counts * float(in_channels)), axis=-1, keepdims=True)
        ones_in = ops.ones_like(x_in[..., :1])
        (spread,) = backend.vjp(lambda a: layer.convolution_op(a, ones_kernel), [ones_in], weights)
        return ops.broadcast_to(spread, ops.shape(x_in)) if in_channels != 1 else spread

    def modify_input(self, x: Tensor) -> Tensor:
        return ops.ones_like(x)

    def forward(self, layer: Layer, inputs: Tensor) -> Tensor:
        kernel, _ = layer_parameters(layer)
        return linear_forward(layer, inputs, ops.ones_like(kernel), None)

    def describe(self) -> dict:
        return {"rule": "Flat", "formula": "weights = 1, bias dropped, input = 1: uniform over the receptive field"}


class ZRule(Rule):
    """Z-rule: relevance in proportion to each input's share of the output.

    ``R_in = x * W^T safe_divide(R_out, z)``.  On global average pooling ``z`` is the mean
    and the input ``i`` of channel ``c`` gets ``x_i / (n * mean_c) * R_c``
    (iNNvestigate's ``AveragePoolingReverseLayer``).  On conv / dense layers the bias is
    part of ``z``.
    """

    supported: tuple[type, ...] = types.Linear + types.GlobalAvgPool

    def forward(self, layer: Layer, inputs: Tensor) -> Tensor:
        if isinstance(layer, types.GlobalAvgPool):
            return layer(inputs)
        return super().forward(layer, inputs)

    def describe(self) -> dict:
        return {
            "rule": "ZRule",
            "formula": "R_in = x * W^T (R_out / z)",
            "stabiliser": f"exact zeros replaced by {KERAS_EPSILON}",
        }


class Pass(Rule):
    """Relevance handed through unchanged (reshaped to the input's shape).

    For ReLU / linear activations, dropout (the identity at inference) and reshapes; and
    batch normalisation where a composite says so (zennit's ``layer_map_base`` passes
    it through when no canonizer has merged it into a neighbouring layer).
    """

    supported: tuple[type, ...] = types.PassThrough + types.BatchNorm

    def __call__(self, layer: Layer, x_in: Tensor, relevance_out: Tensor, y_out: Tensor | None = None) -> Tensor:
        self.check(layer)
        return ops.reshape(relevance_out, ops.shape(x_in))

    def check(self, layer: Layer) -> None:
        super().check(layer)
        if not types.has_passable_activation(layer):
            raise ValueError(
                f"Pass cannot hand relevance through activation {types.activation_name(layer)!r} of layer {layer.name!r}"
            )

    def describe(self) -> dict:
        return {"rule": "Pass"}


class BatchNormScale(Rule):
    """Batch normalisation as its multiplicative part (iNNvestigate ``BatchNormalizationReverseLayer``).

    With ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` (moving statistics)::

        R_in = x * (y - beta) * R_out / stab((x - mean) * y)

    evaluated literally as in iNNvestigate (1.0.8 and 2.x with ``bn_layer_rule=None``):
    ``stab(d) = d + 1e-7 * sign(d)`` (``sign(0) = +1``) then ``safe_divide``.  This is
    ``x * scale / y * R_out``: the relevance share of ``x * scale`` in ``y``; the shift
    ``beta - mean * scale`` absorbs the rest, so the rule does not conserve relevance.
    """

    supported: tuple[type, ...] = types.BatchNorm

    def __call__(self, layer: Layer, x_in: Tensor, relevance_out: Tensor, y_out: Tensor | None = None) -> Tensor:
        self.check(layer)
        x_in = ops.convert_to_tensor(x_in)
        relevance_out = ops.cast(relevance_out, x_in.dtype)
        y = layer(x_in, training=False) if y_out is None else ops.convert_to_tensor(y_out)
        mean = self._broadcastable(layer, layer.moving_mean, x_in)
        beta = self._broadcastable(layer, layer.beta, x_in) if layer.center else None
        return _fused(_batch_norm_scale)(x_in, y, relevance_out, mean, beta)

    @staticmethod
    def _broadcastable(layer, parameter, x):
        axis = layer.axis
        if isinstance(axis, (list, tuple)):
            if len(axis) != 1:
                raise ValueError(f"BatchNormScale supports one normalised axis; layer {layer.name!r} has {axis}")
            axis = axis[0]
        rank = len(x.shape)
        shape = [1] * rank
        shape[axis % rank] = -1
        return ops.reshape(ops.cast(backend.read(parameter), x.dtype), shape)

    def describe(self) -> dict:
        return {
            "rule": "BatchNormScale",
            "formula": "R_in = x*(y-beta)/((x-mean)*y) * R_out (multiplicative part only; iNNvestigate 1.0.8)",
            "stabiliser": f"denominator + {KERAS_EPSILON}*sign, then exact zeros replaced by {KERAS_EPSILON}",
        }

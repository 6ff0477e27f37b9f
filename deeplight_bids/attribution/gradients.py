"""Gradient-based attribution methods, written with ``keras.ops`` (TensorFlow, JAX, PyTorch).

>>> explainer = IntegratedGradients(model, steps=32)            # doctest: +SKIP
>>> logits, maps = explainer.explain(x)                          # doctest: +SKIP

Every method explains one output (the *target*: the predicted state unless given) of a
model that returns logits, one sample at a time, and returns one map per sample in the
input's shape (a trailing channel axis of length 1 dropped), like
:class:`deeplight_bids.lrp.LRPAnalyzer`:

- :class:`Gradient`: ``dy_t/dx`` (signed; Captum ``Saliency(abs=False)``);
- :class:`GradientXInput`: ``x * dy_t/dx`` (Captum ``InputXGradient``);
- :class:`IntegratedGradients`: ``(x - x0) * sum_k w_k dy_t/dx (x0 + a_k (x - x0))``, the
  baseline ``x0 = 0`` (the z-scored run mean of every voxel), the Riemann midpoint rule
  (Captum ``IntegratedGradients(method="riemann_middle")``);
- :class:`SmoothGrad`: ``mean_k dy_t/dx (x + n_k)``, Gaussian ``n_k`` with SD a share of
  the sample's SD (Captum ``NoiseTunnel(Saliency(abs=False), nt_type="smoothgrad")``).

The gradient of the target logit is one vector-Jacobian product
(:func:`deeplight_bids.backend.vjp`) in one compiled function per input shape; batches
are split into at most ``max_batch`` samples per pass (memory grows with the samples of
one pass), integrated gradients' and SmoothGrad's steps and noise samples included.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from keras import ops

from deeplight_bids import backend
from deeplight_bids.models.decode import in_chunks, join_chunks, network_batch_limit, target_indices

#: How the explained output is chosen (written to the sidecars).
TARGET = "logit of the target output (the argmax of the logits, i.e. the predicted state, unless a target is given)"


def riemann_middle(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights of the midpoint rule on [0, 1] (Captum's ``riemann_middle``).

    The midpoint rule, not Captum's default Gauss-Legendre nor its ``riemann_trapezoid``
    (whose weights ``1/n``, halved at both ends, sum to ``(n - 1) / n``, not 1): the
    midpoint weights sum to 1, so the completeness of integrated gradients is not
    biased, and Captum computes the same rule.

    Parameters
    ----------
    steps : int
        Number of points, >= 2.

    Returns
    -------
    alphas : numpy.ndarray, shape (steps,)
        ``(k + 1/2) / steps``, k = 0 ... steps - 1.
    weights : numpy.ndarray, shape (steps,)
        ``1 / steps`` each.
    """
    steps = int(steps)
    if steps < 2:
        raise ValueError(f"the midpoint rule needs at least 2 steps here; got {steps}")
    return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)


class GradientMethod:
    """Base of the gradient-based methods: the target logit's gradient, batched and compiled.

    Parameters
    ----------
    model : keras.Model
        Built; its output must be logits ``(batch, n_out)``.
    max_batch : int, None or "auto"
        Most samples per forward/backward pass (``"auto"``:
        :func:`~deeplight_bids.models.decode.network_batch_limit`, 4 on CPU).

    Attributes
    ----------
    name, family, signed : str, str, bool
        The method's registry name, ``"gradient"``, and whether its maps carry evidence
        for (positive) and against (negative) the explained state.
    description : dict
        JSON-serialisable account for the sidecars (method, formula, parameters, reference).
    """

    name = "gradient"
    family = "gradient"
    signed = True
    formula = "R = dy_t/dx"
    reference = "Simonyan, Vedaldi & Zisserman 2014; Captum Saliency(abs=False)"

    def __init__(self, model: Any, max_batch: int | Literal["auto"] | None = "auto") -> None:
        import keras

        if not getattr(model, "built", False):
            raise TypeError(f"model {getattr(model, 'name', model)!r} is not built; give it an input shape first")
        self.model = model
        self.input_dtype = np.dtype(keras.backend.standardize_dtype(model.inputs[0].dtype))  # float32 but in tests
        self.max_batch = network_batch_limit() if max_batch == "auto" else max_batch
        self._gradient_graph = backend.compile_function(self._logits_and_gradient, reduce_retracing=False)
        self._logits_graph = backend.compile_function(lambda x: model(x, training=False), reduce_retracing=False)
        self.description = self.describe()

    # -- what subclasses state ------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        """The method's parameters (for the sidecars and the settings hash)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "family": self.family,
            "signed": self.signed,
            "formula": self.formula,
            "parameters": self.parameters(),
            "reference": self.reference,
            "target": TARGET,
        }

    def for_model(self, model: Any) -> GradientMethod:
        """The same method and parameters on another model (e.g. a randomised copy)."""
        return type(self)(model, max_batch=self.max_batch, **self.parameters())

    # -- the compiled gradient --------------------------------------------------------------
    def _logits_and_gradient(self, x, target):
        """Logits and ``d logit_target / dx``; ``target < 0`` means the argmax of the logits."""

        def cotangent(logits):
            predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
            chosen = ops.where(target < 0, predicted, target)
            return ops.one_hot(chosen, logits.shape[-1], dtype=logits.dtype)

        logits, (gradient,) = backend.vjp(lambda a: self.model(a, training=False), [x], cotangent, return_outputs=True)
        return logits, gradient

    def gradient(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, gradient)`` of ``x`` (one pass, any size up to memory), as NumPy float32."""
        logits, gradient = self._gradient_graph(
            ops.convert_to_tensor(np.asarray(x, dtype=self.input_dtype)), ops.convert_to_tensor(target.astype(np.int32))
        )
        return ops.convert_to_numpy(logits), ops.convert_to_numpy(gradient)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits of ``x``, ``max_batch`` samples at a time."""
        parts = []
        for a, b in in_chunks(len(x), self.max_batch):
            parts.append(ops.convert_to_numpy(self._logits_graph(ops.convert_to_tensor(x[a:b]))))
        return join_chunks(parts)

    # -- the public call -------------------------------------------------------------------
    def explain(
        self, x: np.ndarray, target: int | Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and one map per sample for one target output.

        The same call as :meth:`deeplight_bids.lrp.LRPAnalyzer.explain` (``x`` of shape
        ``(batch, *model input shape)``; ``target`` None for each sample's predicted output,
        else one output index per sample or one for all), so either explains a run.

        Returns
        -------
        logits : numpy.ndarray
            ``(batch, n_out)`` float32.
        maps : numpy.ndarray
            float32, ``x``'s shape with a trailing channel axis of length 1 dropped.
        """
        x = self._check_input(x)
        target = self._check_target(target, len(x))
        logits, maps = self._explain(x, target)
        if maps.ndim >= 3 and maps.shape[-1] == 1:
            maps = maps[..., 0]
        return logits, maps

    def _explain(self, x, target):
        logit_parts, map_parts = [], []
        for a, b in in_chunks(len(x), self.max_batch):
            logits, gradient = self.gradient(x[a:b], target[a:b])
            logit_parts.append(logits)
            map_parts.append(self._from_gradient(x[a:b], gradient))
        return join_chunks(logit_parts), join_chunks(map_parts)

    def _from_gradient(self, x, gradient):
        return gradient

    def _resolved_targets(self, x, target):
        """Logits of ``x`` and the explained output of each sample (-1 replaced by the argmax)."""
        logits = self.logits(x)
        return logits, np.where(target < 0, logits.argmax(axis=1), target).astype(np.int32)

    def _check_input(self, x):
        x = np.asarray(x, dtype=self.input_dtype)
        expected = tuple(self.model.inputs[0].shape[1:])
        if x.ndim != len(expected) + 1 or any(e is not None and e != s for e, s in zip(expected, x.shape[1:])):
            raise ValueError(f"expected input of shape (batch, {', '.join(map(str, expected))}); got {x.shape}")
        return x

    def _check_target(self, target, batch_size):
        return target_indices(target, batch_size, self.model.outputs[0].shape[-1])

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"{type(self).__name__}({params})"


class Gradient(GradientMethod):
    """The signed gradient of the target logit with respect to the input ("saliency")."""


class GradientXInput(GradientMethod):
    """Gradient times input, ``x * dy_t/dx`` (Shrikumar et al. 2016; Captum ``InputXGradient``)."""

    name = "gradient_x_input"
    formula = "R = x * dy_t/dx"
    reference = "Shrikumar et al. 2016; Captum InputXGradient"

    def _from_gradient(self, x, gradient):
        return x * gradient


class _PathMethod(GradientMethod):
    """A weighted sum of gradients at ``points`` derived inputs per sample (integrated gradients, SmoothGrad)."""

    def _points_of(self, x_one, index):
        """``(inputs (points, *shape), weights (points,))`` for one sample."""
        raise NotImplementedError

    def _finish(self, x_one, summed):
        return summed

    def _explain(self, x, target):
        logits, targets = self._resolved_targets(x, target)
        maps = np.zeros(x.shape, dtype=x.dtype)
        batch = self.max_batch or 32  # (no limit: 32 derived inputs per pass, far below a GPU's memory)
        for i in range(len(x)):
            inputs, weights = self._points_of(x[i], i)
            summed = np.zeros(x.shape[1:], dtype=np.float64)
            for a, b in in_chunks(len(inputs), batch):
                _, gradient = self.gradient(inputs[a:b], np.full(b - a, targets[i], dtype=np.int32))
                summed += np.tensordot(weights[a:b], gradient.astype(np.float64), axes=1)
            maps[i] = self._finish(x[i], summed)
        return logits, maps


class IntegratedGradients(_PathMethod):
    """Integrated gradients (Sundararajan et al. 2017) from the baseline 0, Riemann midpoint rule.

    The baseline is 0 everywhere: the prepared inputs are z-scored per voxel over the
    run, so 0 is each voxel's run mean (and the value outside the brain).  ``steps``
    points ``a_k = (k + 1/2) / steps`` with weights ``1 / steps`` (:func:`riemann_middle`);
    the target is the one of the unscaled input.

    Parameters
    ----------
    model, max_batch
        As :class:`GradientMethod`.
    steps : int
        Points on the straight path from the baseline to the input, >= 2 (default 32).
    """

    name = "integrated_gradients"
    formula = "R = (x - x0) * sum_k w_k dy_t/dx(x0 + a_k (x - x0)), x0 = 0, midpoint rule"
    reference = 'Sundararajan, Taly & Yan 2017; Captum IntegratedGradients(method="riemann_middle", baselines=0)'

    def __init__(self, model: Any, max_batch: int | Literal["auto"] | None = "auto", steps: int = 32) -> None:
        self.steps = int(steps)
        if self.steps < 2:
            raise ValueError(f"integrated gradients needs at least 2 steps; got {steps}")
        self.alphas, self.weights = riemann_middle(self.steps)
        super().__init__(model, max_batch=max_batch)

    def parameters(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "baseline": "0 (the z-scored run mean of every voxel)",
            "rule": "riemann_middle",  # the midpoint rule (Captum's name), as computed
        }

    def for_model(self, model: Any) -> IntegratedGradients:
        return type(self)(model, max_batch=self.max_batch, steps=self.steps)

    def _points_of(self, x_one, index):
        alphas = self.alphas.astype(np.float32).reshape((-1,) + (1,) * x_one.ndim)
        return alphas * x_one[None], self.weights

    def _finish(self, x_one, summed):
        return x_one.astype(np.float64) * summed


class SmoothGrad(_PathMethod):
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over noisy copies of the input.

    Each sample gets ``samples`` copies ``x + n_k`` with ``n_k`` Gaussian, SD
    ``noise * SD(x)`` (the SD over all of the sample's values), copy ``k`` drawn from
    the ``k``-th stream spawned by ``numpy.random.SeedSequence([seed, crc32(x)])``: the same noise for the same input
    whatever the batch, so maps are reproducible and the quality checks compare maps
    made from the same noise.  The target is the one of the noise-free input.

    Parameters
    ----------
    model, max_batch
        As :class:`GradientMethod`.
    samples : int
        Noisy copies per input, >= 1 (default 16).
    noise : float
        Noise SD as a share of the input's SD, > 0 (default 0.2).
    seed : int
    """

    name = "smoothgrad"
    formula = "R = mean_k dy_t/dx(x + n_k), n_k ~ N(0, (noise * SD(x))^2)"
    reference = 'Smilkov et al. 2017; Captum NoiseTunnel(Saliency(abs=False), nt_type="smoothgrad")'

    def __init__(
        self,
        model: Any,
        max_batch: int | Literal["auto"] | None = "auto",
        samples: int = 16,
        noise: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.samples = int(samples)
        self.noise = float(noise)
        self.seed = int(seed)
        if self.samples < 1:
            raise ValueError(f"SmoothGrad needs at least 1 sample; got {samples}")
        if not self.noise > 0:
            raise ValueError(f"SmoothGrad needs a noise share > 0; got {noise}")
        self._given_noise: np.ndarray | None = None
        super().__init__(model, max_batch=max_batch)

    def parameters(self) -> dict[str, Any]:
        return {"samples": self.samples, "noise": self.noise, "seed": self.seed}

    def for_model(self, model: Any) -> SmoothGrad:
        return type(self)(model, max_batch=self.max_batch, samples=self.samples, noise=self.noise, seed=self.seed)

    def noise_for(self, x_one: np.ndarray) -> np.ndarray:
        """The noise added to one input: ``(samples, *x_one.shape)`` float32."""
        x_one = np.ascontiguousarray(x_one)
        streams = np.random.SeedSequence([self.seed, zlib.crc32(x_one.tobytes())]).spawn(self.samples)
        sd = self.noise * float(x_one.std(dtype=np.float64))
        # Drawn in float32 (the inputs' type: half the time of float64 draws), each sample from its own
        # stream so that the draws run on every core (NumPy releases the GIL while it fills an array):
        # on the full grid one stream took ~12 % of SmoothGrad's cost (benchmarks/bench_attributions.py).
        noise = np.empty((self.samples, *x_one.shape), dtype=np.float32)

        def draw(k):
            np.random.default_rng(streams[k]).standard_normal(out=noise[k], dtype=np.float32)
            noise[k] *= np.float32(sd)

        threads = min(self.samples, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        with ThreadPoolExecutor(max(threads, 1)) as pool:
            list(pool.map(draw, range(self.samples)))
        return noise.astype(x_one.dtype, copy=False)

    def explain_with_noise(
        self, x: np.ndarray, target: int | Sequence[int] | np.ndarray | None, noise: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`explain` with given noise ``(batch, samples, *input shape)`` instead of drawn noise (tests)."""
        self._given_noise = np.asarray(noise)
        try:
            return self.explain(x, target)
        finally:
            self._given_noise = None

    def _points_of(self, x_one, index):
        if self._given_noise is None:
            points = self.noise_for(x_one)
            points += x_one[None]  # (in place: a second array of samples x the grid costs as much as the draws)
        else:
            points = x_one[None] + self._given_noise[index]
        return points, np.full(len(points), 1.0 / len(points))

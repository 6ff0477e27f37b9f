"""Relevance maps for a batch of inputs: the public LRP entry point.

>>> analyzer = LRPAnalyzer(model, composite="preset_b_flat")     # doctest: +SKIP
>>> logits, relevance = analyzer.explain(x)                        # doctest: +SKIP

One call runs one forward pass in inference mode (dropout off, BN moving statistics),
records every layer's input and output, and walks the layers backwards applying each
layer's rule.  Both passes are one compiled function (``tf.function`` under TensorFlow,
``jax.jit`` under JAX, eager under PyTorch; :mod:`deeplight_bids.backend`), traced once
per input shape.

Memory (issue 19): on CPU a batch goes through the network at most
:data:`~deeplight_bids.models.decode.CPU_NETWORK_BATCH` samples at a time, and the
backward pass through the full-resolution *stem* (the first layers, up to the last whose
input is at least :data:`STEM_FRACTION` of the largest layer input) runs one sample at a
time in a second compiled function: its temporaries (a dozen full-grid tensors per
sample, plus whatever scratch oneDNN picks on the host) are then those of one sample, so
peak memory no longer grows with the batch.  LRP rules act on each sample on its own, so
the numbers are the same.  That bound costs ~8 % of the LRP time on CPU (single-sample
kernels and per-sample copies of the recorded activations), so it applies only where the
job's memory is below :data:`WHOLE_STEM_MIN_MIB` (:func:`stem_batch_for_memory`; the limit
from ``--mem-mb``, SLURM, the cgroup or the machine, :func:`deeplight_bids.runtime.memory_limit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from keras import ops

from deeplight_bids import backend
from deeplight_bids.models.decode import in_chunks, join_chunks, network_batch_limit, target_indices
from deeplight_bids.runtime import memory_limit

from . import types
from .composites import get_composite

if TYPE_CHECKING:
    from .composites import Composite

#: Memory (MiB) from which the stem's backward pass takes the whole pass at once on CPU: the
#: per-sample stem saves ~340 MiB per 4 volumes (peak 2380 -> 2041 MiB at batch 4 on an Intel
#: Xeon, and up to 3450 MiB whole-pass measured on an AMD EPYC), so a job with less than twice the
#: worst whole-pass peak keeps the bound and one with more keeps the speed.
WHOLE_STEM_MIN_MIB = 6144

#: A layer belongs to the per-sample stem when its input holds at least this share of the
#: largest layer input (per sample); for 3D-DeepLight: conv_1 ... conv_3 (the 91x109x91x8 tensors).
STEM_FRACTION = 0.25

RELEVANCE_START = (
    "logit of the target output (the argmax of the logits, i.e. the predicted state, unless a target is given); "
    "all other logits 0"
)


class LRPAnalyzer:
    """Layer-wise relevance propagation for a Keras ``Sequential`` model.

    Parameters
    ----------
    model : keras.Sequential
        A built model whose layers the composite covers; its output must be logits
        (no softmax).
    composite : str or Composite
        A registered preset name (``"preset_b_flat"``, ``"epsilon"``) or a
        :class:`~deeplight_bids.lrp.composites.Composite`.
    max_batch : int, None or "auto"
        Most samples per forward/backward pass: :meth:`explain` splits larger batches
        (memory grows with the samples of one pass); ``None``: the whole batch at once;
        ``"auto"`` (default): :func:`~deeplight_bids.models.decode.network_batch_limit`
        (4 on CPU, no limit with a GPU).
    stem_batch : int, None or "auto"
        Most samples per backward pass through the full-resolution stem (see the module
        docstring); ``None``: the whole pass at once; ``"auto"`` (default):
        :func:`stem_batch_for_memory` of the detected memory limit (1 on CPU below
        :data:`WHOLE_STEM_MIN_MIB`, else no limit; no limit with a GPU).

    Attributes
    ----------
    composite : Composite
    layer_rules : list of (keras.layers.Layer, Rule)
        The rule of each layer, in forward order.
    description : dict
        JSON-serialisable account of the analysis for output sidecars: composite name
        and reference, rule per layer, epsilons, BN treatment, relevance start.

    Raises
    ------
    TypeError
        If ``model`` is not a built ``keras.Sequential``.
    UnmappedLayerError
        If the composite has no rule for one of the layers (named in the message).
    ValueError
        If a rule cannot handle its layer (e.g. a softmax or tanh activation).
    """

    #: The attribution family (:mod:`deeplight_bids.attribution.methods`).
    family = "lrp"

    def __init__(
        self,
        model: Any,
        composite: str | Composite = "preset_b_flat",
        max_batch: int | Literal["auto"] | None = "auto",
        stem_batch: int | Literal["auto"] | None = "auto",
    ) -> None:
        import keras

        if not isinstance(model, keras.Sequential):
            raise TypeError(f"LRPAnalyzer needs a keras.Sequential model; got {type(model).__name__}")
        if not model.built:
            raise TypeError(f"model {model.name!r} is not built; give it an input shape first")
        self.model = model
        self.max_batch = network_batch_limit() if max_batch == "auto" else max_batch
        self.stem_batch = stem_batch_for_memory() if stem_batch == "auto" else stem_batch
        self.composite = get_composite(composite)
        self.layer_rules = self.composite.assign(model.layers)
        for layer, rule in self.layer_rules:
            # Rules outside rules.Rule (e.g. lstm.LSTMEpsilon) need only be callable.
            check = getattr(rule, "check", None)
            if check is not None:
                check(layer)
        self.n_stem = stem_size([layer for layer, _ in self.layer_rules], model.inputs[0].shape)
        # Whether the stem's backward runs apart (fixed per analyzer: one compiled variant, also under jax.jit).
        self._split_stem = self.n_stem > 0 and self.stem_batch is not None
        self._explain_graph = backend.compile_function(
            lambda x, target: self._forward_backward(x, target, stop_at_stem=self._split_stem), reduce_retracing=False
        )
        # compiled stem backward per chunk size (a static shape, also under jax.jit)
        self._stem_graphs: dict[int, Callable[..., Any]] = {}
        self.description = self._describe()

    def for_model(self, model: Any) -> LRPAnalyzer:
        """The same composite and batching on another model (e.g. a randomised copy)."""
        return LRPAnalyzer(model, composite=self.composite, max_batch=self.max_batch, stem_batch=self.stem_batch)

    def _stem_graph(self, size):
        """:meth:`_stem_backward` for chunks of ``size`` samples, compiled (once per size)."""
        if size not in self._stem_graphs:
            self._stem_graphs[size] = backend.compile_function(
                lambda relevance, records, start: self._stem_backward(relevance, records, start, size),
                reduce_retracing=False,
            )
        return self._stem_graphs[size]

    def _stem_backward(self, relevance, records, start, size):
        """The rules of the stem (layers ``[0, n_stem)``) backwards for samples ``[start, start + size)``.

        ``relevance``: relevance of the stem's output for the whole pass; ``records``: the
        stem layers' ``(inputs, outputs, linear outputs)`` for the whole pass, as
        :meth:`_forward_backward` returns them (``None`` where a rule takes none).  The
        samples are sliced here, inside the compiled function, so that a slice exists only
        while a rule needs it (slicing outside would copy every record at once, aliases
        of one buffer included).
        """

        def part(t):
            # the other start indices share ``start``'s integer type (JAX refuses int32 beside int64 under x64)
            return None if t is None else ops.slice(t, [start] + [start * 0] * (len(t.shape) - 1), [size, *t.shape[1:]])

        inputs, outputs, linears = ([part(t) for t in group] for group in records)
        return self._backward(self.layer_rules[: self.n_stem], inputs, outputs, linears, part(relevance))

    @staticmethod
    def _backward(layer_rules, layer_inputs, layer_outputs, linear_outputs, relevance):
        for (layer, rule), x_in, y_out, linear in zip(
            reversed(layer_rules), reversed(layer_inputs), reversed(layer_outputs), reversed(linear_outputs)
        ):
            if linear is None:
                relevance = rule(layer, x_in, relevance, y_out=y_out)
            else:
                relevance = rule(layer, x_in, relevance, y_out=y_out, linear_out=linear)
        return relevance

    def _forward_backward(self, x, target, stop_at_stem=False):
        """Forward pass, then the rules backwards; ``target < 0`` means the argmax.

        Returns logits ``(batch, n_out)``, input relevance (``x``'s shape), targets ``(batch,)``;
        with ``stop_at_stem`` the relevance of the stem's output instead of the input's, and a
        fourth item: the stem's ``(inputs, outputs, linear outputs)`` for :meth:`_stem_backward`.
        """
        layer_inputs, layer_outputs, linear_outputs = [], [], []
        activation = x
        for layer, rule in self.layer_rules:
            layer_inputs.append(activation)
            if getattr(rule, "uses_linear_output", False):
                # The rule reuses the layer's linear part (e.g. W x of a convolution) instead
                # of recomputing it: run the layer as linear part + bias + activation.
                linear = rule.linear_output(layer, activation)
                activation = rule.finish_forward(layer, linear)
            else:
                linear = None
                activation = layer(activation, training=False)
            linear_outputs.append(linear)
            layer_outputs.append(activation)
        logits = activation
        predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
        target = ops.where(target < 0, predicted, target)
        relevance = ops.one_hot(target, logits.shape[-1], dtype=logits.dtype) * logits
        first = self.n_stem if stop_at_stem else 0
        relevance = self._backward(
            self.layer_rules[first:], layer_inputs[first:], layer_outputs[first:], linear_outputs[first:], relevance
        )
        if not stop_at_stem:
            return logits, relevance, target
        records = (layer_inputs[:first], layer_outputs[:first], linear_outputs[:first])
        return logits, relevance, target, records

    def explain(
        self, x: np.ndarray, target: int | Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the relevance map of each sample for one target output.

        Parameters
        ----------
        x : np.ndarray
            ``(batch, *model input shape)`` float32, e.g. ``(batch, z, y, x, 1)`` for
            3D-DeepLight (z, y, x order, reference section 1).
        target : None or array-like of int
            ``None``: each sample's predicted output (argmax of its logits); otherwise
            ``(batch,)`` output indices (or one int for all samples).

        Returns
        -------
        logits : np.ndarray
            ``(batch, n_out)`` float32.
        relevance : np.ndarray
            float32, the input's shape with a trailing channel axis of length 1 dropped,
            e.g. ``(batch, z, y, x)``.  Relevance starts as the target logit (all other
            logits 0).
        """
        import keras

        x = np.asarray(x, dtype=keras.backend.standardize_dtype(self.model.inputs[0].dtype))  # float32 but in tests
        expected = tuple(self.model.inputs[0].shape[1:])
        if x.ndim != len(expected) + 1 or any(e is not None and e != s for e, s in zip(expected, x.shape[1:])):
            raise ValueError(f"expected input of shape (batch, {', '.join(map(str, expected))}); got {x.shape}")
        target_indices = self._check_target(target, len(x))
        logit_parts, relevance_parts = [], []
        for a, b in in_chunks(len(x), self.max_batch):
            x_part, target_part = ops.convert_to_tensor(x[a:b]), ops.convert_to_tensor(target_indices[a:b])
            if not self._split_stem:
                logits, relevance, _ = self._explain_graph(x_part, target_part)
                logit_parts.append(ops.convert_to_numpy(logits))
                relevance_parts.append(ops.convert_to_numpy(relevance).astype(x.dtype, copy=False))
                continue
            logits, stem_relevance, _, records = self._explain_graph(x_part, target_part)
            logit_parts.append(ops.convert_to_numpy(logits))
            for c, d in in_chunks(b - a, self.stem_batch):
                part = self._stem_graph(d - c)(stem_relevance, records, ops.convert_to_tensor(c, dtype="int32"))
                relevance_parts.append(ops.convert_to_numpy(part).astype(x.dtype, copy=False))
                del part
            del stem_relevance, records
        logits, relevance = join_chunks(logit_parts), join_chunks(relevance_parts)
        if relevance.ndim >= 3 and relevance.shape[-1] == 1:
            relevance = relevance[..., 0]
        return logits, relevance

    def _check_target(self, target, batch_size):
        """``(batch,)`` int32 indices; -1 asks the graph for the argmax."""
        return target_indices(target, batch_size, self.model.outputs[0].shape[-1])

    def _describe(self):
        layer_entries, epsilons, batch_norm = [], set(), set()
        for layer, rule in self.layer_rules:
            describe = getattr(rule, "describe", None)
            entry = {
                "layer": layer.name,
                "type": type(layer).__name__,
                **(describe() if describe is not None else {"rule": type(rule).__name__}),
            }
            layer_entries.append(entry)
            if "epsilon" in entry:
                epsilons.add(entry["epsilon"])
            if entry["type"] == "BatchNormalization":
                batch_norm.add(entry.get("formula", entry["rule"]))
        return {
            "composite": self.composite.name,
            "reference": self.composite.reference,
            "relevance_start": RELEVANCE_START,
            "epsilons": sorted(epsilons),
            "batch_norm": sorted(batch_norm)[0] if len(batch_norm) == 1 else (sorted(batch_norm) or None),
            "fused_activations": "rules use the linear part of a conv/dense layer; ReLU passes relevance unchanged",
            "layers": layer_entries,
        }


def stem_batch_for_memory(limit_mib: int | Literal["detect"] | None = "detect") -> int | None:
    """Samples per backward step through the stem for a job with ``limit_mib`` MiB of memory.

    Parameters
    ----------
    limit_mib : int, None or "detect"
        The job's memory in MiB (``"detect"``: :func:`deeplight_bids.runtime.memory_limit`;
        None: unknown, treated as enough).

    Returns
    -------
    int or None
        1 on CPU with less than :data:`WHOLE_STEM_MIN_MIB`; None (the whole pass at once)
        otherwise and always with a GPU.
    """
    if network_batch_limit() is None:
        return None
    if limit_mib == "detect":
        limit_mib = memory_limit()[0]
    return 1 if limit_mib is not None and limit_mib < WHOLE_STEM_MIN_MIB else None


def stem_size(layers: Sequence[Any], input_shape: tuple[Any, ...]) -> int:
    """How many leading layers form the full-resolution stem (see :data:`STEM_FRACTION`).

    Parameters
    ----------
    layers : sequence of keras.layers.Layer
        The model's layers in forward order.
    input_shape : tuple
        The model's input shape, ``(None, *per-sample shape)``.

    Returns
    -------
    int
        ``k``: layers ``[0, k)`` run their backward pass per :attr:`LRPAnalyzer.stem_batch`
        samples; 0 when the shapes cannot be inferred.
    """
    sizes, shape = [], tuple(input_shape)
    try:
        for layer in layers:
            sizes.append(int(np.prod(shape[1:])))
            shape = tuple(layer.compute_output_shape(shape))
    except Exception:  # noqa: BLE001  (any layer without shape inference: no stem, the whole pass at once)
        return 0
    if not sizes:
        return 0
    largest = max(sizes)
    stem = max(i for i, size in enumerate(sizes) if size >= STEM_FRACTION * largest) + 1
    # The stem's records are sliced along axis 0 as samples: only layers that keep that axis
    # (not e.g. 2D-DeepLight's slice folding, which turns it into samples x slices).
    keeps_samples = types.Conv + types.BatchNorm + types.SampleWise
    for i, layer in enumerate(layers[:stem]):
        if not isinstance(layer, keeps_samples):
            return 0 if i == 0 else i
    return stem

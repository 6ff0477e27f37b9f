"""Relevance maps for a batch of inputs: the public LRP entry point.

>>> analyzer = LRPAnalyzer(model, composite="preset_b_flat")     # doctest: +SKIP
>>> logits, relevance = analyzer.explain(x)                        # doctest: +SKIP

One call runs one forward pass in inference mode (dropout off, BN moving statistics),
records every layer's input and output, and walks the layers backwards applying each
layer's rule.  Both passes are one compiled function (``tf.function`` under TensorFlow,
``jax.jit`` under JAX, eager under PyTorch; :mod:`deeplight_bids.backend`), traced once
per input shape.  Memory grows with the batch; ``max_batch`` splits larger batches.
"""

from collections.abc import Sequence

import numpy as np
from keras import ops

from deeplight_bids import backend
from deeplight_bids.models.decode import in_chunks, join_chunks

from .composites import get_composite

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
    max_batch : int or None
        Most samples per forward/backward pass: :meth:`explain` splits larger batches
        (memory grows with the samples of one pass); ``None``: the whole batch at once.

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

    def __init__(self, model, composite="preset_b_flat", max_batch=None):
        import keras

        if not isinstance(model, keras.Sequential):
            raise TypeError(f"LRPAnalyzer needs a keras.Sequential model; got {type(model).__name__}")
        if not model.built:
            raise TypeError(f"model {model.name!r} is not built; give it an input shape first")
        self.model = model
        self.max_batch = max_batch
        self.composite = get_composite(composite)
        self.layer_rules = self.composite.assign(model.layers)
        for layer, rule in self.layer_rules:
            # Rules outside rules.Rule (e.g. lstm.LSTMEpsilon) need only be callable.
            check = getattr(rule, "check", None)
            if check is not None:
                check(layer)
        self._explain_graph = backend.compile_function(self._forward_backward, reduce_retracing=False)
        self.description = self._describe()

    def _forward_backward(self, x, target):
        """Forward pass, then the rules backwards; ``target < 0`` means the argmax.

        Returns logits ``(batch, n_out)``, input relevance (``x``'s shape), targets ``(batch,)``.
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
        for (layer, rule), x_in, y_out, linear in zip(reversed(self.layer_rules), reversed(layer_inputs),
                                                      reversed(layer_outputs), reversed(linear_outputs)):
            if linear is None:
                relevance = rule(layer, x_in, relevance, y_out=y_out)
            else:
                relevance = rule(layer, x_in, relevance, y_out=y_out, linear_out=linear)
        return logits, relevance, target

    def explain(self, x: np.ndarray, target: int | Sequence[int] | np.ndarray | None = None
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
        x = np.asarray(x, dtype=np.float32)
        expected = tuple(self.model.inputs[0].shape[1:])
        if x.ndim != len(expected) + 1 or any(e is not None and e != s for e, s in zip(expected, x.shape[1:])):
            raise ValueError(f"expected input of shape (batch, {', '.join(map(str, expected))}); got {x.shape}")
        target_indices = self._check_target(target, len(x))
        logit_parts, relevance_parts = [], []
        for a, b in in_chunks(len(x), self.max_batch):
            logits, relevance, _ = self._explain_graph(ops.convert_to_tensor(x[a:b]),
                                                       ops.convert_to_tensor(target_indices[a:b]))
            logit_parts.append(ops.convert_to_numpy(logits))
            relevance_parts.append(ops.convert_to_numpy(relevance).astype(np.float32, copy=False))
        logits, relevance = join_chunks(logit_parts), join_chunks(relevance_parts)
        if relevance.ndim >= 3 and relevance.shape[-1] == 1:
            relevance = relevance[..., 0]
        return logits, relevance

    def _check_target(self, target, batch_size):
        """``(batch,)`` int32 indices; -1 asks the graph for the argmax."""
        if target is None:
            return np.full(batch_size, -1, dtype=np.int32)
        target = np.asarray(target)
        if target.ndim == 0:
            target = np.full(batch_size, target)
        n_out = self.model.outputs[0].shape[-1]
        if target.shape != (batch_size,) or not np.issubdtype(target.dtype, np.integer):
            raise ValueError(f"target must be None or {batch_size} integer output indices; got {target!r}")
        if target.min() < 0 or target.max() >= n_out:
            raise ValueError(f"target indices must lie in [0, {n_out}); got {target.tolist()}")
        return target.astype(np.int32)

    def _describe(self):
        layer_entries, epsilons, batch_norm = [], set(), set()
        for layer, rule in self.layer_rules:
            describe = getattr(rule, "describe", None)
            entry = {"layer": layer.name, "type": type(layer).__name__,
                     **(describe() if describe is not None else {"rule": type(rule).__name__})}
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

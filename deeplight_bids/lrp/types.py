"""Keras layer classes grouped by how LRP treats them.

Each group is a tuple of classes, usable with ``isinstance`` and as the key of a
composite's layer map (:mod:`deeplight_bids.lrp.composites`).  2D and 3D variants are
grouped together, as in zennit's ``types``.
"""

from __future__ import annotations

from typing import Any

from keras import activations, layers

from deeplight_bids.models.two import FoldSlices, UnfoldSlices

#: Convolutions whose linear part ``conv(x, kernel) + bias`` the rules rewrite.
Conv = (layers.Conv2D, layers.Conv3D)

#: Fully connected layers, ``x @ kernel + bias``.
Dense = (layers.Dense,)

#: Convolutions and dense layers: everything with a kernel.
Linear = Conv + Dense

#: Batch normalisation (inference mode: moving mean and variance).
BatchNorm = (layers.BatchNormalization,)

#: Global average pooling over the spatial axes.
GlobalAvgPool = (layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D)

#: 2D-DeepLight's slice folding: ``(batch, z, y, x, c)`` <-> ``(batch * z, y', x', c')``
#: rows (pure reshapes, see :mod:`deeplight_bids.models.two`).
SliceReshape = (FoldSlices, UnfoldSlices)

#: Bidirectional recurrent layers (2D-DeepLight's ``bilstm``; the LSTM rule,
#: :class:`deeplight_bids.lrp.lstm.LSTMEpsilon`, checks that it wraps an LSTM).
Recurrent = (layers.Bidirectional,)

#: Layers that hand relevance through unchanged: element-wise ReLU / identity, dropout
#: (the identity at inference) and pure reshapes.
PassThrough = (
    layers.ReLU,
    layers.Activation,
    layers.Dropout,
    layers.SpatialDropout2D,
    layers.SpatialDropout3D,
    layers.Flatten,
    layers.Reshape,
    layers.InputLayer,
) + SliceReshape

#: Pass-through layers that act on each sample on its own and keep the sample axis first
#: (the analyzer may run their backward pass a few samples at a time).
SampleWise = (
    layers.ReLU,
    layers.Activation,
    layers.Dropout,
    layers.SpatialDropout2D,
    layers.SpatialDropout3D,
)

#: Activation functions relevance may pass unchanged (the rules use the linear part of
#: a layer, so a fused activation must be one of these).
PASSABLE_ACTIVATIONS = (activations.relu, activations.linear)


def activation_name(layer: Any) -> str | None:
    """Name of the fused or stand-alone activation of ``layer`` (``None`` if it has none)."""
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", type(activation).__name__)


def has_passable_activation(layer: Any) -> bool:
    """Whether ``layer`` has no activation, or a ReLU / linear one (see :data:`PASSABLE_ACTIVATIONS`)."""
    if isinstance(layer, layers.ReLU):
        # A leaky or thresholded ReLU is not the identity on its positive part only.
        return float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
    activation = getattr(layer, "activation", None)
    return activation is None or any(activation is passable for passable in PASSABLE_ACTIVATIONS)

"""2D-DeepLight in Keras 3 (reference section 6).

Input: one volume per sample, shape ``(91, 109, 91, 1)`` in **(z, y, x, channel)**
order (the NIfTI ``(x, y, z)`` array transposed, see
:func:`deeplight_bids.models.three.to_model_order`).  Output: logits, one per state.

The volume is read as a sequence of ``z`` axial slices, bottom to top.  Every slice
``(y, x, 1)`` goes through the same stack of twelve 3x3 convolutions; the slices are
folded into the batch axis for that (one convolution over ``batch * z`` slices).  On
CPU this decodes as fast as ``TimeDistributed`` (which Keras 3 unrolls into one
convolution per slice) but traces ~20x faster, and LRP sees plain ``Conv2D`` layers on
4D tensors.  Each slice's ``(y', x', 64)`` output is flattened
row-major ``(y', x', channel)`` -- 768 values on the reference grid -- and the ``z``
slice vectors feed a bidirectional LSTM (64 units per direction).  The final forward
and backward hidden states are concatenated (forward first), pass dropout and a linear
layer.

The model is a ``keras.Sequential``; stable layer names (used by the weight converter
and by LRP):

==================  ===========================================================
``volume``          input, ``(batch, z, y, x, 1)``
``fold_slices``     ``(batch, z, y, x, 1)`` -> ``(batch * z, y, x, 1)``
``conv_1..conv_12`` Conv2D 3x3, SAME, ReLU (:data:`CONV_BLOCKS_2D`)
``conv_dropout_k``  SpatialDropout2D after conv k where the original dropped
                    feature maps (k = 5..12; training only)
``unfold_slices``   ``(batch * z, y', x', 64)`` -> ``(batch, z, y' * x' * 64)``
``bilstm``          Bidirectional LSTM, sub-layers ``forward_lstm`` and
                    ``backward_lstm``; output ``(batch, 128)``, forward first
``dropout``         Dropout(0.5) on the LSTM output (training only)
``linear``          Dense(n_states), linear -> logits
==================  ===========================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import layers, ops

#: (filters, stride) of the twelve 3x3 conv layers applied to every axial slice.
CONV_BLOCKS_2D = (
    (8, 1),
    (8, 1),
    (16, 2),
    (16, 1),
    (32, 2),
    (32, 1),
    (32, 2),
    (32, 1),
    (64, 2),
    (64, 1),
    (64, 2),
    (64, 1),
)

#: Dropout rate after each conv layer during training (the original's keep
#: probabilities 1, .8, .6 for conv layers 1-4, 5-8, 9-12, one mask per slice and
#: feature map).
CONV_DROPOUT_2D = (0.0,) * 4 + (0.2,) * 4 + (0.4,) * 4

#: Dropout rate on the concatenated LSTM output during training (keep probability .5).
LSTM_DROPOUT_2D = 0.5

#: Units per LSTM direction.
LSTM_UNITS_2D = 64

#: Model input shape for a volume on the reference grid, (z, y, x, channel).
INPUT_SHAPE_2D = (91, 109, 91, 1)


def slice_feature_shape(input_shape: Sequence[int] = INPUT_SHAPE_2D) -> tuple[int, int, int]:
    """Per-slice output shape ``(y', x', 64)`` of the conv stack for an input shape.

    Parameters
    ----------
    input_shape : tuple of int
        ``(z, y, x, 1)`` model input shape.

    Returns
    -------
    tuple of int
        ``(y', x', channels)``; ``(4, 3, 64)`` on the reference grid.
    """
    _, ny, nx = (int(v) for v in input_shape[:3])
    for _, stride in CONV_BLOCKS_2D:
        # SAME padding: output size is ceil(size / stride).
        ny, nx = math.ceil(ny / stride), math.ceil(nx / stride)
    return ny, nx, CONV_BLOCKS_2D[-1][0]


@keras.saving.register_keras_serializable(package="deeplight_bids", name="FoldSlices")
class FoldSlices(keras.layers.Layer):
    """``(batch, z, y, x, c)`` -> ``(batch * z, y, x, c)``: every slice becomes a sample.

    Sample ``b``'s slice ``k`` lands at row ``b * z + k`` (a plain row-major reshape, so
    LRP hands relevance back by reshaping).
    """

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, n_slices = input_shape[0], input_shape[1]
        folded = None if batch is None or n_slices is None else batch * n_slices
        return (folded, *input_shape[2:])

    def call(self, inputs: Any) -> Any:
        return ops.reshape(inputs, (-1, *inputs.shape[2:]))


@keras.saving.register_keras_serializable(package="deeplight_bids", name="UnfoldSlices")
class UnfoldSlices(keras.layers.Layer):
    """``(batch * z, y, x, c)`` -> ``(batch, z, y * x * c)``, each slice flattened row-major (y, x, c).

    Parameters
    ----------
    n_slices : int
        Number of slices ``z`` per sample.
    """

    def __init__(self, n_slices: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_slices = int(n_slices)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[int | None, ...]:
        batch = None if input_shape[0] is None else input_shape[0] // self.n_slices
        return (batch, self.n_slices, math.prod(input_shape[1:]))

    def call(self, inputs: Any) -> Any:
        return ops.reshape(inputs, (-1, self.n_slices, math.prod(inputs.shape[1:])))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_slices": self.n_slices}


def build_2d_deeplight(
    n_states: int = 16, input_shape: Sequence[int] = INPUT_SHAPE_2D, dropout: bool = True, name: str = "DeepLight2D"
) -> Any:
    """Build (uncompiled) 2D-DeepLight.

    Parameters
    ----------
    n_states : int
        Output states of the softmax-free output layer; the published weights have 16.
    input_shape : tuple of int
        ``(z, y, x, 1)``; ``(91, 109, 91, 1)`` on the reference grid, smaller shapes are
        for tests.  The LSTM input size is derived from it (768 on the reference grid).
    dropout : bool
        Include the dropout layers of the original training set-up (conv feature-map
        dropout .2/.4 and LSTM-output dropout .5; active only with ``training=True``).
        Without them the model has the same weights and the same inference output.
    name : str
        Model name.

    Returns
    -------
    keras.Sequential
        Maps ``(batch, z, y, x, 1)`` float32 in (z, y, x) order to
        ``(batch, n_states)`` logits.
    """
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4 or input_shape[3] != 1:
        raise ValueError(f"input_shape must be (z, y, x, 1); got {input_shape}")

    model = keras.Sequential(name=name)
    model.add(keras.Input(shape=input_shape, name="volume"))
    model.add(FoldSlices(name="fold_slices"))
    for i, (filters, stride) in enumerate(CONV_BLOCKS_2D, start=1):
        model.add(layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu", name=f"conv_{i}"))
        if dropout and CONV_DROPOUT_2D[i - 1] > 0:
            model.add(layers.SpatialDropout2D(CONV_DROPOUT_2D[i - 1], name=f"conv_dropout_{i}"))
    model.add(UnfoldSlices(input_shape[0], name="unfold_slices"))
    model.add(layers.Bidirectional(layers.LSTM(LSTM_UNITS_2D, name="lstm"), merge_mode="concat", name="bilstm"))
    if dropout:
        model.add(layers.Dropout(LSTM_DROPOUT_2D, name="dropout"))
    model.add(layers.Dense(int(n_states), activation=None, name="linear"))
    return model

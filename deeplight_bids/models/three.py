"""3D-DeepLight in Keras 3 (reference section 5).

Input: one volume per sample, shape ``(91, 109, 91, 1)`` in **(z, y, x, channel)**
order (the NIfTI ``(x, y, z)`` array transposed, see :func:`to_model_order`).
Output: logits, one per state (softmax is applied by the decoder when
probabilities are wanted).

Layer names are stable (``conv_1`` ... ``conv_13``, ``bn_1`` ... ``bn_12``) so weights
can be mapped by name; the layer *order* matches the published Keras-2 Sequential, so
``Model.load_weights`` on the published whole-model ``.hdf5`` fills it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: (filters, stride) of the twelve 3x3x3 conv blocks.
CONV_BLOCKS_3D = (
    (8, 1),
    (8, 1),
    (8, 2),
    (8, 1),
    (16, 2),
    (16, 1),
    (32, 2),
    (32, 1),
    (64, 2),
    (64, 1),
    (128, 2),
    (128, 1),
)

#: Model input shape for a volume on the reference grid, (z, y, x, channel).
INPUT_SHAPE_3D = (91, 109, 91, 1)


def build_3d_deeplight(
    n_states: int = 16,
    input_shape: Sequence[int] = INPUT_SHAPE_3D,
    dropout_rate: float = 0.2,
    output_bias: float = 0.0,
    bn_momentum: float = 0.99,
    name: str = "DeepLight3D",
) -> Any:
    """Build (uncompiled) 3D-DeepLight.

    Parameters
    ----------
    n_states : int
        Number of output states (16 for the published weights).
    input_shape : tuple of int
        ``(z, y, x, 1)``; other shapes are for tests on small grids.
    dropout_rate : float
        SpatialDropout3D rate (active only in training).
    output_bias : float
        Initial bias of the output convolution.  A small positive value keeps the
        output ReLU from starting dead when fitting from scratch.
    bn_momentum : float
        Momentum of the batch-norm moving statistics (Keras default 0.99).  Short
        fits need less (e.g. 0.9) or the statistics used for decoding lag behind.

    Returns
    -------
    keras.Sequential
        Maps ``(batch, z, y, x, 1)`` float32 to ``(batch, n_states)`` logits.
    """
    import keras
    from keras import layers

    model = keras.Sequential(name=name)
    model.add(keras.Input(shape=tuple(input_shape), name="volume"))
    for i, (filters, stride) in enumerate(CONV_BLOCKS_3D, start=1):
        model.add(layers.Conv3D(filters, 3, strides=stride, padding="same", activation="relu", name=f"conv_{i}"))
        model.add(layers.SpatialDropout3D(dropout_rate, name=f"dropout_{i}"))
        model.add(layers.BatchNormalization(momentum=bn_momentum, name=f"bn_{i}"))
    n = len(CONV_BLOCKS_3D) + 1
    model.add(
        layers.Conv3D(
            int(n_states),
            1,
            strides=1,
            padding="same",
            activation=None,
            name=f"conv_{n}",
            bias_initializer=keras.initializers.Constant(float(output_bias)),
        )
    )
    model.add(layers.Activation("relu", name="relu_out"))
    model.add(layers.SpatialDropout3D(dropout_rate, name=f"dropout_{n}"))
    model.add(layers.GlobalAveragePooling3D(name="global_average"))
    return model


def to_model_order(volumes_xyz: np.ndarray) -> np.ndarray:
    """``(batch, x, y, z)`` NIfTI-order volumes -> ``(batch, z, y, x, 1)`` model input (float32)."""
    volumes_xyz = np.asarray(volumes_xyz, dtype=np.float32)
    if volumes_xyz.ndim != 4:
        raise ValueError(f"expected (batch, x, y, z) volumes, got shape {volumes_xyz.shape}")
    return np.ascontiguousarray(np.transpose(volumes_xyz, (0, 3, 2, 1))[..., None])

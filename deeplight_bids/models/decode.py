"""Batched forward pass: logits -> probabilities and predicted states."""

import numpy as np


def softmax(logits):
    """Row-wise softmax in float64 (numerically stable); ``(batch, n_states)``."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    expo = np.exp(shifted)
    return expo / expo.sum(axis=1, keepdims=True)


class Decoder:
    """Compiled inference of a Keras model (dropout off, BN moving statistics).

    Parameters
    ----------
    model : keras.Model
        ``(batch, z, y, x, 1)`` -> ``(batch, n_states)`` logits.
    """

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def logits(self, x):
        """Logits ``(batch, n_states)`` float32 for model-order input ``(batch, z, y, x, 1)``."""
        return np.asarray(self._forward(np.asarray(x, dtype=np.float32)))

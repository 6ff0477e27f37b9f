"""Batched forward pass: logits -> probabilities and predicted states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids import backend

if TYPE_CHECKING:
    import numpy.typing as npt

#: Volumes per network call on CPU.  On 2 CPU cores batches of 4 and 8 volumes decode (and
#: explain) at the same speed, but the activations of the full-resolution layers grow with
#: the batch: at 8 volumes LRP alone needs about 3.5 GiB.  So on CPU a larger --batch-size
#: is read, decoded and written as one step but goes through the network 4 volumes at a time,
#: which keeps a run's memory within 3 GiB at any batch size.  On a GPU the batch is not split.
CPU_NETWORK_BATCH = 4


def network_batch_limit() -> int | None:
    """Most volumes per network call: :data:`CPU_NETWORK_BATCH` on CPU, ``None`` (no limit) with a GPU."""
    return None if backend.has_gpu() else CPU_NETWORK_BATCH


def in_chunks(n: int, max_batch: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(n)`` in pieces of at most ``max_batch`` (``None``: one piece)."""
    step = n if not max_batch else int(max_batch)
    return [(start, min(start + step, n)) for start in range(0, n, max(step, 1))]


def join_chunks(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Arrays of consecutive chunks -> one array (the only part itself, uncopied, when there is one)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def target_indices(target: int | Sequence[int] | np.ndarray | None, batch_size: int, n_out: int) -> np.ndarray:
    """The output to explain per sample, as the explainers take it: ``(batch_size,)`` int32.

    ``None`` gives -1 everywhere (the compiled graph then takes each sample's argmax); one
    integer is used for every sample.  Raises ``ValueError`` for anything else than
    ``batch_size`` integers in ``[0, n_out)``.
    """
    if target is None:
        return np.full(batch_size, -1, dtype=np.int32)
    target = np.asarray(target)
    if target.ndim == 0:
        target = np.full(batch_size, target)
    if target.shape != (batch_size,) or not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"target must be None or {batch_size} integer output indices; got {target!r}")
    if target.min() < 0 or target.max() >= n_out:
        raise ValueError(f"target indices must lie in [0, {n_out}); got {target.tolist()}")
    return target.astype(np.int32)


def softmax(logits: np.ndarray, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
    """Row-wise softmax (numerically stable) computed in ``dtype``; ``(batch, n_states)``."""
    logits = np.asarray(logits, dtype=dtype)
    shifted = logits - logits.max(axis=1, keepdims=True)
    expo = np.exp(shifted)
    return expo / expo.sum(axis=1, keepdims=True)


class Decoder:
    """Compiled inference of a Keras model (dropout off, BN moving statistics).

    Parameters
    ----------
    model : keras.Model
        ``(batch, z, y, x, 1)`` -> ``(batch, n_states)`` logits.
    max_batch : int or None
        Most samples per network call (a larger batch is split; see
        :func:`network_batch_limit`); ``None``: the whole batch at once.
    """

    def __init__(self, model: Any, max_batch: int | None = None) -> None:
        self.model = model
        self.max_batch = max_batch
        self._forward = backend.compile_function(lambda x: model(x, training=False))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(batch, n_states)`` float32 for model-order input ``(batch, z, y, x, 1)``."""
        from keras import ops

        x = np.asarray(x, dtype=np.float32)
        return join_chunks(
            [
                ops.convert_to_numpy(self._forward(ops.convert_to_tensor(x[a:b])))
                for a, b in in_chunks(len(x), self.max_batch)
            ]
        )

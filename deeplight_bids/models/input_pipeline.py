"""The training input pipelines of fine-tuning: class-balanced epochs as ``tf.data`` datasets.

Volumes come from the prepared-run cache (:class:`deeplight_bids.prepare.cache.VolumeReader`) or from
in-memory arrays (a frozen body's features); :mod:`deeplight_bids.workflows.finetune` fits on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.backend import tensorflow_or_exit
from deeplight_bids.prepare.cache import MODEL_SHAPE

if TYPE_CHECKING:
    from deeplight_bids.prepare.cache import Samples, VolumeReader

#: tf.data's autotuning of the training pipelines (off).  Our pipelines have nothing to tune (one Python
#: generator, a fixed prefetch of 2 batches), but with autotuning on, deleting an iterator sometimes waited on
#: an idle tf.data thread: in three profiled demo fits (py-spy; per-thread run-queue times) the process stood
#: still for 5-30 s at the end of the fit and of precise BN, no thread running, the main thread in
#: ``~IteratorResource`` -> ``~LogicalThreadWrapper``; with autotuning off no such pause was seen and the
#: batches are the same (benchmarks/bench_fit.py runs the demo's fit both ways).
TF_DATA_AUTOTUNE = False


def epoch_order(
    labels: Sequence[int] | np.ndarray, rng: np.random.Generator, balance: bool = True, shuffle: bool = True
) -> np.ndarray:
    """Indices of one epoch: with ``balance`` every class is oversampled to the largest class."""
    labels = np.asarray(labels)
    if balance and len(labels):
        classes, counts = np.unique(labels, return_counts=True)
        target = counts.max()
        parts = []
        for c, n in zip(classes, counts):
            idx = np.flatnonzero(labels == c)
            extra = rng.choice(idx, target - n, replace=True) if target > n else np.zeros(0, int)
            parts.append(np.concatenate([idx, extra]))
        order = np.concatenate(parts)
    else:
        order = np.arange(len(labels))
    if shuffle:
        order = rng.permutation(order)
    return order


def make_volume_dataset(
    reader: VolumeReader,
    samples: Samples,
    batch_size: int,
    shuffle: bool = True,
    balance: bool = True,
    seed: int | Sequence[int] = 0,
    start_epoch: int = 0,
    mix_same_state: float = 0.0,
) -> Any:
    """``tf.data.Dataset`` of ``(volumes (b, z, y, x, 1) float32, labels (b,) int32)`` batches.

    Each pass over the dataset (one Keras epoch) draws a new order from ``seed`` and the
    epoch number (so a resumed run continues the same sequence of orders).

    ``mix_same_state`` (probability, 0 to 1; training only): each volume is, with that
    probability, replaced by the mean of itself and a volume of the same state from another
    participant, drawn anew every epoch (see :func:`mix_partners`).
    """
    tf = tensorflow_or_exit("fine-tuning's tf.data input")

    state = {"epoch": int(start_epoch)}
    partners = mix_partners(samples) if mix_same_state else None

    def generate():
        rng = np.random.default_rng([*(int(v) for v in np.atleast_1d(seed)), state["epoch"]])
        state["epoch"] += 1
        for i in epoch_order(samples.label, rng, balance=balance, shuffle=shuffle):
            volume = reader.volume(samples.entry[i], samples.volume[i])
            if mix_same_state and rng.random() < mix_same_state and len(partners[i]):
                j = rng.choice(partners[i])
                volume = 0.5 * (volume + reader.volume(samples.entry[j], samples.volume[j]))
            yield volume, np.int32(samples.label[i])

    ds = tf.data.Dataset.from_generator(
        generate, output_signature=(tf.TensorSpec(MODEL_SHAPE, tf.float32), tf.TensorSpec((), tf.int32))
    )
    return _finish(ds, epoch_length(samples.label, balance), batch_size)


def mix_partners(samples: Samples) -> list[np.ndarray]:
    """For each sample, the samples of the same state (label) from other participants: whom it may be mixed with.

    Same-state mixing (an intra-class form of mixup, Zhang et al. 2018) keeps what the
    participants share in a state and halves what is one participant's own (noise, anatomy),
    so a brief fit on few participants cannot memorise their volumes; labels stay one state.

    Returns
    -------
    list of numpy.ndarray
        ``partners[i]``: indices into ``samples`` (empty when no other participant has that state).
    """
    label, subject = np.asarray(samples.label), np.asarray(samples.subject)
    groups = {}
    for key in set(zip(label.tolist(), subject.tolist())):
        groups[key] = np.flatnonzero((label == key[0]) & (subject != key[1]))
    return [groups[(lab, sub)] for lab, sub in zip(label.tolist(), subject.tolist())]


def make_array_dataset(
    features: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    batch_size: int,
    shuffle: bool = True,
    balance: bool = True,
    seed: int | Sequence[int] = 0,
    start_epoch: int = 0,
) -> Any:
    """Like :func:`make_volume_dataset` for in-memory arrays (e.g. frozen-body features)."""
    tf = tensorflow_or_exit("fine-tuning's tf.data input")

    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    state = {"epoch": int(start_epoch)}

    def generate():
        rng = np.random.default_rng([*(int(v) for v in np.atleast_1d(seed)), state["epoch"]])
        state["epoch"] += 1
        for i in epoch_order(labels, rng, balance=balance, shuffle=shuffle):
            yield features[i], labels[i]

    ds = tf.data.Dataset.from_generator(
        generate, output_signature=(tf.TensorSpec(features.shape[1:], tf.float32), tf.TensorSpec((), tf.int32))
    )
    return _finish(ds, epoch_length(labels, balance), batch_size)


def epoch_length(labels: Sequence[int] | np.ndarray, balance: bool = True) -> int:
    """Samples per epoch (with ``balance``: classes x the largest class)."""
    labels = np.asarray(labels)
    if not balance or not len(labels):
        return len(labels)
    _, counts = np.unique(labels, return_counts=True)
    return int(len(counts) * counts.max())


def _finish(ds, n, batch_size):
    tf = tensorflow_or_exit("fine-tuning's tf.data input")

    n_batches = -(-int(n) // int(batch_size))
    ds = ds.batch(int(batch_size)).apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = bool(TF_DATA_AUTOTUNE)
    return ds.with_options(options)

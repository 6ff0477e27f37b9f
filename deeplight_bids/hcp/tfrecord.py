"""TFRecord export of prepared, labelled volumes in the original DeepLight schema (reference section 9).

One ``tf.train.Example`` per volume, as written by the original
``deeplight.data.io.write_func_to_tfr``:

==============  ==========================  ==========================================
feature         type                        value
==============  ==========================  ==========================================
``volume``      float list, 91*109*91       the (x, y, z) volume flattened row-major
``task_id``     int64 [1]                   task index in alphabetical HCP order
                                            (EMOTION 0 ... WM 6), see :func:`hcp_task_id`
``subject_id``  int64 [1]                   the numeric subject id (HCP ids are numbers)
``run_id``      int64 [1]                   run index (LR 0, RL 1), see :func:`hcp_run_id`
``state``       int64 [1]                   the state's rank *within its task* (original)
``tr``          float [1]                   repetition time in seconds
``onehot``      int64 list, 20              1 at the state's global index (0-19)
==============  ==========================  ==========================================

Choices:

* ``states`` passed to :func:`write_run_tfrecord` are global one-hot indices 0-19
  (:data:`deeplight_bids.states.HCP_STATES`) or -1 for an unlabeled volume.  As in the
  original, the ``state`` feature holds the within-task rank (``index - first index
  of the task``), so ``onehot`` carries the global index.
* Unlabeled volumes are skipped by default, as the original did.  With
  ``skip_unlabeled=False`` they are written with ``state`` -1 and an all-zero
  ``onehot``.
* Volumes are written in acquisition order (the original shuffled them while
  writing; shuffle when reading, e.g. ``dataset.shuffle``).
* Files are written to a hidden temp file and renamed, so a file under the final
  name is always complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.backend import tensorflow_or_exit
from deeplight_bids.prepare.grid import REFERENCE_SHAPE
from deeplight_bids.states import HCP_STATES, HCP_TASK_STATES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

N_STATES = len(HCP_STATES)
VOLUME_SIZE = int(np.prod(REFERENCE_SHAPE))
UNLABELED = -1
_BATCH = 16


def hcp_task_id(task: str) -> int:
    """Index of an HCP task in alphabetical order (``"EMOTION"`` 0 ... ``"WM"`` 6)."""
    return list(HCP_TASK_STATES).index(str(task).upper())


def hcp_run_id(run: str) -> int:
    """Index of an HCP run (``"LR"`` 0, ``"RL"`` 1)."""
    return ("LR", "RL").index(str(run).upper())


def _task_offsets():
    offsets, start = {}, 0
    for task, states in HCP_TASK_STATES.items():
        offsets[task] = (start, start + len(states))
        start += len(states)
    return offsets


_TASK_OFFSETS = _task_offsets()


def within_task_state(global_state: int, task_id: int) -> int:
    """Rank of global state index ``global_state`` within the task ``task_id``.

    Raises
    ------
    ValueError
        When the state does not belong to that task.
    """
    task = list(HCP_TASK_STATES)[task_id]
    start, stop = _TASK_OFFSETS[task]
    if not start <= global_state < stop:
        raise ValueError(
            f"state {global_state} ({_state_name(global_state)}) is not a state of task {task} "
            f"(indices {start}-{stop - 1})."
        )
    return global_state - start


def _state_name(index):
    return HCP_STATES[index] if 0 <= index < N_STATES else "invalid"


def _iter_volumes(volumes, n_volumes):
    """Yield ``n_volumes`` 3D arrays from an iterable or a batch reader ``read(start, stop)``."""
    if callable(volumes):
        for start in range(0, n_volumes, _BATCH):
            stop = min(start + _BATCH, n_volumes)
            batch = np.asarray(volumes(start, stop))
            if batch.shape[0] != stop - start:
                raise ValueError(f"batch reader returned {batch.shape[0]} volumes for [{start}, {stop}).")
            yield from batch
    else:
        yield from volumes


def _example(tf, volume, state, task_id, subject_id, run_id, tr):
    onehot = np.zeros(N_STATES, dtype=np.int64)
    if state != UNLABELED:
        onehot[state] = 1
        local_state = within_task_state(state, task_id)
    else:
        local_state = UNLABELED
    feature = {
        # A list converts about 4x faster than a numpy array here.
        "volume": tf.train.Feature(float_list=tf.train.FloatList(value=volume.reshape(-1).tolist())),
        "task_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[task_id])),
        "subject_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[subject_id])),
        "run_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[run_id])),
        "tr": tf.train.Feature(float_list=tf.train.FloatList(value=[tr])),
        "state": tf.train.Feature(int64_list=tf.train.Int64List(value=[local_state])),
        "onehot": tf.train.Feature(int64_list=tf.train.Int64List(value=onehot)),
    }
    # deterministic: map fields (the features) in key order, so the bytes do not depend on the process
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def write_run_tfrecord(
    path: str | os.PathLike[str],
    volumes: Iterable[np.ndarray] | Callable[[int, int], np.ndarray],
    states: Sequence[int],
    task_id: int | str,
    subject_id: int | str,
    run_id: int | str,
    tr: float,
    skip_unlabeled: bool = True,
) -> int:
    """Write one run's labelled volumes as a TFRecord file in the original schema.

    Parameters
    ----------
    path : path-like
        Output file (parent folders are created).
    volumes : iterable of ndarray or callable
        ``(91, 109, 91)`` float32 volumes in (x, y, z) order, one per entry of
        ``states``; or a batch reader ``read(start, stop)`` returning an array of
        shape ``(stop - start, 91, 109, 91)``.
    states : sequence of int
        Global one-hot index (0-19) of each volume's state, or -1 if unlabeled.
    task_id : int or str
        Task index, or an HCP task name (converted with :func:`hcp_task_id`).
    subject_id : int or str
        Numeric subject id (``100307`` or ``"100307"``).
    run_id : int or str
        Run index, or ``"LR"``/``"RL"`` (converted with :func:`hcp_run_id`).
    tr : float
        Repetition time in seconds.
    skip_unlabeled : bool
        Leave out volumes with state -1 (default, as the original did).

    Returns
    -------
    int
        Number of examples written.
    """
    tf = tensorflow_or_exit("TFRecord export/reading (--save-tfrecords, HCP TFRecords)")

    states = [int(s) for s in states]
    for s in states:
        if s != UNLABELED and not 0 <= s < N_STATES:
            raise ValueError(f"state {s}: expected a one-hot index 0-{N_STATES - 1} or {UNLABELED} (unlabeled).")
    task_id = hcp_task_id(task_id) if isinstance(task_id, str) else int(task_id)
    run_id = hcp_run_id(run_id) if isinstance(run_id, str) and not run_id.isdigit() else int(run_id)
    subject_id = int(str(subject_id).removeprefix("sub-"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    written = 0
    try:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            count = 0
            for volume, state in zip(_iter_volumes(volumes, len(states)), states, strict=True):
                count += 1
                volume = np.asarray(volume, dtype=np.float32)
                if volume.shape != REFERENCE_SHAPE:
                    raise ValueError(
                        f"volume {count - 1}: shape {volume.shape}, expected {REFERENCE_SHAPE} in (x, y, z) order."
                    )
                if state == UNLABELED and skip_unlabeled:
                    continue
                writer.write(_example(tf, volume, state, task_id, subject_id, run_id, float(tr)))
                written += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def feature_spec() -> dict[str, Any]:
    """The ``tf.io.parse_single_example`` spec of the schema."""
    tf = tensorflow_or_exit("TFRecord export/reading (--save-tfrecords, HCP TFRecords)")

    return {
        "volume": tf.io.FixedLenFeature([VOLUME_SIZE], tf.float32),
        "task_id": tf.io.FixedLenFeature([1], tf.int64),
        "subject_id": tf.io.FixedLenFeature([1], tf.int64),
        "run_id": tf.io.FixedLenFeature([1], tf.int64),
        "tr": tf.io.FixedLenFeature([1], tf.float32),
        "state": tf.io.FixedLenFeature([1], tf.int64),
        "onehot": tf.io.FixedLenFeature([N_STATES], tf.int64),
    }


def read_tfrecord(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Iterate over the examples of a TFRecord file written in the schema.

    Yields
    ------
    dict
        ``volume`` (91, 109, 91) float32 in (x, y, z) order; ``task_id``,
        ``subject_id``, ``run_id``, ``state`` as int; ``tr`` as float; ``onehot``
        int64 array of 20.
    """
    tf = tensorflow_or_exit("TFRecord export/reading (--save-tfrecords, HCP TFRecords)")

    spec = feature_spec()
    dataset = tf.data.TFRecordDataset([str(path)]).map(lambda record: tf.io.parse_single_example(record, spec))
    for parsed in dataset.as_numpy_iterator():
        yield {
            "volume": parsed["volume"].reshape(REFERENCE_SHAPE),
            "task_id": int(parsed["task_id"][0]),
            "subject_id": int(parsed["subject_id"][0]),
            "run_id": int(parsed["run_id"][0]),
            "state": int(parsed["state"][0]),
            "tr": float(parsed["tr"][0]),
            "onehot": parsed["onehot"],
        }

"""TFRecord export in the original DeepLight schema: write, read back, compare."""

import numpy as np
import pytest

from deeplight_bids.hcp import tfrecord
from deeplight_bids.prepare.grid import REFERENCE_SHAPE
from deeplight_bids.states import HCP_STATES

MOTOR = {name.split("_", 1)[1]: i for i, name in enumerate(HCP_STATES) if name.startswith("MOTOR_")}


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(7)
    vols = rng.standard_normal((5, *REFERENCE_SHAPE)).astype(np.float32)
    vols[1, 3, 4, 5] = -0.0
    return vols


@pytest.fixture(scope="module")
def states():
    # lf, unlabeled, t, lh, unlabeled -> global one-hot indices 7, -1, 11, 8, -1
    return [MOTOR["lf"], tfrecord.UNLABELED, MOTOR["t"], MOTOR["lh"], tfrecord.UNLABELED]


def test_motor_indices_are_those_of_reference_section_4():
    assert MOTOR == {"lf": 7, "lh": 8, "rf": 9, "rh": 10, "t": 11}


def test_round_trip_skips_unlabeled_volumes(tmp_path, volumes, states):
    path = tmp_path / "sub-100307_task-MOTOR_dir-LR.tfrecords"
    n = tfrecord.write_run_tfrecord(path, iter(volumes), states, "MOTOR", "100307", "LR", 0.72)
    assert n == 3
    records = list(tfrecord.read_tfrecord(path))
    assert len(records) == 3
    for record, index in zip(records, [0, 2, 3]):
        np.testing.assert_array_equal(record["volume"], volumes[index])
        assert record["volume"].dtype == np.float32 and record["volume"].shape == REFERENCE_SHAPE
        assert (record["task_id"], record["subject_id"], record["run_id"]) == (3, 100307, 0)
        assert record["tr"] == pytest.approx(0.72)
        assert record["onehot"].dtype == np.int64 and record["onehot"].sum() == 1
        assert int(np.argmax(record["onehot"])) == states[index]
    # the original's `state` is the rank within the task: lf 0, t 4, lh 1
    assert [r["state"] for r in records] == [0, 4, 1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_volume_is_flattened_in_x_y_z_row_major_order(tmp_path, volumes):
    import tensorflow as tf

    path = tmp_path / "one.tfrecords"
    tfrecord.write_run_tfrecord(path, volumes[:1], [MOTOR["rf"]], 3, 100307, 1, 0.72)
    raw = next(iter(tf.data.TFRecordDataset([str(path)])))
    example = tf.train.Example.FromString(raw.numpy())
    flat = np.array(example.features.feature["volume"].float_list.value, dtype=np.float32)
    assert flat.size == 91 * 109 * 91
    np.testing.assert_array_equal(flat[: 91 * 109 * 91 : 109 * 91], volumes[0][:, 0, 0])  # x is the slowest axis
    np.testing.assert_array_equal(flat[:91], volumes[0][0, 0, :])  # z is the fastest axis
    assert list(example.features.feature["onehot"].int64_list.value) == [int(i == 9) for i in range(20)]


def test_keep_unlabeled_and_batch_reader(tmp_path, volumes, states):
    calls = []

    def read(start, stop):
        calls.append((start, stop))
        return volumes[start:stop]

    path = tmp_path / "all.tfrecords"
    assert tfrecord.write_run_tfrecord(path, read, states, 3, 100307, 1, 0.72, skip_unlabeled=False) == 5
    records = list(tfrecord.read_tfrecord(path))
    assert calls == [(0, 5)]
    assert [r["state"] for r in records] == [0, -1, 4, 1, -1]
    assert [int(r["onehot"].sum()) for r in records] == [1, 0, 1, 1, 0]
    np.testing.assert_array_equal(np.stack([r["volume"] for r in records]), volumes)


def test_invalid_input_leaves_no_file(tmp_path, volumes):
    path = tmp_path / "bad.tfrecords"
    with pytest.raises(ValueError, match="not a state of task MOTOR"):
        tfrecord.write_run_tfrecord(path, volumes[:1], [16], "MOTOR", 1, 0, 0.72)  # WM_body in a MOTOR run
    with pytest.raises(ValueError, match="shape"):
        tfrecord.write_run_tfrecord(path, [np.zeros((91, 109, 90), np.float32)], [7], "MOTOR", 1, 0, 0.72)
    with pytest.raises(ValueError):
        tfrecord.write_run_tfrecord(path, volumes[:2], [7], "MOTOR", 1, 0, 0.72)  # more volumes than states
    with pytest.raises(ValueError, match="one-hot index"):
        tfrecord.write_run_tfrecord(path, volumes[:1], [20], "MOTOR", 1, 0, 0.72)
    assert list(tmp_path.iterdir()) == []


_SERIALISE = """
import hashlib, sys
import numpy as np
import tensorflow as tf
from deeplight_bids.hcp import tfrecord
volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
sys.stdout.write(hashlib.sha256(tfrecord._example(tf, volume, 3, 1, 100307, 0, 0.72)).hexdigest())
"""


def test_example_bytes_do_not_depend_on_the_hash_seed():
    """The features map is serialised in key order: the same volume gives the same bytes in every process."""
    import os
    import subprocess
    import sys

    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run([sys.executable, "-c", _SERIALISE], env=env, capture_output=True, text=True, check=True)
        digests.add(done.stdout.strip())
    assert len(digests) == 1 and len(digests.pop()) == 64

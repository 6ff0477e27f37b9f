"""``--nprocs`` is respected: TensorFlow's thread pools follow it, and the log says so.

Each check runs in a fresh process (TensorFlow's thread pools can be set only before
TensorFlow initialises, so the test process itself cannot show it).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

THREADS = re.compile(r"TensorFlow threads: intra-op (\d+), inter-op (\d+) \(--nprocs (\d+)\)")


def _cli(*args):
    code = "import sys; from deeplight_bids.cli.main import main; sys.exit(main())"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from deeplight_bids.demo.synth import make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("nprocs") / "bids", n_participants=1, n_volumes=20, blocks_per_state=1
    )


def test_cli_nprocs_1_sets_one_intra_op_thread(tiny_dataset, tmp_path):
    # Weights that do not exist: the run stops right after the threads are set (before
    # any model is loaded), which keeps the test fast.
    proc = _cli(
        str(tiny_dataset.bids_dir),
        str(tmp_path / "out"),
        "participant",
        "--skip-bids-validation",
        "--nprocs",
        "1",
        "--weights",
        str(tmp_path / "missing.keras"),
    )
    found = THREADS.findall(proc.stderr)
    assert found, proc.stderr[-2000:]
    assert found[-1] == ("1", "1", "1")
    assert "already initialised" not in proc.stderr


def test_configure_threads_caps_inter_op_at_two():
    code = (
        "import logging, sys; logging.basicConfig(stream=sys.stderr, level=logging.INFO); "
        "from deeplight_bids.runtime import configure_threads; configure_threads(3); "
        "import tensorflow as tf; print(tf.config.threading.get_intra_op_parallelism_threads(), "
        "tf.config.threading.get_inter_op_parallelism_threads())"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["3", "2"]
    assert THREADS.findall(proc.stderr) == [("3", "2", "3")]

"""Keras backend selection (deeplight_bids.backend, --backend)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from deeplight_bids import backend

REPO = Path(__file__).resolve().parents[1]


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="tensorflow, jax, torch"):
        backend.select_backend("mxnet")


def test_backend_cannot_change_once_keras_is_imported():
    import keras

    current = keras.backend.backend()
    assert backend.select_backend(current) == current
    other = next(b for b in backend.BACKENDS if b != current)
    with pytest.raises(ValueError, match="new process"):
        backend.select_backend(other)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX not installed")
def test_select_backend_sets_keras_backend_before_import():
    code = (
        "from deeplight_bids import backend; backend.select_backend('jax'); import keras, sys; "
        "print(keras.backend.backend(), 'tensorflow' in sys.modules, backend.versions()['backend'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    assert out == ["jax", "False", "jax"]


def test_missing_backend_package_is_one_line_usage_error(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    hidden = tmp_path / "hide_torch"  # a torch module that fails to import, whether or not PyTorch is installed
    hidden.mkdir()
    (hidden / "torch.py").write_text("raise ImportError('No module named torch (hidden by the test)')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "deeplight_bids", str(bids), str(tmp_path / "out"), "participant", "--backend", "torch"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": f"{hidden}:{REPO}", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 2
    assert "--backend" in proc.stderr and "deeplight-bids[torch]" in proc.stderr and "Traceback" not in proc.stderr

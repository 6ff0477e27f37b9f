"""Every attribution method equals its reference implementation (Captum, zennit) on the PyTorch backend.

``benchmarks/attribution_parity.py`` runs under ``KERAS_BACKEND=torch`` in a child process
(Keras fixes the backend per process): Captum on the Keras model itself, zennit's
composites on the PyTorch twin of 3D-DeepLight (the same weights).  Tolerance: 1e-4 of
max |R| (issue 25); measured on the full grid, float32: gradient and gradient x input 0
(the same graph, differentiated by both), integrated gradients 5.6e-8, SmoothGrad 5.8e-8
(the same noise draws), epsilon 3.0e-6, epsilon_plus 2.5e-7, alpha2_beta1 4.6e-7.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import attribution_parity

MISSING = [m for m in ("torch", "captum", "zennit") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING) and not os.environ.get("DEEPLIGHT_REQUIRE_REFERENCES"),
    reason=f"not installed: {', '.join(MISSING)} (pip install '.[test]' torch==2.14.1 torchvision==0.29.1)",
)
TOLERANCE = 1e-4


def run_parity(out, grid, volumes, backend="torch", extra=()):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "attribution_parity.py"),
            "--grid",
            grid,
            "--volumes",
            str(volumes),
            "--out",
            str(out),
            *extra,
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=1800,
    )
    result = np.load(out)
    assert str(result["backend"]) == backend
    return result


def check(result):
    assert attribution_parity.compare(result["ours_logits"], result["reference_logits"]) < 1e-5
    errors = {
        method: attribution_parity.compare(result[f"{method}_ours"], result[f"{method}_reference"])
        for method in attribution_parity.METHODS
    }
    assert all(error <= TOLERANCE for error in errors.values()), errors
    for method in attribution_parity.METHODS:  # not vacuous: every map has signal
        assert np.abs(result[f"{method}_reference"]).max() > 0, method


def test_every_method_equals_its_reference_on_a_small_grid(tmp_path):
    check(run_parity(tmp_path / "small.npz", "small", 2))


@pytest.mark.slow
def test_every_method_equals_its_reference_on_the_full_grid(tmp_path):
    check(run_parity(tmp_path / "full.npz", "full", 1))


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_the_other_backends_compute_the_same_maps(tmp_path, backend):
    """Ours under TensorFlow and JAX equal ours under PyTorch (keras.ops, small grid, float32)."""
    pytest.importorskip(backend)
    torch_result = run_parity(tmp_path / "torch.npz", "small", 2, extra=("--ours-only",))
    other = run_parity(tmp_path / f"{backend}.npz", "small", 2, backend=backend, extra=("--ours-only",))
    assert attribution_parity.compare(other["ours_logits"], torch_result["ours_logits"]) < 1e-5
    for method in attribution_parity.METHODS:
        error = attribution_parity.compare(other[f"{method}_ours"], torch_result[f"{method}_ours"])
        assert error <= 1e-3, (method, error)

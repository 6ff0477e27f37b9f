"""The same weights give the same logits and relevance under TensorFlow, JAX and PyTorch.

Each backend runs in its own process (Keras fixes the backend per process):
``benchmarks/parity_cases.py`` computes 3D preset B-flat and 2D ``deeplight_2d`` /
``deeplight_2d_signed`` on fixed seeded models and inputs.  Small grid here; the full
grid (with the published 2D weights) is the slow test.  JAX and PyTorch are compared
with TensorFlow.  PyTorch runs where it is installed: its CPU build
(``pip install torch==2.14.1 torchvision==0.29.1`` takes both from the CI machines' wheel folder)
is part of CI; elsewhere run ``pip install torch --index-url
https://download.pytorch.org/whl/cpu`` first (see docs/backends.rst).

Tolerances (issue 15: logits 1e-5 relative, relevance 1e-4 of max |R|):

- float64 (same float32 weights and inputs, models in float64): every case, 3D
  included, agrees to 1e-4 of max |R| (measured on the small grid against TensorFlow:
  3D 4.2e-5 JAX, 1.2e-5 PyTorch; 2D <= 3.8e-7).  What is left is Keras' own
  BatchNormalization, which under the JAX and PyTorch backends computes in float32 even
  in a float64 model (``keras.src.backend.result_type("float64", "float32")`` is
  float32 there).  So the backends compute the same rules.
- float32 2D: 1e-4 (measured <= 1.3e-5).
- float32 3D: 2e-3 (measured 8.9e-4 TensorFlow vs JAX, 2.3e-5 TensorFlow vs PyTorch).
  This is float32 rounding, not a difference between the rules: preset B-flat's
  alpha-beta rule divides by ``z_i`` with no epsilon (iNNvestigate's convention), and
  on this seed one unit of ``conv_12`` has ``z_i = 2.4e-4`` as the sum of terms whose
  magnitudes add up to 2.17 (condition number ~9e3); a few float32 ulps of that sum
  move ``R_out / z_i`` by ~1e-3, and that unit dominates the map.  Against a float64
  run, TensorFlow's float32 map is off by 1.3e-3 of max |R|, JAX's by 4.4e-4 and
  PyTorch's by 1.3e-3 (TensorFlow and PyTorch share oneDNN's summation order, JAX's
  XLA kernels sum differently).  No float32 summation order can do better on such a
  unit; 1e-4 is reached in float64 (above).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import parity_cases

TOLERANCE = {"3d": 2e-3, "2d": 1e-4, "2d_signed": 1e-4}
TOLERANCE_FLOAT64 = {"3d": 1e-4, "2d": 1e-4, "2d_signed": 1e-4}
TORCH_MISSING = (
    "PyTorch not installed (pip install torch==2.14.1 torchvision==0.29.1 on the CI machines; see docs/backends.rst)"
)
OTHER_BACKENDS = [
    "jax",
    pytest.param("torch", marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason=TORCH_MISSING)),
]


def run_backend(backend, out, grid, extra=()):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "parity_cases.py"), "--grid", grid, "--out", str(out), *extra],
        env=env,
        check=True,
        capture_output=True,
        timeout=1800,
    )
    result = np.load(out)
    assert str(result["backend"]) == backend
    return result


def check(results, tolerance, min_r=0.99999):
    for case, numbers in results.items():
        assert numbers["logits_rel"] < 1e-5, (case, numbers)
        assert numbers["relevance_of_max"] < tolerance[case], (case, numbers)
        assert numbers["pearson_r"] > min_r, (case, numbers)


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """``runs(backend, dtype)``: that backend's small-grid results, computed once per module."""
    folder, cache = tmp_path_factory.mktemp("parity"), {}

    def runs(backend, dtype):
        if (backend, dtype) not in cache:
            cache[backend, dtype] = run_backend(backend, folder / f"{backend}_{dtype}.npz", "small", ("--dtype", dtype))
        return cache[backend, dtype]

    return runs


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backend_agrees_with_tensorflow_on_a_small_grid(small_runs, backend):
    check(parity_cases.compare(small_runs("tensorflow", "float32"), small_runs(backend, "float32")), TOLERANCE)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backend_agrees_with_tensorflow_to_1e4_in_float64(small_runs, backend):
    reference = small_runs("tensorflow", "float64")
    assert str(reference["dtype"]) == "float64" and reference["3d_logits"].dtype == np.float64
    check(parity_cases.compare(reference, small_runs(backend, "float64")), TOLERANCE_FLOAT64)


def test_float32_3d_spread_is_float32_rounding(small_runs):
    """Each float32 backend is as far from the float64 result as the backends are from each other."""
    exact = small_runs("tensorflow", "float64")
    for backend in ("tensorflow", "jax"):
        error = parity_cases.compare(exact, small_runs(backend, "float32"))["3d"]["relevance_of_max"]
        assert 1e-4 < error < TOLERANCE["3d"], (backend, error)


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backend_agrees_with_tensorflow_on_the_full_grid(tmp_path_factory, backend, published_2d_weights):
    folder = tmp_path_factory.getbasetemp() / "parity_full"
    folder.mkdir(exist_ok=True)
    extra = ("--weights-2d", str(published_2d_weights), "--volumes", "1")
    reference_file = folder / "tensorflow.npz"
    tf_result = (
        np.load(reference_file)
        if reference_file.is_file()
        else run_backend("tensorflow", reference_file, "full", extra)
    )
    other = run_backend(backend, folder / f"{backend}.npz", "full", extra)
    results = parity_cases.compare(tf_result, other)
    # the published +eps rule (deeplight_2d) is ill-conditioned on the published weights (see
    # test_deeplight_2d_published.py): float32 rounding alone moves it by ~0.5 % of max |R|, and
    # TensorFlow vs JAX summation orders by 1.8e-2 of max |R| (Pearson r 0.99983), vs PyTorch by 7.7e-4
    # (measured 2026-11-30).  The signed composite has no near-zero denominator and is held to the
    # issue's 1e-4 (measured 1.2e-5 JAX, 5.4e-6 PyTorch).
    check(results, {**TOLERANCE, "2d": 3e-2, "3d": 1e-2}, min_r=0.999)

"""The same weights give the same logits and relevance under TensorFlow and JAX.

Each backend runs in its own process (Keras fixes the backend per process):
``benchmarks/parity_cases.py`` computes 3D preset B-flat and 2D ``deeplight_2d`` /
``deeplight_2d_signed`` on fixed seeded models and inputs.  Small grid here; the full
grid (with the published 2D weights) is the slow test.  PyTorch parity runs in
``benchmarks/gpu_check.py`` (PyTorch is not installed here).

Tolerances: logits 1e-5 relative; relevance 1e-4 of max |R| for 2D.  3D's alpha-beta
rule divides by ``z_a`` / ``z_i`` with no epsilon (iNNvestigate's convention), so
single voxels where a denominator is near zero move with the backends' different
convolution summation orders: measured 8.9e-4 of max |R| on the small grid (Pearson r
0.9999999), so 3D is held to 2e-3 and r > 0.99999.
"""

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


def run_backend(backend, out, grid, extra=()):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "parity_cases.py"), "--grid", grid, "--out", str(out),
                    *extra], env=env, check=True, capture_output=True, timeout=1800)
    return np.load(out)


def check(results, tolerance, min_r=0.99999):
    for case, numbers in results.items():
        assert numbers["logits_rel"] < 1e-5, (case, numbers)
        assert numbers["relevance_of_max"] < tolerance[case], (case, numbers)
        assert numbers["pearson_r"] > min_r, (case, numbers)


def test_tensorflow_and_jax_agree_on_a_small_grid(tmp_path):
    tf_result = run_backend("tensorflow", tmp_path / "tf.npz", "small")
    jax_result = run_backend("jax", tmp_path / "jax.npz", "small")
    assert str(jax_result["backend"]) == "jax" and str(tf_result["backend"]) == "tensorflow"
    check(parity_cases.compare(tf_result, jax_result), TOLERANCE)


@pytest.mark.slow
def test_tensorflow_and_jax_agree_on_the_full_grid(tmp_path, published_2d_weights):
    extra = ("--weights-2d", str(published_2d_weights), "--volumes", "1")
    tf_result = run_backend("tensorflow", tmp_path / "tf.npz", "full", extra)
    jax_result = run_backend("jax", tmp_path / "jax.npz", "full", extra)
    # the published +eps rule is ill-conditioned on the published weights (see
    # test_deeplight_2d_published.py): float32 rounding alone moves it by ~0.5 % of max |R|, and
    # TensorFlow vs JAX summation orders by 1.8e-2 of max |R| (Pearson r 0.99983; measured 2026-11-30)
    check(parity_cases.compare(tf_result, jax_result), {**TOLERANCE, "2d": 3e-2, "2d_signed": 3e-2, "3d": 1e-2},
          min_r=0.999)

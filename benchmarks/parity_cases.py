"""Logits and relevance of fixed models and inputs under the Keras backend of this process.

``KERAS_BACKEND=jax python benchmarks/parity_cases.py --grid small --out jax.npz`` writes,
for 3D-DeepLight (random weights, seed 3, preset B-flat) and 2D-DeepLight (random
weights on the small grid, the published weights on the full grid; composites
``deeplight_2d`` and ``deeplight_2d_signed``), ``<case>_logits`` and
``<case>_relevance`` for the same seeded inputs.  Run it once per backend (Keras fixes
the backend per process) and compare the files (``tests/lrp/test_backend_parity.py``,
``benchmarks/gpu_check.py``).
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.models.legacy_h5 import randomise_weights as randomise

GRIDS = {"small": {"3d": (8, 10, 8, 1), "2d": (4, 16, 12, 1)}, "full": {"3d": (91, 109, 91, 1), "2d": (91, 109, 91, 1)}}


CASES = ("3d", "2d", "2d_signed")


def use_dtype(dtype):
    """Build models in ``dtype`` from here on (float64 also switches on JAX's 64-bit mode, before any JAX array)."""
    import keras

    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    keras.config.set_dtype_policy(dtype)


def models(grid, weights_2d=None, dtype="float32"):
    """``{case: (model, composite)}`` for the grid, parameters in ``dtype`` (float32 values either way)."""
    from deeplight_bids.models.published_2d import (
        convert_published_2d,
        load_published_2d,
    )
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.two import build_2d_deeplight

    use_dtype(dtype)
    shapes = GRIDS[grid]
    model_3d = randomise(build_3d_deeplight(n_states=3, input_shape=shapes["3d"]), seed=3)
    if grid == "full" and weights_2d:
        model_2d = convert_published_2d(load_published_2d(weights_2d))
    else:
        model_2d = randomise(build_2d_deeplight(n_states=4, input_shape=shapes["2d"]), seed=4)
    return {
        "3d": (model_3d, "preset_b_flat"),
        "2d": (model_2d, "deeplight_2d"),
        "2d_signed": (model_2d, "deeplight_2d_signed"),
    }


def inputs(shape, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def compute(grid, n_volumes=2, weights_2d=None, dtype="float32", cases=CASES):
    """``{"<case>_logits": (n, states), "<case>_relevance": (n, z, y, x)}`` under this process's backend.

    ``dtype="float64"`` runs the same float32 weights and inputs in float64 (outputs
    float32): what is left between backends is then their arithmetic, not float32 rounding.
    """
    from deeplight_bids.lrp.analyzer import LRPAnalyzer
    from deeplight_bids.models.decode import Decoder

    out = {}
    for case, (model, composite) in models(grid, weights_2d, dtype).items():
        if case not in cases:
            continue
        x = inputs(tuple(model.inputs[0].shape[1:]), n_volumes)
        logits, relevance = LRPAnalyzer(model, composite=composite).explain(x)
        np.testing.assert_allclose(Decoder(model).logits(x), logits, rtol=1e-4, atol=1e-4)
        out[f"{case}_logits"] = logits
        out[f"{case}_relevance"] = relevance
    return out


def compare(reference, other, cases=CASES):
    """``{case: {"logits_rel": max relative logit error, "relevance_of_max": max |dR| / max |R|, "pearson_r"}}``."""
    result = {}
    for case in cases:
        ref_l, l = reference[f"{case}_logits"], other[f"{case}_logits"]
        ref_r, r = reference[f"{case}_relevance"], other[f"{case}_relevance"]
        result[case] = {
            "logits_rel": float(np.max(np.abs(l - ref_l)) / max(np.max(np.abs(ref_l)), 1e-30)),
            "relevance_of_max": float(np.max(np.abs(r - ref_r)) / max(np.max(np.abs(ref_r)), 1e-30)),
            "pearson_r": float(np.corrcoef(r.ravel(), ref_r.ravel())[0, 1]),
        }
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="small")
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--weights-2d", help="published 2D .npy (full grid; default: random 2D weights)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="compute dtype of the models (the weights and inputs are float32 values either way)",
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import keras

    arrays = compute(args.grid, args.volumes, args.weights_2d, args.dtype, args.cases)
    np.savez_compressed(
        args.out,
        backend=np.array(keras.backend.backend()),
        grid=np.array(args.grid),
        dtype=np.array(args.dtype),
        **arrays,
    )
    print(f"{os.environ.get('KERAS_BACKEND', 'tensorflow')}: wrote {args.out}")


if __name__ == "__main__":
    main()

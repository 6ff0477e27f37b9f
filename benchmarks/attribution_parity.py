"""Every attribution method against its reference implementation (Captum, zennit), on the PyTorch backend.

``KERAS_BACKEND=torch python benchmarks/attribution_parity.py --grid small --out parity.npz``
builds 3D-DeepLight (random weights with non-trivial batch-norm statistics, seed 3), its
PyTorch twin (:mod:`torch_twin`, the same weights), and seeded inputs, then computes each
method twice, ours (:mod:`deeplight_bids.attribution`, Keras on PyTorch) and the
reference's on the twin, for the predicted state:

Captum runs on the Keras model itself (on this backend a ``torch.nn.Module``), zennit on the
twin (its hooks need PyTorch's layer types):

- ``gradient``: Captum ``Saliency(abs=False)``;
- ``gradient_x_input``: Captum ``InputXGradient``;
- ``integrated_gradients``: Captum ``IntegratedGradients``, baseline 0, the same steps
  and ``method="riemann_middle"``;
- ``smoothgrad``: Captum ``NoiseTunnel(Saliency(abs=False))``, ``nt_type="smoothgrad"``,
  the same samples and noise SD, and the same noise draws (Captum draws from PyTorch's
  generator, seeded here; ours is handed the same draws);
- ``epsilon``, ``epsilon_plus``, ``alpha2_beta1``: zennit 0.5.1's composites
  (``LayerMapComposite`` with ``Epsilon`` on convolutions, ``EpsilonPlus``,
  ``EpsilonAlpha2Beta1``) on the twin, relevance starting at the predicted logit.

It writes, per method, ``<method>_ours`` and ``<method>_reference`` (maps, ``(n, z, y,
x)``) and the logits of both models; ``tests/attribution/test_reference_parity.py`` and
:func:`compare` compare them (largest difference relative to the largest magnitude).
``--ours-only`` skips the references (any backend; for the cross-backend test).
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

GRIDS = {"small": (12, 14, 12, 1), "full": (91, 109, 91, 1)}
GRADIENT_METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad")
LRP_METHODS = ("epsilon", "epsilon_plus", "alpha2_beta1")
METHODS = GRADIENT_METHODS + LRP_METHODS
PARAMETERS = {"steps": 16, "samples": 8, "noise": 0.2, "seed": 0, "epsilon": 0.25}
#: Captum's and our batches of derived inputs (integrated gradients' steps, SmoothGrad's samples).
INTERNAL_BATCH = 4


def use_dtype(dtype):
    """Build models and inputs in ``dtype`` from here on (Keras' dtype policy and floatx)."""
    import keras

    keras.config.set_dtype_policy(dtype)
    keras.config.set_floatx(dtype)


def model_and_inputs(grid, n_volumes, n_states=3):
    from tests.models.legacy_h5 import randomise_weights

    from deeplight_bids.models.three import build_3d_deeplight

    model = randomise_weights(build_3d_deeplight(n_states=n_states, input_shape=GRIDS[grid]), seed=3)
    import keras

    x = np.random.default_rng(0).standard_normal((n_volumes, *GRIDS[grid])).astype(np.float32)
    x = x.astype(keras.config.floatx())
    return model, x


def captum_noise(x_one, samples, sd, seed):
    """The noise Captum's NoiseTunnel draws for one input ``(z, y, x, 1)``: ``INTERNAL_BATCH`` samples per draw."""
    import torch

    torch.manual_seed(seed)
    draws, left = [], samples
    while left > 0:
        size = min(INTERNAL_BATCH, left)
        expanded = torch.tensor(sd).repeat((size, *x_one.shape))  # float32, as Captum's
        draws.append(torch.normal(0, expanded).numpy().astype(x_one.dtype))
        left -= size
    return np.concatenate(draws)


def ours(model, x, method, noise=None):
    from deeplight_bids.attribution.methods import get_method

    explainer = get_method(method).explainer(model, max_batch=INTERNAL_BATCH, stem_batch=None, **PARAMETERS)
    if method == "smoothgrad" and noise is not None:
        return explainer.explain_with_noise(x, None, noise)
    return explainer.explain(x)


def zennit_composite(method, eps):
    """zennit's composite for one of :data:`LRP_METHODS` (epsilon ``eps``, every other stabiliser 1e-6)."""
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlus, LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.types import Convolution, Linear

    if method == "epsilon":  # zennit has no preset of that name: the layer map it would be
        return LayerMapComposite(layer_map=layer_map_base(1e-6) + [(Convolution, Epsilon(eps)), (Linear, Epsilon(eps))])
    if method == "epsilon_plus":
        return EpsilonPlus(epsilon=eps, stabilizer=1e-6)
    return EpsilonAlpha2Beta1(epsilon=eps, stabilizer=1e-6)


def references(model, x, methods):
    """``{method: maps}`` from Captum (on the Keras model itself, a ``torch.nn.Module`` on this backend) and
    zennit (on the PyTorch twin, whose layer types its hooks know), and the twin's logits."""
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
    from torch_twin import build_twin, channels_first, export_keras

    def forward(inputs):
        return model(inputs, training=False)

    arrays, layers = export_keras(model)
    twin = build_twin(arrays, layers, x.shape[1:4])
    inputs = torch.from_numpy(x)  # channels-last, as the Keras model takes it
    with torch.no_grad():
        logits = twin(channels_first(x)).numpy()
    target = torch.from_numpy(logits.argmax(axis=1))
    out, noises = {}, {}
    for method in methods:
        if method == "gradient":
            maps = Saliency(forward).attribute(inputs.clone(), target=target, abs=False)
        elif method == "gradient_x_input":
            maps = InputXGradient(forward).attribute(inputs.clone(), target=target)
        elif method == "integrated_gradients":
            maps = IntegratedGradients(forward).attribute(
                inputs.clone(),
                baselines=0.0,
                target=target,
                n_steps=PARAMETERS["steps"],
                method="riemann_middle",
                internal_batch_size=INTERNAL_BATCH,
            )
        elif method == "smoothgrad":
            parts, noise = [], []
            for i in range(len(x)):  # Captum's noise SD is one number per call: one volume per call
                sd = PARAMETERS["noise"] * float(x[i].std(dtype=np.float64))
                seed = 1000 + i
                noise.append(captum_noise(x[i], PARAMETERS["samples"], sd, seed))
                torch.manual_seed(seed)
                parts.append(
                    NoiseTunnel(Saliency(forward)).attribute(
                        inputs[i : i + 1].clone(),
                        nt_type="smoothgrad",
                        nt_samples=PARAMETERS["samples"],
                        nt_samples_batch_size=INTERNAL_BATCH,
                        stdevs=sd,
                        target=target[i : i + 1],
                        abs=False,
                    )
                )
            maps = torch.cat(parts)
            noises[method] = np.stack(noise)
        else:
            composite = zennit_composite(method, PARAMETERS["epsilon"])
            with composite.context(twin) as modified:
                leaf = channels_first(x).requires_grad_(True)
                result = modified(leaf)
                start = torch.nn.functional.one_hot(target, result.shape[1]).to(result.dtype) * result
                (maps,) = torch.autograd.grad(result, leaf, grad_outputs=start.detach())
            maps = maps.permute(0, 2, 3, 4, 1)  # channels-last, as the others
        out[method] = maps.detach()[..., 0].numpy()
    return logits, out, noises


def compute(grid, n_volumes, methods, ours_only=False):
    import keras

    model, x = model_and_inputs(grid, n_volumes)
    result = {"backend": np.array(keras.backend.backend()), "grid": np.array(grid)}
    noises = {}
    if not ours_only:
        twin_logits, reference_maps, noises = references(model, x, methods)
        result["reference_logits"] = twin_logits
        for method, maps in reference_maps.items():
            result[f"{method}_reference"] = maps
    for method in methods:
        logits, maps = ours(model, x, method, noises.get(method))
        result["ours_logits"] = logits
        result[f"{method}_ours"] = maps
    return result


def compare(a, b):
    """``max |a - b| / max |b|``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="small")
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--ours-only", action="store_true", help="skip Captum and zennit (any Keras backend)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="models and inputs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.ours_only and os.environ.get("KERAS_BACKEND") != "torch":
        parser.error("the references run on the PyTorch backend: set KERAS_BACKEND=torch (or use --ours-only)")
    use_dtype(args.dtype)
    result = compute(args.grid, args.volumes, args.methods, args.ours_only)
    np.savez(args.out, **result)
    if not args.ours_only:
        print(f"logits: {compare(result['ours_logits'], result['reference_logits']):.2e} of max")
        for method in args.methods:
            print(f"{method}: {compare(result[f'{method}_ours'], result[f'{method}_reference']):.2e} of max |R|")


if __name__ == "__main__":
    main()

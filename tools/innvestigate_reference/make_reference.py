"""Write ``tests/data/innvestigate_3d_reference.npz``: iNNvestigate's LRP of a small 3D-DeepLight.

Runs in a *separate* virtualenv with TensorFlow 2.14 (tf.keras 2) and iNNvestigate 2.1.2
(see README.md next to this file); it does not import TensorFlow from the main project.

It builds a small-grid copy of 3D-DeepLight (same layer sequence and types as
``deeplight_bids.models.three.build_3d_deeplight``; input ``(12, 14, 12, 1)`` in
z, y, x order, 4 states) with random weights and random, non-trivial BatchNormalization
statistics, and runs iNNvestigate as the published code did::

    LRPSequentialPresetBFlat(model, neuron_selection_mode="index", epsilon=1e-6, bn_layer_rule=None)

with eager execution disabled.

Stored arrays (all float32 unless said otherwise)
-------------------------------------------------
weight_names : str, (n_weights,)
    ``"<layer>/<variable>"`` in ``model.get_weights()`` order (conv kernel, bias; BN
    gamma, beta, moving_mean, moving_variance).
weight_<i> : the i-th weight, except conv kernels, stored as
kernel_levels_<i> : int8 and kernel_scale_<i> : float32 scalar (a power of two), with
    ``kernel = levels * scale`` exactly in float32 (keeps the file small; the model uses
    exactly these values).
inputs : (n_samples, 12, 14, 12, 1)
logits : (n_samples, 4)
targets_predicted, targets_second : int64, (n_samples,)
    argmax of the logits, and the index of the second-largest logit.
relevance_predicted, relevance_second : (n_samples, 12, 14, 12)
    iNNvestigate's relevance for those targets (channel axis dropped).
input_shape, n_states, seed : int
innvestigate_version, tensorflow_version, analyzer : str
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
from deeplight_bids.models.three import CONV_BLOCKS_3D  # noqa: E402  (pure NumPy module)

INPUT_SHAPE = (12, 14, 12, 1)
N_STATES = 4
N_SAMPLES = 3
EPSILON = 1e-6


def patch_innvestigate_batchnorm():
    """tf.keras 2.14 stores BatchNormalization's ``axis`` as a list; iNNvestigate indexes with it.

    Convert the one-element list to the integer iNNvestigate 1.0.8 saw (runtime patch, no
    edits to site-packages).
    """
    from innvestigate.analyzer.relevance_based import relevance_analyzer

    reverse_layer = relevance_analyzer.BatchNormalizationReverseLayer
    original_init = reverse_layer.__init__

    def init_with_integer_axis(self, layer, state):
        original_init(self, layer, state)
        if isinstance(self._axis, (list, tuple)):
            (self._axis,) = self._axis

    reverse_layer.__init__ = init_with_integer_axis


def build_model(keras):
    """The 3D-DeepLight layer sequence on ``INPUT_SHAPE`` in tf.keras 2 (dropout 0.2)."""
    layers = keras.layers
    model = keras.Sequential(name="DeepLight3D")
    model.add(keras.Input(shape=INPUT_SHAPE, name="volume"))
    for i, (filters, stride) in enumerate(CONV_BLOCKS_3D, start=1):
        model.add(layers.Conv3D(filters, 3, strides=stride, padding="same", activation="relu", name=f"conv_{i}"))
        model.add(layers.SpatialDropout3D(0.2, name=f"dropout_{i}"))
        model.add(layers.BatchNormalization(name=f"bn_{i}"))
    n = len(CONV_BLOCKS_3D) + 1
    model.add(layers.Conv3D(N_STATES, 1, strides=1, padding="same", activation=None, name=f"conv_{n}"))
    model.add(layers.Activation("relu", name="relu_out"))
    model.add(layers.SpatialDropout3D(0.2, name=f"dropout_{n}"))
    model.add(layers.GlobalAveragePooling3D(name="global_average"))
    return model


def random_kernel(rng, shape):
    """Random He-scaled kernel as int8 levels in [-7, 7] times a power-of-two scale."""
    fan_in = int(np.prod(shape[:-1]))
    he_std = np.sqrt(2.0 / fan_in)
    scale = np.float32(2.0 ** np.round(np.log2(he_std / 1.5)))
    levels = np.clip(np.round(rng.normal(0.0, he_std / scale, size=shape)), -7, 7).astype(np.int8)
    return levels, scale


def set_random_weights(model, inputs, rng):
    """Random conv weights; BN statistics near the batch statistics of ``inputs``, perturbed.

    Calibrating the moving statistics keeps activations alive through 13 layers (and the
    logits non-zero) while mean / variance / gamma / beta all differ from the identity.
    Returns ``{weight index: (levels, scale)}`` for the kernels.
    """
    import tensorflow as tf

    kernels = {}
    activation = tf.constant(inputs)
    session = tf.compat.v1.keras.backend.get_session()
    weight_index = 0
    for layer in model.layers:
        if "conv" in layer.name:
            kernel_shape, bias_shape = (tuple(w.shape) for w in layer.get_weights())
            levels, scale = random_kernel(rng, kernel_shape)
            # Final conv: positive bias so that several logits survive the output ReLU.
            bias_mean = 0.3 if layer.name == f"conv_{len(CONV_BLOCKS_3D) + 1}" else 0.0
            bias = rng.normal(bias_mean, 0.1, size=bias_shape).astype(np.float32)
            layer.set_weights([levels.astype(np.float32) * scale, bias])
            kernels[weight_index] = (levels, scale)
        elif "bn" in layer.name:
            values = session.run(activation)
            axes = tuple(range(values.ndim - 1))
            mean, var = values.mean(axis=axes), values.var(axis=axes)
            n_channels = mean.shape[0]
            gamma = rng.uniform(0.5, 1.5, n_channels) * rng.choice([1.0, 1.0, 1.0, -1.0], n_channels)
            beta = rng.normal(0.0, 0.2, n_channels)
            moving_mean = mean * rng.uniform(0.8, 1.2, n_channels) + rng.normal(0.0, 0.05, n_channels)
            moving_var = (var + 1e-2) * rng.uniform(0.6, 1.6, n_channels)
            layer.set_weights([w.astype(np.float32) for w in (gamma, beta, moving_mean, moving_var)])
        weight_index += len(layer.get_weights())
        activation = layer(activation, training=False)
    return kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "tests" / "data" / "innvestigate_3d_reference.npz")
    parser.add_argument("--seed", type=int, default=20211103)
    args = parser.parse_args()

    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    import innvestigate
    from tensorflow import keras

    patch_innvestigate_batchnorm()
    rng = np.random.default_rng(args.seed)

    # z-scored-like volumes with a zero "outside the brain" border.
    inputs = rng.normal(0.0, 1.0, size=(N_SAMPLES, *INPUT_SHAPE)).astype(np.float32)
    inputs[:, :2] = 0.0
    inputs[:, :, -2:] = 0.0

    # Calibrate on a throw-away copy: calling its layers on extra tensors adds inbound
    # nodes, which iNNvestigate's graph walk (e.g. "is this the input layer?") would see.
    calibration_model = build_model(keras)
    kernels = set_random_weights(calibration_model, inputs, rng)
    model = build_model(keras)
    model.set_weights(calibration_model.get_weights())
    logits = model.predict(inputs, verbose=0)
    order = np.argsort(-logits, axis=1)
    targets_predicted, targets_second = order[:, 0], order[:, 1]
    chosen = np.take_along_axis(logits, np.stack([targets_predicted, targets_second], 1), axis=1)
    if not np.all(chosen > 0):
        raise SystemExit(f"seed {args.seed}: a target logit is 0 (dead output); choose another seed. logits={logits}")

    analyzer = innvestigate.analyzer.LRPSequentialPresetBFlat(
        model, neuron_selection_mode="index", epsilon=EPSILON, bn_layer_rule=None
    )
    relevance = {
        name: analyzer.analyze(inputs, neuron_selection=targets)[..., 0].astype(np.float32)
        for name, targets in (("predicted", targets_predicted), ("second", targets_second))
    }

    arrays = {}
    names = []
    for layer in model.layers:
        names += [f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}" for w in layer.weights]
    for i, value in enumerate(model.get_weights()):
        if i in kernels:
            arrays[f"kernel_levels_{i}"], arrays[f"kernel_scale_{i}"] = kernels[i]
        else:
            arrays[f"weight_{i}"] = value.astype(np.float32)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.output,
        weight_names=np.array(names),
        inputs=inputs,
        logits=logits.astype(np.float32),
        targets_predicted=targets_predicted.astype(np.int64),
        targets_second=targets_second.astype(np.int64),
        relevance_predicted=relevance["predicted"],
        relevance_second=relevance["second"],
        input_shape=np.array(INPUT_SHAPE),
        n_states=np.array(N_STATES),
        seed=np.array(args.seed),
        innvestigate_version=np.array(_distribution_version("innvestigate")),
        tensorflow_version=np.array(tf.__version__),
        analyzer=np.array(
            'LRPSequentialPresetBFlat(model, neuron_selection_mode="index", epsilon=1e-6, bn_layer_rule=None), '
            "eager execution disabled"
        ),
        **arrays,
    )
    for name, values in relevance.items():
        print(f"relevance_{name}: sum per sample {values.sum(axis=(1, 2, 3))}, max |R| {np.abs(values).max():.3g}")
    print(f"logits {logits}")
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")


def _distribution_version(name):
    from importlib.metadata import version

    return version(name)  # innvestigate.__version__ says 2.0.1 in the 2.1.2 wheel


if __name__ == "__main__":
    main()

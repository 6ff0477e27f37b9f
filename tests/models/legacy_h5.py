"""Write a Keras model's weights in the tf.keras 2.x whole-model HDF5 layout (test helper).

The published 3D-DeepLight file is such a whole-model save (root attributes
``keras_version``, ``backend``, ``model_config``; group ``model_weights`` with
``layer_names`` and one group per layer holding ``weight_names`` datasets).  The
real file is not available offline, so the loader is tested on files made here.
"""

import json

import h5py
import numpy as np


def write_keras2_whole_model_h5(model, path, layer_prefix="keras2_"):
    """Save ``model``'s weights the way tf.keras 2.x ``model.save('x.hdf5')`` lays them out."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.1.6-tf"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"name": "sequential_1"}}).encode()
        weights_group = f.create_group("model_weights")
        layer_names = []
        for layer in model.layers:
            name = f"{layer_prefix}{layer.name}"
            layer_names.append(name.encode())
            group = weights_group.create_group(name)
            weight_names = []
            for var in layer.weights:
                wname = f"{name}/{var.path.split('/')[-1]}:0"
                weight_names.append(wname.encode())
                group.create_dataset(wname, data=np.asarray(var.numpy()))
            group.attrs["weight_names"] = np.array(weight_names)
        weights_group.attrs["layer_names"] = np.array(layer_names)
        weights_group.attrs["backend"] = b"tensorflow"
        weights_group.attrs["keras_version"] = b"2.1.6-tf"


def randomise_weights(model, seed=0):
    """Random kernels/biases and non-trivial batch-norm statistics (variance > 0)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for var in layer.weights:
            shape = tuple(var.shape)
            leaf = var.path.split("/")[-1]
            if leaf == "moving_variance":
                new.append(rng.uniform(0.5, 2.0, shape).astype(np.float32))
            elif leaf == "gamma":
                new.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
            else:
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                new.append((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))
        if new:
            layer.set_weights(new)
    return model

"""Training under ``tf.distribute.MirroredStrategy`` (the multi-GPU path), on two logical CPU devices.

No machine here has several GPUs, so the test splits the CPU into two logical devices
(possible only before TensorFlow starts, hence a child process) and makes
:func:`deeplight_bids.models.train.training_devices` return a MirroredStrategy over them:
model building, compiling, fitting, checkpointing and resuming then run under the
strategy exactly as with two GPUs (minus NCCL).
"""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import deeplight_bids.models.train as train
    from deeplight_bids.models.input_pipeline import make_array_dataset

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    train.training_devices = lambda: (2, strategy, False)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)

    def build():
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])

    def data(start):
        return make_array_dataset(x, y, 16, seed=2, start_epoch=start)

    folder = Path(sys.argv[1])
    model, first = train.fit_resumable(build, None, folder, "fp", 6, 5e-2, make_train_data=data)
    variables_mirrored = all(isinstance(v.value, tf.distribute.DistributedValues) or "Mirrored" in type(v.value).__name__
                             for v in model.trainable_variables)
    model, resumed = train.fit_resumable(build, None, folder, "fp", 8, 5e-2, make_train_data=data)
    accuracy = float((np.asarray(model(x)).argmax(1) == y).mean())
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "first_epochs": first["epoch"],
                      "resumed_from": resumed["resumed_from"], "epochs": resumed["epoch"], "accuracy": accuracy,
                      "mirrored": variables_mirrored}))
""")


def test_fit_resumable_under_mirrored_strategy(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "train")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["mirrored"], "model variables were not created under the strategy"
    assert (result["first_epochs"], result["resumed_from"], result["epochs"]) == (6, 6, 8)
    assert result["accuracy"] > 0.9, result

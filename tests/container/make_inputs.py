#!/usr/bin/env python3
"""Write the inputs of the container test: a synthetic BIDS dataset and a random model.

Usage: ``make_inputs.py DATA_DIR MODEL_DIR``.  DATA_DIR gets a 2-participant, 24-volume
MOTOR dataset with fMRIPrep-style derivatives (:func:`make_synthetic_dataset`); MODEL_DIR
gets a 3D-DeepLight with random (seeded) weights as ``random-3d.keras`` plus its model card,
whose states are the dataset's states.
"""

import sys
import time
from pathlib import Path


def main(data_dir, model_dir):
    t0 = time.time()
    from deeplight_bids.demo.synth import make_synthetic_dataset

    info = make_synthetic_dataset(data_dir, n_participants=2, n_volumes=24)
    states = [info.state_map[s] for s in info.states]
    print(f"dataset: {info.bids_dir} participants {info.participants}, states {states} ({time.time() - t0:.1f} s)")

    import keras

    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.weights import save_model

    keras.utils.set_random_seed(0)
    model = build_3d_deeplight(len(states))
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    path = save_model(
        model, Path(model_dir) / "random-3d.keras", {"architecture": "3D", "states": states, "name": "random-3d"}
    )
    print(f"model: {path} ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))

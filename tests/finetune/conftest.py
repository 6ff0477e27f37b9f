"""Fine-tuning fixtures: one small generated dataset with a clear planted signal, made once.

4 participants, task motor (lh, rh, t), 30 volumes of TR 2 s (one 12 s block per state:
~15 labelled volumes per participant), signal 4 %, regions of radius 16 mm, full reference
grid.  One work folder is shared by the tests of this folder, so the runs are prepared once
(the cache is what is being reused).
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WEIGHTS_2D = "model-2D_DeepLight_desc-pretrained_model.npy"
STATES = ("MOTOR_lh", "MOTOR_rh", "MOTOR_t")


@pytest.fixture(scope="session")
def ft_dataset(tmp_path_factory):
    from deeplight_bids.demo.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("ft") / "bids"
    return make_synthetic_dataset(root, n_participants=4, n_volumes=30, seed=3, blocks_per_state=1, signal=4.0,
                                  region_radius=16.0)


@pytest.fixture(scope="session")
def ft_work(tmp_path_factory):
    return tmp_path_factory.mktemp("ft_work")


@pytest.fixture(scope="session")
def weights_dir():
    """The published 2D weights folder ($DEEPLIGHT_WEIGHTS_DIR or ../shared/weights), exported for the session."""
    candidates = [os.environ.get("DEEPLIGHT_WEIGHTS_DIR"), REPO_ROOT.parent / "shared" / "weights"]
    for folder in candidates:
        if folder and (Path(folder) / WEIGHTS_2D).is_file():
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("DEEPLIGHT_WEIGHTS_DIR", str(Path(folder).resolve()))
                yield Path(folder).resolve()
            return
    pytest.fail(f"published 2D weights {WEIGHTS_2D} not found in $DEEPLIGHT_WEIGHTS_DIR or {candidates[1]}")


def finetune_argv(dataset, out, work, *extra):
    return [str(dataset.bids_dir), str(out), "group", "--finetune", "-w", str(work), "--nprocs", "2",
            "--skip-bids-validation", *extra]

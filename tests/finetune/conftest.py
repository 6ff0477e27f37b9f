"""Fine-tuning fixtures: one small generated dataset with a clear planted signal, made once.

4 participants, task motor (lh, rh, t), 30 volumes of TR 2 s (one 12 s block per state:
~15 labelled volumes per participant), signal 4 %, regions of radius 16 mm, full reference
grid.  One work folder is shared by the tests of this folder, so the runs are prepared once
(the cache is what is being reused).
"""

import pytest

STATES = ("MOTOR_lh", "MOTOR_rh", "MOTOR_t")


@pytest.fixture(scope="session")
def ft_dataset(tmp_path_factory):
    from deeplight_bids.demo.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("ft") / "bids"
    return make_synthetic_dataset(
        root, n_participants=4, n_volumes=30, seed=3, blocks_per_state=1, signal=4.0, region_radius=16.0
    )


@pytest.fixture(scope="session")
def ft_work(tmp_path_factory):
    return tmp_path_factory.mktemp("ft_work")


@pytest.fixture(scope="session")
def weights_dir(published_2d_weights):
    """The published 2D weights folder (tests/conftest.py finds it), exported as DEEPLIGHT_WEIGHTS_DIR for the session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPLIGHT_WEIGHTS_DIR", str(published_2d_weights.parent))
        yield published_2d_weights.parent


def finetune_argv(dataset, out, work, *extra):
    return [
        str(dataset.bids_dir),
        str(out),
        "group",
        "--finetune",
        "-w",
        str(work),
        "--nprocs",
        "2",
        "--skip-bids-validation",
        *extra,
    ]

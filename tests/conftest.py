"""Shared fixtures: small synthetic datasets written once per test session.

The datasets are on the full reference grid (91 x 109 x 91) but short (30 volumes, one
12 s block per state: short runs with two blocks per state have too little rest for a
clear planted signal), so writing one takes about a second.  ``sub-01`` has the same
data in every one of them (same seed), which the orientation tests use.

Markers (registered in pyproject.toml, ``--strict-markers``): ``slow`` (full-grid CLI runs,
the demo, live SLURM, docs build: CI runs them, the fast lane ``pytest -m "not slow"`` does
not), ``browser`` (headless Chromium), ``weights`` (the published 2D weights; set here on every
test that requests :func:`published_2d_weights`).
"""

import fcntl
import hashlib
import os
import pickle
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

SYNTH_VOLUMES = 30
#: --quality-volumes of in-process CLI calls in tests (:func:`fewer_quality_volumes`); the default
#: (``config.default("quality_volumes")``) is what the demo and its test use.
TEST_QUALITY_VOLUMES = 4


def build_once(tmp_path_factory, name, build):
    """``build(folder)`` once per test session, however many xdist workers ask for it.

    Under pytest-xdist every worker has its own session fixtures, so an expensive one that
    modules on both workers use (``--dist loadscope``) was built twice.  The first worker
    builds into ``<session basetemp>/shared-<name>`` under a file lock; the others wait for
    it and get the same (pickled) value, paths included.  Without xdist it is a plain build.

    Parameters
    ----------
    tmp_path_factory : pytest.TempPathFactory
    name : str
        Unique name of the built thing (a folder name).
    build : callable
        ``build(folder: Path) -> value``; the value must pickle.  The folder exists and is
        empty; everything built should live in it.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, common to its workers
    folder = base / f"shared-{name}"
    value_file = base / f"shared-{name}.pickle"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, also if build raises
        if value_file.is_file():
            return pickle.loads(value_file.read_bytes())
        folder.mkdir()
        value = build(folder)
        value_file.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(autouse=True)
def restore_package_loggers():
    """Each test leaves the package's loggers as it found them.

    An in-process CLI call (``setup_logging``) replaces the ``deeplight_bids`` logger's handlers and turns
    its propagation off; a handler bound to a stream that a test closes after it (``capsys``,
    ``redirect_stderr``) would make every later log line of that worker a "Logging error" on stderr.
    """
    import logging

    loggers = [logging.getLogger(name) for name in ("deeplight_bids", "deeplight_bids.hcp")]
    saved = [(log.handlers[:], log.level, log.propagate) for log in loggers]
    yield
    for log, (handlers, level, propagate) in zip(loggers, saved):
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate


@pytest.fixture(scope="session", autouse=True)
def fewer_quality_volumes():
    """In-process CLI calls measure quality on :data:`TEST_QUALITY_VOLUMES` volumes by default, not the
    participant level's default: the parser's option helpers (``cli/options.py``) take every option's default
    from ``config.default`` when the parser is built, so their ``default`` is wrapped here.  Configs made without the parser
    (the demo) keep the real default.  Tests that need more volumes ask for them (--quality-volumes)."""
    from deeplight_bids import config
    from deeplight_bids.cli import options

    def default(name):
        return TEST_QUALITY_VOLUMES if name == "quality_volumes" else config.default(name)

    mp = pytest.MonkeyPatch()
    mp.setattr(options, "default", default)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """2 participants, task motor (lh, rh, t), 30 volumes, TR 2 s, 1 block per state, reference grid (LAS)."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    return build_once(
        tmp_path_factory,
        "synthetic_dataset",
        lambda folder: make_synthetic_dataset(
            folder / "bids", n_participants=2, n_volumes=SYNTH_VOLUMES, seed=0, blocks_per_state=1
        ),
    )


@pytest.fixture(scope="session")
def synthetic_dataset_ras(tmp_path_factory):
    """Like ``synthetic_dataset`` (1 participant) but the derivatives stored RAS."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth_ras") / "bids"
    return make_synthetic_dataset(
        root, n_participants=1, n_volumes=SYNTH_VOLUMES, seed=0, blocks_per_state=1, grid="ras"
    )


@pytest.fixture(scope="session")
def prepared_synthetic_run(synthetic_dataset):
    """``prepare_run`` of sub-01 of ``synthetic_dataset`` with default settings."""
    from deeplight_bids.prepare.clean import prepare_run

    run = synthetic_dataset.runs[0]
    return prepare_run(run.bold, run.mask, synthetic_dataset.t_r)


def tree_digest(root):
    """Hash of every file path, size and content under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def participant_run(synthetic_dataset, random_3d_model, tmp_path_factory):
    """sub-01 of ``synthetic_dataset`` processed with LRP (full grid), once per session.

    Returns (output_dir, exit code, digest of BIDS_DIR before).  Shared by the 3D tests
    (tests/test_participant.py) and the 2D comparison (tests/test_participant_2d.py): read it,
    never change it (copy it first, as the re-run test does).
    """

    def build(folder):
        from deeplight_bids.cli.main import run as cli

        out = folder / "deeplight"
        before = tree_digest(synthetic_dataset.bids_dir)
        code = cli(
            [
                str(synthetic_dataset.bids_dir),
                str(out),
                "participant",
                "--participant-label",
                "sub-01",
                "--weights",
                str(random_3d_model),
                "--batch-size",
                "8",
                "--quality-volumes",
                "4",
            ]
        )
        return out, code, before

    return build_once(tmp_path_factory, "participant_run", build)


#: Output states of the random-weight test model (the synthetic task's HCP states).
MOTOR_STATES = ["MOTOR_lh", "MOTOR_rh", "MOTOR_t"]


@pytest.fixture(scope="session")
def random_3d_model(tmp_path_factory):
    """Folder holding a random-weight 3D-DeepLight ``.keras`` (seed 3) and its model card (MOTOR states).

    Stands in for trained weights where a test checks the pipeline, not decoding accuracy.
    """

    def build(base):
        from deeplight_bids.models.three import build_3d_deeplight
        from deeplight_bids.models.weights import save_model

        from .models.legacy_h5 import randomise_weights

        folder = base / "rand3d"
        model = randomise_weights(build_3d_deeplight(n_states=len(MOTOR_STATES)), seed=3)
        save_model(model, folder / "rand3d.keras", {"architecture": "3D", "states": MOTOR_STATES, "name": "rand3d"})
        return folder

    return build_once(tmp_path_factory, "random_3d_model", build)


# ---------------------------------------------------------------- published 2D weights

#: Set to 1 (CI does) to make absent published weights a failure instead of a skip.
REQUIRE_WEIGHTS_ENV = "DEEPLIGHT_REQUIRE_WEIGHTS"


def published_2d_weights_candidates():
    """Folders searched for the published 2D weights, in order.

    ``$DEEPLIGHT_WEIGHTS_DIR``, the cache that ``deeplight-bids weights fetch 2D-pretrained``
    fills (``$XDG_CACHE_HOME/deeplight-bids/weights``), then ``../shared/weights`` beside the
    repository.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deeplight-bids" / "weights"
    folders = [os.environ.get("DEEPLIGHT_WEIGHTS_DIR"), cache, REPO_ROOT.parent / "shared" / "weights"]
    return [Path(f).expanduser() for f in folders if f]


def find_published_2d_weights():
    """Path of the checksum-verified published 2D weights (``.npy``).

    Skips the calling test with the folders searched when the file is in none of them
    (fails instead under ``DEEPLIGHT_REQUIRE_WEIGHTS=1``); a file that is there but has
    another checksum always fails: that is a broken copy, not an absent one.
    """
    from deeplight_bids.models.weights import REGISTRY, sha256sum

    entry = REGISTRY["2D-pretrained"]
    folders = published_2d_weights_candidates()
    for folder in folders:
        path = folder / entry.filename
        if path.is_file():
            got = sha256sum(path)
            if got != entry.sha256:
                pytest.fail(
                    f"{path} has SHA-256 {got}, the published 2D weights have {entry.sha256}: "
                    "replace it (deeplight-bids weights fetch 2D-pretrained)"
                )
            return path.resolve()
    reason = (
        f"published 2D weights {entry.filename} are in none of {', '.join(map(str, folders))}: "
        "run 'deeplight-bids weights fetch 2D-pretrained' or set DEEPLIGHT_WEIGHTS_DIR"
    )
    if os.environ.get(REQUIRE_WEIGHTS_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_WEIGHTS_ENV}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def published_2d_weights():
    """The published 2D weights file (``Path``); see :func:`find_published_2d_weights`."""
    return find_published_2d_weights()


#: Module/session fixtures that run the CLI on the full grid (or fit a model): every test that
#: requests one, directly or through another fixture, is ``slow``.
SLOW_FIXTURES = frozenset(
    {
        "participant_run",  # tests/conftest.py: sub-01 with LRP
        "small_runs",  # tests/lrp/test_backend_parity.py: every backend in a subprocess, float32 and float64
        "run_2d",  # tests/test_participant_2d.py: the 2D model on the full grid
        "participant_out",  # tests/group/conftest.py: 4 participants with LRP
        "varied_out",
        "one_participant_out",  # tests/group/test_report.py
        "shared_work",  # tests/group/test_integrity.py
        "settings_changed",
        "pooled_out",
        "concurrent_outputs",  # tests/reliability/conftest.py: 3 jobs at once
        "messy",  # tests/reliability/test_bad_inputs.py: one run over every defect
        "cv_out",  # tests/finetune/test_finetune.py: cross-validated fine-tuning
        "demo",  # tests/test_demo.py: the whole demo (a real fit)
    }
)


#: Slow tests (a full-grid CLI run or a fit inside the test) in files that other branches were
#: editing when the markers came (issue 17): marked from here, by name; a name that is no longer
#: in its collected file is an error, so this list cannot go stale.  Elsewhere tests carry
#: ``@pytest.mark.slow`` themselves.
SLOW_TESTS = {
    "tests/finetune/test_finetune.py": {
        "test_interrupted_run_resumes_from_checkpoint",
        "test_3d_full_network_from_published_layout_hdf5",
    },
    "tests/finetune/test_determinism.py": {"test_two_fits_are_bit_identical"},
    "tests/finetune/test_distribute.py": {"test_fit_resumable_under_mirrored_strategy"},
    "tests/test_relevance_maps_option.py": {"test_blocks_then_means_then_volumes_without_the_network"},
    # full-grid forward/LRP passes, each ~10 s on 2 quiet cores; cheaper tests of the same modules stay fast
    "tests/lrp/test_analyzer.py": {
        "test_max_batch_splits_without_changing_results",
        "test_logits_are_the_inference_forward_pass_and_relevance_drops_the_channel_axis",
    },
    "tests/lrp/test_composites.py": {"test_deeplight_2d_matches_numpy_reference_through_the_whole_network"},
    "tests/finetune/test_cache.py": {"test_prepared_once_then_reused"},
    "tests/demo/test_synth.py": {"test_deterministic_for_a_seed"},
    "tests/models/test_two.py": {"test_converted_logits_equal_original_equations"},
    "tests/test_nprocs.py": {"test_cli_nprocs_1_sets_one_intra_op_thread"},
}


def pytest_collection_modifyitems(config, items):
    """``weights`` on every test that needs the published weights; ``slow`` on every test of a slow
    fixture or named in :data:`SLOW_TESTS`."""
    seen = {}
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if "published_2d_weights" in names:
            item.add_marker(pytest.mark.weights)
        path = Path(str(item.fspath)).resolve()
        rel = path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else None
        name = getattr(item, "originalname", None) or item.name
        if rel in SLOW_TESTS:
            seen.setdefault(rel, set()).add(name)
        if names & SLOW_FIXTURES or name in SLOW_TESTS.get(rel, ()):
            item.add_marker(pytest.mark.slow)
    for rel, collected in seen.items():
        missing = SLOW_TESTS[rel] - collected
        # -k / node ids may deselect later, but collection sees the whole file
        if missing:
            raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names {sorted(missing)} that {rel} does not have")

"""Fixtures of the reliability tests: a small dataset, a random-weight model, CLI helpers.

Kept cheap on 2 CPU cores: 20-volume runs, ``--no-lrp`` wherever relevance is not
the point, and one dataset/model per test session.
"""

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import TEST_QUALITY_VOLUMES, build_once

STATES = ["MOTOR_lh", "MOTOR_rh", "MOTOR_t"]
N_VOLUMES = 20  # the fewest the default 1/128 Hz high-pass accepts at TR 2 s (19) + 1
#: Subprocess jobs do not see the in-process quality default of tests/conftest.py: same few volumes.
QUALITY_ARGS = ["--quality-volumes", str(TEST_QUALITY_VOLUMES)]


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """3 participants, task motor, 20 volumes, TR 2 s, reference grid."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    return build_once(
        tmp_path_factory,
        "rel_small_dataset",
        lambda folder: make_synthetic_dataset(
            folder / "bids", n_participants=3, n_volumes=N_VOLUMES, seed=0, blocks_per_state=1
        ),
    )


@pytest.fixture(scope="session")
def rel_model(random_3d_model):
    """The shared random-weight 3D model (tests/conftest.py)."""
    return random_3d_model


def cli_inprocess(argv):
    """Run the CLI in this process; returns (exit code, stderr text).

    argparse errors raise SystemExit: its code is returned as the exit code.
    """
    from deeplight_bids.cli.main import run

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = run([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def cli_command(argv):
    """``python -m deeplight_bids ARGV`` as a list for subprocess."""
    return [sys.executable, "-m", "deeplight_bids", *[str(a) for a in argv]]


def cli_env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env["PYTHONHASHSEED"] = "0"
    return env


def cli_subprocess(argv, timeout=300):
    """Run the CLI in a fresh process; returns CompletedProcess (text)."""
    return subprocess.run(cli_command(argv), capture_output=True, text=True, timeout=timeout, env=cli_env())


def error_lines(stderr):
    """The ``deeplight-bids: error: ...`` lines of stderr."""
    return [line for line in stderr.splitlines() if line.startswith("deeplight-bids: error:")]


def assert_clean_error(stderr, *needles):
    """Exactly one one-line error naming ``needles`` (file, fix), and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def ro_bind_available(tmp_path_factory):
    """True when a read-only bind mount can be made in a private mount namespace (root + CAP_SYS_ADMIN)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    probe = tmp_path_factory.mktemp("ro_probe")
    cmd = [
        exe,
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"mount --bind -o ro '{probe}' '{probe}' && ! touch '{probe}/x' 2>/dev/null",
    ]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def read_only_command(command, folder):
    """Wrap ``command`` so that ``folder`` is mounted read-only (same path) for it only."""
    inner = " ".join(f"'{c}'" for c in command)
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"mount --bind -o ro '{folder}' '{folder}' && exec {inner}",
    ]


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def concurrent_outputs(small_dataset, rel_model, tmp_path_factory, ro_bind_available):
    """Three participant jobs at once into one OUTPUT_DIR (as a SLURM array), BIDS_DIR read-only when possible.

    sub-01 with LRP (the uninterrupted reference of the interruption test), sub-02 and
    sub-03 decode only.  Returns (output_dir, {label: CompletedProcess-like}, read_only).
    """

    def build(folder):
        out = folder / "out"
        jobs = {}
        for label, extra in (("01", ["--batch-size", "4", *QUALITY_ARGS]), ("02", ["--no-lrp"]), ("03", ["--no-lrp"])):
            cmd = cli_command(
                [
                    small_dataset.bids_dir,
                    out,
                    "participant",
                    "--participant-label",
                    label,
                    "--weights",
                    rel_model,
                    "--skip-bids-validation",
                    "--nprocs",
                    "1",
                    *extra,
                ]
            )
            if ro_bind_available:
                cmd = read_only_command(cmd, small_dataset.bids_dir)
            jobs[label] = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
            )
        results = {}
        for label, proc in jobs.items():
            stdout, stderr = proc.communicate(timeout=400)
            results[label] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        return out, results, ro_bind_available

    # built once per session: test_concurrency and test_interruptions may run on different xdist workers
    return build_once(tmp_path_factory, "rel_concurrent_outputs", build)


def run_files(out, label="01", lrp=True):
    func = Path(out) / f"sub-{label}" / "func"
    names = {
        "pred": f"sub-{label}_task-motor_desc-predictions_timeseries.tsv",
        "pred_json": f"sub-{label}_task-motor_desc-predictions_timeseries.json",
        "summary": f"sub-{label}_desc-accuracy_summary.tsv",
    }
    if lrp:
        names["rel"] = f"sub-{label}_task-motor_space-MNI152NLin6Asym_res-2_desc-relevance_bold.nii.gz"
        names["rel_json"] = f"sub-{label}_task-motor_space-MNI152NLin6Asym_res-2_desc-relevance_bold.json"
    return {k: func / v for k, v in names.items()}

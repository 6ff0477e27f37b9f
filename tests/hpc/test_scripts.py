"""hpc/ scripts without a scheduler: argument handling, exit codes, scratch, container command.

``participant.sbatch`` and ``group.sbatch`` are plain bash run with the variables SLURM would
set; a stand-in app (``DEEPLIGHT_BIDS``) or container runtime (``DEEPLIGHT_CONTAINER_RUNTIME``)
records what it was called with.  ``submit.sh --dry-run`` shows the ``sbatch`` commands.  The
real app under a real SLURM is tests/hpc/test_slurm_live.py.
"""

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HPC = REPO / "hpc"

# records its arguments, TMPDIR and cwd as JSON, then exits with $FAKE_EXIT (or sleeps on FAKE_SLEEP)
FAKE = """#!/bin/bash
"$FAKE_PYTHON" -c 'import json, os, sys; json.dump({"argv": sys.argv[1:], "tmpdir": os.environ.get("TMPDIR")},
           open(os.environ["FAKE_RECORD"], "w"))' "$@"
if [[ -n "${FAKE_SLEEP:-}" ]]; then
    trap 'echo terminated > "${FAKE_RECORD}.term"; exit 143' TERM
    sleep "${FAKE_SLEEP}" & wait $!
fi
exit "${FAKE_EXIT:-0}"
"""


@pytest.fixture
def setup(tmp_path):
    bids = tmp_path / "bids"
    (bids / "sub-01").mkdir(parents=True)
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t31\r\nsub-03\t32\n")
    fake = tmp_path / "fake.sh"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("01\n02\n03\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_ARRAY_JOB_ID": "77",
        "SLURM_CPUS_PER_TASK": "3",
        "TMPDIR": str(scratch),
        "FAKE_RECORD": str(tmp_path / "record.json"),
        "DEEPLIGHT_BIDS": str(fake),
        "FAKE_PYTHON": sys.executable,
    }
    return {
        "bids": bids,
        "out": tmp_path / "out",
        "list": listing,
        "env": env,
        "scratch": scratch,
        "record": tmp_path / "record.json",
        "fake": fake,
        "tmp": tmp_path,
    }


def _run(script, args, env, **kw):
    return subprocess.run(
        ["bash", str(HPC / script), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kw,
    )


def test_participant_task_runs_its_line_with_nprocs_and_private_scratch(setup):
    env = dict(setup["env"], FAKE_EXIT="3")
    proc = _run("participant.sbatch", [setup["bids"], setup["out"], setup["list"], "--task", "motor"], env)
    assert proc.returncode == 3, proc.stderr  # the app's exit code (input error) is the task's
    rec = json.loads(setup["record"].read_text())
    argv = rec["argv"]
    assert argv[:3] == [str(setup["bids"]), str(setup["out"]), "participant"]
    assert argv[argv.index("--participant-label") + 1] == "02"
    assert argv[argv.index("--nprocs") + 1] == "3"
    work = Path(argv[argv.index("--work-dir") + 1])
    assert work.parent == setup["scratch"] and work.name.startswith("deeplight-77_2.")
    assert rec["tmpdir"] == str(work)
    assert argv[-2:] == ["--task", "motor"]
    assert list(setup["scratch"].iterdir()) == []  # removed at the end


def test_participant_task_in_container(setup):
    image = setup["tmp"] / "deeplight.sif"
    image.write_text("")
    env = dict(setup["env"], DEEPLIGHT_CONTAINER=str(image), DEEPLIGHT_CONTAINER_RUNTIME=str(setup["fake"]))
    proc = _run("participant.sbatch", [setup["bids"], setup["out"], setup["list"]], env)
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(setup["record"].read_text())["argv"]
    work = argv[argv.index("--work-dir") + 1]
    bids, out = setup["bids"], setup["out"]
    assert argv[: argv.index(str(image)) + 5] == [
        "exec",
        "--cleanenv",
        "--env",
        f"TMPDIR={work}",
        "-B",
        f"{bids}:{bids}:ro",
        "-B",
        f"{out}:{out}",
        "-B",
        f"{work}:{work}",
        str(image),
        "deeplight-bids",
        str(bids),
        str(out),
        "participant",
    ]
    group = _run("group.sbatch", [bids, out, "--correct-only"], env)
    assert group.returncode == 0, group.stderr
    argv = json.loads(setup["record"].read_text())["argv"]
    assert argv[:2] == ["exec", "--cleanenv"] and argv[-5:] == [
        "deeplight-bids",
        str(bids),
        str(out),
        "group",
        "--correct-only",
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"SLURM_ARRAY_TASK_ID": ""}, "SLURM_ARRAY_TASK_ID is not set"),
        ({"SLURM_ARRAY_TASK_ID": "4"}, "no participant on line 4"),
        ({"DEEPLIGHT_CONTAINER": "/nonexistent/x.sif"}, "image not found"),
    ],
)
def test_participant_task_usage_errors_exit_2(setup, change, message):
    proc = _run("participant.sbatch", [setup["bids"], setup["out"], setup["list"]], dict(setup["env"], **change))
    assert proc.returncode == 2
    assert proc.stderr.startswith("participant.sbatch: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not setup["record"].exists()


def test_participant_task_sigterm_reaches_the_app_and_scratch_is_removed(setup):
    env = dict(setup["env"], FAKE_SLEEP="60")
    proc = subprocess.Popen(
        ["bash", str(HPC / "participant.sbatch"), str(setup["bids"]), str(setup["out"]), str(setup["list"])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.monotonic() + 30
    while not setup["record"].exists() and time.monotonic() < end:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # what scancel / a time limit sends
    assert proc.wait(timeout=30) == 143
    assert Path(str(setup["record"]) + ".term").read_text().strip() == "terminated"
    assert list(setup["scratch"].iterdir()) == []


def test_submit_dry_run(setup):
    proc = _run(
        "submit.sh",
        [
            setup["bids"],
            setup["out"],
            "--throttle",
            "2",
            "--group-after",
            "any",
            "--cpus",
            "3",
            "--sbatch-arg=--partition=cpu",
            "--group-arg",
            "--correct-only",
            "--dry-run",
            "--",
            "--task",
            "motor",
        ],
        setup["env"],
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    array = shlex.split(lines[0])
    assert array[:2] == ["sbatch", "--parsable"]
    assert {"--array=1-3%2", "--cpus-per-task=3", "--partition=cpu"} <= set(array)
    script = array.index(str(HPC / "participant.sbatch"))
    list_file = Path(array[script + 3])
    assert list_file.read_text() == "01\n02\n03\n"  # participants.tsv, CRLF tolerated
    assert array[script + 1 : script + 3] == [str(setup["bids"]), str(setup["out"])]
    assert array[script + 4 :] == ["--task", "motor"]
    group = shlex.split(lines[2])
    assert "--dependency=afterany:ARRAY_JOB_ID" in group and "--partition=cpu" in group
    assert group[-3:] == [str(setup["bids"]), str(setup["out"]), "--correct-only"]


def test_submit_selection_and_errors(setup):
    args = [setup["bids"], setup["out"], "--dry-run"]
    proc = _run("submit.sh", [*args, "--participant-label", "sub-03", "01", "--no-group"], setup["env"])
    assert proc.returncode == 0, proc.stderr
    assert "--array=1-2%10" in proc.stdout and "group level" not in proc.stdout
    list_file = Path(shlex.split(proc.stdout.splitlines()[0])[-1])
    assert list_file.read_text() == "03\n01\n"
    for extra, code, message in (
        (["--participant-label", "09"], 3, "no participant sub-09"),
        (["--throttle", "0"], 2, "--throttle 0"),
        (["--group-after", "maybe"], 2, "use ok or any"),
        (["--bogus"], 2, "unknown option --bogus"),
    ):
        proc = _run("submit.sh", [*args, *extra], setup["env"])
        assert proc.returncode == code and message in proc.stderr, (extra, proc.stderr)
    proc = _run("submit.sh", [setup["tmp"] / "missing", setup["out"]], setup["env"])
    assert proc.returncode == 3 and "BIDS_DIR is not a folder" in proc.stderr

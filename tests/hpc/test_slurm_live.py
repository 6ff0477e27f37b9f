"""The shipped SLURM scripts (hpc/) submitted to a live single-node SLURM.

A private SLURM is started for this module: ``munged``, ``slurmctld`` and ``slurmd`` (Debian's
``slurm-wlm`` and ``munge``) with a ``slurm.conf`` in a temporary folder (node ``localhost``
with this machine's CPUs, ``proctrack/linuxproc``, no cgroups, no accounting database), and
stopped at the end.  SLURM's daemons run as ``SlurmUser=root``: the test is skipped where it
is not root, or where the packages are missing and cannot be installed with apt-get.

Without ``slurmdbd`` there is no ``sacct`` job accounting; finished jobs are kept by
``slurmctld`` (``MinJobAge``) and their ``JobState`` and ``ExitCode`` (the same fields
``sacct`` shows) are read with ``scontrol show job``.

The study: 3 synthetic participants on the full grid (20 volumes, default settings except a
random-weight model standing in for the published weights): sub-01 with 2 runs, sub-02 with
1, sub-03 with 1 whose preprocessed BOLD is a 3D image (bad input).

1. ``hpc/submit.sh`` submits the array and the group job (``--group-after any``); once
   sub-01's first run is finished, its running task is cancelled (``scancel``), then the rest.
2. The same command is submitted again: it resumes (runs finished before are not recomputed:
   same files, same modification times, "outputs exist" in the run table); sub-01 and sub-02
   end COMPLETED, sub-03 FAILED with exit code 3 (input data); the group job starts after all
   three and its report lists sub-03; the outputs pass bids-validator-deno.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from deeplight_bids.exceptions import EXIT_INPUT

from ..bids_validation import validator_errors
from ..conftest import TEST_QUALITY_VOLUMES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "hpc" / "submit.sh"
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
N_VOLUMES = 20  # the default 1/128 Hz high-pass needs >= 19 volumes at TR 2 s
JOB_TIMEOUT_S = 900


def _missing_binaries():
    return [name for name in DAEMONS if shutil.which(name) is None]


def _ensure_slurm_installed():
    """``None`` when the SLURM and munge binaries are usable, else why not (the skip message)."""
    if os.geteuid() != 0:
        return (
            "the live SLURM test runs slurmctld/slurmd/munged as root (SlurmUser=root): run it as root (.ci/run does)"
        )
    if not _missing_binaries():
        return None
    if shutil.which("apt-get") is None:
        return (
            f"slurm-wlm/munge not installed ({', '.join(_missing_binaries())} missing) and no apt-get to install them"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"],
    ):
        proc = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return f"slurm-wlm/munge cannot be installed ({' '.join(cmd)}: {proc.stderr.strip()[-300:]})"
    missing = _missing_binaries()
    return f"slurm-wlm/munge installed but {', '.join(missing)} missing" if missing else None


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _total_memory_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 4096


SLURM_CONF = """\
ClusterName=deeplighttest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
# no cgroups: processes tracked by parent id, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
# keep finished jobs for scontrol (no accounting database for sacct)
MinJobAge=86400
KillWait=15
SchedulerParameters=sched_interval=2
NodeName=localhost CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class LiveSlurm:
    """A running single-node SLURM; ``env`` is the environment for its client commands."""

    def __init__(self, root):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.daemons = []

    def start(self):
        root = self.root
        for sub in ("state", "spool", "munge"):
            (root / sub).mkdir(parents=True)
        (root / "munge").chmod(0o755)
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(
            SLURM_CONF.format(
                root=root,
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
                cpus=os.cpu_count() or 1,
                memory=max(1024, min(8192, _total_memory_mb() - 512)),
            )
        )
        subprocess.run(
            ["mungekey", "--create", "--keyfile", str(root / "munge" / "munge.key")], check=True, capture_output=True
        )
        munge = root / "munge"
        self._spawn(
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={munge / 'munge.key'}",
                f"--socket={munge / 'munge.socket'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ]
        )
        self._wait_for(lambda: (munge / "munge.socket").exists(), 30, "munged socket")
        self._spawn(["slurmctld", "-D", "-i"])
        self._spawn(["slurmd", "-D", "-N", "localhost"])
        self._wait_for(self._node_ready, 90, "node localhost idle")

    def _spawn(self, cmd):
        with open(self.root / f"{Path(cmd[0]).name}.out", "w") as log:
            # own session: the finalizer stops each daemon with its whole process group
            self.daemons.append(
                subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

    def _node_ready(self):
        for proc in self.daemons:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}; logs: {self.logs()}")
        state = self.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"], check=False).stdout.strip()
        return state in ("idle", "mixed", "allocated")

    def _wait_for(self, predicate, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM did not come up ({what}) within {timeout} s; logs: {self.logs()}")

    def logs(self):
        """Tails of the daemon logs (for failure messages)."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munge/munged.log", "slurmctld.out", "slurmd.out"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)

    def run(self, cmd, check=True, env=None, timeout=60):
        proc = subprocess.run(cmd, env=env or self.env, check=False, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def jobs(self, job_id):
        """``scontrol show job`` of a job (all tasks of an array): ``[{field: value}]``."""
        out = self.run(["scontrol", "-o", "show", "job", str(job_id)]).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def wait_ended(self, job_ids, timeout=JOB_TIMEOUT_S):
        """Wait until every job (every array task) has left PENDING/RUNNING/COMPLETING."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            states = [j["JobState"] for jid in job_ids for j in self.jobs(jid)]
            if states and not any(s in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING") for s in states):
                return
            time.sleep(2)
        raise AssertionError(
            f"jobs {job_ids} not finished within {timeout} s: "
            f"{[(j.get('JobId'), j.get('JobState')) for jid in job_ids for j in self.jobs(jid)]}"
        )

    def stop(self):
        """Cancel every job, then stop the daemons (SIGTERM to each process group, SIGKILL if needed)."""
        if self.conf.exists():
            self.run(["scancel", "--full", "--user=root"], check=False)
            time.sleep(1)
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _ensure_slurm_installed()
    if reason is not None:
        pytest.skip(reason)
    cluster = LiveSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def study_bids(tmp_path_factory):
    """sub-01: 2 runs; sub-02: 1 run; sub-03: 1 run whose preprocessed BOLD is 3D (bad input)."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    ds = make_synthetic_dataset(
        tmp_path_factory.mktemp("slurm_study") / "bids",
        n_participants=3,
        n_runs=2,
        n_volumes=N_VOLUMES,
        seed=0,
        blocks_per_state=1,
    )
    for sub in ("sub-02", "sub-03"):  # one run each: fewer volumes to compute
        for path in ds.bids_dir.rglob(f"{sub}_*run-2_*"):
            path.unlink()
    bold = next(r.bold for r in ds.runs if r.participant == "03" and r.run == 1)
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(img.get_fdata(dtype="float32")[..., 0], img.affine, img.header), bold)
    return ds.bids_dir


def _submit(slurm, bids, out, model, scratch, *extra):
    env = dict(
        slurm.env,
        TMPDIR=str(scratch),
        DEEPLIGHT_BIDS=f"{sys.executable} -m deeplight_bids",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    proc = slurm.run(
        [
            "bash",
            str(SUBMIT),
            str(bids),
            str(out),
            "--cpus",
            "1",
            "--mem",
            "1G",
            "--time",
            "00:30:00",
            "--throttle",
            "2",
            "--group-after",
            "any",
            *extra,
            "--",
            "--weights",
            str(model),
            # jobs are subprocesses: the in-process test default of tests/conftest.py does not reach them
            "--quality-volumes",
            str(TEST_QUALITY_VOLUMES),
        ],
        env=env,
    )
    array_id = re.search(r"participant array: job (\d+)", proc.stdout).group(1)
    group_id = re.search(r"group level: job (\d+)", proc.stdout).group(1)
    list_file = Path(re.search(r"list (\S+)", proc.stdout).group(1))
    return array_id, group_id, list_file.read_text().split()


def _by_label(slurm, array_id, labels):
    """``{participant label: scontrol record of its array task}`` (tasks still pending together are left out)."""
    return {labels[int(j["ArrayTaskId"]) - 1]: j for j in slurm.jobs(array_id) if j["ArrayTaskId"].isdigit()}


def _sidecar_mtimes(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in out.glob("sub-*/func/*_desc-predictions_timeseries.json")}


def _time(stamp):
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


def test_array_on_live_slurm_cancel_resume_failed_participant_and_group(slurm, study_bids, random_3d_model, tmp_path):
    out = tmp_path / "deeplight"
    scratch = tmp_path / "node-scratch"
    scratch.mkdir()

    # ---- 1. submit; cancel sub-01's running task once its first run is finished
    array_id, group_id, labels = _submit(slurm, study_bids, out, random_3d_model, scratch)
    assert labels == ["01", "02", "03"]
    group = slurm.jobs(group_id)[0]
    assert group["JobState"] == "PENDING" and group["Dependency"].startswith(f"afterany:{array_id}")
    first = out / "sub-01" / "func" / "sub-01_task-motor_run-1_desc-predictions_timeseries.json"
    end = time.monotonic() + JOB_TIMEOUT_S
    while not first.exists():
        task = _by_label(slurm, array_id, labels).get("01", {})
        assert task.get("JobState") in ("PENDING", "RUNNING", None), (
            f"sub-01's task ended before its first run was written: {task}; log: "
            + "".join(p.read_text() for p in (out / "logs" / "slurm").glob(f"participant_{array_id}_1.out"))
        )
        assert time.monotonic() < end, "sub-01's first run was not written in time"
        time.sleep(1)
    assert _by_label(slurm, array_id, labels)["01"]["JobState"] == "RUNNING"
    slurm.run(["scancel", f"{array_id}_1"])
    slurm.run(["scancel", group_id])
    slurm.run(["scancel", array_id])
    slurm.wait_ended([array_id, group_id])
    assert _by_label(slurm, array_id, labels)["01"]["JobState"] == "CANCELLED"
    cancelled_log = (out / "logs" / "slurm" / f"participant_{array_id}_1.out").read_text()
    assert "terminated by signal SIGTERM; temporary files removed" in cancelled_log, cancelled_log
    assert "participant.sbatch: 01: exit status 143" in cancelled_log, cancelled_log
    assert slurm.jobs(group_id)[0]["JobState"] == "CANCELLED"
    assert not (out / "sub-01" / "func" / "sub-01_task-motor_run-2_desc-predictions_timeseries.json").exists()
    assert list(scratch.iterdir()) == [], "the tasks' work folders on node scratch were not removed"
    before = _sidecar_mtimes(out)
    assert first.relative_to(out) in before

    # ---- 2. the same submission again: resumes, 2 COMPLETED, 1 FAILED (input), group after all
    array_id, group_id, labels = _submit(slurm, study_bids, out, random_3d_model, scratch)
    slurm.wait_ended([array_id, group_id])
    tasks = _by_label(slurm, array_id, labels)
    logs = {
        label: (out / "logs" / "slurm" / f"participant_{array_id}_{i}.out").read_text()
        for i, label in enumerate(labels, start=1)
    }
    states = {label: (t["JobState"], t["ExitCode"]) for label, t in tasks.items()}
    assert states == {"01": ("COMPLETED", "0:0"), "02": ("COMPLETED", "0:0"), "03": ("FAILED", f"{EXIT_INPUT}:0")}, (
        states,
        logs,
    )
    assert re.search(r"deeplight-bids: error: .*sub-03_task-motor.*4D", logs["03"]), logs["03"]
    group = slurm.jobs(group_id)[0]
    assert (group["JobState"], group["ExitCode"]) == ("COMPLETED", "0:0"), (
        group,
        (out / "logs" / "slurm" / f"group_{group_id}.out").read_text(),
    )
    assert _time(group["StartTime"]) >= max(_time(t["EndTime"]) for t in tasks.values())
    assert list(scratch.iterdir()) == []

    # resumed: what was finished before is untouched, the rest is there now
    after = _sidecar_mtimes(out)
    assert {k: after[k] for k in before} == before
    assert set(after) == {
        Path(f"sub-{s}/func/sub-{s}_task-motor{r}_desc-predictions_timeseries.json")
        for s, r in (("01", "_run-1"), ("01", "_run-2"), ("02", "_run-1"))
    }
    run_table = pd.read_csv(_latest_run_table(out, "sub-01"), sep="\t", keep_default_na=False)
    status = dict(zip(run_table["run"], run_table["status"] + ": " + run_table["detail"]))
    assert status["sub-01_task-motor_run-1"].startswith("skipped: outputs exist"), status
    assert status["sub-01_task-motor_run-2"].startswith("done"), status

    # the group report lists the failed participant and why
    report = (out / "deeplight_report.html").read_text()
    assert "sub-03" in report and "no participant-level outputs" in report
    assert re.search(r"sub-03_task-motor.*?failed", report, re.DOTALL), "the report's failed-run table lacks sub-03"
    errors, _ = validator_errors(out)
    assert errors == []


def _latest_run_table(out, subject):
    """The newest ``logs/runs-*.tsv`` that mentions ``subject``."""
    tables = [
        p
        for p in sorted((out / "logs").glob("runs-*.tsv"), key=lambda p: p.stat().st_mtime)
        if subject in p.read_text()
    ]
    assert tables, f"no run table of {subject} in {out / 'logs'}"
    return tables[-1]

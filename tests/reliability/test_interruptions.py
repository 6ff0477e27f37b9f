"""Kill a participant job mid-run (SIGTERM, then SIGKILL), resume, and compare with an uninterrupted run.

The uninterrupted reference is sub-01 of ``concurrent_outputs`` (a fresh process); the
resumed run is another fresh process, so equal bytes also show determinism on CPU.
One test function: the steps depend on each other and each costs a TensorFlow start.
"""

import hashlib
import json
import signal
import subprocess
import time

import nibabel as nib
import numpy as np

from .conftest import QUALITY_ARGS, cli_command, cli_env, run_files


def _start(argv, log):
    fobj = open(log, "w")
    return subprocess.Popen(cli_command(argv), stdout=fobj, stderr=subprocess.STDOUT, env=cli_env()), fobj


def _kill_after_first_batch(proc, log, signum, timeout=300):
    """Wait until the job logged a finished batch (a debug line), then send ``signum``; returns the exit code."""
    deadline = time.monotonic() + timeout
    while "volumes 1-" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no batch finished in time"
        time.sleep(0.2)
    proc.send_signal(signum)
    return proc.wait(timeout=120)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temporaries(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".stream."))


def test_sigterm_sigkill_resume_equals_uninterrupted(concurrent_outputs, small_dataset, rel_model, tmp_path):
    ref_out, ref_results, _ = concurrent_outputs
    assert ref_results["01"].returncode == 0, ref_results["01"].stderr[-3000:]
    ref = run_files(ref_out)
    out = tmp_path / "out"
    argv = [
        small_dataset.bids_dir,
        out,
        "participant",
        "--participant-label",
        "01",
        "--weights",
        rel_model,
        "--skip-bids-validation",
        "--nprocs",
        "1",
        "--batch-size",
        "2",
        *QUALITY_ARGS,
        "-vv",
    ]  # -vv: a log line per batch
    files = run_files(out)

    # 1. SIGTERM: graceful, temporaries removed, nothing under a final run-output name
    log = tmp_path / "sigterm.log"
    proc, fobj = _start(argv, log)
    code = _kill_after_first_batch(proc, log, signal.SIGTERM)
    fobj.close()
    text = log.read_text()
    assert code == 143, text[-3000:]
    assert "Traceback" not in text
    assert "deeplight-bids: terminated by signal SIGTERM; temporary files removed" in text.strip().splitlines()[-1]
    assert [k for k, p in files.items() if p.exists()] == []
    assert _temporaries(out) == []
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"

    # 2. SIGKILL: no cleanup possible, but still no partial file under a final name
    log = tmp_path / "sigkill.log"
    proc, fobj = _start(argv, log)
    code = _kill_after_first_batch(proc, log, signal.SIGKILL)
    fobj.close()
    assert code == -signal.SIGKILL
    assert [k for k, p in files.items() if p.exists()] == []
    left = _temporaries(out)
    # the relevance being streamed when it was killed (per volume, in the work folder's scratch)
    assert any("relevance_volumes/" in name and "desc-relevance_bold" in name for name in left), left
    assert all(name.rsplit("/", 1)[-1].startswith(".") for name in left)  # hidden: ignored by BIDS tools

    # 3. resume in a fresh process: same bytes as the uninterrupted run (determinism across processes)
    proc = subprocess.run(cli_command(argv), capture_output=True, text=True, timeout=400, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _temporaries(out) == []  # the killed job's temporaries were swept (its process is gone)
    assert "temporary file(s) left by interrupted runs" in proc.stderr
    for key in ("pred", "summary", "rel"):
        assert _sha(files[key]) == _sha(ref[key]), key
    np.testing.assert_array_equal(np.asarray(nib.load(files["rel"]).dataobj), np.asarray(nib.load(ref["rel"]).dataobj))
    for key in ("pred_json", "rel_json"):
        assert json.loads(files[key].read_text()) == json.loads(ref[key].read_text()), key
    means = sorted(p.name for p in files["pred"].parent.glob("*desc-mean_relevance.nii.gz"))
    assert means and means == sorted(p.name for p in ref["pred"].parent.glob("*desc-mean_relevance.nii.gz"))
    for name in means:
        assert _sha(files["pred"].parent / name) == _sha(ref["pred"].parent / name), name

"""The bad-input matrix (issue 9): each case -> exit code + one-line message naming file and fix.

Bad *runs* do not stop a job: one dataset holds a good participant and one participant
per defect, the CLI runs once over all of them (read-only checked: nothing is opened
for writing under BIDS_DIR), exits 6 (partial), and every case below checks its own
row of the run table (skipped/failed + reason) or its warning.  Job-level mistakes
(options, OUTPUT_DIR, weights, disk full) each run the CLI on their own.
"""

import errno
import json
import os
import re
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .conftest import assert_clean_error, cli_inprocess, cli_subprocess, files_under

SPACE = "space-MNI152NLin6Asym_res-2"


def _clone(ds_root, label, src="01"):
    """Copy sub-<src> (raw + fMRIPrep derivatives) as sub-<label>; returns its files."""
    out = {}
    for base, _key in ((ds_root, "raw"), (ds_root / "derivatives" / "fmriprep", "deriv")):
        src_dir = base / f"sub-{src}"
        for path in src_dir.rglob("*"):
            if path.is_file():
                target = (
                    base
                    / f"sub-{label}"
                    / path.relative_to(src_dir).parent
                    / path.name.replace(f"sub-{src}", f"sub-{label}")
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    func = ds_root / f"sub-{label}" / "func"
    dfunc = ds_root / "derivatives" / "fmriprep" / f"sub-{label}" / "func"
    stem = f"sub-{label}_task-motor"
    out["events"] = func / f"{stem}_events.tsv"
    out["bold"] = dfunc / f"{stem}_{SPACE}_desc-preproc_bold.nii.gz"
    out["bold_json"] = dfunc / f"{stem}_{SPACE}_desc-preproc_bold.json"
    out["mask"] = dfunc / f"{stem}_{SPACE}_desc-brain_mask.nii.gz"
    return out


def _events(path, text):
    Path(path).write_text(text)


def _edit_bold(path, func, zooms=None):
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    new = nib.Nifti1Image(func(data), img.affine, img.header)
    new.header.set_data_dtype(np.float32)  # NaN/inf survive only in a float file
    new.header.set_slope_inter(1, 0)
    if zooms is not None:
        new.header.set_zooms(zooms)
    new.to_filename(path)


def _shift(path, mm, axis=1):
    img = nib.load(path)
    affine = img.affine.copy()
    affine[axis, 3] += mm
    nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header).to_filename(path)


GOOD_EVENTS = None  # filled from sub-01


def _build(root):
    """label -> files; each label one defect (see CASES)."""
    global GOOD_EVENTS
    GOOD_EVENTS = (root / "sub-01" / "func" / "sub-01_task-motor_events.tsv").read_text()
    files = {}

    f = files["emptynii"] = _clone(root, "emptynii")
    f["bold"].write_bytes(b"")
    f = files["trunc"] = _clone(root, "trunc")
    raw = f["bold"].read_bytes()
    f["bold"].write_bytes(raw[: len(raw) // 2])
    f = files["bold3d"] = _clone(root, "bold3d")
    img = nib.load(f["bold"])
    nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine).to_filename(f["bold"])
    f = files["native"] = _clone(root, "native")
    for key in ("bold", "bold_json", "mask"):
        target = f[key].with_name(f[key].name.replace(SPACE, "space-T1w"))
        f[key].rename(target)
        f[key] = target
    f = files["offgrid"] = _clone(root, "offgrid")  # scanner coordinates far from the template
    _shift(f["bold"], 400.0)
    _shift(f["mask"], 400.0)
    f = files["grid3mm"] = _clone(root, "grid3mm")  # MNI, but another grid: resampled
    from nilearn.image import resample_img

    for key, interp in (("bold", "continuous"), ("mask", "nearest")):
        img = nib.load(f[key])
        affine = np.diag([3.0, 3.0, 3.0, 1.0])
        affine[:3, 3] = [-90.0, -126.0, -72.0]
        resample_img(
            img,
            target_affine=affine,
            target_shape=(61, 73, 61),
            interpolation=interp,
            force_resample=True,
            copy_header=True,
        ).to_filename(f[key])
    f = files["nanvox"] = _clone(root, "nanvox")

    def _poison(data):
        data[45, 54, 40:44, :] = np.nan
        data[40, 60, 40, 3] = np.inf
        data[41, 60, 40, 4] = -np.inf
        return data

    _edit_bold(f["bold"], _poison)
    f = files["allnan"] = _clone(root, "allnan")
    _edit_bold(f["bold"], lambda d: np.full_like(d, np.nan))
    f = files["maskshift"] = _clone(root, "maskshift")  # a mask that does not cover this BOLD's brain
    img = nib.load(f["mask"])
    corner = np.zeros(img.shape, dtype=np.uint8)
    corner[:15, :15, :15] = 1
    nib.Nifti1Image(corner, img.affine, img.header).to_filename(f["mask"])
    f = files["mask4d"] = _clone(root, "mask4d")
    img = nib.load(f["mask"])
    nib.Nifti1Image(np.stack([np.asarray(img.dataobj)] * 2, axis=-1), img.affine).to_filename(f["mask"])
    f = files["maskgrid"] = _clone(root, "maskgrid")  # same space, other grid: warning, resampled
    img = nib.load(f["mask"])
    nib.Nifti1Image(
        np.asarray(img.dataobj)[1:, 1:, 1:],
        img.affine @ np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1.0]]),
    ).to_filename(f["mask"])
    f = files["noevents"] = _clone(root, "noevents")
    f["events"].unlink()
    f = files["eventsempty"] = _clone(root, "eventsempty")
    _events(f["events"], "")
    f = files["notrialtype"] = _clone(root, "notrialtype")
    _events(f["events"], "onset\tduration\n4\t10\n")
    f = files["naonset"] = _clone(root, "naonset")
    _events(f["events"], "onset\tduration\ttrial_type\nn/a\t10\tlh\n")
    f = files["naduration"] = _clone(root, "naduration")
    _events(f["events"], "onset\tduration\ttrial_type\n4\tn/a\tlh\n")
    f = files["late"] = _clone(root, "late")
    _events(f["events"], "onset\tduration\ttrial_type\n4\t8\tlh\n1000\t10\trh\n")
    f = files["negdur"] = _clone(root, "negdur")
    _events(f["events"], "onset\tduration\ttrial_type\n4\t-2\tlh\n")
    f = files["notr"] = _clone(root, "notr")
    meta = json.loads(f["bold_json"].read_text())
    del meta["RepetitionTime"]
    f["bold_json"].write_text(json.dumps(meta))
    # the raw BOLD's sidecar is the fallback for a derivative without RepetitionTime: none there either
    # (null overrides the dataset-level task-motor_bold.json)
    (f["events"].parent / "sub-notr_task-motor_bold.json").write_text(json.dumps({"RepetitionTime": None}))
    f = files["trmismatch"] = _clone(root, "trmismatch")
    meta = json.loads(f["bold_json"].read_text())
    meta["RepetitionTime"] = 1.5  # header says 2 s
    f["bold_json"].write_text(json.dumps(meta))
    f = files["dup"] = _clone(root, "dup")  # the same run in a second fMRIPrep folder
    second = root / "derivatives" / "fmriprep-rerun"
    shutil.copytree(root / "derivatives" / "fmriprep" / "sub-dup", second / "sub-dup")
    shutil.copyfile(root / "derivatives" / "fmriprep" / "dataset_description.json", second / "dataset_description.json")
    f["bold2"] = second / "sub-dup" / "func" / f["bold"].name
    return files


#: label -> (status, regex the run-table detail / warning must match, file key the message must name)
CASES = {
    "emptynii": ("failed", r"not a readable NIfTI image .*; re-create or re-download the file", "bold"),
    "trunc": ("failed", r"cannot read volumes .*truncated or corrupt.*; re-create or re-download the file", "bold"),
    "bold3d": ("failed", r"expected a 4D BOLD series .* got a 3D image.*; pass the run's \*_bold.nii.gz", "bold"),
    "native": (
        "skipped",
        r"BOLD in space T1w; DeepLight needs MNI152NLin6Asym \(or MNI152NLin2009cAsym\): rerun "
        r"fMRIPrep with --output-spaces MNI152NLin6Asym:res-2",
        None,
    ),
    "offgrid": (
        "failed",
        r"brain mask is empty on the MNI152NLin6Asym reference grid.*native space.*; pass the "
        r"run's brain mask in template space",
        "mask",
    ),
    "allnan": ("failed", r"the BOLD is NaN/inf or 0 in 100% of the brain mask .*; re-run the preprocessing", "bold"),
    "maskshift": ("failed", r"the BOLD is 0 in \d+% of the brain mask .*same space\? Pass the run's own mask", "bold"),
    "mask4d": ("failed", r"expected a 3D brain mask, got a 4D image.*; pass the run's \*_desc-brain_mask", "mask"),
    "noevents": ("skipped", r"no events file for this run .*; add sub-noevents_task-motor_events.tsv", None),
    "eventsempty": ("failed", r"events file is empty; write a header", "events"),
    "notrialtype": ("failed", r"no 'trial_type' column .*; add a trial_type column", "events"),
    "naonset": ("failed", r"onset 'n/a' in data row 1 is not a number; every event needs a numeric onset", "events"),
    "naduration": (
        "failed",
        r"duration 'n/a' in data row 1 is not a number; every event needs a numeric duration",
        "events",
    ),
    "negdur": ("failed", r"negative duration -2.0 in data row 1; durations must be >= 0 seconds", "events"),
    "notr": ("skipped", r"RepetitionTime missing for .*; add it in seconds to .*_desc-preproc_bold.json", "bold"),
    "dup": (
        "skipped",
        r"duplicate run: 2 preprocessed BOLD files .*; keep one, or select one with --derivatives",
        "bold2",
    ),
    # processed, with a one-line warning naming the file and what to check
    "grid3mm": ("done", None, None),
    "nanvox": ("done", r"NaN/inf voxel value\(s\) set to 0; check the preprocessing", "bold"),
    "maskgrid": (
        "done",
        r"brain mask grid \(90, 108, 90\) differs from the BOLD grid .*check that the mask belongs",
        "mask",
    ),
    "late": (
        "done",
        r"1 of 2 event\(s\) start at or after the end of the run .*; check that the events file",
        "events",
    ),
    "trmismatch": (
        "done",
        r"RepetitionTime 1.5 s in the sidecar JSON differs from the NIfTI header \(pixdim\[4\] = 2 "
        r"s\); the sidecar is used",
        "bold",
    ),
}


class _NoWritesUnder:
    """Audit hook: records every open-for-writing / mkdir / rename / remove under a folder.

    Root ignores permission bits, so chmod cannot make BIDS_DIR read-only here; this
    checks the stronger property that nothing even tries to write there.
    """

    active = None

    def __init__(self, root):
        self.root = str(Path(root).resolve())
        self.hits = []

    @staticmethod
    def hook(event, args):
        # (at interpreter shutdown the module's globals are None, and audit hooks cannot be removed)
        self = _NoWritesUnder.active if _NoWritesUnder is not None else None
        if self is None:
            return
        paths, writing = [], False
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            paths = [args[0]]
        elif event in (
            "os.mkdir",
            "os.rename",
            "os.replace",
            "os.remove",
            "os.rmdir",
            "os.truncate",
            "shutil.rmtree",
            "os.chmod",
            "os.symlink",
            "os.link",
        ):
            writing, paths = True, [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        if writing:
            for p in paths:
                p = os.fsdecode(p)
                if os.path.abspath(p).startswith(self.root):
                    self.hits.append((event, p))


sys.addaudithook(_NoWritesUnder.hook)


@pytest.fixture(scope="module")
def messy(small_dataset, rel_model, tmp_path_factory):
    """One CLI run over a good participant and one participant per defect."""
    base = tmp_path_factory.mktemp("messy")
    root = base / "bids"
    shutil.copytree(small_dataset.bids_dir, root)
    shutil.rmtree(root / "sub-02")
    shutil.rmtree(root / "sub-03")
    shutil.rmtree(root / "derivatives" / "fmriprep" / "sub-02")
    shutil.rmtree(root / "derivatives" / "fmriprep" / "sub-03")
    files = _build(root)
    out = base / "out"
    guard = _NoWritesUnder(root)
    _NoWritesUnder.active = guard
    try:
        code, stderr = cli_inprocess(
            [
                root,
                out,
                "participant",
                "--weights",
                rel_model,
                "--no-lrp",
                "--skip-bids-validation",
                "--batch-size",
                "10",
            ]
        )
    finally:
        _NoWritesUnder.active = None
    return {"root": root, "out": out, "files": files, "code": code, "stderr": stderr, "writes": guard.hits}


def _table_row(stderr, label):
    """(status, detail) of a run in the final summary table."""
    summary = stderr[stderr.rindex("summary:") :]
    for line in summary.splitlines():
        if line.startswith(f"sub-{label}_task-motor "):
            _, status, detail = re.split(r"\s+", line, maxsplit=2)
            return status, detail
    raise AssertionError(f"sub-{label} not in the summary table:\n{summary}")


def test_messy_job_is_partial_without_traceback(messy):
    assert messy["code"] == 6, messy["stderr"][-4000:]
    assert "Traceback" not in messy["stderr"]
    assert _table_row(messy["stderr"], "01")[0] == "done"
    assert re.search(r"\d+ of \d+ run\(s\) skipped or failed for bad input \(exit code 6", messy["stderr"])


def test_skip_reasons_are_kept_in_logs_and_the_report(messy):
    """Skipped/failed runs and their reasons: the job's log file, its run table, and the group report."""
    import pandas as pd

    from deeplight_bids.group.report import participant_run_log

    logs = messy["out"] / "logs"
    assert len(list(logs.glob("*.log"))) == 1
    table = participant_run_log(messy["out"])
    bad = table[table["status"].isin(["skipped", "failed"])]
    assert len(bad) >= len([c for c in CASES.values() if c[0] != "done"])
    assert (bad["detail"].str.len() > 0).all()
    log_text = next(logs.glob("*.log")).read_text()
    for run in bad["run"]:
        assert run in log_text
    # the table is a plain BIDS-style TSV
    assert list(pd.read_csv(next(logs.glob("runs-*.tsv")), sep="\t").columns) == ["run", "status", "detail"]


def test_read_only_bids_dir_is_never_written(messy):
    assert messy["writes"] == []


@pytest.mark.parametrize("label", sorted(CASES))
def test_bad_input_case(messy, label):
    status, pattern, key = CASES[label]
    got_status, detail = _table_row(messy["stderr"], label)
    assert got_status == status, (label, got_status, detail)
    if pattern is None:
        return
    if status == "done":  # a warning line in the log
        lines = [ln for ln in messy["stderr"].splitlines() if "WARNING" in ln and re.search(pattern, ln)]
        assert lines, (label, pattern)
        line = lines[0]
    else:
        assert re.search(pattern, detail), (label, detail)
        line = detail
    if key is not None:
        assert str(messy["files"][label][key]) in line, (label, line)
    func = messy["out"] / f"sub-{label}" / "func"
    written = sorted(p.name for p in func.glob("*")) if func.is_dir() else []
    if status == "done":
        assert f"sub-{label}_task-motor_desc-predictions_timeseries.tsv" in written
    else:
        assert not [n for n in written if "predictions" in n], written  # nothing half-made


def test_nan_voxels_give_finite_outputs(messy):
    import pandas as pd

    frame = pd.read_csv(
        messy["out"] / "sub-nanvox" / "func" / "sub-nanvox_task-motor_desc-predictions_timeseries.tsv", sep="\t"
    )
    probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
    assert np.isfinite(probs).all()


def test_only_bad_runs_is_an_input_error(messy, rel_model, tmp_path):
    code, stderr = cli_inprocess(
        [
            messy["root"],
            tmp_path / "out",
            "participant",
            "--participant-label",
            "bold3d",
            "--weights",
            rel_model,
            "--no-lrp",
            "--skip-bids-validation",
        ]
    )
    assert code == 3
    assert_clean_error(
        stderr, "sub-bold3d_task-motor", messy["files"]["bold3d"]["bold"], "expected a 4D BOLD", "pass the run's"
    )


def test_only_skipped_runs_is_an_input_error(messy, rel_model, tmp_path):
    code, stderr = cli_inprocess(
        [
            messy["root"],
            tmp_path / "out",
            "participant",
            "--participant-label",
            "noevents",
            "--weights",
            rel_model,
            "--no-lrp",
            "--skip-bids-validation",
        ]
    )
    assert code == 3
    assert_clean_error(stderr, "no run can be processed", "no events file", "add sub-noevents_task-motor_events.tsv")


def test_participant_not_in_dataset(small_dataset, tmp_path):
    code, stderr = cli_inprocess(
        [small_dataset.bids_dir, tmp_path / "out", "participant", "--participant-label", "99", "--skip-bids-validation"]
    )
    assert code == 3
    assert_clean_error(stderr, str(small_dataset.bids_dir), "sub-99 not found", "fix --participant-label")


def test_filter_file_not_json(small_dataset, tmp_path):
    bad = tmp_path / "filter.json"
    bad.write_text("{run: 1,")
    proc = cli_subprocess([small_dataset.bids_dir, tmp_path / "out", "participant", "--bids-filter-file", bad])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert str(bad) in last and "is not valid JSON" in last and "fix the file" in last


def test_output_inside_bids_dir(small_dataset):
    proc = cli_subprocess([small_dataset.bids_dir, small_dataset.bids_dir / "derivatives" / "deeplight", "participant"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "is inside the input BIDS folder" in last and "use a folder outside it" in last


@pytest.mark.parametrize("kind", ["text", "events", "bad_keras"])
def test_weights_wrong_file(small_dataset, tmp_path, kind):
    if kind == "text":
        weights = tmp_path / "weights.hdf5"
        weights.write_text("not weights\n")
    elif kind == "events":
        weights = small_dataset.runs[0].events
    else:
        weights = tmp_path / "model.keras"
        weights.write_bytes(b"PK\x03\x04 broken zip")
    code, stderr = cli_inprocess(
        [
            small_dataset.bids_dir,
            tmp_path / "out",
            "participant",
            "--participant-label",
            "01",
            "--weights",
            weights,
            "--skip-bids-validation",
            "--no-lrp",
        ]
    )
    assert code == 4, stderr[-2000:]
    assert_clean_error(stderr, str(weights))


def test_unwritable_output_dir(small_dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where a folder is needed\n")
    out = blocker / "out"
    code, stderr = cli_inprocess(
        [small_dataset.bids_dir, out, "participant", "--participant-label", "01", "--skip-bids-validation", "--no-lrp"]
    )
    assert code == 5
    assert_clean_error(stderr, str(out), "not writable", "choose a writable OUTPUT_DIR")


def test_disk_full_while_writing(small_dataset, rel_model, tmp_path, monkeypatch):
    """ENOSPC when the predictions TSV is moved into place: exit 5, no partial file, re-run completes."""
    from deeplight_bids.derivatives import writers

    out = tmp_path / "out"
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if str(dst).endswith("_timeseries.tsv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(writers.os, "replace", full_disk)
    argv = [
        small_dataset.bids_dir,
        out,
        "participant",
        "--participant-label",
        "01",
        "--weights",
        rel_model,
        "--no-lrp",
        "--skip-bids-validation",
        "--batch-size",
        "10",
    ]
    code, stderr = cli_inprocess(argv)
    monkeypatch.undo()
    func = out / "sub-01" / "func"
    tsv = func / "sub-01_task-motor_desc-predictions_timeseries.tsv"
    assert code == 5, stderr[-2000:]
    assert_clean_error(stderr, str(tsv), "No space left on device", "check free space")
    assert not tsv.exists() and not tsv.with_suffix(".json").exists()  # no resume marker for an incomplete run
    assert not [n for n in files_under(out) if ".tmp" in n], files_under(out)
    code, stderr = cli_inprocess(argv)
    assert code == 0, stderr[-2000:]
    assert tsv.is_file() and tsv.with_suffix(".json").is_file()


def test_stream_disk_full_leaves_nothing(tmp_path, monkeypatch):
    """ENOSPC while gzipping the 4D relevance map, and when allocating its scratch file."""
    from deeplight_bids.derivatives.writers import StreamingNifti4D, gzip_module
    from deeplight_bids.exceptions import OutputError

    target = tmp_path / "out" / "x_bold.nii.gz"
    scratch = tmp_path / "work"
    stream = StreamingNifti4D(target, (4, 5, 6, 3), np.eye(4), 2.0, scratch_dir=scratch)
    stream.write(0, np.ones((3, 4, 5, 6)))

    def no_space(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gzip_module().GzipFile, "write", no_space)  # ISA-L's when installed, else the stdlib's
    with pytest.raises(OutputError, match=r"x_bold.nii.gz: write failed \(No space left on device\); check free space"):
        stream.close()
    monkeypatch.undo()
    assert files_under(tmp_path) == []

    def no_alloc(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_alloc)
    with pytest.raises(OutputError, match=r"No space left on device.*free disk space"):
        StreamingNifti4D(target, (4, 5, 6, 3), np.eye(4), 2.0, scratch_dir=scratch)
    assert files_under(tmp_path) == []

"""Turn downloaded HCP task data into a valid BIDS dataset with derivatives.

Layout written under ``OUTPUT_BIDS_DIR`` (``<T>`` = HCP task name as HCP spells it,
``<D>`` = ``LR`` or ``RL``, the phase-encoding direction of the HCP run)::

    dataset_description.json            DatasetType "raw"
    README, participants.tsv
    task-<T>_bold.json                  RepetitionTime 0.72, TaskName
    task-<T>_events.json                trial_type levels
    sub-<id>/func/sub-<id>_task-<T>_dir-<D>_events.tsv
    sub-<id>/func/sub-<id>_task-<T>_dir-<D>_bold.nii.gz      (see "raw BOLD" below)
    derivatives/hcp/dataset_description.json                 DatasetType "derivative"
    derivatives/hcp/sub-<id>/func/
        sub-<id>_task-<T>_dir-<D>_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz (+ .json)
        sub-<id>_task-<T>_dir-<D>_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz   (+ .json)
    derivatives/hcp/sub-<id>/anat/
        sub-<id>_space-MNI152NLin6Asym_desc-preproc_T1w.nii.gz (+ .json)
    sourcedata/hcp/<id>/MNINonLinear/Results/tfMRI_<T>_<D>/EVs/*.txt   (the EV files as downloaded)

Choices, and why:

* ``dir-LR``/``dir-RL``: HCP's LR/RL are phase-encoding directions, which is what the
  BIDS ``dir`` entity means; pybids exposes it as ``direction``.  The entities are
  identical on the raw and derivative side, so events and masks are found by the same
  query as the BOLD.
* Raw BOLD: a BIDS ``task-<T>_bold.json`` (required by the issue) without a
  ``_bold.nii.gz`` is an error for ``bids-validator`` (``SIDECAR_WITHOUT_DATAFILE``),
  and ``events.tsv`` needs a BOLD run to belong to.  Checked with
  ``bids-validator-deno 3.0.2``: events + sidecars alone fail, events + sidecars +
  BOLD pass.  The raw BOLD is therefore the *same* MNINonLinear file as the
  derivative, stored as a hard link (no extra disk space; a copy where the file
  system cannot link).  It is not scanner-space raw data; the README says so.
  Tools must read the BOLD from ``derivatives/hcp`` (``desc-preproc``, ``space-``).
* T1w: HCP's ``MNINonLinear/T1w.nii.gz`` is 0.7 mm, which is no TemplateFlow
  resolution index of MNI152NLin6Asym, so it is named without ``res-``.
* ``SkullStripped`` is false for the BOLD and the T1w, as decided for this project
  (:data:`BOLD_SKULL_STRIPPED`).
* Event rows: HCP EV files are FSL 3-column files; a row ``0 0 0`` is FSL's
  placeholder for an empty EV and is dropped (it is no event at time 0).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeplight_bids._version import __version__
from deeplight_bids.derivatives.naming import hcp_run_stem, sidecar_of
from deeplight_bids.derivatives.writers import write_json, write_text
from deeplight_bids.exceptions import EventsError
from deeplight_bids.states import HCP_TASK_STATES

if TYPE_CHECKING:
    from collections.abc import Iterable

HCP_TR = 0.72
HCP_RUNS = ("LR", "RL")
SPACE = "MNI152NLin6Asym"
BIDS_VERSION = "1.10.0"
DERIVATIVES_NAME = "hcp"
BOLD_SKULL_STRIPPED = False
T1W_SKULL_STRIPPED = False

#: EV-file name -> BIDS trial_type (the state names of reference section 4), per task.
HCP_EV_FILES = {
    "EMOTION": {"fear.txt": "fear", "neut.txt": "neut"},
    "GAMBLING": {"loss_event.txt": "loss", "neut_event.txt": "neut", "win_event.txt": "win"},
    "LANGUAGE": {"math.txt": "math", "story.txt": "story"},
    "MOTOR": {"lf.txt": "lf", "lh.txt": "lh", "rf.txt": "rf", "rh.txt": "rh", "t.txt": "t"},
    "RELATIONAL": {"match.txt": "match", "relation.txt": "relation"},
    "SOCIAL": {"mental_resp.txt": "mental", "other_resp.txt": "other"},
    "WM": {f"{level}_{x}.txt": x for level in ("0bk", "2bk") for x in HCP_TASK_STATES["WM"]},
}

_TRIAL_TYPE_DESCRIPTIONS = {
    "fear": "fearful faces block",
    "neut": "neutral block (shapes / neutral gambling trials)",
    "loss": "gambling trial with a loss",
    "win": "gambling trial with a win",
    "math": "math block",
    "story": "story block",
    "lf": "left foot movement",
    "lh": "left hand movement",
    "rf": "right foot movement",
    "rh": "right hand movement",
    "t": "tongue movement",
    "match": "matching block",
    "relation": "relational block",
    "mental": "mental interaction (answered)",
    "other": "random interaction (answered)",
    "body": "body pictures (0-back and 2-back)",
    "faces": "face pictures (0-back and 2-back)",
    "places": "place pictures (0-back and 2-back)",
    "tools": "tool pictures (0-back and 2-back)",
}

_RAW_README = """\
Human Connectome Project (HCP Young Adult, {release}) task fMRI, fetched from
s3://{bucket}/{prefix} by deeplight-bids-hcp {version}.

The BOLD files on the raw side are NOT scanner-space raw data: they are the HCP
minimally preprocessed MNINonLinear volumes (MNI152NLin6Asym, 2 mm), the same files
as in derivatives/hcp/ (hard links), kept here so that the events and task sidecars
belong to a BOLD run as BIDS requires. Use derivatives/hcp/ for analysis.
Events (onset, duration, trial_type) come from the HCP EV files (sourcedata/hcp/).
Runs: dir-LR / dir-RL are the HCP phase-encoding directions. TR 0.72 s.

Data were provided by the Human Connectome Project, WU-Minn Consortium (Principal
Investigators: David Van Essen and Kamil Ugurbil; 1U54MH091657) and are subject to
the HCP Open Access Data Use Terms.
"""


@dataclass(frozen=True)
class RunFiles:
    """BIDS paths (relative to OUTPUT_BIDS_DIR) of one HCP run."""

    events: str
    raw_bold: str
    bold: str
    bold_json: str
    mask: str
    mask_json: str


def derivatives_dir() -> str:
    """Path of the HCP derivatives dataset, relative to OUTPUT_BIDS_DIR."""
    return f"derivatives/{DERIVATIVES_NAME}"


def run_files(subject: str, task: str, run: str) -> RunFiles:
    """Relative paths of all BIDS files of one run.

    Parameters
    ----------
    subject : str
        HCP subject id (the BIDS label without ``sub-``).
    task : str
        HCP task name, e.g. ``"MOTOR"``.
    run : {"LR", "RL"}
        HCP run (phase-encoding direction).
    """
    ents = hcp_run_stem(subject, task, run)
    raw_func = f"sub-{subject}/func/{ents}"
    deriv_func = f"{derivatives_dir()}/sub-{subject}/func/{ents}_space-{SPACE}_res-2"
    bold, mask = f"{deriv_func}_desc-preproc_bold.nii.gz", f"{deriv_func}_desc-brain_mask.nii.gz"
    return RunFiles(
        events=f"{raw_func}_events.tsv",
        raw_bold=f"{raw_func}_bold.nii.gz",
        bold=bold,
        bold_json=str(sidecar_of(bold)),
        mask=mask,
        mask_json=str(sidecar_of(mask)),
    )


def t1w_file(subject: str) -> str:
    """Relative path of the subject's MNINonLinear T1w in the derivatives."""
    return f"{derivatives_dir()}/sub-{subject}/anat/sub-{subject}_space-{SPACE}_desc-preproc_T1w.nii.gz"


# --------------------------------------------------------------------------- events


def read_ev_file(path: str | os.PathLike[str]) -> list[tuple[float, float]]:
    """Read an FSL 3-column EV file into ``[(onset, duration), ...]``.

    Empty files and FSL's ``0 0 0`` empty-EV placeholder give no rows.

    Raises
    ------
    EventsError
        When a line does not hold three numbers.
    """
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            onset, duration, amplitude = (float(f) for f in fields[:3])
        except ValueError:
            raise EventsError(
                f"{path}, line {line_no}: expected 3 numbers 'onset duration amplitude'; "
                "delete the file and run 'deeplight-bids-hcp fetch' again."
            ) from None
        if onset == 0 and duration == 0 and amplitude == 0:
            continue
        rows.append((onset, duration))
    return rows


def events_from_ev_dir(ev_dir: str | os.PathLike[str], task: str) -> list[tuple[float, float, str]]:
    """Build the events of one run from its HCP ``EVs`` directory.

    Parameters
    ----------
    ev_dir : path-like
        Directory holding the run's EV ``.txt`` files.
    task : str
        HCP task name.

    Returns
    -------
    list of tuple
        ``(onset, duration, trial_type)`` sorted by onset, then trial type.
    """
    events: list[tuple[float, float, str]] = []
    for name, trial_type in HCP_EV_FILES[task].items():
        path = Path(ev_dir) / name
        if not path.is_file():
            raise EventsError(f"{path}: EV file missing; re-run 'deeplight-bids-hcp fetch' to download it.")
        events.extend((onset, duration, trial_type) for onset, duration in read_ev_file(path))
    return sorted(events, key=lambda row: (row[0], row[2]))


def format_events_tsv(events: Iterable[tuple[float, float, str]]) -> str:
    """Text of a BIDS ``events.tsv`` with columns onset, duration, trial_type."""
    lines = ["onset\tduration\ttrial_type"]
    lines += [f"{_number(onset)}\t{_number(duration)}\t{trial_type}" for onset, duration, trial_type in events]
    return "\n".join(lines) + "\n"


def _number(value):
    # Enough digits for HCP's millisecond onsets, no float noise such as 71.61699999.
    return format(round(value, 6), "g") if abs(value) < 1e5 else repr(value)


# --------------------------------------------------------------------------- dataset files


def raw_dataset_description(bucket: str, prefix: str) -> dict[str, Any]:
    """``dataset_description.json`` content of the raw side."""
    return {
        "Name": f"Human Connectome Project task fMRI ({prefix.strip('/') or bucket})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "HCP Open Access Data Use Terms",
        "Authors": ["WU-Minn HCP Consortium", "deeplight-bids-hcp (conversion)"],
        "HowToAcknowledge": (
            "Data were provided by the Human Connectome Project, WU-Minn Consortium (Principal "
            "Investigators: David Van Essen and Kamil Ugurbil; 1U54MH091657)."
        ),
        "GeneratedBy": [{"Name": "deeplight-bids-hcp", "Version": __version__}],
        "SourceDatasets": [{"URL": f"s3://{bucket}/{prefix}"}],
    }


def derivatives_dataset_description(bucket: str, prefix: str) -> dict[str, Any]:
    """``dataset_description.json`` content of ``derivatives/hcp``."""
    return {
        "Name": "HCP minimally preprocessed task fMRI (MNINonLinear)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "License": "HCP Open Access Data Use Terms",
        "GeneratedBy": [
            {"Name": "HCP Pipelines", "Description": "HCP minimal preprocessing (fMRIVolume, MNINonLinear)"},
            {"Name": "deeplight-bids-hcp", "Version": __version__, "Description": "download and BIDS naming"},
        ],
        "SourceDatasets": [{"URL": f"s3://{bucket}/{prefix}"}],
    }


def bold_sidecar(task: str) -> dict[str, Any]:
    """JSON sidecar of a derivative BOLD run."""
    return {
        "TaskName": task,
        "RepetitionTime": HCP_TR,
        "SkullStripped": BOLD_SKULL_STRIPPED,
        "Resolution": "2 mm isotropic, 91x109x91 (FSL MNI152 2 mm grid)",
    }


def mask_sidecar() -> dict[str, Any]:
    """JSON sidecar of a derivative brain mask (HCP ``brainmask_fs.2``)."""
    return {"Type": "Brain", "Resolution": "2 mm isotropic, 91x109x91 (FSL MNI152 2 mm grid)"}


def write_dataset_files(
    root: str | os.PathLike[str], bucket: str, prefix: str, subjects: Iterable[str], tasks: Iterable[str]
) -> None:
    """Write the dataset-level files of both the raw and the derivatives dataset.

    Parameters
    ----------
    root : path-like
        OUTPUT_BIDS_DIR.
    bucket, prefix : str
        Where the data came from (recorded as ``SourceDatasets``).
    subjects : iterable of str
        All subjects that have at least one run in the dataset (``participants.tsv``).
    tasks : iterable of str
        All tasks present in the dataset (task-level sidecars).
    """
    root = Path(root)
    write_json(root / "dataset_description.json", raw_dataset_description(bucket, prefix))
    write_json(root / derivatives_dir() / "dataset_description.json", derivatives_dataset_description(bucket, prefix))
    release = prefix.strip("/") or "HCP"
    write_text(
        root / derivatives_dir() / "README",
        "HCP minimally preprocessed task fMRI (MNINonLinear, MNI152NLin6Asym 2 mm) with the run's brain mask\n"
        "(brainmask_fs.2) and the MNINonLinear T1w (0.7 mm), renamed to BIDS by deeplight-bids-hcp.\n",
    )
    write_text(root / "README", _RAW_README.format(release=release, bucket=bucket, prefix=prefix, version=__version__))
    participants = ["participant_id"] + [f"sub-{s}" for s in sorted(set(subjects))]
    write_text(root / "participants.tsv", "\n".join(participants) + "\n")
    for task in sorted(set(tasks)):
        write_json(root / f"task-{task}_bold.json", {"TaskName": task, "RepetitionTime": HCP_TR})
        levels = {state: _TRIAL_TYPE_DESCRIPTIONS[state] for state in HCP_TASK_STATES[task]}
        write_json(
            root / f"task-{task}_events.json",
            {"trial_type": {"LongName": "HCP condition (reference section 4 state name)", "Levels": levels}},
        )


def write_run(
    root: str | os.PathLike[str], subject: str, task: str, run: str, ev_dir: str | os.PathLike[str]
) -> RunFiles:
    """Write the BIDS files of one downloaded run.

    Expects the BOLD and mask already downloaded to their derivative paths; writes the
    events, the derivative sidecars and the raw-side BOLD (hard link).
    """
    root = Path(root)
    files = run_files(subject, task, run)
    write_text(root / files.events, format_events_tsv(events_from_ev_dir(ev_dir, task)))
    write_json(root / files.bold_json, bold_sidecar(task))
    write_json(root / files.mask_json, mask_sidecar())
    link_or_copy(root / files.bold, root / files.raw_bold)
    return files


def write_t1w_sidecar(root: str | os.PathLike[str], subject: str) -> None:
    """JSON sidecar of the subject's derivative T1w."""
    write_json(Path(root) / sidecar_of(t1w_file(subject)), {"SkullStripped": T1W_SKULL_STRIPPED})


def link_or_copy(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Make ``dest`` the same file as ``source``: a hard link, else a copy.

    An existing ``dest`` is replaced, so a re-downloaded source is never shadowed by
    a stale link to the old inode.
    """
    source, dest = Path(source), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, dest)

"""Participant + group level on generated data, made once per test session.

* ``group_bids``: 3 participants, task motor, 15 volumes (1 block per state), full grid
  (the participant level runs without high-pass filtering, which needs more volumes).
* ``participant_out``: the participant level with a random-weight 3D-DeepLight and
  ``--lrp-target true`` (so each participant gets a mean map for every state; with
  ``predicted`` the random model, which predicts one state only, would give one).
* ``varied_out``: a copy (hard links) of ``participant_out`` whose ``predicted_state`` /
  ``correct`` columns are redrawn at random (seeded; more often right for later
  participants) so that accuracies, confusion matrices and block-time curves differ between
  participants and states; then the group level is run on it with ``--correct-only``.
* ``staged_templateflow``: a ``TEMPLATEFLOW_HOME`` holding the two files the group level
  asks TemplateFlow for (any valid NIfTI on the reference grid will do), so the TemplateFlow
  path is exercised offline.  It is exported before the group level first imports
  ``templateflow`` (which reads the variable at import); autouse, so every in-process group
  run of this folder sees it.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deeplight_bids.cli.main import run as cli

from ..conftest import build_once

STATES = ["MOTOR_lh", "MOTOR_rh", "MOTOR_t"]
N_VOLUMES = 15  # with --high-pass none (a 1/128 Hz high-pass needs >= 19 volumes)


def stage_templateflow_home(home):
    """Write the two MNI152NLin6Asym res-2 files the group level requests under ``home``."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    from deeplight_bids.group.templates import FILE_NAMES
    from deeplight_bids.prepare.grid import REFERENCE_AFFINE, to_reference_grid

    home = Path(home)
    (home / "tpl-MNI152NLin6Asym").mkdir(parents=True, exist_ok=True)
    t1w = to_reference_grid(load_mni152_template(resolution=2))
    mask = to_reference_grid(load_mni152_brain_mask(resolution=2), interpolation="nearest")
    nib.Nifti1Image(np.asarray(t1w.dataobj, dtype=np.float32), REFERENCE_AFFINE).to_filename(home / FILE_NAMES["t1w"])
    nib.Nifti1Image((np.asarray(mask.dataobj) > 0.5).astype(np.uint8), REFERENCE_AFFINE).to_filename(
        home / FILE_NAMES["mask"]
    )
    (home / "tpl-MNI152NLin6Asym" / "template_description.json").write_text(
        json.dumps({"Name": "staged for tests", "Identifier": "MNI152NLin6Asym"})
    )
    return home


@pytest.fixture(scope="session", autouse=True)
def staged_templateflow(tmp_path_factory):
    home = stage_templateflow_home(tmp_path_factory.mktemp("templateflow") / "home")
    mp = pytest.MonkeyPatch()
    mp.setenv("TEMPLATEFLOW_HOME", str(home))
    yield home
    mp.undo()


@pytest.fixture(scope="session")
def group_bids(tmp_path_factory):
    from deeplight_bids.demo.synth import make_synthetic_dataset

    return build_once(
        tmp_path_factory,
        "group_bids",
        lambda folder: make_synthetic_dataset(
            folder / "bids", n_participants=3, n_volumes=N_VOLUMES, seed=1, blocks_per_state=1
        ),
    )


@pytest.fixture(scope="session")
def group_model(random_3d_model):
    """The shared random-weight 3D model (tests/conftest.py)."""
    return random_3d_model


@pytest.fixture(scope="session")
def participant_out(group_bids, group_model, tmp_path_factory):
    """The participant level of ``group_bids``, built once per session (both xdist workers use it)."""

    def build(folder):
        out = folder / "deeplight"
        code = cli(
            [
                str(group_bids.bids_dir),
                str(out),
                "participant",
                "--weights",
                str(group_model),
                "--batch-size",
                "8",
                "--lrp-target",
                "true",
                "--high-pass",
                "none",
                "--skip-bids-validation",
                "--quality-volumes",
                "4",
            ]
        )
        assert code == 0
        return out

    return build_once(tmp_path_factory, "group_participant_out", build)


def link_copy(src, dst, ignore=None):
    """Copy a tree with hard links (files are only ever replaced by rename, never edited in place)."""
    shutil.copytree(src, dst, copy_function=os.link, ignore=ignore)
    return Path(dst)


def read_tsv(path):
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def redraw_predictions(out, seed=0):
    """Replace predicted_state/correct of every predictions TSV by seeded random draws."""
    from deeplight_bids.derivatives.writers import write_tsv

    rng = np.random.default_rng(seed)
    paths = sorted(
        Path(out).glob("sub-*/func/*_desc-predictions_timeseries.tsv")
    )  # test helper, not the code under test
    for i, path in enumerate(paths):
        frame = read_tsv(path)
        p_right = 0.35 + 0.2 * i
        pred = []
        for true in frame["true_state"]:
            if isinstance(true, str) and rng.random() < p_right:
                pred.append(true)
            else:
                pred.append(STATES[rng.integers(len(STATES))])
        frame["predicted_state"] = pred
        labelled = frame["true_state"].notna()
        correct = pd.Series(pd.NA, index=frame.index, dtype="Int64")
        correct[labelled] = (frame.loc[labelled, "predicted_state"] == frame.loc[labelled, "true_state"]).astype(int)
        frame["correct"] = correct
        write_tsv(path, frame)


@pytest.fixture(scope="session")
def varied_out(participant_out, group_bids, staged_templateflow, tmp_path_factory):
    """(output dir, exit code) of the group level with --correct-only on redrawn predictions."""

    def build(folder):
        out = link_copy(participant_out, folder / "deeplight")
        redraw_predictions(out)
        code = cli([str(group_bids.bids_dir), str(out), "group", "--correct-only"])
        return out, code

    return build_once(tmp_path_factory, "group_varied_out", build)


#: Where ``synthetic_out`` adds relevance to MOTOR_lh: a 5-voxel cube (reference-grid indices).
SYNTHETIC_REGION = (slice(20, 25), slice(50, 55), slice(55, 60))


def write_synthetic_state_maps(out, seed=0, effect=3.0, noise=0.005):
    """Replace every participant mean relevance map in ``out`` by a synthetic one with a known difference.

    Each map is a positive pattern shared by all maps (1 + 0.2 U(0, 1)) plus Gaussian noise
    (SD ``noise``) inside the template brain mask, 0 outside; MOTOR_lh maps get ``effect``
    more in :data:`SYNTHETIC_REGION`.  The files are replaced (atomic rename, so hard-linked
    originals stay untouched); the sidecars are kept, less any ``Attribution`` record (as
    written before attribution methods existed).  Returns the region as a boolean array.
    """
    import nibabel as nib

    from deeplight_bids.derivatives.writers import write_json, write_nifti
    from deeplight_bids.group.templates import load_templates

    inside = np.asarray(load_templates().mask.dataobj) > 0
    region = np.zeros(inside.shape, bool)
    region[SYNTHETIC_REGION] = True
    assert (region & inside).sum() == region.sum()
    rng = np.random.default_rng(seed)
    pattern = 1.0 + 0.2 * rng.random(inside.shape)
    for path in sorted(Path(out).glob("sub-*/func/*_desc-mean_relevance.nii.gz")):  # test helper
        img = nib.load(path)
        data = pattern + noise * rng.standard_normal(inside.shape)
        if "label-MOTORlh_" in path.name:
            data = data + effect * region
        data = np.where(inside, data, 0.0).astype(np.float32)
        write_nifti(path, nib.Nifti1Image(data, img.affine, img.header))
        side = path.with_name(path.name.replace(".nii.gz", ".json"))
        meta = json.loads(side.read_text())
        meta.pop("Attribution", None)
        write_json(side, meta)
    return region


@pytest.fixture(scope="session")
def synthetic_out(participant_out, group_bids, staged_templateflow, tmp_path_factory):
    """(output dir, exit code, region): the group level (defaults) on synthetic mean maps with a known difference.

    Three participants give the t statistic 2 degrees of freedom: for the region to pass FDR among
    ~200 000 voxels its t must be in the hundreds, hence the small noise of the maps.
    """

    def build(folder):
        out = link_copy(
            participant_out,
            folder / "deeplight",
            ignore=shutil.ignore_patterns("group", "deeplight_report.html"),
        )
        region = write_synthetic_state_maps(out)
        code = cli([str(group_bids.bids_dir), str(out), "group"])
        return out, code, region

    return build_once(tmp_path_factory, "group_synthetic_out", build)

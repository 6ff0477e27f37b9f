"""The synthetic BIDS + fMRIPrep-style generator: layout, determinism, planted regions."""

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deeplight_bids.demo.synth import (
    _SPARE_CENTERS,
    REGION_CENTERS,
    REGION_RADIUS,
    make_synthetic_dataset,
)
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE, is_on_reference_grid
from deeplight_bids.prepare.labels import read_events, resolve_state_map, volume_labels
from tests.conftest import SYNTH_VOLUMES


def _world_x(i):
    return REFERENCE_AFFINE[0, 0] * i + REFERENCE_AFFINE[0, 3]


def _data(path):
    return np.asanyarray(nib.load(path).dataobj)


# ----------------------------------------------------------------------------- layout


def test_raw_dataset_files(synthetic_dataset):
    info = synthetic_dataset
    root = info.bids_dir
    assert info.participants == ["01", "02"] and info.task == "motor" and info.t_r == 2.0
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["BIDSVersion"] and description["DatasetType"] == "raw"
    assert pd.read_csv(root / "participants.tsv", sep="\t")["participant_id"].tolist() == ["sub-01", "sub-02"]
    sidecar = json.loads((root / "task-motor_bold.json").read_text())
    assert sidecar == {"RepetitionTime": 2.0, "TaskName": "motor"}
    for run in info.runs:
        func = root / f"sub-{run.participant}" / "func"
        assert run.raw_bold == func / f"sub-{run.participant}_task-motor_bold.nii.gz"
        raw = nib.load(run.raw_bold)
        assert raw.ndim == 4 and raw.shape[3] == info.n_volumes
        assert raw.header.get_zooms()[3] == pytest.approx(2.0)
        assert run.events.name == f"sub-{run.participant}_task-motor_events.tsv"


def test_derivatives_files(synthetic_dataset):
    info = synthetic_dataset
    description = json.loads((info.derivatives_dir / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"]
    for run in info.runs:
        assert run.bold.name == f"sub-{run.participant}_task-motor_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz"
        assert run.mask.name == f"sub-{run.participant}_task-motor_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz"
        bold, mask = nib.load(run.bold), nib.load(run.mask)
        assert is_on_reference_grid(bold) and is_on_reference_grid(mask)
        assert bold.shape == REFERENCE_SHAPE + (info.n_volumes,)
        assert bold.get_data_dtype() == np.int16 and bold.header.get_zooms()[3] == pytest.approx(2.0)
        meta = json.loads(run.bold.with_name(run.bold.name.replace(".nii.gz", ".json")).read_text())
        assert meta["RepetitionTime"] == 2.0 and meta["SkullStripped"] is False and meta["Resolution"]
        mask_meta = json.loads(run.mask.with_name(run.mask.name.replace(".nii.gz", ".json")).read_text())
        assert mask_meta["Type"] == "Brain" and mask_meta["Resolution"]
        np.testing.assert_array_equal(_data(run.mask) > 0, info.brain_mask)


def test_pybids_finds_the_derivatives(synthetic_dataset):
    from bids import BIDSLayout

    info = synthetic_dataset
    layout = BIDSLayout(info.bids_dir, derivatives=True)
    bolds = layout.get(suffix="bold", desc="preproc", space="MNI152NLin6Asym", extension=".nii.gz")
    assert sorted(Path(f.path) for f in bolds) == sorted(run.bold for run in info.runs)
    masks = layout.get(suffix="mask", desc="brain", space="MNI152NLin6Asym", extension=".nii.gz")
    assert sorted(Path(f.path) for f in masks) == sorted(run.mask for run in info.runs)
    assert layout.get_metadata(bolds[0].path)["RepetitionTime"] == 2.0
    events = layout.get(suffix="events", task="motor", extension=".tsv", scope="raw")
    assert len(events) == len(info.runs)
    assert layout.get_tasks() == ["motor"] and layout.get_subjects() == info.participants


def test_bids_validator_accepts_raw_and_derivatives(synthetic_dataset):
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).with_name("bids-validator-deno"))
    if not Path(exe).exists():
        pytest.skip("bids-validator-deno is not installed")
    result = subprocess.run(
        [exe, str(synthetic_dataset.bids_dir), "--recursive", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(result.stdout)
    errors = [i["code"] for i in report["issues"]["issues"] if i["severity"] == "error"]
    for summary in (report.get("derivativesSummary") or {}).values():
        errors += [i["code"] for i in summary["issues"]["issues"] if i["severity"] == "error"]
    assert errors == [] and result.returncode == 0


def test_runs_and_no_run_entity_by_default(tmp_path):
    info = make_synthetic_dataset(tmp_path / "d", n_participants=1, n_runs=2, n_volumes=14, blocks_per_state=1)
    assert [r.run for r in info.runs] == [1, 2]
    assert info.runs[1].bold.name.startswith("sub-01_task-motor_run-2_space-")
    assert info.runs[1].events.name == "sub-01_task-motor_run-2_events.tsv"
    # different designs or noise per run
    assert not np.array_equal(_data(info.runs[0].bold), _data(info.runs[1].bold))


# ----------------------------------------------------------------------------- events


def test_events_are_a_valid_balanced_block_design(synthetic_dataset, tmp_path):
    info = make_synthetic_dataset(tmp_path / "d", n_participants=1, n_volumes=60, blocks_per_state=3)
    events = read_events(info.runs[0].events)
    assert sorted(events["trial_type"].value_counts().items()) == [("lh", 3), ("rh", 3), ("t", 3)]
    onsets, durations = events["onset"].to_numpy(), events["duration"].to_numpy()
    assert (np.diff(onsets) > durations[:-1]).all()  # ordered, rest between blocks
    assert onsets[0] > 0 and onsets[-1] + durations[-1] <= info.n_volumes * info.t_r
    assert (durations == durations[0]).all() and durations[0] >= 2 * info.t_r
    trial_types = events["trial_type"].tolist()
    assert all(a != b for a, b in itertools.pairwise(trial_types))
    for k in range(3):  # each round of 3 blocks holds every state once
        assert sorted(trial_types[3 * k : 3 * k + 3]) == ["lh", "rh", "t"]
    labels = volume_labels(events, info.n_volumes, info.t_r, resolve_state_map(info.task))
    assert {str(v) for v in labels if v is not None} == {"MOTOR_lh", "MOTOR_rh", "MOTOR_t"}


def test_state_maps(tmp_path):
    info = make_synthetic_dataset(tmp_path / "g", n_participants=1, task="gambling", n_volumes=14, blocks_per_state=1)
    assert info.states == ("loss", "neut", "win")
    assert info.state_map == {"loss": "GAMBLING_loss", "neut": "GAMBLING_neut", "win": "GAMBLING_win"}
    assert all(resolve_state_map("gambling")[t] == s for t, s in info.state_map.items())
    other = make_synthetic_dataset(
        tmp_path / "o",
        n_participants=1,
        task="stroop",
        states=("congruent", "incongruent"),
        n_volumes=11,
        blocks_per_state=1,
    )
    assert other.state_map == {"congruent": "congruent", "incongruent": "incongruent"}
    assert set(other.regions_by_state) == {"congruent", "incongruent"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"states": ("left", "right")}, ValueError, "HCP task MOTOR"),
        ({"n_volumes": 20}, ValueError, "too few"),
        ({"grid": "lps"}, ValueError, "grid must be one of"),
        ({"t_r": 0}, ValueError, "t_r"),
        ({"states": ("a", "a"), "task": "x"}, ValueError, "distinct"),
        ({"task": "motor task"}, ValueError, "alphanumeric"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_synthetic_dataset(tmp_path / "d", n_participants=1, **kwargs)


def test_refuses_to_overwrite_a_dataset(synthetic_dataset):
    with pytest.raises(FileExistsError):
        make_synthetic_dataset(synthetic_dataset.bids_dir, n_participants=1, n_volumes=14, blocks_per_state=1)


# ----------------------------------------------------------------------------- regions and signal


def test_region_coordinates_are_separated_and_inside_the_brain(synthetic_dataset):
    centers = list(REGION_CENTERS.values()) + list(_SPARE_CENTERS)
    distances = [np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(centers, 2)]
    assert min(distances) > 2 * REGION_RADIUS
    info = synthetic_dataset
    for _trial_type, region in info.regions.items():
        assert region.shape == REFERENCE_SHAPE and region.dtype == bool
        assert 400 < region.sum() < 600  # sphere of 10 mm at 2 mm voxels: ~520 voxels
        assert not (region & ~info.brain_mask).any()
    assert not any((a & b).any() for a, b in itertools.combinations(info.regions.values(), 2))


def test_left_and_right_regions_are_in_the_right_hemispheres(synthetic_dataset):
    info = synthetic_dataset
    x_mm = {t: _world_x(np.nonzero(region)[0]) for t, region in info.regions.items()}
    assert (x_mm["lh"] > 0).all()  # left hand -> right motor cortex
    assert (x_mm["rh"] < 0).all()  # right hand -> left motor cortex
    assert abs(x_mm["t"].mean()) < 1.0  # medial
    assert info.region_centers["lh"][0] == -info.region_centers["rh"][0] > 0


def test_planted_signal_in_the_stored_bold(synthetic_dataset):
    info = synthetic_dataset
    run = info.runs[1]
    data = _data(run.bold)  # (x, y, z, t) scaled to float
    labels = volume_labels(read_events(run.events), info.n_volumes, info.t_r, resolve_state_map(info.task))
    for trial_type, region in info.regions.items():
        active = labels == info.state_map[trial_type]
        own = data[region].mean(axis=0)  # (n_volumes,)
        change = own[active].mean() / own[~active].mean() - 1.0
        assert change > 0.005  # peak 2 % x U(0.8, 1.2), diluted by the HRF, the labels and a <= 1 % drift
        for other, other_region in info.regions.items():
            if other != trial_type:
                series = data[other_region].mean(axis=0)
                assert series[active].mean() / series[~active].mean() - 1.0 < change / 2
    outside = data[~info.brain_mask]
    assert np.count_nonzero(outside) == 0
    assert 800 < data[info.brain_mask].mean() < 1200


def test_deterministic_for_a_seed(tmp_path, synthetic_dataset):
    kwargs = {"n_participants": 1, "n_volumes": SYNTH_VOLUMES, "blocks_per_state": 1}
    again = make_synthetic_dataset(tmp_path / "a", seed=0, **kwargs)
    other = make_synthetic_dataset(tmp_path / "b", seed=1, **kwargs)
    first = synthetic_dataset.runs[0]  # same seed, more participants: same sub-01
    np.testing.assert_array_equal(_data(again.runs[0].bold), _data(first.bold))
    assert again.runs[0].events.read_text() == first.events.read_text()
    for name in ("regions", "brain_mask"):
        a, b = getattr(again, name), getattr(synthetic_dataset, name)
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        else:
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(_data(other.runs[0].bold), _data(first.bold))
    assert not np.array_equal(_data(synthetic_dataset.runs[1].bold), _data(first.bold))


def test_ras_grid_stores_the_same_voxels_flipped(synthetic_dataset, synthetic_dataset_ras):
    las, ras = synthetic_dataset.runs[0], synthetic_dataset_ras.runs[0]
    ras_img = nib.load(ras.bold)
    assert ras_img.affine[0, 0] == 2.0 and ras_img.affine[0, 3] == -90.0
    np.testing.assert_array_equal(_data(ras.bold), _data(las.bold)[::-1])
    np.testing.assert_array_equal(_data(ras.mask), _data(las.mask)[::-1])
    for trial_type in synthetic_dataset.regions:  # regions are given on the reference grid
        np.testing.assert_array_equal(synthetic_dataset_ras.regions[trial_type], synthetic_dataset.regions[trial_type])


def test_stripes_of_full_and_weak_strength(tmp_path):
    """``stripes=True, stripe_low=0.25`` (the demo): every region voxel rises during its state, some 4x more."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    info = make_synthetic_dataset(
        tmp_path / "d", n_participants=1, n_volumes=40, seed=1, signal=6.0, noise=0.2, stripes=True, stripe_low=0.25
    )
    run = info.runs[0]
    data = _data(run.bold)
    labels = volume_labels(read_events(run.events), info.n_volumes, info.t_r, resolve_state_map(info.task))
    for trial_type, region in info.regions.items():
        active = labels == info.state_map[trial_type]
        change = data[region][:, active].mean(axis=1) / data[region][:, ~active].mean(axis=1) - 1.0  # per voxel
        assert np.all(change > 0), trial_type  # no voxel of the region goes down
        strong, weak = np.percentile(change, 90), np.percentile(change, 10)
        assert strong > 2.5 * weak, (trial_type, strong, weak)
    with pytest.raises(ValueError, match="stripe_low"):
        make_synthetic_dataset(tmp_path / "e", n_participants=1, n_volumes=40, stripes=True, stripe_low=1.0)


@pytest.mark.parametrize("duty", [0.5, 0.75])
def test_stripe_duty_is_the_share_at_full_strength(duty):
    from deeplight_bids.demo.synth import STRIPE_PERIOD, _stripes

    x = np.linspace(0, 50 * STRIPE_PERIOD, 200001, dtype=np.float64)
    world = np.stack([x, np.zeros_like(x), np.zeros_like(x)], axis=-1)
    pattern = _stripes(world, 0, low=-1.0, duty=duty)
    assert set(np.unique(pattern)) == {-1.0, 1.0}
    assert np.mean(pattern == 1.0) == pytest.approx(duty, abs=0.005)
    with pytest.raises(ValueError, match="stripe_duty"):
        _stripes(world, 0, duty=1.0)


def test_planted_truth_without_writing(tmp_path):
    """The demo takes regions, brain and states from planted_truth: the same as a written dataset's."""
    from deeplight_bids.demo.synth import planted_truth

    written = make_synthetic_dataset(tmp_path / "d", n_participants=1, n_volumes=24, region_radius=12.0, seed=4)
    truth = planted_truth(n_volumes=24, region_radius=12.0)
    assert truth.states == written.states and truth.state_map == written.state_map
    assert truth.region_centers == written.region_centers
    np.testing.assert_array_equal(truth.brain_mask, written.brain_mask)
    for state, region in written.regions.items():
        np.testing.assert_array_equal(truth.regions[state], region)
    assert truth.runs == [] and truth.bids_dir is None

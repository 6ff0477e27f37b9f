"""Participant level end to end on generated data (full 91 x 109 x 91 grid).

A random-weight 3D-DeepLight (fixed seed) stands in for trained weights: these
tests check the pipeline, the outputs and their validity, not decoding accuracy
(the demo test does that).
"""

import hashlib
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deeplight_bids.cli.main import run as cli
from deeplight_bids.prepare.grid import REFERENCE_AFFINE

from .bids_validation import validator_errors
from .conftest import tree_digest
from .readonly import run_cli_read_only

STATES = ["MOTOR_lh", "MOTOR_rh", "MOTOR_t"]


@pytest.fixture(scope="module")
def random_model(random_3d_model):
    """The shared random-weight 3D model (tests/conftest.py)."""
    return random_3d_model


def _outputs(out):
    func = out / "sub-01" / "func"
    return {
        "pred": func / "sub-01_task-motor_desc-predictions_timeseries.tsv",
        "pred_json": func / "sub-01_task-motor_desc-predictions_timeseries.json",
        "rel": func / "sub-01_task-motor_space-MNI152NLin6Asym_res-2_desc-relevance_bold.nii.gz",
        "rel_json": func / "sub-01_task-motor_space-MNI152NLin6Asym_res-2_desc-relevance_bold.json",
        "summary": func / "sub-01_desc-accuracy_summary.tsv",
    }


def test_outputs_exist_and_are_consistent(participant_run, synthetic_dataset):
    out, code, _ = participant_run
    assert code == 0
    files = _outputs(out)
    for path in files.values():
        assert path.is_file(), path
    frame = pd.read_csv(files["pred"], sep="\t", na_values="n/a", keep_default_na=False)
    n_vol = synthetic_dataset.n_volumes
    assert list(frame["volume"]) == list(range(n_vol))
    np.testing.assert_allclose(frame["onset"], np.arange(n_vol) * synthetic_dataset.t_r)
    probs = frame[[f"prob_{s}" for s in STATES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (frame["predicted_state"] == np.array(STATES)[probs.argmax(axis=1)]).all()
    # labels follow the events with the haemodynamic shift: compare with an independent computation
    events = pd.read_csv(synthetic_dataset.runs[0].events, sep="\t")
    t = np.arange(n_vol) * synthetic_dataset.t_r
    expected = np.full(n_vol, None, dtype=object)
    for _, ev in events.sort_values("onset").iterrows():
        hit = (t >= ev.onset + synthetic_dataset.t_r - 1e-6) & (
            t <= ev.onset + ev.duration + 2 * synthetic_dataset.t_r + 1e-6
        )
        expected[hit] = synthetic_dataset.state_map[ev.trial_type]
    got = frame["true_state"].astype(object).where(frame["true_state"].notna(), None).to_numpy()
    assert list(got) == list(expected)
    labelled = frame["true_state"].notna()
    assert (
        frame.loc[labelled, "correct"]
        == (frame.loc[labelled, "true_state"] == frame.loc[labelled, "predicted_state"]).astype(int)
    ).all()
    sidecar = json.loads(files["pred_json"].read_text())
    for column in frame.columns:
        assert column in sidecar and sidecar[column]["Description"], column
    assert sidecar["Model"]["States"] == STATES


def test_quality_tables(participant_run):
    """--quality (default): deletion curves and the randomisation check of 4 volumes, summarised in the sidecar."""
    from deeplight_bids.quality.faithfulness import FRACTIONS

    out, code, _ = participant_run
    func = out / "sub-01" / "func"
    curves = pd.read_csv(func / "sub-01_task-motor_desc-faithfulness_timeseries.tsv", sep="\t")
    checks = pd.read_csv(func / "sub-01_task-motor_desc-sanity_timeseries.tsv", sep="\t")
    assert len(curves) == 4 * len(FRACTIONS) * 2 and curves["volume"].nunique() == 4
    assert sorted(curves["order"].unique()) == ["random", "relevance"]
    assert len(checks) == 4 and checks["spearman"].between(-1, 1).all()
    quality = json.loads(_outputs(out)["pred_json"].read_text())["Quality"]
    assert sorted(quality["Volumes"]) == sorted(checks["volume"])
    assert np.isfinite(quality["Faithfulness"]["area_between_curves"])
    assert set(quality["Sanity"]) >= {"median_spearman", "median_ssim", "high_similarity"}
    predictions = pd.read_csv(_outputs(out)["pred"], sep="\t")
    states = predictions.set_index("volume").loc[checks["volume"], "lrp_target"]
    assert list(states) == list(checks["state"])


def test_relevance_maps(participant_run, synthetic_dataset, prepared_synthetic_run):
    out, _, _ = participant_run
    files = _outputs(out)
    img = nib.load(files["rel"])
    assert img.shape == (91, 109, 91, synthetic_dataset.n_volumes)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, REFERENCE_AFFINE)
    data = np.asarray(img.dataobj)
    assert np.isfinite(data).all() and np.abs(data).max() > 0
    # masked to the run's brain mask: exact zeros outside, relevance inside
    mask = prepared_synthetic_run.mask
    assert not data[~mask].any()
    assert np.abs(data[mask]).max() > 0
    sidecar = json.loads(files["rel_json"].read_text())
    outside = sidecar["RelevanceOutsideMaskFraction"]
    assert outside["NumberOfVolumes"] == synthetic_dataset.n_volumes
    assert 0 < outside["Median"] <= outside["Max"] < 1  # the flat rule spreads some relevance past the mask
    assert sidecar["RepetitionTime"] == synthetic_dataset.t_r
    assert sidecar["LRP"] and sidecar["Model"]["WeightsSHA256"]
    assert sidecar["LRP"]["composite"] == "preset_b_flat" and sidecar["LRPRule"] == "published"
    conservation = sidecar["Conservation"]
    assert conservation["NumberOfVolumes"] == synthetic_dataset.n_volumes
    assert conservation["Min"] <= conservation["Median"] <= conservation["Max"]
    # per-state means equal the mean of the per-volume maps of that target
    frame = pd.read_csv(files["pred"], sep="\t", na_values="n/a", keep_default_na=False)
    for state, rows in frame.groupby("lrp_target").groups.items():
        label = state.replace("_", "")
        mean_path = (
            files["pred"].parent
            / f"sub-01_task-motor_space-MNI152NLin6Asym_res-2_label-{label}_desc-mean_relevance.nii.gz"
        )
        expected = data[..., np.asarray(rows)].mean(axis=-1)
        np.testing.assert_allclose(nib.load(mean_path).get_fdata(), expected, rtol=1e-4, atol=1e-7)


def test_bids_dir_untouched_and_outputs_valid(participant_run, synthetic_dataset):
    out, _, before = participant_run
    assert tree_digest(synthetic_dataset.bids_dir) == before
    errors, returncode = validator_errors(out)
    assert errors == []
    assert returncode == 0


def test_rerun_skips_and_overwrite_is_deterministic(participant_run, synthetic_dataset, random_model, tmp_path):
    out = tmp_path / "deeplight"
    shutil.copytree(participant_run[0], out)  # copy2 keeps the mtimes; the shared run stays as it was
    files = _outputs(out)
    stamp = files["pred_json"].stat().st_mtime_ns
    code = cli(
        [
            str(synthetic_dataset.bids_dir),
            str(out),
            "participant",
            "--participant-label",
            "01",
            "--weights",
            str(random_model),
            "--skip-bids-validation",
            "--quality-volumes",
            "4",
        ]
    )
    assert code == 0
    assert files["pred_json"].stat().st_mtime_ns == stamp  # nothing recomputed
    before = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items() if k in ("pred", "rel")}
    rel_before = np.asarray(nib.load(files["rel"]).dataobj)
    code = cli(
        [
            str(synthetic_dataset.bids_dir),
            str(out),
            "participant",
            "--participant-label",
            "01",
            "--weights",
            str(random_model),
            "--skip-bids-validation",
            "--overwrite",
            "--batch-size",
            "3",
            "--quality-volumes",
            "4",
        ]
    )
    assert code == 0
    assert files["pred_json"].stat().st_mtime_ns != stamp
    assert hashlib.sha256(files["pred"].read_bytes()).hexdigest() == before["pred"]
    # batch size must not change the maps beyond float round-off
    np.testing.assert_allclose(np.asarray(nib.load(files["rel"]).dataobj), rel_before, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", [None, "nobody"])
def test_no_lrp_and_read_only_bids_dir(synthetic_dataset, random_model, tmp_path, method):
    """A job on a BIDS_DIR it cannot write succeeds: a write attempt there would fail the run.

    As root the read-only is real (tests/readonly.py): a read-only bind mount, or the job
    running as ``nobody``; the ``nobody`` case is also run on its own where root can.
    """
    if method == "nobody" and (os.geteuid() != 0 or shutil.which("setpriv") is None):
        pytest.skip("dropping to nobody needs root and setpriv (the default case covers this user)")
    proc, used, out = run_cli_read_only(
        synthetic_dataset.bids_dir,
        tmp_path / "out",
        [
            "participant",
            "--participant-label",
            "02",
            "--weights",
            str(random_model),
            "--no-lrp",
            "--skip-bids-validation",
        ],
        inputs=[random_model],
        scratch=tmp_path,
        method=method,
    )
    assert proc.returncode == 0, (used, proc.stderr[-3000:])
    func = out / "sub-02" / "func"
    assert (func / "sub-02_task-motor_desc-predictions_timeseries.tsv").is_file()
    assert not list(func.glob("*relevance*"))


@pytest.mark.slow
def test_summary_keeps_tasks_of_earlier_jobs(synthetic_dataset, random_model, tmp_path):
    """A job with --task B must not drop task A from the participant's accuracy summary."""
    bids = tmp_path / "two-tasks"
    shutil.copytree(synthetic_dataset.bids_dir, bids)
    # a second task: the same files under the task label "motorb" (trial types then need a state map)
    for path in list(bids.rglob("sub-01_task-motor_*")):
        shutil.copy(path, path.with_name(path.name.replace("task-motor", "task-motorb")))
    shutil.copy(bids / "task-motor_bold.json", bids / "task-motorb_bold.json")
    state_map = tmp_path / "map.json"
    state_map.write_text(json.dumps({"motorb": {"lh": "MOTOR_lh", "rh": "MOTOR_rh", "t": "MOTOR_t"}}))
    out = tmp_path / "out"
    common = [
        str(bids),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "--weights",
        str(random_model),
        "--no-lrp",
        "--skip-bids-validation",
        "--state-map",
        str(state_map),
    ]
    assert cli(common + ["--task", "motor"]) == 0
    assert cli(common + ["--task", "motorb"]) == 0
    summary = pd.read_csv(out / "sub-01" / "func" / "sub-01_desc-accuracy_summary.tsv", sep="\t")
    assert set(summary["task"]) == {"motor", "motorb"}
    assert set(summary.loc[summary["run"] == "all", "task"]) == {"motor", "motorb"}


def test_job_config_reloads(participant_run, random_model, tmp_path):
    """The job's logs/config-*.toml reads back into the settings the run used (sections, one per table)."""
    from deeplight_bids.config import Config

    out, code, _ = participant_run
    path = sorted((out / "logs").glob("config-*-01.toml"))[0]  # the fixture's job (re-run tests add more)
    config = Config.load(path)
    assert config.participant_label == ("01",) and config.inputs.output_dir == out
    assert (config.participant.batch_size, config.participant.quality_volumes) == (8, 4)
    assert config.weights == str(random_model) and config.analysis_level == "participant"
    assert Config.load(config.save(tmp_path / "again.toml")) == config

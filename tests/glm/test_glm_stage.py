"""The participant level's GLM stage and the group's pooled agreement, on small synthetic datasets.

* the finished participant run of ``tests/conftest.py`` (``participant_run``, GLM on by
  default): maps, sidecars, agreement table, re-run skip, BIDS validity;
* a dataset whose events are awkward as OpenNeuro's often are (ds000001's balloon task:
  parametric-modulator names as trial types and ``n/a`` rows; ds000114's verb tasks: one
  condition): the participant and group levels finish with one warning per run that has
  no GLM;
* outputs made before the GLM existed: the group level says what is missing and goes on.
"""

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deeplight_bids.cli.main import run as cli
from deeplight_bids.derivatives import naming
from deeplight_bids.glm.agreement import region_share_top

from ..bids_validation import validator_errors
from ..conftest import SYNTH_VOLUMES


def test_participant_outputs(participant_run, synthetic_dataset):
    out, code, _ = participant_run
    assert code == 0
    ents = {"subject": "01", "task": "motor"}
    design_json = naming.glm_run_outputs(out, ents)["design_json"]
    side = json.loads(design_json.read_text())
    labels = [c["Name"] for c in side["Contrasts"]]
    assert labels == [f"MOTOR{s}Vs{a}" for a in ("Others", "Baseline") for s in ("lh", "rh", "t")]
    assert side["GLM"]["HRF"] == "glover" and side["GLM"]["NoiseModel"] == "ols"
    assert side["GLM"]["DriftModel"] == "cosine" and side["GLM"]["HighPass"] == pytest.approx(1 / 128)
    assert side["DegreesOfFreedom"] == SYNTH_VOLUMES - side["GLM"]["DesignRank"]
    # the inputs as BIDS URIs through DatasetLinks, the same as the relevance sidecars' (never an absolute path)
    relevance_side = json.loads(naming.run_outputs(out, ents)["predictions_json"].read_text())
    assert side["Sources"] == relevance_side["Sources"]
    assert all(s.startswith("bids:") and not s.startswith("bids::") for s in side["Sources"])
    maps = naming.glm_run_outputs(out, ents, labels)["maps"]
    for (label, stat), path in maps.items():
        img = nib.load(path)
        assert img.shape == (91, 109, 91) and img.get_data_dtype() == np.float32
        map_side = json.loads(naming.sidecar_of(path).read_text())
        assert map_side["Statistic"] == stat and map_side["Contrast"]["Name"] == label
        assert map_side["DegreesOfFreedom"] == side["DegreesOfFreedom"] and map_side["Design"]["HRF"] == "glover"
    design = pd.read_csv(naming.glm_run_outputs(out, ents)["design"], sep="\t")
    assert len(design) == SYNTH_VOLUMES and list(design.columns[1:]) == side["Columns"]
    # one run: no fixed-effects copy; the run's maps are the participant's
    assert not list((out / "sub-01" / "func").glob("*desc-fixedeffects*"))
    table = pd.read_csv(naming.glm_agreement_output(out, "01"), sep="\t")
    assert set(table["level"]) == {"run", "participant"}
    assert set(table["state"]) <= {"MOTOR_lh", "MOTOR_rh", "MOTOR_t"} and len(set(table["state"])) >= 1
    assert (table["attribution_method"] == "preset_b_flat").all()
    assert table["pearson_r"].between(-1, 1).all() and table["dice_top10"].between(0, 1).all()
    # the t-map of a state peaks in its planted region (the GLM itself, whatever the random model's maps)
    for state in synthetic_dataset.states:
        t = np.asarray(nib.load(maps[(f"MOTOR{state}VsOthers", "t")]).dataobj)
        fitted = np.asarray(nib.load(maps[(f"MOTOR{state}VsOthers", "variance")]).dataobj) > 0
        region = synthetic_dataset.regions[state]
        # as many top voxels as the region has: chance share = the region's share of the brain (0.2 %)
        share = region_share_top(t, region, fitted, 100 * region.sum() / fitted.sum())
        assert share > 0.3, (state, share)


def test_outputs_valid_and_rerun_reuses_the_glm(participant_run, synthetic_dataset, random_3d_model, tmp_path, capsys):
    out, _, _ = participant_run
    errors, _ = validator_errors(out)
    assert errors == []
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    design_json = naming.glm_run_outputs(copy, {"subject": "01", "task": "motor"})["design_json"]
    before = design_json.stat().st_mtime_ns
    argv = [str(synthetic_dataset.bids_dir), str(copy), "participant", "--participant-label", "01"]
    argv += ["--weights", str(random_3d_model), "--skip-bids-validation", "--quality-volumes", "4"]
    assert cli(argv) == 0
    assert design_json.stat().st_mtime_ns == before  # same settings and inputs: not refitted
    # another noise model is another GLM: refitted, recorded
    assert cli([*argv, "--glm-noise-model", "ar1"]) == 0
    side = json.loads(design_json.read_text())
    assert side["GLM"]["NoiseModel"] == "ar1" and side["Settings"]["noise_model"] == "ar1"
    assert "GLM: 3 states, 6 contrasts, ar1" in capsys.readouterr().err


# -- awkward events ----------------------------------------------------------------------------------
BALLOON = pd.DataFrame(
    {
        "onset": [2.0, 8.0, 14.0, 20.0, 26.0, 32.0],
        "duration": [2.0, 2.0, 2.0, 2.0, 0.0, 2.0],
        "trial_type": ["pumps_demean", "control_pumps_demean", "n/a", "explode_demean", "cash_demean", "pumps_demean"],
        "pumps_demean": ["1.5", "n/a", "n/a", "n/a", "n/a", "-0.5"],
        "response_time": ["0.4", "0.5", "n/a", "0.6", "0.3", "0.5"],
    }
)


@pytest.fixture(scope="module")
def awkward_dataset(tmp_path_factory):
    """sub-01: task motor (normal, plus an n/a row), task balloon (ds000001-like), task verb (one condition)."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    base = tmp_path_factory.mktemp("awkward")
    main = make_synthetic_dataset(base / "bids", n_participants=1, n_volumes=SYNTH_VOLUMES, blocks_per_state=1)
    for task, states in (("balloon", ("pumps", "cash")), ("verb", ("Task",))):
        other = make_synthetic_dataset(
            base / task, n_participants=1, n_volumes=SYNTH_VOLUMES, task=task, states=states, blocks_per_state=1
        )
        for path in other.bids_dir.rglob(f"*task-{task}*"):
            target = main.bids_dir / path.relative_to(other.bids_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    func = main.bids_dir / "sub-01" / "func"
    BALLOON.to_csv(func / "sub-01_task-balloon_events.tsv", sep="\t", index=False)
    motor = pd.read_csv(func / "sub-01_task-motor_events.tsv", sep="\t", dtype=str)
    pd.concat([motor, pd.DataFrame({"onset": ["50"], "duration": ["2"], "trial_type": ["n/a"]})]).to_csv(
        func / "sub-01_task-motor_events.tsv", sep="\t", index=False
    )
    state_map = base / "state_map.json"
    state_map.write_text(json.dumps({"verb": {"Task": "MOTOR_lh"}}))
    return main.bids_dir, state_map


@pytest.mark.slow  # three participant-level jobs and a group job on the full grid
def test_awkward_events_finish_with_warnings_only(awkward_dataset, random_3d_model, tmp_path, capsys):
    bids_dir, state_map = awkward_dataset
    out = tmp_path / "out"
    argv = [str(bids_dir), str(out), "participant", "--weights", str(random_3d_model), "--skip-bids-validation"]
    argv += ["--state-map", str(state_map), "--no-lrp"]  # decoding only: the GLM does not need LRP
    assert cli(argv) == 0
    err = capsys.readouterr().err
    assert " ERROR" not in err and "Traceback" not in err
    no_glm = [line for line in err.splitlines() if "no GLM:" in line]
    assert len(no_glm) == 2, no_glm  # exactly one warning per run without a design
    assert any("sub-01_task-balloon" in w and "no trial type" in w and "pumps_demean" in w for w in no_glm)
    assert any("sub-01_task-verb" in w and "only one state (MOTOR_lh)" in w for w in no_glm)
    assert all(" WARNING: " in w for w in no_glm)
    func = out / "sub-01" / "func"
    assert naming.glm_run_outputs(out, {"subject": "01", "task": "motor"})["design_json"].is_file()
    assert not list(func.glob("*task-balloon*statmap*")) and not list(func.glob("*task-verb*statmap*"))
    table = pd.read_csv(naming.glm_agreement_output(out, "01"), sep="\t")
    assert set(table["task"]) <= {"motor"}
    # --no-glm: no GLM outputs, no GLM lines
    argv_off = [str(bids_dir), str(tmp_path / "off"), "participant", "--weights", str(random_3d_model)]
    argv_off += ["--skip-bids-validation", "--no-lrp", "--task", "motor", "--no-glm"]
    assert cli(argv_off) == 0
    assert "GLM" not in capsys.readouterr().err
    assert not [p for p in (tmp_path / "off").rglob("*") if "statmap" in p.name or "glm" in p.name]
    # the group level on these outputs: warnings at most, a report
    assert cli([str(bids_dir), str(out), "group", "--skip-bids-validation"]) == 0
    err = capsys.readouterr().err
    assert " ERROR" not in err and "Traceback" not in err
    assert (out / "deeplight_report.html").is_file()


def test_group_on_outputs_made_before_the_glm(participant_run, synthetic_dataset, tmp_path, capsys):
    out, _, _ = participant_run
    old = tmp_path / "old"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("*statmap*", "*desc-glm*", "group", "*.html"))
    assert not list(old.rglob("*glmagreement*"))
    assert cli([str(synthetic_dataset.bids_dir), str(old), "group", "--skip-bids-validation"]) == 0
    err = capsys.readouterr().err
    assert "no relevance-vs-GLM agreement table for 1 participant(s) (sub-01)" in err
    assert "re-run the participant level" in err
    manifest = json.loads(naming.group_manifest_output(old).read_text())
    entry = manifest["ModelGroups"][0]["Tasks"]["motor"]
    assert "glm_agreement" not in entry and "GLM" in entry["glm_note"]
    assert "no relevance-vs-GLM agreement for task motor" in (old / "deeplight_report.html").read_text()


def test_group_pools_the_agreement(participant_run, synthetic_dataset, tmp_path):
    out, _, _ = participant_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("group", "*.html"))
    assert cli([str(synthetic_dataset.bids_dir), str(copy), "group", "--skip-bids-validation"]) == 0
    pooled = copy / "group" / "task-motor_desc-glmagreement_summary.tsv"
    table = pd.read_csv(pooled, sep="\t")
    mine = pd.read_csv(naming.glm_agreement_output(copy, "01"), sep="\t")
    # one participant: its rows, all of them; the task is in the group table's name (a "task" column would
    # contradict it for pybids)
    assert "task" not in table.columns
    pd.testing.assert_frame_equal(table, mine.drop(columns=["task"]))
    side = json.loads(naming.sidecar_of(pooled).read_text())
    summary = {e["state"]: e for e in side["GroupSummary"]}
    part = mine[mine["level"] == "participant"].set_index("state")
    for state, entry in summary.items():
        assert entry["n_participants"] == 1
        assert entry["pearson_r"]["mean"] == pytest.approx(part.loc[state, "pearson_r"])
    report = (copy / "deeplight_report.html").read_text()
    assert "Relevance maps beside the dataset" in report and "task-motor_desc-glmagreement_summary.tsv" in report


@pytest.mark.slow  # a two-run dataset and two GLMs on the full grid
def test_two_runs_fixed_effects_and_agreement(tmp_path):
    """Two runs: fixed-effects maps per contrast; a relevance map equal to a t-map agrees perfectly."""
    from nilearn.glm import compute_fixed_effects

    from deeplight_bids.bids.discover import build_layout, discover_selected_runs, find_derivatives
    from deeplight_bids.config import Config
    from deeplight_bids.demo.synth import make_synthetic_dataset
    from deeplight_bids.glm.stage import RunGLM, participant_glm, participant_maps
    from deeplight_bids.prepare.spaces import SpacePlan

    data = make_synthetic_dataset(
        tmp_path / "bids", n_participants=1, n_runs=2, n_volumes=SYNTH_VOLUMES, blocks_per_state=1
    )
    out = tmp_path / "out"
    config = Config(bids_dir=data.bids_dir, output_dir=out)
    runs = [r for r in discover_selected_runs(build_layout(data.bids_dir, find_derivatives(data.bids_dir, ())), config)]
    assert len(runs) == 2
    glm = RunGLM(config, SpacePlan())
    assert [glm.process(r).status for r in runs] == ["done", "done"]
    assert [glm.process(r).status for r in runs] == ["reused", "reused"]  # same settings and inputs
    # a relevance map of MOTOR_lh that is the fixed-effects t-map itself; none for the other states
    label = "MOTORlhVsOthers"
    rel = naming.state_map_output(out, "01", "motor", "MOTOR_lh")
    participant_glm(config, "01", runs, glm.settings_hash)  # the fixed-effects maps first
    fixed = participant_maps(out, "01", "motor", runs, label)
    assert fixed == naming.glm_participant_maps(out, "01", "motor", label)
    rel.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(fixed["t"], rel)
    table = participant_glm(config, "01", runs, glm.settings_hash)
    assert list(table["level"]) == ["run", "run", "participant"] and set(table["state"]) == {"MOTOR_lh"}
    participant = table[table["level"] == "participant"].iloc[0]
    assert participant["pearson_r"] == pytest.approx(1.0) and participant["dice_top1"] == 1.0
    assert (table[table["level"] == "run"]["pearson_r"] < 1).all()
    maps = [naming.glm_run_outputs(out, r.entities, [label])["maps"] for r in runs]
    dofs = [
        json.loads(naming.glm_run_outputs(out, r.entities)["design_json"].read_text())["DegreesOfFreedom"] for r in runs
    ]
    mask = np.logical_and.reduce([np.asarray(nib.load(m[(label, "variance")]).dataobj) > 0 for m in maps])
    effect, variance, t, _ = compute_fixed_effects(
        [m[(label, "effect")] for m in maps],
        [m[(label, "variance")] for m in maps],
        nib.Nifti1Image(mask.astype(np.uint8), nib.load(fixed["t"]).affine),
        dofs=dofs,
    )
    np.testing.assert_allclose(np.asarray(nib.load(fixed["t"]).dataobj), np.asarray(t.dataobj), rtol=1e-4, atol=1e-4)
    side = json.loads(naming.sidecar_of(fixed["t"]).read_text())
    assert side["Runs"] == [r.label for r in runs] and side["DegreesOfFreedom"] == sum(dofs)

"""load_relevance: selection by run, state and volume indices; means; errors (small grids, no model)."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.writers import StreamingNifti4D, write_json, write_nifti, write_tsv
from deeplight_bids.exceptions import InputDataError
from deeplight_bids.readback import load_relevance

SHAPE = (5, 6, 4)
STATES = ["MOTOR_lh", "MOTOR_rh"]
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _write_run(out, run, n_vol, seed):
    ents = {"subject": "01", "task": "motor", "run": run}
    paths = naming.run_outputs(out, ents)
    data = np.random.default_rng(seed).normal(size=(*SHAPE, n_vol)).astype(np.float32)
    stream = StreamingNifti4D(paths["relevance"], (*SHAPE, n_vol), AFFINE, 0.72)
    stream.write(0, np.moveaxis(data, -1, 0))
    stream.close()
    targets = [STATES[(i // 3) % 2] for i in range(n_vol)]
    frame = pd.DataFrame(
        {
            "volume": np.arange(n_vol),
            "onset": np.arange(n_vol) * 0.72,
            "true_state": targets,
            "predicted_state": targets,
            "correct": 1,
            "lrp_target": targets,
        }
    )
    write_tsv(paths["predictions"], frame)
    return data, frame


@pytest.fixture
def outputs(tmp_path):
    out = tmp_path / "out"
    runs = {run: _write_run(out, run, n, seed) for run, n, seed in (("1", 20, 0), ("2", 11, 1))}
    for state in STATES:
        path = naming.state_map_output(out, "01", "motor", state)
        write_nifti(path, nib.Nifti1Image(np.full(SHAPE, STATES.index(state) + 1, np.float32), AFFINE))
        write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {"State": state, "NumberOfVolumes": 7})
    return out, runs


def test_one_state_of_one_run(outputs):
    out, runs = outputs
    data, frame = runs["1"]
    img, table = load_relevance(out, "sub-01", "motor", run=1, state="MOTOR_rh")
    expected = frame.index[frame["lrp_target"] == "MOTOR_rh"].to_numpy()
    assert img.shape == (*SHAPE, len(expected)) and len(table) == len(expected)
    assert list(table["volume"]) == list(expected)
    assert set(table["source"]) == {
        naming.run_outputs(out, {"subject": "01", "task": "motor", "run": "1"})["relevance"].name
    }
    np.testing.assert_array_equal(np.asarray(img.dataobj), data[..., expected])
    assert img.header.get_zooms()[3] == pytest.approx(0.72)


def test_all_runs_label_form_and_volume_indices(outputs):
    out, runs = outputs
    img, table = load_relevance(out, "01", "motor", state="MOTORlh", volumes=[0, 1, 8, 10, 19])
    # lh: (i // 3) even -> 0, 1, 8, 19 of run 1 (20 volumes); 0, 1, 8 of run 2 (11 volumes; 19 not in it)
    want = {"1": [0, 1, 8, 19], "2": [0, 1, 8]}
    assert list(table["volume"]) == want["1"] + want["2"]
    expected = np.concatenate([runs[r][0][..., want[r]] for r in ("1", "2")], axis=-1)
    np.testing.assert_array_equal(np.asarray(img.dataobj), expected)


def test_means(outputs):
    out, _ = outputs
    img, table = load_relevance(out, "01", "motor", kind="means")
    assert list(table["state"]) == STATES and img.shape == (*SHAPE, 2)
    assert np.asarray(img.dataobj)[..., 1].max() == 2
    img, table = load_relevance(out, "01", "motor", kind="means", state="MOTOR_rh")
    assert list(table["state"]) == ["MOTOR_rh"] and list(table["number_of_volumes"]) == [7]


def test_missing_outputs_and_bad_kind(outputs):
    out, _ = outputs
    with pytest.raises(InputDataError, match="no per-volume relevance maps for sub-02"):
        load_relevance(out, "02", "motor")
    with pytest.raises(InputDataError, match="run 3"):
        load_relevance(out, "01", "motor", run=3)
    with pytest.raises(ValueError, match="kind must be one of"):
        load_relevance(out, "01", "motor", kind="everything")


def test_public_import_is_lazy():
    import subprocess
    import sys

    code = (
        "import sys, deeplight_bids; assert 'nibabel' not in sys.modules and 'pandas' not in sys.modules; "
        "from deeplight_bids import load_relevance; print(load_relevance.__module__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "deeplight_bids.readback"


def test_blocks(tmp_path):
    out = tmp_path / "out"
    paths = naming.run_outputs(out, {"subject": "01", "task": "motor"})
    data = np.random.default_rng(2).normal(size=(*SHAPE, 3)).astype(np.float32)
    stream = StreamingNifti4D(paths["blocks"], (*SHAPE, 3), AFFINE, 0.72)
    stream.write(0, np.moveaxis(data, -1, 0))
    stream.close()
    table = pd.DataFrame(
        {
            "block": [0, 1, 2],
            "trial_type": ["lh", "rh", "lh"],
            "state": ["MOTOR_lh", "MOTOR_rh", "MOTOR_lh"],
            "onset": [0.0, 10.0, 20.0],
            "duration": [5.0] * 3,
            "volumes": ["1,2", "15,16", "29,30"],
            "n_volumes": [2, 2, 2],
        }
    )
    write_tsv(paths["blocks_tsv"], table)
    img, rows = load_relevance(out, "01", "motor", kind="blocks", state="MOTOR_lh")
    assert list(rows["block"]) == [0, 2] and list(rows["onset"]) == [0.0, 20.0]
    np.testing.assert_array_equal(np.asarray(img.dataobj), data[..., [0, 2]])
    with pytest.raises(InputDataError, match="no per-volume relevance maps"):
        load_relevance(out, "01", "motor")  # blocks only: no per-volume file


def test_group_level_reads_the_maps_through_load_relevance(outputs, monkeypatch):
    """The group's correct-only means (group/stats.py) read each run's volumes with load_relevance."""
    from deeplight_bids import readback
    from deeplight_bids.group.stats import RunRecord, correct_only_participant_means

    out, runs = outputs
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("state"))
        return load_relevance(*args, **kwargs)

    monkeypatch.setattr(readback, "load_relevance", counting)
    records = []
    for run in ("1", "2"):
        paths = naming.run_outputs(out, {"subject": "01", "task": "motor", "run": run})
        records.append(
            RunRecord({"subject": "01", "task": "motor", "run": run}, paths["predictions"], {}, paths["relevance"])
        )
    means = correct_only_participant_means(records, STATES, output_dir=out)
    assert sorted(calls) == sorted(STATES * 2)  # one call per run and state
    for state in STATES:
        stacked = np.concatenate(
            [runs[r][0][..., (runs[r][1]["lrp_target"] == state).to_numpy()] for r in ("1", "2")], axis=-1
        )
        mean, n = means[state]["01"]
        assert n == stacked.shape[-1]
        np.testing.assert_allclose(mean, stacked.mean(axis=-1), rtol=1e-6, atol=1e-7)

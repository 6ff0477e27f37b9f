"""``--architecture 2D`` end to end with the REAL published 2D-DeepLight weights.

The published ``model-2D_DeepLight_desc-pretrained_model.npy`` is found by the
``published_2d_weights`` fixture (tests/conftest.py: ``$DEEPLIGHT_WEIGHTS_DIR``, the
``weights fetch`` cache, ``../shared/weights``; skipped where absent, failed in CI).
``DEEPLIGHT_WEIGHTS_DIR`` is pointed at
that folder so that the default weights of ``--architecture 2D`` (registry name
``2D-pretrained``, checksum-verified) resolve there.

The 2D run is compared with the 3D run of ``tests/test_participant.py`` (random 3D
weights, 3 states): same file names (the per-state mean maps by pattern), same TSV
columns apart from the ``prob_<state>`` columns, same sidecar keys.
"""

import hashlib
import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deeplight_bids.cli.main import run as cli
from deeplight_bids.exceptions import WeightsError
from deeplight_bids.prepare.grid import REFERENCE_AFFINE
from deeplight_bids.states import PRETRAINED_STATES

from .bids_validation import validator_errors
from .conftest import tree_digest
from .test_participant import _outputs

WEIGHTS_2D = "model-2D_DeepLight_desc-pretrained_model.npy"
SHA256_2D = "d1070ea1fadf4fc93f053c57bcadc6e37b38a6763276246efb25f35e1d1df90c"


@pytest.fixture(scope="module")
def weights_dir(published_2d_weights):
    """The published weights folder, with DEEPLIGHT_WEIGHTS_DIR pointing at it for the module."""
    folder = published_2d_weights.parent
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPLIGHT_WEIGHTS_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def run_2d(synthetic_dataset, weights_dir, tmp_path_factory):
    """sub-01 with --architecture 2D, default (published) weights, LRP on; returns (output dir, exit code)."""
    out = tmp_path_factory.mktemp("out2d") / "deeplight"
    before = tree_digest(synthetic_dataset.bids_dir)
    code = cli(
        [
            str(synthetic_dataset.bids_dir),
            str(out),
            "participant",
            "--participant-label",
            "sub-01",
            "--architecture",
            "2D",
            "--batch-size",
            "8",
            "--skip-bids-validation",
        ]
    )
    assert tree_digest(synthetic_dataset.bids_dir) == before
    return out, code


def _relative_files(out):
    """Output file names relative to ``out``, the per-state label and the config time stamp as patterns."""
    names = set()
    for path in out.rglob("*"):
        if path.is_file():
            name = str(path.relative_to(out))
            name = re.sub(r"_label-[A-Za-z0-9]+_", "_label-*_", name)
            # logs/{config,runs}-<date>-<time>-<pid>-<labels>.{toml,log,tsv}
            name = re.sub(r"(config|runs)-\d{8}-\d{6}-\d+-", r"\1-*-", name)
            names.add(name)
    return names


def _frame(path):
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def test_2d_outputs_have_the_same_set_as_3d(run_2d, participant_run):
    out2d, code2d = run_2d
    out3d, code3d, _ = participant_run
    assert code2d == 0 and code3d == 0
    assert _relative_files(out2d) == _relative_files(out3d)
    files2d, files3d = _outputs(out2d), _outputs(out3d)
    for key in ("pred", "summary"):
        cols2d = [c for c in _frame(files2d[key]).columns if not c.startswith("prob_")]
        cols3d = [c for c in _frame(files3d[key]).columns if not c.startswith("prob_")]
        assert cols2d == cols3d, key
    assert [c for c in _frame(files2d["pred"]).columns if c.startswith("prob_")] == [
        f"prob_{s}" for s in PRETRAINED_STATES
    ]
    for key in ("pred_json", "rel_json"):
        keys2d = {k for k in json.loads(files2d[key].read_text()) if not k.startswith("prob_")}
        keys3d = {k for k in json.loads(files3d[key].read_text()) if not k.startswith("prob_")}
        assert keys2d == keys3d, key


def test_2d_predictions_and_sidecars(run_2d, synthetic_dataset, weights_dir):
    out, _ = run_2d
    files = _outputs(out)
    frame = _frame(files["pred"])
    n_vol = synthetic_dataset.n_volumes
    assert list(frame["volume"]) == list(range(n_vol))
    probs = frame[[f"prob_{s}" for s in PRETRAINED_STATES]].to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (frame["predicted_state"] == np.array(PRETRAINED_STATES)[probs.argmax(axis=1)]).all()
    assert (frame["lrp_target"] == frame["predicted_state"]).all()
    # the synthetic motor states (MOTOR_lh, MOTOR_rh, MOTOR_t) are among the 16 pretrained outputs
    assert set(frame["true_state"].dropna()) <= set(PRETRAINED_STATES)
    sha = hashlib.sha256((weights_dir / WEIGHTS_2D).read_bytes()).hexdigest()
    assert sha == SHA256_2D
    for key in ("pred_json", "rel_json"):
        model = json.loads(files[key].read_text())["Model"]
        assert model["Architecture"] == "2D-DeepLight", key
        assert model["WeightsSHA256"] == SHA256_2D and model["WeightsFile"] == WEIGHTS_2D, key
        assert model["Name"] == "2D-pretrained" and model["States"] == list(PRETRAINED_STATES), key
    relevance_sidecar = json.loads(files["rel_json"].read_text())
    lrp = relevance_sidecar["LRP"]
    assert lrp["composite"] == "deeplight_2d" and lrp["epsilons"] == [1e-3]
    assert relevance_sidecar["LRPRule"] == "published"
    rules = {entry["layer"]: entry["rule"] for entry in lrp["layers"]}
    assert rules["bilstm"] == "LSTMEpsilon" and rules["conv_1"] == "Epsilon" and rules["linear"] == "PlusEpsilon"
    # measured, not claimed: sum(R) / explained logit over the run's volumes
    conservation = relevance_sidecar["Conservation"]
    assert conservation["NumberOfVolumes"] == n_vol
    assert conservation["Min"] <= conservation["Median"] <= conservation["Max"]
    assert "sums to about" not in relevance_sidecar["Units"]
    assert rules["fold_slices"] == rules["unfold_slices"] == "Pass"


def test_2d_relevance_maps(run_2d, synthetic_dataset):
    out, _ = run_2d
    files = _outputs(out)
    img = nib.load(files["rel"])
    assert img.shape == (91, 109, 91, synthetic_dataset.n_volumes)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, REFERENCE_AFFINE)
    data = np.asarray(img.dataobj)
    assert np.isfinite(data).all() and np.abs(data).max() > 0
    # relevance stays inside the brain mask the run was prepared with (masked voxels are 0)
    mask = np.asarray(nib.load(synthetic_dataset.runs[0].mask).dataobj) > 0
    assert np.abs(data[~mask]).max() == 0 and np.abs(data[mask]).max() > 0
    frame = _frame(files["pred"])
    for state, rows in frame.groupby("lrp_target").groups.items():
        mean_path = files["pred"].parent / (
            f"sub-01_task-motor_space-MNI152NLin6Asym_res-2_label-{state.replace('_', '')}_desc-mean_relevance.nii.gz"
        )
        expected = data[..., np.asarray(rows)].mean(axis=-1)
        np.testing.assert_allclose(nib.load(mean_path).get_fdata(), expected, rtol=1e-4, atol=1e-7)
        meta = json.loads(mean_path.with_name(mean_path.name.replace(".nii.gz", ".json")).read_text())
        assert meta["Model"]["Architecture"] == "2D-DeepLight"


def test_2d_outputs_are_valid_bids(run_2d):
    out, _ = run_2d
    errors, returncode = validator_errors(out)
    assert errors == []
    assert returncode == 0


def test_converted_keras_weights_decode_deterministically(run_2d, synthetic_dataset, weights_dir, tmp_path):
    """`weights convert` -> .keras + card usable as --weights; decoding twice gives identical predictions."""
    converted = tmp_path / "model" / "deeplight2d.keras"
    assert cli(["weights", "convert", str(weights_dir / WEIGHTS_2D), str(converted)]) == 0
    card = json.loads(converted.with_suffix(".json").read_text())
    assert card["architecture"] == "2D" and card["source"]["sha256"] == SHA256_2D
    frames = []
    for name, weights in (("a", None), ("b", converted)):
        args = [
            str(synthetic_dataset.bids_dir),
            str(tmp_path / name),
            "participant",
            "--participant-label",
            "01",
            "--architecture",
            "2D",
            "--no-lrp",
            "--skip-bids-validation",
            "--batch-size",
            "8",
        ]
        if weights is not None:
            args += ["--weights", str(weights)]
        assert cli(args) == 0
        files = _outputs(tmp_path / name)
        frames.append(_frame(files["pred"]))
        model = json.loads(files["pred_json"].read_text())["Model"]
        assert model["Architecture"] == "2D-DeepLight"
    assert (
        json.loads(_outputs(tmp_path / "b")["pred_json"].read_text())["Model"]["WeightsSHA256"]
        == hashlib.sha256(converted.read_bytes()).hexdigest()
    )
    # same weights through the registry (.npy) and the converted .keras: bit-identical decoding
    pd.testing.assert_frame_equal(frames[0], frames[1])
    # and the LRP run's forward pass (another graph) agrees up to float round-off
    with_lrp = _frame(_outputs(run_2d[0])["pred"])
    prob_cols = [f"prob_{s}" for s in PRETRAINED_STATES]
    np.testing.assert_allclose(with_lrp[prob_cols].to_numpy(), frames[0][prob_cols].to_numpy(), atol=1e-5)
    assert (with_lrp["predicted_state"] == frames[0]["predicted_state"]).all()


@pytest.mark.slow  # loads and converts the published model
def test_default_2d_weights_resolve_from_the_registry_and_are_verified(weights_dir, tmp_path, monkeypatch):
    from deeplight_bids.models.weights import load_deeplight

    loaded = load_deeplight(None, "2D")
    assert loaded.architecture == "2D" and loaded.name == "2D-pretrained"
    assert loaded.weights_sha256 == SHA256_2D and loaded.weights_path == weights_dir / WEIGHTS_2D
    assert loaded.states == PRETRAINED_STATES and loaded.model.output_shape == (None, 16)
    x = np.random.default_rng(0).standard_normal((2, 91, 109, 91, 1)).astype("float32")
    first = np.asarray(loaded.model(x, training=False))
    np.testing.assert_array_equal(first, np.asarray(loaded.model(x, training=False)))  # deterministic

    # 3D weights are refused when 2D is asked for
    keras_3d = tmp_path / "m3d" / "m.keras"
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.weights import save_model

    save_model(build_3d_deeplight(n_states=2), keras_3d, {"architecture": "3D", "states": ["a", "b"]})
    with pytest.raises(WeightsError, match="3D-DeepLight weights but --architecture 2D"):
        load_deeplight(keras_3d, "2D")
    assert load_deeplight(keras_3d, "3D").architecture == "3D"

    # a corrupted copy of the published file fails its checksum, with a fix in the message
    bad = tmp_path / "bad"
    bad.mkdir()
    data = bytearray((weights_dir / WEIGHTS_2D).read_bytes())
    data[-1] ^= 1
    (bad / WEIGHTS_2D).write_bytes(bytes(data))
    monkeypatch.setenv("DEEPLIGHT_WEIGHTS_DIR", str(bad))
    with pytest.raises(WeightsError, match="checksum does not match.*weights fetch 2D-pretrained"):
        load_deeplight(None, "2D")
    monkeypatch.setenv("DEEPLIGHT_WEIGHTS_DIR", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match="published 2D weights not found"):
        load_deeplight(None, "2D")


def test_2d_sanity_check_has_numbers_for_every_volume(run_2d):
    """Issue 32: the randomised 2D model's maps are finite, so every checked volume has its numbers."""
    out, _ = run_2d
    files = _outputs(out)
    sanity = _frame(files["pred"].with_name(files["pred"].name.replace("predictions", "sanity")))
    assert len(sanity) > 0
    assert np.isfinite(sanity[["spearman", "spearman_abs", "ssim"]].to_numpy()).all()
    summary = json.loads(files["pred_json"].read_text())["Quality"]["Sanity"]
    assert np.isfinite(summary["median_spearman"]) and "not_evaluated" not in summary


def test_2d_group_report_sanity_numbers_are_real(run_2d, synthetic_dataset, tmp_path):
    """The group level's per-participant sanity figures of a 2D run are numbers, not n/a."""
    import shutil

    out, _ = run_2d
    copy = tmp_path / "deeplight"
    shutil.copytree(out, copy)
    assert cli([str(synthetic_dataset.bids_dir), str(copy), "group", "--skip-bids-validation"]) == 0
    quality = next((copy / "group").glob("task-motor_desc-quality_summary.tsv"))
    table = _frame(quality)
    assert len(table) and np.isfinite(table[["median_spearman", "median_ssim"]].to_numpy()).all()

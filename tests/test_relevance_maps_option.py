"""--relevance-maps blocks / means at the participant level (full grid, random-weight model)."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deeplight_bids.cli.main import run as cli
from deeplight_bids.derivatives.blocks import event_blocks
from deeplight_bids.prepare.labels import read_events

from .bids_validation import validator_errors

FUNC = "sub-01/func/sub-01_task-motor_"
BLOCKS = FUNC + "space-MNI152NLin6Asym_res-2_desc-blocks_relevance"
VOLUMES = FUNC + "space-MNI152NLin6Asym_res-2_desc-relevance_bold.nii.gz"


def test_blocks_then_means_then_volumes_without_the_network(
    synthetic_dataset, random_3d_model, prepared_synthetic_run, tmp_path, capfd
):
    out = tmp_path / "deeplight"
    args = [
        str(synthetic_dataset.bids_dir),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "--weights",
        str(random_3d_model),
        "--batch-size",
        "8",
        "--skip-bids-validation",
    ]
    assert cli([*args, "--relevance-maps", "blocks"]) == 0
    assert not (out / VOLUMES).exists()
    img = nib.load(out / (BLOCKS + ".nii.gz"))
    table = pd.read_csv(out / (BLOCKS + ".tsv"), sep="\t")
    run = synthetic_dataset.runs[0]
    expected, _ = event_blocks(
        read_events(run.events), synthetic_dataset.n_volumes, synthetic_dataset.t_r, synthetic_dataset.state_map
    )
    assert len(table) == len(expected) == img.shape[3] > 0
    assert table["volumes"].astype(str).tolist() == expected["volumes"].tolist()
    data = np.asarray(img.dataobj)
    assert not data[~prepared_synthetic_run.mask].any() and np.abs(data).max() > 0
    sidecar = json.loads((out / (BLOCKS + ".json")).read_text())
    assert sidecar["n_volumes"]["Description"] and sidecar["RelevanceOutsideMaskFraction"]["NumberOfVolumes"] > 0
    from deeplight_bids import load_relevance

    read, rows = load_relevance(out, "01", "motor", kind="blocks", state=table["state"].iloc[0])
    chosen = table.index[table["state"] == table["state"].iloc[0]].to_numpy()
    assert list(rows["block"]) == list(chosen)
    np.testing.assert_array_equal(np.asarray(read.dataobj), data[..., chosen])
    errors, _ = validator_errors(out)
    assert errors == []
    means = sorted((out / "sub-01/func").glob("*_desc-mean_relevance.nii.gz"))
    assert means
    mean_data = nib.load(means[0]).get_fdata()

    # another choice: made from the work folder's per-volume maps, without the network; the block maps of the
    # first choice are removed
    from deeplight_bids.lrp.analyzer import LRPAnalyzer
    from deeplight_bids.models.decode import Decoder

    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LRPAnalyzer, "explain", lambda *a, **k: calls.append("explain") or 1 / 0)
        patch.setattr(Decoder, "logits", lambda *a, **k: calls.append("logits") or 1 / 0)
        capfd.readouterr()
        assert cli([*args, "--relevance-maps", "means"]) == 0
        assert "--relevance-maps means: made from the per-volume maps" in capfd.readouterr().err
        assert not (out / (BLOCKS + ".nii.gz")).exists() and not (out / (BLOCKS + ".tsv")).exists()
        assert not (out / VOLUMES).exists()
        assert sorted((out / "sub-01/func").glob("*_desc-mean_relevance.nii.gz")) == means
        assert np.array_equal(nib.load(means[0]).get_fdata(), mean_data)

        assert cli([*args, "--relevance-maps", "volumes"]) == 0  # the per-volume maps, masked, from the work folder
        errors, _ = validator_errors(out)  # the default output (one gzip member per volume) is valid BIDS too
        assert errors == []
        volumes = np.asarray(nib.load(out / VOLUMES).dataobj)
        assert cli([*args, "--relevance-maps", "blocks"]) == 0  # and the block maps again, the same as the first
    assert calls == []
    assert volumes.shape[3] == synthetic_dataset.n_volumes and not volumes[~prepared_synthetic_run.mask].any()
    np.testing.assert_array_equal(np.asarray(nib.load(out / (BLOCKS + ".nii.gz")).dataobj), data)
    predictions = json.loads((out / (FUNC + "desc-predictions_timeseries.json")).read_text())
    assert predictions["SettingsHash"] == sidecar["SettingsHash"]  # blocks again: the first run's settings

    # what the network wrote beside it agrees with the blocks rebuilt from the per-volume file
    first = pd.read_csv(out / (BLOCKS + ".tsv"), sep="\t")
    for _, row in first.iterrows():
        used = [int(v) for v in str(row["volumes"]).split(",")]
        np.testing.assert_allclose(
            data[..., row["block"]], volumes[..., used].mean(axis=-1), rtol=1e-5, atol=1e-6 * np.abs(data).max()
        )

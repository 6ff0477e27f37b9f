"""The app's participant level on an HCP tree fetched from S3, and the TFRecord export.

A one-subject MOTOR run on the reference grid is served by the loopback moto server
(under its own prefix), fetched into BIDS, then decoded with no extra options besides
the weights (the published 3D weights are not available offline: a random-weight
model with the 16 published output states stands in).
"""

import io

import boto3
import numpy as np
import pandas as pd
import pytest

from deeplight_bids.prepare.grid import REFERENCE_SHAPE
from deeplight_bids.states import HCP_STATES, PRETRAINED_STATES

from .conftest import BUCKET, nifti_bytes

pytestmark = pytest.mark.slow  # fetch + the participant level on the full grid

PREFIX = "HCP_APP/"
SUBJECT = "100307"
N_VOLUMES = 40  # 28.8 s at TR 0.72: enough for the 1/128 Hz high-pass
MOTOR_EVS = {
    "lf.txt": "1.0\t4.0\t1\n",
    "lh.txt": "7.0\t4.0\t1\n",
    "rf.txt": "13.0\t4.0\t1\n",
    "rh.txt": "19.0\t3.0\t1\n",
    "t.txt": "24.0\t2.0\t1\n",
    "cue.txt": "0.0\t1.0\t1\n",
}


@pytest.fixture(scope="module")
def app_tree(s3_server):
    rng = np.random.default_rng(1)
    x, y, z = np.indices(REFERENCE_SHAPE)
    brain = ((x - 45) / 35.0) ** 2 + ((y - 60) / 45.0) ** 2 + ((z - 40) / 32.0) ** 2 <= 1
    bold = (1000 + 20 * rng.standard_normal(REFERENCE_SHAPE + (N_VOLUMES,))) * brain[..., None]
    base = f"{PREFIX}{SUBJECT}/MNINonLinear/Results/tfMRI_MOTOR_LR/"
    objects = {
        f"{base}tfMRI_MOTOR_LR.nii.gz": nifti_bytes(bold.astype(np.int16), tr=0.72),
        f"{base}brainmask_fs.2.nii.gz": nifti_bytes(brain.astype(np.uint8)),
        f"{PREFIX}{SUBJECT}/MNINonLinear/T1w.nii.gz": nifti_bytes(np.ones((5, 6, 7), np.int16)),
        **{f"{base}EVs/{name}": text.encode() for name, text in MOTOR_EVS.items()},
    }
    client = boto3.client(
        "s3",
        endpoint_url=s3_server["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=s3_server["key_id"],
        aws_secret_access_key=s3_server["secret"],
    )
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return s3_server


@pytest.fixture(scope="module")
def random_pretrained_like(tmp_path_factory):
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.weights import save_model

    folder = tmp_path_factory.mktemp("model") / "rand16"
    save_model(
        build_3d_deeplight(n_states=16),
        folder / "rand16.keras",
        {"architecture": "3D", "states": list(PRETRAINED_STATES), "name": "rand16"},
    )
    return folder


def test_fetch_then_participant_level_and_tfrecords(app_tree, random_pretrained_like, tmp_path, monkeypatch):
    from deeplight_bids.cli.main import run as cli
    from deeplight_bids.hcp import cli as hcp_cli
    from deeplight_bids.hcp import s3
    from deeplight_bids.hcp.tfrecord import read_tfrecord

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", app_tree["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", app_tree["secret"])
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    source = s3.connect(endpoint_url=app_tree["endpoint"], prefix=PREFIX)
    root = tmp_path / "hcp-bids"
    hcp_cli.fetch(source, root, [SUBJECT], ["MOTOR"], ["LR"], jobs=2, progress=False, stream=io.StringIO())

    out = tmp_path / "out"
    code = cli(
        [str(root), str(out), "participant", "--weights", str(random_pretrained_like), "--no-lrp", "--save-tfrecords"]
    )
    assert code == 0
    pred = out / f"sub-{SUBJECT}" / "func" / f"sub-{SUBJECT}_task-MOTOR_dir-LR_desc-predictions_timeseries.tsv"
    frame = pd.read_csv(pred, sep="\t", na_values="n/a", keep_default_na=False)
    assert len(frame) == N_VOLUMES
    # HCP vocabulary applied without --state-map; the cue EV is not a state
    labelled = frame["true_state"].dropna()
    assert set(labelled) == {"MOTOR_lf", "MOTOR_lh", "MOTOR_rf", "MOTOR_rh", "MOTOR_t"}

    records = list(
        read_tfrecord(out / "tfrecords" / f"sub-{SUBJECT}" / f"sub-{SUBJECT}_task-MOTOR_dir-LR_volumes.tfrecords")
    )
    assert len(records) == len(labelled)  # unlabelled volumes are skipped, as in the original
    expected = [HCP_STATES.index(s) for s in labelled]
    assert [int(np.argmax(r["onehot"])) for r in records] == expected
    assert all(int(r["subject_id"]) == int(SUBJECT) for r in records)
    assert all(np.asarray(r["volume"]).size == int(np.prod(REFERENCE_SHAPE)) for r in records)

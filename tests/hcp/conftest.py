"""A real S3-compatible server on loopback (moto), filled with a small fake HCP tree.

Tree (bucket ``hcp-openaccess``, prefix ``HCP_1200/``), tasks MOTOR and WM, runs LR/RL:

* ``100307``: complete (BOLD, brainmask_fs.2, all EV files, T1w);
* ``100408``: WM RL lacks ``EVs/2bk_tools.txt``, and there is no T1w.

A second bucket ``mirror-bucket`` with prefix ``HCP_MIRROR/`` holds a copy of 100307's
MOTOR data (for --bucket/--prefix).  The server enforces IAM credentials once the tree is
written: :data:`GOOD_KEYS` are accepted, anything else is refused.
"""

import gzip
import io
import json
import urllib.request
import uuid

import boto3
import nibabel as nib
import numpy as np
import pytest

from deeplight_bids.prepare.grid import REFERENCE_AFFINE

BUCKET = "hcp-openaccess"
PREFIX = "HCP_1200/"
MIRROR_BUCKET = "mirror-bucket"
MIRROR_PREFIX = "HCP_MIRROR/"
SUBJECTS = ("100307", "100408")
TASKS = ("MOTOR", "WM")
RUNS = ("LR", "RL")
N_VOLUMES = 40
MISSING_EV = f"{PREFIX}100408/MNINonLinear/Results/tfMRI_WM_RL/EVs/2bk_tools.txt"
MISSING_T1W = f"{PREFIX}100408/MNINonLinear/T1w.nii.gz"

#: EV file contents per task (same for every run, offset by run below); onset duration amplitude.
EVS = {
    "MOTOR": {
        "lf.txt": "10.0\t12.0\t1\n",
        "rf.txt": "2.5\t6.25\t1\n",
        "lh.txt": "",
        "rh.txt": "20.125\t3.0\t1\n",
        "t.txt": "0\t0\t0\n",
        "cue.txt": "1.0\t3.0\t1\n",
    },
    "WM": {
        **{f"{level}_{x}.txt": "" for level in ("0bk", "2bk") for x in ("body", "faces", "places", "tools")},
        "0bk_body.txt": "3.5\t7.5\t1\n",
        "2bk_body.txt": "15.0\t7.5\t1\n",
        "0bk_faces.txt": "24.0\t2.5\t1\n",
        "0bk_cor.txt": "4.0\t1.0\t1\n",
    },
}


def nifti_bytes(data, tr=None):
    """A gzipped NIfTI-1 file (bytes) of ``data`` on the reference affine."""
    img = nib.Nifti1Image(data, REFERENCE_AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        zooms = img.header.get_zooms()
        img.header.set_zooms(zooms[:3] + (tr,))
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0)


def fake_hcp_objects(prefix=PREFIX, subjects=SUBJECTS, tasks=TASKS):
    """``{key: bytes}`` of the fake HCP tree."""
    rng = np.random.default_rng(0)
    objects = {f"{prefix}README.txt": b"not a subject\n"}
    for subject in subjects:
        objects[f"{prefix}{subject}/MNINonLinear/T1w.nii.gz"] = nifti_bytes(
            rng.integers(0, 1000, (5, 6, 7), dtype=np.int16)
        )
        for task in tasks:
            for run in RUNS:
                base = f"{prefix}{subject}/MNINonLinear/Results/tfMRI_{task}_{run}/"
                bold = rng.integers(0, 30000, (4, 5, 6, N_VOLUMES), dtype=np.int16)
                objects[f"{base}tfMRI_{task}_{run}.nii.gz"] = nifti_bytes(bold, tr=0.72)
                objects[f"{base}brainmask_fs.2.nii.gz"] = nifti_bytes(np.ones((4, 5, 6), dtype=np.uint8))
                objects[f"{base}tfMRI_{task}_{run}_Physio_log.txt"] = b"unused\n"
                for name, text in EVS[task].items():
                    objects[f"{base}EVs/{name}"] = text.encode()
    objects.pop(MISSING_EV, None)
    objects.pop(MISSING_T1W, None)
    return objects


def _enable_auth(endpoint, count):
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=str(count).encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture(scope="package")
def s3_server():
    """Endpoint URL, accepted keys and the object tree of a moto S3 server on loopback.

    Package-scoped (the whole tests/hcp session): moto's authentication switch is
    process-global, so it is switched off again when these tests are done.
    """
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boot = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "bootstrap",
        "aws_secret_access_key": "bootstrap",
    }
    client = boto3.client("s3", **boot)
    objects = fake_hcp_objects()
    client.create_bucket(Bucket=BUCKET)
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    mirror = fake_hcp_objects(prefix=MIRROR_PREFIX, subjects=("100307",), tasks=("MOTOR",))
    client.create_bucket(Bucket=MIRROR_BUCKET)
    for key, body in mirror.items():
        client.put_object(Bucket=MIRROR_BUCKET, Key=key, Body=body)
    iam = boto3.client("iam", **boot)
    user = f"hcp-reader-{uuid.uuid4().hex[:8]}"  # one per server start: module fixtures may share a worker's server
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _enable_auth(endpoint, 0)
    try:
        yield {
            "endpoint": endpoint,
            "key_id": key["AccessKeyId"],
            "secret": key["SecretAccessKey"],
            "objects": objects,
            "mirror": mirror,
        }
    finally:
        _enable_auth(endpoint, "inf")
        server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path, s3_server):
    """An environment with the accepted keys in AWS_* variables and no ~/.aws files."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
    return s3_server


@pytest.fixture
def source(aws_env):
    """An :class:`S3Source` for the fake tree with the accepted keys."""
    from deeplight_bids.hcp import s3

    return s3.connect(endpoint_url=aws_env["endpoint"])


@pytest.fixture(scope="package")
def fetched_dataset(s3_server, tmp_path_factory):
    """OUTPUT_BIDS_DIR after ``fetch`` of the complete subject 100307 (MOTOR, WM), and the result."""
    from deeplight_bids.hcp import cli, s3

    root = tmp_path_factory.mktemp("fetched") / "bids"
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("AWS_ACCESS_KEY_ID", s3_server["key_id"])
        mp.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
        mp.delenv("AWS_PROFILE", raising=False)
        source = s3.connect(endpoint_url=s3_server["endpoint"])
        result = cli.fetch(
            source, root, ["100307"], list(TASKS), list(RUNS), jobs=2, progress=False, stream=io.StringIO()
        )
    finally:
        mp.undo()
    return root, result

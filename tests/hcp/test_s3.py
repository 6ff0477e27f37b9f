"""Downloads from a real S3-compatible server on loopback (moto): fetch, resume, retries,
missing objects, credentials, and the S3 options of ``deeplight-bids-hcp``."""

import dataclasses
import gzip
import hashlib
import io
import logging

import botocore.exceptions as bce
import pytest

from deeplight_bids import progress as hcp_progress
from deeplight_bids.hcp import bids as hcp_bids
from deeplight_bids.hcp import cli, download, listing, s3
from tests.hcp.conftest import MIRROR_BUCKET, MIRROR_PREFIX, MISSING_EV, MISSING_T1W, PREFIX

BOLD_KEY = f"{PREFIX}100307/MNINonLinear/Results/tfMRI_MOTOR_LR/tfMRI_MOTOR_LR.nii.gz"


def run_cli(argv, capsys):
    code = cli.run(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listed(source, key):
    return listing.list_objects(source, key)[key]


class FlakyBody:
    """A response body that breaks after ``budget`` bytes (a dropped connection)."""

    def __init__(self, body, budget, error):
        self.body, self.budget, self.error = body, budget, error

    def iter_chunks(self, chunk_size):
        for chunk in self.body.iter_chunks(chunk_size):
            if len(chunk) > self.budget:
                yield chunk[: self.budget]
                raise self.error
            self.budget -= len(chunk)
            yield chunk


class FlakyClient:
    """Wraps a boto3 client: the first ``failures`` GETs break after ``budget`` bytes."""

    def __init__(self, client, failures=1, budget=1000, error=None):
        self.client, self.failures, self.budget = client, failures, budget
        self.error = error or bce.ResponseStreamingError(error="connection reset by peer")
        self.requests = []

    def get_object(self, **kwargs):
        self.requests.append(kwargs)
        response = self.client.get_object(**kwargs)
        if self.failures > 0:
            self.failures -= 1
            response["Body"] = FlakyBody(response["Body"], self.budget, self.error)
        return response

    def __getattr__(self, name):
        return getattr(self.client, name)


def client_log(caplog):
    """Log text of this process minus the in-process test server (moto logs its requests)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("moto", "werkzeug")))


def quiet_progress(total=0, files=0):
    return hcp_progress.ByteProgress(total, files, stream=io.StringIO(), enabled=False)


# --------------------------------------------------------------------------- fetch


def test_fetch_writes_downloaded_files_byte_identical(fetched_dataset, s3_server):
    root, result = fetched_dataset
    objects = s3_server["objects"]
    assert sorted(result.runs_written) == [("100307", t, r) for t in ("MOTOR", "WM") for r in ("LR", "RL")]
    assert result.missing == [] and result.exit_code == 0
    for task in ("MOTOR", "WM"):
        for run in ("LR", "RL"):
            files = hcp_bids.run_files("100307", task, run)
            base = f"{PREFIX}100307/MNINonLinear/Results/tfMRI_{task}_{run}/"
            assert (root / files.bold).read_bytes() == objects[f"{base}tfMRI_{task}_{run}.nii.gz"]
            assert (root / files.mask).read_bytes() == objects[f"{base}brainmask_fs.2.nii.gz"]
            assert (root / files.raw_bold).read_bytes() == (root / files.bold).read_bytes()
            assert (root / files.events).is_file()
    assert (root / hcp_bids.t1w_file("100307")).read_bytes() == objects[f"{PREFIX}100307/MNINonLinear/T1w.nii.gz"]
    assert not list(root.rglob("*.part")), "temp files left behind"
    assert not (root / "sourcedata/hcp/100307/MNINonLinear/Results/tfMRI_MOTOR_LR/EVs/cue.txt").exists()


def test_cli_fetch_is_idempotent_and_prints_progress(aws_env, tmp_path, capsys):
    out = tmp_path / "bids"
    argv = [
        "fetch",
        str(out),
        "--subjects",
        "100307",
        "--tasks",
        "MOTOR",
        "--runs",
        "LR",
        "--endpoint-url",
        aws_env["endpoint"],
        "--jobs",
        "2",
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "ETA" in err and "KiB" in err and "files" in err
    bold = out / hcp_bids.run_files("100307", "MOTOR", "LR").bold
    mtime = bold.stat().st_mtime_ns
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert bold.stat().st_mtime_ns == mtime, "a complete file was downloaded again"


def test_fetch_n_subjects_takes_the_lowest_complete_ids(aws_env, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "fetch",
            str(tmp_path / "b"),
            "--n-subjects",
            "1",
            "--tasks",
            "WM",
            "--runs",
            "RL",
            "--endpoint-url",
            aws_env["endpoint"],
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "b").glob("sub-*")) == ["sub-100307"]


def test_list_prints_subjects_with_complete_data(aws_env, capsys):
    code, out, err = run_cli(["list", "--tasks", "MOTOR", "--endpoint-url", aws_env["endpoint"]], capsys)
    assert code == 0, err
    assert out.split() == ["100307", "100408"]
    code, out, _ = run_cli(["list", "--tasks", "MOTOR", "WM", "--endpoint-url", aws_env["endpoint"]], capsys)
    assert out.split() == ["100307"]
    code, out, _ = run_cli(
        ["list", "--tasks", "WM", "--runs", "LR", "--limit", "1", "--endpoint-url", aws_env["endpoint"]], capsys
    )
    assert out.split() == ["100307"]


# --------------------------------------------------------------------------- resume / retries


def test_resume_continues_a_partial_temp_file_with_a_range_request(source, tmp_path, s3_server):
    body = s3_server["objects"][BOLD_KEY]
    dest = tmp_path / "bold.nii.gz"
    download.part_path(dest).write_bytes(body[:1234])
    client = FlakyClient(source.client, failures=0)
    downloader = download.Downloader(dataclasses.replace(source, client=client), jobs=1, chunk_size=512)
    transferred = downloader.download(download.Transfer(listed(source, BOLD_KEY), dest), quiet_progress())
    assert dest.read_bytes() == body
    assert transferred == len(body) - 1234
    assert client.requests[0]["Range"] == "bytes=1234-"
    assert client.requests[0]["IfMatch"].strip('"') == hashlib.md5(body).hexdigest()
    assert not download.part_path(dest).exists()


def test_transfer_broken_midway_is_retried_from_where_it_stopped(source, tmp_path, s3_server):
    body = s3_server["objects"][BOLD_KEY]
    dest = tmp_path / "bold.nii.gz"
    client = FlakyClient(source.client, failures=2, budget=1000)
    sleeps = []
    downloader = download.Downloader(
        dataclasses.replace(source, client=client), retries=3, backoff=0.5, chunk_size=256, sleep=sleeps.append
    )
    downloader.download(download.Transfer(listed(source, BOLD_KEY), dest), quiet_progress())
    assert dest.read_bytes() == body
    assert [r.get("Range") for r in client.requests] == [None, "bytes=1000-", "bytes=2000-"]
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 0.625 and 1.0 <= sleeps[1] <= 1.25


def test_interrupted_fetch_leaves_no_final_file_and_resumes(aws_env, tmp_path, capsys):
    out = tmp_path / "bids"
    source = s3.connect(endpoint_url=aws_env["endpoint"])
    client = FlakyClient(source.client, failures=100, budget=700, error=KeyboardInterrupt())
    downloader = download.Downloader(dataclasses.replace(source, client=client), jobs=1, chunk_size=256)
    with pytest.raises(KeyboardInterrupt):
        cli.fetch(
            source,
            out,
            ["100307"],
            ["MOTOR"],
            ["LR"],
            jobs=1,
            progress=False,
            stream=io.StringIO(),
            downloader=downloader,
        )
    bold = out / hcp_bids.run_files("100307", "MOTOR", "LR").bold
    assert download.part_path(bold).stat().st_size == 700
    assert not bold.exists(), "a partial file took the final name"
    code, _, err = run_cli(
        [
            "fetch",
            str(out),
            "--subjects",
            "100307",
            "--tasks",
            "MOTOR",
            "--runs",
            "LR",
            "--endpoint-url",
            aws_env["endpoint"],
        ],
        capsys,
    )
    assert code == 0, err
    assert bold.read_bytes() == aws_env["objects"][BOLD_KEY]
    assert not list(out.rglob("*.part"))


def test_corrupt_temp_file_is_discarded_and_downloaded_again(source, tmp_path, s3_server):
    body = s3_server["objects"][BOLD_KEY]
    dest = tmp_path / "bold.nii.gz"
    download.part_path(dest).write_bytes(b"\0" * len(body))  # right size, wrong bytes
    sleeps = []
    download.Downloader(source, retries=1, sleep=sleeps.append).download(
        download.Transfer(listed(source, BOLD_KEY), dest), quiet_progress()
    )
    assert dest.read_bytes() == body
    assert len(sleeps) == 1


def test_download_gives_up_after_the_retries_and_reports_the_object(source, tmp_path):
    client = FlakyClient(source.client, failures=100, budget=10)
    downloader = download.Downloader(dataclasses.replace(source, client=client), retries=2, sleep=lambda s: None)
    transfer = download.Transfer(listed(source, BOLD_KEY), tmp_path / "bold.nii.gz")
    failed = downloader.download_all([transfer], quiet_progress())
    assert list(failed) == [BOLD_KEY] and "3 attempts" in failed[BOLD_KEY]
    assert len(client.requests) == 3
    assert not transfer.dest.exists()


# --------------------------------------------------------------------------- missing upstream


def test_missing_objects_are_summarised_and_incomplete_runs_skipped(aws_env, tmp_path, capsys):
    out = tmp_path / "bids"
    code, _, err = run_cli(
        [
            "fetch",
            str(out),
            "--subjects",
            "100307",
            "100408",
            "--tasks",
            "MOTOR",
            "WM",
            "--endpoint-url",
            aws_env["endpoint"],
            "--no-progress",
        ],
        capsys,
    )
    assert code == 6, err
    assert "100408 WM RL: 100408/MNINonLinear/Results/tfMRI_WM_RL/EVs/2bk_tools.txt (missing upstream)" in err
    assert "100408 anat -: 100408/MNINonLinear/T1w.nii.gz (missing upstream)" in err
    table = (out / "sourcedata/hcp/missing_upstream.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[3] for line in table[1:]) == sorted([MISSING_EV, MISSING_T1W])
    assert "7 of 8 run(s)" in err
    assert not (out / hcp_bids.run_files("100408", "WM", "RL").events).exists()
    assert not (out / hcp_bids.run_files("100408", "WM", "RL").bold).exists()
    assert (out / hcp_bids.run_files("100408", "WM", "LR").events).exists()


def test_nothing_to_fetch_is_an_error(aws_env, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "fetch",
            str(tmp_path / "b"),
            "--subjects",
            "999999",
            "--tasks",
            "MOTOR",
            "--endpoint-url",
            aws_env["endpoint"],
            "--no-progress",
        ],
        capsys,
    )
    assert code == 3
    assert err.strip().splitlines()[-1].startswith("deeplight-bids-hcp: error: nothing could be fetched")


# --------------------------------------------------------------------------- options


def test_bucket_and_prefix_options(aws_env, tmp_path, capsys):
    out = tmp_path / "bids"
    code, _, err = run_cli(
        [
            "fetch",
            str(out),
            "--subjects",
            "100307",
            "--tasks",
            "MOTOR",
            "--runs",
            "RL",
            "--bucket",
            MIRROR_BUCKET,
            "--prefix",
            MIRROR_PREFIX.rstrip("/"),
            "--endpoint-url",
            aws_env["endpoint"],
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    key = f"{MIRROR_PREFIX}100307/MNINonLinear/Results/tfMRI_MOTOR_RL/tfMRI_MOTOR_RL.nii.gz"
    assert (out / hcp_bids.run_files("100307", "MOTOR", "RL").bold).read_bytes() == aws_env["mirror"][key]
    assert f"s3://{MIRROR_BUCKET}/{MIRROR_PREFIX}" in err


def test_unknown_bucket_is_a_clear_error(aws_env, capsys):
    code, _, err = run_cli(["list", "--bucket", "no-such-bucket", "--endpoint-url", aws_env["endpoint"]], capsys)
    assert code == 3
    assert err.startswith("deeplight-bids-hcp: error: bucket 'no-such-bucket' does not exist")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--tasks", "NOPE"], "--tasks NOPE"),
        (["--runs", "AP"], "--runs AP"),
        (["--subjects", "10/0"], "--subjects 10/0"),
    ],
)
def test_bad_selection_names_the_option(aws_env, capsys, argv, option):
    code, _, err = run_cli(["list", *argv, "--endpoint-url", aws_env["endpoint"]], capsys)
    assert code == 2
    assert err.startswith(f"deeplight-bids-hcp: error: {option}:") and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("key_id", ["AKIAWRONGWRONGWRONG0", None])
def test_wrong_credentials_give_one_clear_line_without_secrets(aws_env, monkeypatch, tmp_path, capsys, caplog, key_id):
    secret = "wR0ngSecretKeyThatMustNeverBePrinted0000"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id or aws_env["key_id"])  # None: right id, wrong secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.DEBUG)
    code, out, err = run_cli(
        [
            "fetch",
            str(tmp_path / "b"),
            "--subjects",
            "100307",
            "--tasks",
            "MOTOR",
            "--endpoint-url",
            aws_env["endpoint"],
            "-vv",
        ],
        capsys,
    )
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeplight-bids-hcp: error: S3 refused access (")
    assert ("InvalidAccessKeyId" if key_id else "SignatureDoesNotMatch") in err
    assert "AWS_ACCESS_KEY_ID" in err and aws_env["endpoint"] in err and "--profile" in err
    for text in (out, err, client_log(caplog)):
        assert secret not in text and (key_id or aws_env["key_id"]) not in text


def test_good_credentials_are_never_printed(aws_env, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    code, out, err = run_cli(
        [
            "fetch",
            str(tmp_path / "b"),
            "--subjects",
            "100307",
            "--tasks",
            "MOTOR",
            "--runs",
            "LR",
            "--endpoint-url",
            aws_env["endpoint"],
            "-vv",
        ],
        capsys,
    )
    assert code == 0, err
    assert "credentials: environment variables" in err
    for text in (out, err, client_log(caplog)):
        assert aws_env["secret"] not in text and aws_env["key_id"] not in text


def _write_profiles(path, **profiles):
    path.write_text(
        "".join(
            f"[{name}]\naws_access_key_id = {kid}\naws_secret_access_key = {secret}\n"
            for name, (kid, secret) in profiles.items()
        )
    )


def test_profile_hcp_is_the_default_and_profile_option_selects_another(aws_env, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = tmp_path / "aws-credentials"
    _write_profiles(credentials, hcp=(aws_env["key_id"], aws_env["secret"]), other=("AKIAOTHER", "bad"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    code, out, err = run_cli(["list", "--tasks", "MOTOR", "--endpoint-url", aws_env["endpoint"]], capsys)
    assert code == 0, err
    assert out.split() == ["100307", "100408"]
    code, _, err = run_cli(["list", "--profile", "other", "--endpoint-url", aws_env["endpoint"]], capsys)
    assert code == 3 and "profile 'other'" in err and "bad" not in err.split("error:", 1)[1].split("(")[0]
    code, _, err = run_cli(["list", "--profile", "absent", "--endpoint-url", aws_env["endpoint"]], capsys)
    assert code == 3 and err.startswith("deeplight-bids-hcp: error: --profile absent: no such AWS profile")


def test_no_credentials_at_all_is_a_clear_error(aws_env, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, _, err = run_cli(["list", "--endpoint-url", aws_env["endpoint"]], capsys)
    assert code == 3
    assert err.startswith("deeplight-bids-hcp: error: no AWS credentials found")


# --------------------------------------------------------------------------- progress


def test_progress_shows_bytes_rate_and_eta():
    now = [100.0]
    stream = io.StringIO()
    progress = hcp_progress.ByteProgress(2048, 2, stream=stream, interval=0, clock=lambda: now[0])
    progress.add(512, transferred=False)  # resumed from disk: no speed credit
    now[0] += 4.0
    progress.add(512)  # 512 B in 4 s -> 128 B/s; 1024 B left -> 8 s
    progress.file_done()
    line = stream.getvalue().strip().splitlines()[-1]
    assert "50.0%" in line and "1.0 KiB / 2.0 KiB" in line and "128 B/s" in line
    assert "ETA 0:00:08" in line and "files 1/2" in line


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal():
    stream = _Terminal()
    progress = hcp_progress.ByteProgress(4096, 2, stream=stream)
    progress.add(2048)
    progress.file_done()
    progress.add(2048)
    progress.file_done()
    progress.close()
    text = stream.getvalue()
    assert "\r" in text and "100%" in text and "files 2/2" in text  # redrawn in place by tqdm
    assert "ETA" not in text  # not the log line


def test_progress_logs_at_most_one_line_a_minute_elsewhere():
    now = [0.0]
    stream = io.StringIO()
    progress = hcp_progress.ByteProgress(100 * 1024, 100, stream=stream, clock=lambda: now[0])
    for _ in range(100):  # 100 files of 1 KiB, one every 5 s: 500 s
        now[0] += 5.0
        progress.add(1024)
        progress.file_done()
    lines = stream.getvalue().splitlines()
    assert 8 <= len(lines) <= 500 / hcp_progress.LOG_INTERVAL + 1
    progress.close()
    assert "files 100/100" in stream.getvalue().splitlines()[-1]


def test_redact_url_drops_user_info():
    assert s3.redact_url("https://user:pass@mirror.example.org:9000/path") == "https://mirror.example.org:9000/path"


def test_gzip_fixture_is_a_real_nifti(s3_server):
    # Guard for the fake tree: the objects really are gzipped NIfTI files.
    assert gzip.decompress(s3_server["objects"][BOLD_KEY])[344:348] == b"n+1\0"


def test_unreachable_endpoint_is_a_clear_error_without_user_info(aws_env, capsys):
    code, _, err = run_cli(["list", "--endpoint-url", "http://someone:pa55word@127.0.0.1:1"], capsys)
    assert code == 3
    assert err == (
        "deeplight-bids-hcp: error: cannot connect to http://127.0.0.1:1: check --endpoint-url and "
        "your network connection.\n"
    )


def test_main_exits_with_the_code(aws_env, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fetch", str(tmp_path / "b"), "--subjects", "100307", "--tasks", "NOPE"])
    assert exit_info.value.code == 2

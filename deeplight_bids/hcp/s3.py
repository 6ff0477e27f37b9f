"""Reading HCP task data from S3: credentials, listing, and a resumable download manager.

* Credentials come from boto3's standard chain and are never printed or logged; only
  their *source* ("profile 'hcp'", "environment variables") appears in messages.
  Order: ``--profile`` if given; else environment credentials (``AWS_ACCESS_KEY_ID``
  or ``AWS_PROFILE``); else the profile ``hcp`` when it exists; else the rest of
  the default chain (default profile, container/instance roles).
* A download goes to a hidden temp file ``.<name>.part`` next to its destination.
  Only after its size (and, for single-part uploads, its MD5 ETag) match the listing
  is it renamed to the final name, so a final name always means a complete file.
  An interrupted download resumes from the temp file with an HTTP range request
  pinned to the listed ETag (``If-Match``); a changed object restarts from zero.
* Transient errors (connection drops, timeouts, HTTP 5xx, throttling, checksum
  mismatch) are retried with exponential backoff and jitter; anything else fails
  the object at once.  Wrong credentials abort everything with one clear line.
"""

import hashlib
import logging
import os
import random
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore
import botocore.exceptions as bce
import urllib3.exceptions
from botocore.config import Config

from deeplight_bids.exceptions import InputDataError
from deeplight_bids.hcp.bids import HCP_EV_FILES

log = logging.getLogger(__name__)

DEFAULT_BUCKET = "hcp-openaccess"
DEFAULT_PREFIX = "HCP_1200/"
DEFAULT_PROFILE = "hcp"
DEFAULT_REGION = "us-east-1"
CHUNK_SIZE = 1 << 20

_AUTH_ERROR_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed", "AllAccessDisabled",
}
_TRANSIENT_ERROR_CODES = {
    "SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "OperationAborted",
}
_TRANSIENT_EXCEPTIONS = (
    bce.ConnectionError,  # covers EndpointConnectionError, ConnectionClosedError, timeouts
    bce.HTTPClientError,
    bce.IncompleteReadError,
    bce.ResponseStreamingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    ConnectionError,
    TimeoutError,
)


class S3AccessError(InputDataError):
    """The bucket cannot be read: credentials, endpoint, bucket or prefix are wrong."""


class DownloadFailed(Exception):
    """One object could not be downloaded (reason in the message, no credentials)."""


class _IntegrityError(Exception):
    """A completed temp file does not match the listed size or ETag."""


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class S3Source:
    """Where HCP data is read from, and a printable description of the access."""

    client: object
    bucket: str
    prefix: str
    endpoint: str
    credentials: str

    def where(self):
        """``s3://bucket/prefix at <endpoint>`` for messages."""
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"


def normalize_prefix(prefix):
    """Release prefix with exactly one trailing slash (empty stays empty)."""
    prefix = (prefix or "").strip("/")
    return f"{prefix}/" if prefix else ""


def redact_url(url):
    """``url`` without user:password, for printing."""
    if not url:
        return "the default AWS S3 endpoint"
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def open_session(profile=None, environ=None):
    """Open a boto3 session following the credential order of this module.

    Returns
    -------
    (boto3.Session, str)
        The session and a description of where its credentials come from.
    """
    environ = os.environ if environ is None else environ
    if profile:
        try:
            return boto3.Session(profile_name=profile), f"profile '{profile}'"
        except bce.ProfileNotFound:
            raise S3AccessError(
                f"--profile {profile}: no such AWS profile in ~/.aws/credentials or ~/.aws/config; "
                f"create it with 'aws configure --profile {profile}' using your HCP (ConnectomeDB) AWS keys."
            ) from None
    if environ.get("AWS_ACCESS_KEY_ID"):
        return boto3.Session(), "environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    if environ.get("AWS_PROFILE"):
        name = environ["AWS_PROFILE"]
        try:
            return boto3.Session(), f"profile '{name}' (AWS_PROFILE)"
        except bce.ProfileNotFound:
            raise S3AccessError(
                f"AWS_PROFILE={name}: no such AWS profile; unset AWS_PROFILE or create the profile with "
                f"'aws configure --profile {name}'."
            ) from None
    if DEFAULT_PROFILE in botocore.session.Session().available_profiles:
        return boto3.Session(profile_name=DEFAULT_PROFILE), f"profile '{DEFAULT_PROFILE}'"
    return boto3.Session(), "the default AWS credential chain"


def connect(
    bucket=DEFAULT_BUCKET,
    prefix=DEFAULT_PREFIX,
    profile=None,
    endpoint_url=None,
    region=None,
    unsigned=False,
    max_connections=10,
    environ=None,
):
    """Make an S3 client for the HCP bucket.

    Parameters
    ----------
    bucket, prefix : str
        Bucket and release prefix (``HCP_1200/``).
    profile : str, optional
        AWS profile name; see the module docstring for the order used without it.
    endpoint_url : str, optional
        S3-compatible endpoint (mirrors, test servers).
    region : str, optional
        Region; the session's, else ``us-east-1``.
    unsigned : bool
        Send anonymous requests (public mirrors); no credentials needed.
    max_connections : int
        HTTP connection pool size (at least the number of parallel downloads).

    Returns
    -------
    S3Source

    Raises
    ------
    S3AccessError
        When the profile does not exist or no credentials can be found.
    """
    if unsigned:
        session, source = boto3.Session(), "anonymous access (--no-sign-request)"
        signature = botocore.UNSIGNED
    else:
        session, source = open_session(profile, environ)
        signature = None
        if session.get_credentials() is None:
            raise S3AccessError(
                f"no AWS credentials found ({source}): store your HCP AWS keys with 'aws configure "
                f"--profile {profile or DEFAULT_PROFILE}', pass --profile, or set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY."
            )
    config = Config(
        signature_version=signature,
        retries={"max_attempts": 4, "mode": "standard"},
        max_pool_connections=max(max_connections, 2),
        connect_timeout=10,
        read_timeout=60,
    )
    client = session.client(
        "s3", endpoint_url=endpoint_url, region_name=region or session.region_name or DEFAULT_REGION, config=config
    )
    return S3Source(client, bucket, normalize_prefix(prefix), redact_url(endpoint_url), source)


def access_error(exc, source, what):
    """Turn a boto error that is the user's to fix into an :class:`S3AccessError`, else None.

    Parameters
    ----------
    exc : Exception
        The boto3/botocore exception.
    source : S3Source
        For the bucket, endpoint and credential source in the message.
    what : str
        The object or prefix being read, for the message.
    """
    if isinstance(exc, bce.NoCredentialsError):
        return S3AccessError(
            f"no AWS credentials found ({source.credentials}): run 'aws configure --profile {DEFAULT_PROFILE}' "
            "with your HCP AWS keys, pass --profile, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        )
    if isinstance(exc, bce.EndpointConnectionError):
        return S3AccessError(
            f"cannot connect to {source.endpoint}: check --endpoint-url and your network connection."
        )
    if not isinstance(exc, bce.ClientError):
        return None
    code = error_code(exc)
    if code in _AUTH_ERROR_CODES or http_status(exc) == 403:
        return S3AccessError(
            f"S3 refused access ({code}) to {what} in s3://{source.bucket} at {source.endpoint} with credentials "
            f"from {source.credentials}: check or renew your HCP AWS keys (ConnectomeDB > 'Amazon S3 Access'), "
            f"store them with 'aws configure --profile {DEFAULT_PROFILE}', or choose others with --profile or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
        )
    if code == "NoSuchBucket":
        return S3AccessError(
            f"bucket '{source.bucket}' does not exist at {source.endpoint}: check --bucket (default "
            f"{DEFAULT_BUCKET}) and --endpoint-url."
        )
    return None


def error_code(exc):
    """The S3 error code of a ClientError (``"NoSuchKey"``), or ``""``."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def http_status(exc):
    """The HTTP status of a ClientError, or 0."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_transient(exc):
    """Whether retrying ``exc`` later may succeed."""
    if isinstance(exc, (_IntegrityError, *_TRANSIENT_EXCEPTIONS)):
        return True
    if isinstance(exc, bce.ClientError):
        return error_code(exc) in _TRANSIENT_ERROR_CODES or http_status(exc) >= 500
    return False


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class S3Object:
    """One listed object: key, size in bytes, ETag (with quotes stripped)."""

    key: str
    size: int
    etag: str


def list_objects(source, prefix):
    """All objects whose key starts with ``prefix``, as ``{key: S3Object}``."""
    found = {}
    paginator = source.client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=source.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = S3Object(item["Key"], int(item["Size"]), item.get("ETag", "").strip('"'))
    except (bce.ClientError, bce.BotoCoreError) as exc:
        raise access_error(exc, source, f"'{prefix}'") or exc
    return found


def list_subjects(source):
    """HCP subject ids (folder names of digits) directly under the release prefix, sorted."""
    subjects = []
    paginator = source.client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=source.bucket, Prefix=source.prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(source.prefix):].strip("/")
                if name.isdigit():
                    subjects.append(name)
    except (bce.ClientError, bce.BotoCoreError) as exc:
        raise access_error(exc, source, f"'{source.prefix}'") or exc
    return sorted(subjects, key=lambda s: (len(s), s))


def results_dir(prefix, subject, task, run):
    """Key prefix of one HCP run: ``<prefix><subject>/MNINonLinear/Results/tfMRI_<TASK>_<RUN>/``."""
    return f"{prefix}{subject}/MNINonLinear/Results/tfMRI_{task}_{run}/"


def run_keys(prefix, subject, task, run):
    """The S3 keys one run needs, as ``{role: key}``.

    Roles: ``"bold"``, ``"mask"`` and ``"ev:<file name>"`` for each state EV file.
    """
    base = results_dir(prefix, subject, task, run)
    keys = {"bold": f"{base}tfMRI_{task}_{run}.nii.gz", "mask": f"{base}brainmask_fs.2.nii.gz"}
    keys.update({f"ev:{name}": f"{base}EVs/{name}" for name in sorted(HCP_EV_FILES[task])})
    return keys


def t1w_key(prefix, subject):
    """S3 key of the subject's MNINonLinear T1w."""
    return f"{prefix}{subject}/MNINonLinear/T1w.nii.gz"


@dataclass
class RunPlan:
    """What S3 holds for one run: the objects found and the keys missing upstream."""

    subject: str
    task: str
    run: str
    objects: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)

    @property
    def complete(self):
        return not self.missing


@dataclass
class SubjectPlan:
    """What S3 holds for one subject."""

    subject: str
    runs: list
    t1w: S3Object = None
    t1w_missing: str = None

    @property
    def complete(self):
        return all(run.complete for run in self.runs)


def plan_run(source, subject, task, run):
    """List what one run has upstream (3 small listings: BOLD, mask, EVs)."""
    keys = run_keys(source.prefix, subject, task, run)
    base = results_dir(source.prefix, subject, task, run)
    listed = {}
    for prefix in (keys["bold"], keys["mask"], f"{base}EVs/"):
        listed.update(list_objects(source, prefix))
    plan = RunPlan(subject, task, run)
    for role, key in keys.items():
        if key in listed:
            plan.objects[role] = listed[key]
        else:
            plan.missing.append(key)
    return plan


def plan_subject(source, subject, tasks, runs, with_t1w=True):
    """List what one subject has upstream for the given tasks and runs."""
    plans = [plan_run(source, subject, task, run) for task in tasks for run in runs]
    plan = SubjectPlan(subject, plans)
    if with_t1w:
        key = t1w_key(source.prefix, subject)
        plan.t1w = list_objects(source, key).get(key)
        plan.t1w_missing = None if plan.t1w else key
    return plan


def plan_subjects(source, subjects, tasks, runs, jobs=8, with_t1w=True):
    """:func:`plan_subject` for many subjects in parallel, in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda s: plan_subject(source, s, tasks, runs, with_t1w), subjects))


def find_complete_subjects(source, tasks, runs, limit=None, jobs=8, candidates=None):
    """Subjects whose every requested task and run is complete upstream.

    Parameters
    ----------
    limit : int, optional
        Stop after this many (lowest ids first).
    candidates : list of str, optional
        Subjects to check; default: all under the prefix.
    """
    candidates = list_subjects(source) if candidates is None else list(candidates)
    complete = []
    batch = max(1, jobs)
    for start in range(0, len(candidates), batch):
        for plan in plan_subjects(source, candidates[start:start + batch], tasks, runs, jobs, with_t1w=False):
            if plan.complete:
                complete.append(plan.subject)
                if limit is not None and len(complete) >= limit:
                    return complete
    return complete


# --------------------------------------------------------------------------- progress


def format_bytes(n):
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_duration(seconds):
    """``75`` -> ``"0:01:15"``; None -> ``"--:--"``."""
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Thread-safe download progress: bytes, rate and ETA, drawn on a stream (stderr).

    On a terminal the bar is redrawn in place at most every ``interval`` seconds;
    elsewhere (logs, CI) one line is printed at most every ``log_interval`` seconds.
    """

    def __init__(self, total_bytes, total_files, stream=None, enabled=True, interval=0.2, log_interval=10.0,
                 clock=time.monotonic):
        self.total_bytes = int(total_bytes)
        self.total_files = int(total_files)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.done_bytes = 0
        self.transferred = 0
        self.done_files = 0
        self._start = clock()
        self._last_draw = None
        self._lock = threading.Lock()

    def add(self, nbytes, transferred=True):
        """Count ``nbytes`` more as done (``transferred=False``: found on disk, e.g. resumed)."""
        with self._lock:
            self.done_bytes += nbytes
            if transferred:
                self.transferred += nbytes
            self._maybe_draw()

    def rewind(self, nbytes):
        """Un-count ``nbytes`` (a temp file was discarded)."""
        with self._lock:
            self.done_bytes -= nbytes

    def file_done(self):
        with self._lock:
            self.done_files += 1
            self._maybe_draw()

    def eta(self):
        """Seconds left at the rate of this session, or None when unknown."""
        elapsed = self.clock() - self._start
        if self.transferred <= 0 or elapsed <= 0:
            return None
        rate = self.transferred / elapsed
        return max(self.total_bytes - self.done_bytes, 0) / rate

    def render(self, width=24):
        """One status line."""
        fraction = self.done_bytes / self.total_bytes if self.total_bytes else 1.0
        filled = int(round(width * min(max(fraction, 0.0), 1.0)))
        elapsed = max(self.clock() - self._start, 1e-9)
        return (
            f"[{'#' * filled}{'-' * (width - filled)}] {100 * fraction:5.1f}% "
            f"{format_bytes(self.done_bytes)} / {format_bytes(self.total_bytes)} "
            f"{format_bytes(self.transferred / elapsed)}/s ETA {format_duration(self.eta())} "
            f"files {self.done_files}/{self.total_files}"
        )

    def _maybe_draw(self):
        now = self.clock()
        if self.enabled and (self._last_draw is None or now - self._last_draw >= self.interval):
            self._last_draw = now
            self._draw()

    def _draw(self, final=False):
        line = self.render()
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        """Draw the final state."""
        with self._lock:
            if self.enabled:
                self._draw(final=True)


# --------------------------------------------------------------------------- downloads


@dataclass(frozen=True)
class Transfer:
    """One object to download to ``dest``."""

    obj: S3Object
    dest: Path


def part_path(dest):
    """The hidden temp file a download of ``dest`` is written to (ignored by BIDS tools)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.part")


def is_downloaded(transfer):
    """True when the final file exists with the listed size.

    Final names are only ever created by renaming a verified temp file, so size is
    enough here; it catches an object that changed upstream since.
    """
    try:
        return transfer.dest.stat().st_size == transfer.obj.size
    except FileNotFoundError:
        return False


def _md5_etag(etag):
    # Multipart uploads have ETags "<md5 of part md5s>-<n>", not the file's MD5.
    return bool(re.fullmatch(r"[0-9a-f]{32}", etag or ""))


def _file_md5(path, chunk_size=CHUNK_SIZE):
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_part(transfer, part):
    """Raise :class:`_IntegrityError` unless ``part`` matches the listed size and MD5 ETag."""
    size = part.stat().st_size
    if size != transfer.obj.size:
        raise _IntegrityError(f"size {size} != listed {transfer.obj.size}")
    if _md5_etag(transfer.obj.etag) and _file_md5(part) != transfer.obj.etag:
        raise _IntegrityError("MD5 does not match the ETag")


class Downloader:
    """Download many objects in parallel, resumably, with retries and progress.

    Parameters
    ----------
    source : S3Source
    jobs : int
        Parallel downloads.
    retries : int
        Retries per object after a transient error (so ``retries + 1`` attempts).
    backoff : float
        First retry delay in seconds; doubled per retry, plus up to 25 % jitter.
    chunk_size : int
        Bytes read per step from the response stream.
    sleep : callable
        ``time.sleep``; replaceable in tests.
    """

    def __init__(self, source, jobs=4, retries=5, backoff=1.0, chunk_size=CHUNK_SIZE, sleep=time.sleep):
        self.source = source
        self.jobs = max(1, int(jobs))
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.chunk_size = chunk_size
        self.sleep = sleep
        self._stop = threading.Event()

    def download(self, transfer, progress):
        """Download one object (resuming a temp file); return the bytes transferred.

        Raises
        ------
        S3AccessError
            Credentials or bucket are wrong (abort everything).
        DownloadFailed
            The object failed for good (missing, or retries exhausted).
        """
        if is_downloaded(transfer):
            progress.add(transfer.obj.size, transferred=False)
            progress.file_done()
            return 0
        transfer.dest.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(transfer.dest)
        transferred = 0
        for attempt in range(self.retries + 1):
            try:
                transferred += self._attempt(transfer, part, progress)
                verify_part(transfer, part)
                os.replace(part, transfer.dest)
                progress.file_done()
                return transferred
            except Exception as exc:  # classified below; nothing is swallowed silently
                if isinstance(exc, _IntegrityError):
                    progress.rewind(part.stat().st_size if part.exists() else 0)
                    part.unlink(missing_ok=True)
                self._give_up_unless_transient(exc, transfer, attempt)
                delay = self.backoff * (2 ** attempt) * (1 + 0.25 * random.random())
                log.info("retrying %s in %.1f s after %s", transfer.obj.key, delay, _describe(exc))
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _give_up_unless_transient(self, exc, transfer, attempt):
        if self._stop.is_set():
            raise DownloadFailed(f"{transfer.obj.key}: cancelled")
        error = access_error(exc, self.source, f"'{transfer.obj.key}'")
        if error is not None:
            raise error from None
        if isinstance(exc, bce.ClientError) and error_code(exc) in ("NoSuchKey", "404"):
            raise DownloadFailed(f"{transfer.obj.key}: vanished upstream since listing") from None
        if not is_transient(exc):
            raise exc
        if attempt >= self.retries:
            raise DownloadFailed(
                f"{transfer.obj.key}: gave up after {attempt + 1} attempts ({_describe(exc)})"
            ) from None

    def _attempt(self, transfer, part, progress):
        """One GET of the rest of the object into ``part``; returns bytes written."""
        offset = part.stat().st_size if part.exists() else 0
        if offset > transfer.obj.size:
            part.unlink()
            offset = 0
        progress.add(offset, transferred=False)
        if offset == transfer.obj.size and offset > 0:
            return 0
        request = {"Bucket": self.source.bucket, "Key": transfer.obj.key}
        if offset:
            request["Range"] = f"bytes={offset}-"
            if transfer.obj.etag:
                request["IfMatch"] = f'"{transfer.obj.etag}"'
        try:
            response = self.source.client.get_object(**request)
        except bce.ClientError as exc:
            progress.rewind(offset)
            if offset and error_code(exc) in ("PreconditionFailed", "InvalidRange"):
                # The object changed since the temp file was started: begin again.
                part.unlink(missing_ok=True)
                raise _IntegrityError(f"object changed upstream ({error_code(exc)})") from None
            raise
        written = 0
        try:
            with open(part, "ab" if offset else "wb") as handle:
                for block in response["Body"].iter_chunks(self.chunk_size):
                    if self._stop.is_set():
                        raise DownloadFailed(f"{transfer.obj.key}: cancelled")
                    handle.write(block)
                    written += len(block)
                    progress.add(len(block))
        except BaseException:
            # What reached the disk stays for the next attempt; the counter restarts from it.
            progress.rewind(offset + written)
            raise
        return written

    def download_all(self, transfers, progress):
        """Download ``transfers`` in parallel.

        Returns
        -------
        dict
            ``{key: reason}`` of the objects that failed (empty when all succeeded).

        Raises
        ------
        S3AccessError
            On wrong credentials or bucket (remaining downloads are cancelled).
        KeyboardInterrupt
            Re-raised after cancelling; temp files stay for resuming.
        """
        failed = {}
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        futures = {pool.submit(self.download, t, progress): t for t in transfers}
        try:
            for future in as_completed(futures):
                try:
                    future.result()
                except DownloadFailed as exc:
                    failed[futures[future].obj.key] = str(exc)
        except BaseException:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return failed


def _describe(exc):
    # Class and S3 code only: exception texts of some HTTP layers echo request headers.
    code = error_code(exc)
    return f"{type(exc).__name__}{' ' + code if code else ''}"


# --------------------------------------------------------------------------- summary


def missing_rows(plans, failed=None):
    """Rows ``(subject, task, run, key, reason)`` for every object not obtained.

    Parameters
    ----------
    plans : list of SubjectPlan
    failed : dict, optional
        ``{key: reason}`` from :meth:`Downloader.download_all`.
    """
    failed = failed or {}
    rows = []
    for plan in plans:
        for run in plan.runs:
            rows += [(plan.subject, run.task, run.run, key, "missing upstream") for key in run.missing]
            rows += [(plan.subject, run.task, run.run, o.key, failed[o.key]) for o in run.objects.values()
                     if o.key in failed]
        if plan.t1w_missing:
            rows.append((plan.subject, "anat", "-", plan.t1w_missing, "missing upstream"))
        elif plan.t1w is not None and plan.t1w.key in failed:
            rows.append((plan.subject, "anat", "-", plan.t1w.key, failed[plan.t1w.key]))
    return rows


def format_missing_summary(rows, prefix="", max_lines=20):
    """Human-readable lines for :func:`missing_rows` (keys shown relative to the prefix)."""
    if not rows:
        return []
    lines = [f"{len(rows)} object(s) not obtained:"]
    for subject, task, run, key, reason in rows[:max_lines]:
        shown = key[len(prefix):] if key.startswith(prefix) else key
        lines.append(f"  {subject} {task} {run}: {shown} ({reason})")
    if len(rows) > max_lines:
        lines.append(f"  ... and {len(rows) - max_lines} more")
    return lines

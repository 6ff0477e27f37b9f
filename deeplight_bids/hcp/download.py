"""Resumable parallel downloads of listed S3 objects.

* A download goes to a hidden temp file ``.<name>.part`` next to its destination.
  Only after its size (and, for single-part uploads, its MD5 ETag) match the listing
  is it renamed to the final name, so a final name always means a complete file.
  An interrupted download resumes from the temp file with an HTTP range request
  pinned to the listed ETag (``If-Match``); a changed object restarts from zero.
* Transient errors (connection drops, timeouts, HTTP 5xx, throttling, checksum
  mismatch) are retried with exponential backoff and jitter; anything else fails
  the object at once.  Wrong credentials abort everything with one clear line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.exceptions as bce

from deeplight_bids.hcp.listing import S3Object
from deeplight_bids.hcp.s3 import IntegrityError, access_error, error_code, is_transient

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from deeplight_bids.hcp.s3 import S3Source
    from deeplight_bids.progress import ByteProgress

log = logging.getLogger(__name__)

#: Bytes read per step from a response stream.
CHUNK_SIZE = 1 << 20


class DownloadFailed(Exception):
    """One object could not be downloaded (reason in the message, no credentials)."""


@dataclass(frozen=True)
class Transfer:
    """One object to download to ``dest``."""

    obj: S3Object
    dest: Path


def part_path(dest: str | os.PathLike[str]) -> Path:
    """The hidden temp file a download of ``dest`` is written to (ignored by BIDS tools)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.part")


def is_downloaded(transfer: Transfer) -> bool:
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


def verify_part(transfer: Transfer, part: Path) -> None:
    """Raise :class:`IntegrityError` unless ``part`` matches the listed size and MD5 ETag."""
    size = part.stat().st_size
    if size != transfer.obj.size:
        raise IntegrityError(f"size {size} != listed {transfer.obj.size}")
    if _md5_etag(transfer.obj.etag) and _file_md5(part) != transfer.obj.etag:
        raise IntegrityError("MD5 does not match the ETag")


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

    def __init__(
        self,
        source: S3Source,
        jobs: int = 4,
        retries: int = 5,
        backoff: float = 1.0,
        chunk_size: int = CHUNK_SIZE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.jobs = max(1, int(jobs))
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.chunk_size = chunk_size
        self.sleep = sleep
        self._stop = threading.Event()

    def download(self, transfer: Transfer, progress: ByteProgress) -> int:
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
                if isinstance(exc, IntegrityError):
                    progress.rewind(part.stat().st_size if part.exists() else 0)
                    part.unlink(missing_ok=True)
                self._give_up_unless_transient(exc, transfer, attempt)
                delay = self.backoff * (2**attempt) * (1 + 0.25 * random.random())
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
                raise IntegrityError(f"object changed upstream ({error_code(exc)})") from None
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

    def download_all(self, transfers: Iterable[Transfer], progress: ByteProgress) -> dict[str, str]:
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

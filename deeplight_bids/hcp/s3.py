"""Access to HCP data on S3: credentials, the client and the classification of S3 errors.

The rest of the HCP download lives beside this module: :mod:`~deeplight_bids.hcp.listing`
(what a subject and run have upstream), :mod:`~deeplight_bids.hcp.download` (resumable
parallel downloads); what the user sees is :class:`deeplight_bids.progress.ByteProgress`.

* Credentials come from boto3's standard chain and are never printed or logged; only
  their *source* ("profile 'hcp'", "environment variables") appears in messages.
  Order: ``--profile`` if given; else environment credentials (``AWS_ACCESS_KEY_ID``
  or ``AWS_PROFILE``); else the profile ``hcp`` when it exists; else the rest of
  the default chain (default profile, container/instance roles).
* Transient errors (connection drops, timeouts, HTTP 5xx, throttling) are told apart from
  the rest (:func:`is_transient`); wrong credentials become one clear line
  (:func:`access_error`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore
import botocore.exceptions as bce
import urllib3.exceptions
from botocore.config import Config

from deeplight_bids.exceptions import InputDataError

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_BUCKET = "hcp-openaccess"
DEFAULT_PREFIX = "HCP_1200/"
DEFAULT_PROFILE = "hcp"
DEFAULT_REGION = "us-east-1"

_AUTH_ERROR_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "AllAccessDisabled",
}
_TRANSIENT_ERROR_CODES = {
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "OperationAborted",
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


class IntegrityError(Exception):
    """A downloaded file does not match the listed size or ETag (transient: downloaded again)."""


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class S3Source:
    """Where HCP data is read from, and a printable description of the access."""

    client: Any  # a boto3 S3 client (untyped)
    bucket: str
    prefix: str
    endpoint: str
    credentials: str

    def where(self) -> str:
        """``s3://bucket/prefix at <endpoint>`` for messages."""
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"


def normalize_prefix(prefix: str | None) -> str:
    """Release prefix with exactly one trailing slash (empty stays empty)."""
    prefix = (prefix or "").strip("/")
    return f"{prefix}/" if prefix else ""


def redact_url(url: str | None) -> str:
    """``url`` without user:password, for printing."""
    if not url:
        return "the default AWS S3 endpoint"
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def open_session(profile: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[Any, str]:
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
    bucket: str = DEFAULT_BUCKET,
    prefix: str = DEFAULT_PREFIX,
    profile: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    unsigned: bool = False,
    max_connections: int = 10,
    environ: Mapping[str, str] | None = None,
) -> S3Source:
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


def access_error(exc: BaseException, source: S3Source, what: str) -> S3AccessError | None:
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
        return S3AccessError(f"cannot connect to {source.endpoint}: check --endpoint-url and your network connection.")
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


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError (``"NoSuchKey"``), or ``""``."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def http_status(exc: BaseException) -> int:
    """The HTTP status of a ClientError, or 0."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` later may succeed."""
    if isinstance(exc, (IntegrityError, *_TRANSIENT_EXCEPTIONS)):
        return True
    if isinstance(exc, bce.ClientError):
        return error_code(exc) in _TRANSIENT_ERROR_CODES or http_status(exc) >= 500
    return False

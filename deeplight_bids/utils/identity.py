"""Hashes and the identity of input files, the part of every cache key that says *what* a cache entry was made from.

A cache in the work folder (per-run relevance sums, prepared volumes, fine-tuning
features and checkpoints) is reused only when both its settings and the identity of its
inputs match.  Paths alone are not enough: two datasets that share one ``--work-dir``
(one scratch folder per user on a cluster) have runs with the same labels, and a file
copied with its time stamp (``cp -p``, ``rsync -a``) keeps size and mtime while its
content changes.  So a file's identity is its resolved path, size, modification time
(ns) and the SHA-256 of its content.

Hashing streams the file (1 MiB blocks; ~2-3 s for a 1.3 GB BOLD) and is done at most
once per file per process: the digest is remembered under (path, size, mtime, inode),
(ctime included: it changes on every write and cannot be set back), so a job that checks
the same run's inputs several times hashes them once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Protocol

    class _RunFiles(Protocol):
        """The input files of a run (``deeplight_bids.bids.discover.Run``; this layer may not import it)."""

        @property
        def bold(self) -> str | os.PathLike[str] | None: ...
        @property
        def mask(self) -> str | os.PathLike[str] | None: ...
        @property
        def events(self) -> str | os.PathLike[str] | None: ...


LOGGER = logging.getLogger("deeplight_bids")


def sha256sum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks of ``chunk`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fobj:
        for block in iter(lambda: fobj.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


#: (resolved path, size, mtime_ns, ctime_ns, device, inode) -> sha256 hex digest, for this process.
_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identity of one input file.

    Parameters
    ----------
    path : str or pathlib.Path
        An existing file.

    Returns
    -------
    dict
        ``path`` (resolved, str), ``size`` (bytes), ``mtime_ns`` (int) and ``sha256``
        (hex digest of the content).
    """
    resolved = Path(path).resolve()
    st = os.stat(resolved)
    memo = (str(resolved), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)
    digest = _DIGESTS.get(memo)
    if digest is None:
        digest = _DIGESTS[memo] = sha256sum(resolved)
    return {"path": str(resolved), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": digest}


def files_identity(paths: Mapping[str, str | os.PathLike[str] | None]) -> dict[str, dict[str, Any] | None]:
    """``{name: file_identity}`` of named input files (``None`` paths give ``None``)."""
    return {name: (None if path is None else file_identity(path)) for name, path in paths.items()}


def run_inputs(run: _RunFiles) -> dict[str, dict[str, Any] | None]:
    """Identity of the files one run's results derive from: BOLD, brain mask and events.

    Parameters
    ----------
    run : deeplight_bids.bids.discover.Run

    Returns
    -------
    dict
        ``{"bold": ..., "mask": ..., "events": ...}``, each as :func:`file_identity`
        (``None`` for a missing events file).
    """
    events = run.events if run.events is not None and Path(run.events).is_file() else None
    return files_identity({"bold": run.bold, "mask": run.mask, "events": events})


def digest(obj: object, length: int = 24) -> str:
    """Short hex SHA-256 of a JSON-serialisable object (sorted keys): a cache key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def run_inputs_digest(run: _RunFiles) -> str:
    """:func:`digest` of :func:`run_inputs`: one string naming what a run's results were made from."""
    return digest(run_inputs(run))

"""Damaged files: what a run wrote, recorded with sizes and checksums, verified before it is reused.

A finished run's completion marker (its predictions sidecar JSON, written last; the GLM's
design sidecar; the participant's accuracy summary sidecar) lists every file the run wrote
under the key ``"Files"`` (:data:`FILES_KEY`): for each, its path, its size in bytes, and a
checksum:

* ``"SHA256"`` of the whole file, for every file but the per-volume and per-block
  relevance maps (tables, sidecars, mean maps, the relevance sums: at most a few MB each);
* ``"GzipMembers"`` and ``"MemberCRC"`` for the per-volume and per-block relevance maps,
  written one gzip member per volume (:class:`~deeplight_bids.derivatives.volume_gzip.VolumeGzipNifti4D`):
  the number of members and a SHA-256 of their trailers (each member's CRC-32 and length
  of its data, which gzip keeps anyway).  Checking it reads 28 bytes per volume, not the
  file; a truncated, emptied or replaced file, or one with a member missing or changed in
  length, never matches.

A re-run checks the record before it calls a run complete (:func:`check` with
``full=False``: sizes, whole-file checksums, member trailers) and recomputes what does not
match, with one line per file saying why.  ``--verify`` also decompresses every member of
the relevance maps (``full=True``: gzip checks each member's data against its CRC-32), so it
finds a changed byte anywhere.

Files without a record (written before records existed, the group level's outputs, job
logs) are checked by reading them through (:func:`readable`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeplight_bids.config import default_work_dir
from deeplight_bids.derivatives.volume_gzip import inflate_member, member_extents, member_sizes
from deeplight_bids.derivatives.writers import dataset_file_damage, gzip_module
from deeplight_bids.exceptions import EXIT_OK, OutputError
from deeplight_bids.utils.identity import sha256sum
from deeplight_bids.utils.tsv import read_tsv

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping

    from deeplight_bids.config import Config

LOGGER = logging.getLogger("deeplight_bids")

#: Key of the file record in a completion marker.
FILES_KEY = "Files"
#: ``"In"`` of a record entry: the file's folder (OUTPUT_DIR, or the work folder for caches).
OUTPUT, WORK = "output", "work"

_CHUNK = 1 << 22


@dataclass
class Damage:
    """One damaged file: where, why, and whether it is a work-folder cache (recomputed from the outputs)."""

    path: Path
    reason: str
    cache: bool = False

    def line(self, action: str) -> str:
        """``<path>: damaged (<reason>); <action>`` (one line)."""
        return f"{self.path}: damaged ({self.reason}); {action}"


def member_trailers(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """``(number of members, SHA-256 of their trailers)`` of a one-member-per-volume gzip file, else None.

    The trailer of a gzip member is the CRC-32 and the length of its data (RFC 1952); only
    the members' 20-byte headers (their sizes) and 8-byte trailers are read.
    """
    with open(path, "rb") as fobj:
        size = os.fstat(fobj.fileno()).st_size
        sizes = member_sizes(fobj, size)
        if not sizes:
            return None
        digest, position = hashlib.sha256(), 0
        for member in sizes:
            fobj.seek(position + member - 8)
            digest.update(fobj.read(8))
            position += member
    return len(sizes), digest.hexdigest()


def fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Record entry of one file: ``{"Size": bytes, "SHA256": hex}`` or, for a one-member-per-volume gzip
    file (the per-volume and per-block relevance maps), ``{"Size", "GzipMembers", "MemberCRC"}``."""
    path = Path(path)
    entry: dict[str, Any] = {"Size": path.stat().st_size}
    members = member_trailers(path) if path.name.endswith(".nii.gz") else None
    if members is not None:
        entry["GzipMembers"], entry["MemberCRC"] = members
    else:
        entry["SHA256"] = sha256sum(path, chunk=_CHUNK)
    return entry


def record(
    files: Mapping[str, str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The ``"Files"`` record of a marker: one entry per existing file.

    Parameters
    ----------
    files : dict
        ``{key: path}``: the run's outputs (below ``output_dir``) and caches (below
        ``work_dir``); missing files are left out.
    output_dir, work_dir : path-like
        The paths are recorded relative to them (``"In"``: :data:`OUTPUT` or :data:`WORK`).

    Returns
    -------
    dict
        ``{key: {"Path", "In", "Size", "SHA256" | "GzipMembers" + "MemberCRC"}}``.
    """
    out = {}
    for key, path in files.items():
        path = Path(path)
        if not path.is_file():
            continue
        where, base = _where(path, output_dir, work_dir)
        out[key] = {"Path": str(path.relative_to(base)) if base else str(path), "In": where, **fingerprint(path)}
    return out


def _where(path, output_dir, work_dir):
    for where, base in ((WORK, work_dir), (OUTPUT, output_dir)):  # the work folder may lie inside OUTPUT_DIR
        if base is not None and Path(path).is_relative_to(base):
            return where, Path(base)
    return OUTPUT, None


def path_of(
    entry: Mapping[str, Any], output_dir: str | os.PathLike[str] | None, work_dir: str | os.PathLike[str] | None
) -> Path:
    """The file of a record entry, below OUTPUT_DIR or the work folder."""
    base = work_dir if entry.get("In") == WORK else output_dir
    return Path(base) / entry["Path"] if base is not None else Path(entry["Path"])


def check(path: str | os.PathLike[str], entry: Mapping[str, Any], full: bool = False) -> str | None:
    """None when ``path`` matches its record ``entry``, else the reason (a few words).

    Parameters
    ----------
    path : path-like
    entry : dict
        From :func:`fingerprint`.
    full : bool
        Also decompress every gzip member of a one-member-per-volume file (its data against
        its CRC-32); without, only sizes, whole-file checksums and member trailers are read.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    want = entry.get("Size")
    if want is not None and size != want:
        if size == 0:
            return f"empty, {want} bytes recorded"
        return f"{size} bytes, {want} recorded" + (" (truncated)" if size < want else "")
    try:
        if "SHA256" in entry:
            return None if sha256sum(path, chunk=_CHUNK) == entry["SHA256"] else "its SHA-256 differs from the record"
        if "MemberCRC" in entry:
            members = member_trailers(path)
            if members is None:
                return "not the gzip file written (its members are not one per volume: another file?)"
            if members != (entry.get("GzipMembers"), entry["MemberCRC"]):
                return "its gzip members' CRC-32s differ from the record"
            if full:
                return _inflate_all(path)
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    return None


def _inflate_all(path):
    """None when every gzip member of ``path`` decompresses and matches its CRC-32, else the reason."""
    import zlib

    with open(path, "rb") as fobj:
        for index, (offset, size) in enumerate(member_extents(path)):
            fobj.seek(offset)
            try:
                inflate_member(fobj.read(size))
            except (OSError, EOFError, ValueError, zlib.error) as err:
                return f"gzip member {index} is corrupt ({type(err).__name__}: {err})".replace(": )", ")")
    return None


def verify(
    files: Mapping[str, Any] | None,
    output_dir: str | os.PathLike[str] | None,
    work_dir: str | os.PathLike[str] | None,
    full: bool = False,
    keys: Collection[str] | None = None,
) -> list[Damage]:
    """The damaged files of a ``"Files"`` record.

    A missing output is damaged; a missing cache is not (the work folder may be cleaned),
    but a cache that is there and does not match is.

    Parameters
    ----------
    files : dict
        A marker's ``"Files"``.
    output_dir, work_dir : path-like
    full : bool
        See :func:`check`.
    keys : iterable of str or None
        Only these entries (None: all).

    Returns
    -------
    list of Damage
    """
    damaged = []
    for key, entry in (files or {}).items():
        if keys is not None and key not in keys:
            continue
        if not isinstance(entry, dict) or "Path" not in entry:
            continue
        path = path_of(entry, output_dir, work_dir)
        cache = entry.get("In") == WORK
        if cache and not path.exists():
            continue
        reason = check(path, entry, full)
        if reason is not None:
            damaged.append(Damage(path, reason, cache))
    return damaged


def cache_intact(path: str | os.PathLike[str]) -> bool:
    """True when a work-folder cache is sound by itself (it may have been rewritten by another job).

    A work folder may be shared by several OUTPUT_DIRs: a cache that another job rewrote no
    longer matches this run's record, yet is sound.  The per-volume maps are checked against
    their own record (the JSON beside them), that record must parse, and the relevance sums
    must read through (zip CRC-32s).
    """
    path = Path(path)
    name = path.name
    if name.endswith(".nii.gz"):
        own, reason = read_marker(path.with_name(name.replace(".nii.gz", ".json")))
        entry = (own or {}).get(FILES_KEY, {}).get("volumes") if reason is None else None
        return isinstance(entry, dict) and check(path, entry) is None
    if name.endswith(".json"):
        own, reason = read_marker(path)
        return reason is None and "Key" in own  # type: ignore[operator]  # own is a dict when reason is None
    return readable(path) is None


def read_marker(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, str | None]:
    """A marker's JSON object, or ``(None, reason)`` when it is missing or unreadable: ``(dict|None, str|None)``."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as err:
        return None, f"cannot be read: {err.strerror or err}"
    if not text:
        return None, "empty"
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None, "not valid JSON (truncated or another file?)"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    return obj, None


def report_record(
    marker: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str] | None = None,
    action: str = "rewritten",
    log: logging.Logger = LOGGER,
    prefix: str = "",
) -> list[Path]:
    """Log one line per damaged file of the record in ``marker`` (the marker included); returns their paths.

    For files that are written again in any case (a participant's summaries, the group's outputs): the
    lines say what was damaged before it is replaced.  A missing marker is no damage (first run).
    """
    marker = Path(marker)
    if not marker.exists():
        return []
    obj, reason = read_marker(marker)
    if obj is None:
        log.warning("%s%s", prefix, Damage(marker, reason).line(action))  # type: ignore[arg-type]  # str: obj is None
        return [marker]
    damaged = verify(obj.get(FILES_KEY), output_dir, work_dir)
    for damage in damaged:
        log.warning("%s%s", prefix, damage.line(action))
    return [d.path for d in damaged]


def damaged_sidecars(output_dir: str | os.PathLike[str]) -> list[tuple[Path, str | None]]:
    """``[(path, reason)]`` of the participant JSON sidecars under ``OUTPUT_DIR/sub-*`` that do not parse.

    pybids stops indexing a whole folder at the first unreadable sidecar: the group level
    leaves these out (with a line each) instead.
    """
    found = []
    for path in sorted(Path(output_dir).glob("sub-*/**/*.json")):
        if path.name.startswith("."):
            continue
        obj, reason = read_marker(path)
        if obj is None:
            found.append((path, reason))
    return found


def same_inode(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when ``a`` and ``b`` are the same file (hard links): damage to one is damage to both."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# -- files without a record: read through ---------------------------------------------------------------------
def readable(path: str | os.PathLike[str]) -> str | None:
    """None when a file the app wrote reads through by its kind (extension), else the reason.

    ``.json`` parses; ``.tsv`` parses with a header; ``.nii``/``.nii.gz`` loads and its data
    decompresses in full; ``.npz``/``.npy`` load every array; ``.keras`` (a zip) passes its
    CRC test; ``.h5`` opens; ``.png`` has its signature; text files are non-empty UTF-8.
    """
    path = Path(path)
    name = path.name
    try:
        if path.stat().st_size == 0:
            return "empty"
        if name.endswith(".json"):
            return read_marker(path)[1]
        if name.endswith(".tsv"):
            return _tsv_reason(path)
        if name.endswith((".nii.gz", ".nii")):
            return _nifti_reason(path)
        if name.endswith((".npz", ".npy")):
            return _numpy_reason(path)
        if name.endswith(".keras"):
            return _zip_reason(path)
        if name.endswith(".h5"):
            import h5py

            with h5py.File(path, "r"):
                return None
        if name.endswith(".png"):
            with open(path, "rb") as fobj:
                return None if fobj.read(8) == b"\x89PNG\r\n\x1a\n" else "not a PNG image"
        path.read_text(encoding="utf-8")
    except Exception as err:  # noqa: BLE001  (any reader error is the reason)
        return describe_error(err)
    return None


def describe_error(err: BaseException) -> str:
    """An exception as a few words on one line (the reason in a "damaged (...)" line)."""
    text = f"{type(err).__name__}: {err}".strip().rstrip(":")
    return " ".join(text.split())[:200]


def _tsv_reason(path):
    frame = read_tsv(path, allow_empty=False)
    return None if len(frame.columns) else "no header"


def _nifti_reason(path):
    import gzip
    import zlib

    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    expected = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize

    opener = gzip_module().open if str(path).endswith(".gz") else open
    total = 0
    try:
        with opener(path, "rb") as fobj:
            for block in iter(lambda: fobj.read(_CHUNK), b""):
                total += len(block)
    except (zlib.error, gzip.BadGzipFile) as err:
        return describe_error(err)
    return None if total >= expected else f"{total} of {expected} bytes of image data"


def _numpy_reason(path):
    import numpy as np

    if str(path).endswith(".npy"):
        np.load(path, allow_pickle=False)
        return None
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            data[key]  # reads the member in full: zipfile checks its CRC-32
    return None


def _zip_reason(path):
    import zipfile

    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    return None if bad is None else f"zip member {bad} is corrupt"


# -- --verify: a finished OUTPUT_DIR checked without recomputing ----------------------------------------------
def verify_output_dir(
    output_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str] | None = None,
    subjects: Iterable[str] | None = None,
    log: logging.Logger = LOGGER,
) -> tuple[int, list[Damage]]:
    """Check every file of a finished OUTPUT_DIR (and its work folder) without recomputing anything.

    Files listed by a record (the completion markers' ``"Files"``) are checked against it, the
    per-volume maps with every gzip member decompressed (``full=True``); the markers must parse;
    every other file (written before records existed, job logs, the work folder's relevance sums)
    must read through (:func:`readable`).  Nothing is written.

    Parameters
    ----------
    output_dir : path-like
    work_dir : path-like or None
        Default: ``OUTPUT_DIR/.work``.
    subjects : iterable of str or None
        Participant labels (without ``sub-``): only their folders (and the folders outside any
        participant's) are checked; None: all.

    Returns
    -------
    checked : int
        Files checked.
    damaged : list of Damage
    """
    output_dir = Path(output_dir)
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir(output_dir)
    wanted = None if not subjects else {f"sub-{str(s).removeprefix('sub-')}" for s in subjects}

    def selected(path):
        try:
            top = path.relative_to(output_dir).parts[0]
        except ValueError:
            return True  # the work folder elsewhere
        return wanted is None or not top.startswith("sub-") or top in wanted

    files = [p for p in _walk(output_dir, work_dir) if selected(p)]
    covered, damaged = set(), []
    for path in files:
        if not path.name.endswith(".json"):
            continue
        obj, reason = read_marker(path)
        if obj is None or not isinstance(obj.get(FILES_KEY), dict):
            continue
        covered.add(path)
        record = obj[FILES_KEY]
        if path.parent.name == "relevance_volumes" and "volumes" in record:  # the work copy's own record
            target = path.with_name(path.name.replace(".json", ".nii.gz"))
            covered.add(target)
            why = check(target, record["volumes"], full=True) if target.exists() else None
            if why is not None:
                damaged.append(Damage(target, why, cache=True))
            continue
        for entry in record.values():
            if not isinstance(entry, dict) or "Path" not in entry:
                continue
            target = path_of(entry, output_dir, work_dir)
            cache = entry.get("In") == WORK
            if target in covered or (cache and not target.exists()):
                covered.add(target)
                continue
            covered.add(target)
            why = check(target, entry, full=True)
            if why is not None and cache and cache_intact(target):
                why = None  # rewritten by another job sharing the work folder, and sound
            if why is not None:
                damaged.append(Damage(target, why, cache))

    for path in files:
        if path in covered:
            continue
        why = readable(path)
        if why is None and path.parent == output_dir and path.name in ("README.md", ".bidsignore"):
            why = dataset_file_damage(path)
        if why is not None:
            damaged.append(Damage(path, why, cache=path.is_relative_to(work_dir)))
    seen, unique = set(), []
    for damage in damaged:
        if damage.path not in seen:
            seen.add(damage.path)
            unique.append(damage)
    return len(set(files) | covered), sorted(unique, key=lambda d: str(d.path))


def _walk(output_dir, work_dir):
    """Every file of OUTPUT_DIR and the work folder; temporaries (hidden names) left out, but ``.bidsignore``."""
    out, work = Path(output_dir), Path(work_dir)
    found = []
    for root in dict.fromkeys((out, work)):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            base = work if path.is_relative_to(work) else root
            parts = path.relative_to(base).parts
            if any(p.startswith(".") for p in parts) and not (base == out and parts == (".bidsignore",)):
                continue
            found.append(path)
    return list(dict.fromkeys(found))


def run_verify(config: Config, log: logging.Logger = LOGGER) -> int:
    """``participant --verify``: list the damaged files of OUTPUT_DIR; exit code 0, or OutputError (5) if any."""
    import time

    began = time.monotonic()
    checked, damaged = verify_output_dir(
        config.inputs.output_dir, config.inputs.work_dir, config.inputs.participant_label, log
    )
    out = Path(config.inputs.output_dir)
    for damage in damaged:
        top = damage.path.relative_to(out).parts[0] if damage.path.is_relative_to(out) else None
        if damage.cache:
            where = "a work-folder cache: a participant re-run makes it again"
        elif top == "logs":
            where = "a record of an earlier job: not made again"
        elif top == "group" or damage.path.name == "deeplight_report.html":
            where = "the group level writes it again"
        elif top == "models":
            where = "fine-tuning output: fine-tune again with --overwrite"
        else:
            where = "a participant re-run recomputes it"
        log.error("damaged: %s: %s (%s)", damage.path, damage.reason, where)
    log.info(
        "verify: %d file(s) of %s checked in %.1f s, %d damaged",
        checked,
        config.inputs.output_dir,
        time.monotonic() - began,
        len(damaged),
    )
    if damaged:
        raise OutputError(
            f"{config.inputs.output_dir}: {len(damaged)} damaged file(s) (listed above); re-run the participant level "
            "without --verify (it recomputes them), then the group level."
        )
    return EXIT_OK

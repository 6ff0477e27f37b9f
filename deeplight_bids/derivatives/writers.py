"""Atomic writes of NIfTI/TSV/JSON outputs and the dataset-level files.

Every file is written to a temporary name in the same folder and renamed into
place (``os.replace`` is atomic on POSIX), so a killed job never leaves a partial
file under a final name, and concurrent jobs writing the same shared file (as SLURM
array tasks do) never corrupt it.  Writing through a symbolic link is refused; given
the ``root`` of the outputs (OUTPUT_DIR), so is writing below a symbolically linked
folder inside it (OUTPUT_DIR itself may be a link), so no write leaves OUTPUT_DIR.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import gzip
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids._version import __version__
from deeplight_bids.derivatives.links import dataset_links, dataset_roots
from deeplight_bids.exceptions import OutputError

LOGGER = logging.getLogger("deeplight_bids")

if TYPE_CHECKING:
    from types import ModuleType

    import nibabel as nib
    import numpy.typing as npt
    import pandas as pd

#: A path given as text or as a path object.
PathLike = str | os.PathLike


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def code_url() -> str | None:
    """Where the code that wrote the outputs may be found, or None when not known.

    Taken from ``DEEPLIGHT_CODE_URL`` (the container image sets it from its build's
    ``SOURCE_URL``, the repository it was built from); no address is made up.
    """
    return os.environ.get("DEEPLIGHT_CODE_URL") or None


#: OUTPUT_DIR of the command being run: the ``root`` of every write that names none.
_OUTPUT_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("deeplight_bids_output_root", default=None)


@contextlib.contextmanager
def output_root(path: PathLike) -> Iterator[Path]:
    """Within this context every writer guards ``path`` (OUTPUT_DIR) as its ``root``.

    The command line runs each level inside it, so writers that are not handed a
    ``root`` (the group tables, maps, manifest and report, fine-tuned models, logs)
    refuse symbolic links below OUTPUT_DIR just like the participant writers.
    """
    token = _OUTPUT_ROOT.set(Path(path))
    try:
        yield Path(path)
    finally:
        _OUTPUT_ROOT.reset(token)


def _check_target(path: PathLike, root: PathLike | None = None) -> Path:
    """Refuse ``path`` if it is a symbolic link, or (given ``root``) below a linked folder inside ``root``.

    Folders are checked before any is created, so a linked sub-folder of OUTPUT_DIR
    that points elsewhere never receives a file or a folder.
    """
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path}: refusing to write through a symbolic link; remove the link.")
    if root is None:
        root = _OUTPUT_ROOT.get()
    if root is not None:
        root = Path(root).absolute()
        try:
            parts = path.absolute().parent.relative_to(root).parts
        except ValueError:
            parts = ()  # outside root (e.g. --work-dir elsewhere): only the file itself is checked
        folder = root
        for part in parts:
            folder = folder / part
            if folder.is_symlink():
                raise OutputError(
                    f"{folder}: refusing to write below a symbolic link inside {root} (it may point "
                    "outside the output folder); replace the link with a folder."
                )
            if not folder.exists():
                break
    return path


def ensure_writable(folder: PathLike) -> Path:
    """Create ``folder`` if needed and check that a file can be created in it (else OutputError)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(
            f"{folder}: output folder not writable ({err.strerror or err}); "
            "choose a writable OUTPUT_DIR (and --work-dir)."
        ) from err
    return folder


def _host_tag():
    """This host's name as it appears in temporary names (letters, digits and '-')."""
    return "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:40] or "host"


def owner_tag() -> str:
    """``<host>-<pid>``: put into temporary names so a later run can tell whose they are."""
    return f"{_host_tag()}-{os.getpid()}"


_TEMP_PATTERN = re.compile(r"^\.(?:.+\.)?(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^/]*(?:\.tmp|\.stream)[^/]*$")


def remove_stale_temporaries(folder: PathLike, log: logging.Logger | None = None, recursive: bool = True) -> list[Path]:
    """Delete temporaries left in ``folder`` (and below, with ``recursive``) by writers that were killed.

    (SIGKILL, out of memory: no chance to clean up.)  Temporaries (``.<name>.<host>-<pid>.<random>.tmp...`` and ``.stream.<host>-<pid>.<random>.nii``)
    carry their writer's host and process id; one is stale when that host is this host and
    that process no longer runs.  Temporaries of other hosts (a cluster writing into one shared
    OUTPUT_DIR) and of live processes are kept.  Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    here = _host_tag()
    removed = []
    for path in folder.rglob(".*") if recursive else folder.glob(".*"):
        match = _TEMP_PATTERN.match(path.name)
        if not match or not path.is_file() or match["host"] != here:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    if removed and log is not None:
        log.info("removed %d temporary file(s) left by interrupted runs in %s", len(removed), folder)
    return removed


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: PathLike, root: PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    The temporary name keeps the final extension (some writers infer the format
    from it, e.g. ``.nii.gz``, ``.keras``).  ``root``: see :func:`_check_target`.
    """
    path = _check_target(path, root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes)
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name.split('.')[0]}.{owner_tag()}.", suffix=f".tmp{suffix}"
        )
        os.close(fd)
    except OSError as err:
        raise OutputError(f"{path.parent}: cannot write here ({err.strerror}); choose a writable OUTPUT_DIR.") from err
    try:
        yield Path(tmp)
        # mkstemp creates 0600; outputs get the usual permissions (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"{path}: write failed ({err.strerror or err}); check free space and permissions.") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def gzip_module() -> ModuleType:
    """``isal.igzip`` (ISA-L: the same gzip format, level 1 about 20x and reading about 2x faster than zlib's) when
    installed, else the standard library's ``gzip``."""
    try:
        from isal import igzip
    except ImportError:
        return gzip
    return igzip


def write_text(path: PathLike, text: str, root: PathLike | None = None) -> Path:
    with atomic_path(path, root) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(path: PathLike, obj: Any, root: PathLike | None = None) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", root)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_tsv(path: PathLike, frame: pd.DataFrame, root: PathLike | None = None) -> Path:
    """Write a pandas DataFrame as BIDS TSV (tab separated, ``n/a`` for missing)."""
    with atomic_path(path, root) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return Path(path)


def write_nifti(path: PathLike, img: nib.Nifti1Image, root: PathLike | None = None) -> Path:
    with atomic_path(path, root) as tmp:
        img.to_filename(str(tmp))
    return Path(path)


def nifti4d_header(shape: Sequence[int], affine: np.ndarray, t_r: float, description: str = "") -> nib.Nifti1Header:
    """NIfTI-1 header of a 4D float32 image: ``shape`` ``(x, y, z, t)``, ``affine`` (4, 4) as q- and s-form
    (code 4, MNI), zooms from the affine and ``t_r`` (s), ``description`` (79 characters at most)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(tuple(int(s) for s in shape))
    header.set_data_dtype(np.float32)
    header.set_zooms((*np.abs(np.diag(affine)[:3]).tolist(), float(t_r)))
    header.set_xyzt_units("mm", "sec")
    header.set_qform(affine, code=4)
    header.set_sform(affine, code=4)
    if description:
        header["descrip"] = description[:79].encode()
    return header


def check_volume_block(shape: Sequence[int], start: int, volumes: npt.ArrayLike) -> np.ndarray:
    """``volumes`` as float32 ``(n, x, y, z)``, checked to fit time indices ``start .. start + n - 1`` of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        ``(x, y, z, t)`` of the 4D file being written.
    start : int
    volumes : array-like
        ``(n, x, y, z)``.

    Raises
    ------
    ValueError
        Wrong shape or time indices outside ``[0, t)``.
    """
    volumes = np.asarray(volumes, dtype=np.float32)
    if volumes.ndim != 4 or volumes.shape[1:] != tuple(shape[:3]) or not 0 <= start <= shape[3] - len(volumes):
        raise ValueError(
            f"expected volumes (n, {', '.join(map(str, shape[:3]))}) for time indices "
            f"{start}..{start + len(volumes) - 1} of {shape[3]}; got {volumes.shape}"
        )
    return volumes


class StreamingNifti4D:
    """Write a 4D float32 NIfTI one volume at a time, with bounded memory.

    Volumes go into an uncompressed temporary ``.nii`` (memory-mapped, NIfTI's
    column-major order makes each volume contiguous); :meth:`close` gzips it into a
    temporary ``.nii.gz`` beside the target and renames it into place.

    Parameters
    ----------
    path : path-like
        Final ``.nii.gz`` path.
    shape : tuple of int
        ``(x, y, z, n_volumes)``.
    affine : ndarray (4, 4)
    t_r : float
        Seconds, stored in the header's 4th zoom (units mm / s).
    scratch_dir : path-like or None
        Where the uncompressed temporary goes (default: beside ``path``).
    root : path-like or None
        OUTPUT_DIR: no folder below it may be a symbolic link (see :func:`_check_target`).

    Notes
    -----
    The temporary is allocated in full at once (``posix_fallocate``), so a full disk
    is an :class:`OutputError` here rather than a crash (SIGBUS) while writing into the
    memory map; the gzip stream is deterministic (no time stamp, no file name).
    """

    def __init__(
        self,
        path: PathLike,
        shape: Sequence[int],
        affine: np.ndarray,
        t_r: float,
        scratch_dir: PathLike | None = None,
        description: str = "",
        root: PathLike | None = None,
    ):
        self.root = root
        self.path = _check_target(path, root)
        self.shape = tuple(int(s) for s in shape)
        header = nifti4d_header(self.shape, affine, t_r, description)
        self.header = header
        scratch = Path(scratch_dir or self.path.parent)
        self._raw = None
        try:
            _check_target(scratch / "scratch", root)
            scratch.mkdir(parents=True, exist_ok=True)
            fd, self._raw = tempfile.mkstemp(dir=scratch, prefix=f".stream.{owner_tag()}.", suffix=".stream.nii")
            # single-file NIfTI: data right after the 348-byte header and 4-byte extension flag
            header.set_data_offset(header.single_vox_offset)
            with os.fdopen(fd, "wb") as fobj:
                header.write_to(fobj)
                offset = int(header["vox_offset"])
                fobj.seek(offset)
                pad = offset - fobj.tell()
                if pad > 0:
                    fobj.write(b"\0" * pad)
            size = offset + int(np.prod(self.shape)) * 4
            with open(self._raw, "r+b") as fobj:
                try:
                    os.posix_fallocate(fobj.fileno(), 0, size)
                except OSError as err:
                    if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                    fobj.truncate(size)  # file system without fallocate
        except OSError as err:
            if self._raw is not None and os.path.exists(self._raw):
                os.unlink(self._raw)
            raise OutputError(
                f"{scratch}: cannot write the temporary relevance file ({err.strerror or err}); "
                "free disk space or choose a writable --work-dir."
            ) from err
        # Plain positioned writes, not a memory map: the pages of a mapped file count as the
        # process's resident memory (a 405-volume run's map is 1.4 GB), written ones don't.
        self._offset = offset
        self._volume_bytes = int(np.prod(self.shape[:3])) * 4
        self._data = open(self._raw, "r+b")

    def write(self, start: int, volumes: npt.ArrayLike) -> None:
        """Store ``volumes`` ``(n, x, y, z)`` at time indices ``start .. start + n - 1``.

        A volume that is Fortran-contiguous (e.g. the ``(x, y, z)`` transposed view of a
        model-order ``(z, y, x)`` map) is written without a copy.
        """
        volumes = check_volume_block(self.shape, start, volumes)
        for i, vol in enumerate(volumes):
            column_major = np.asfortranarray(vol).T  # (z, y, x) C-contiguous: NIfTI's byte order of the volume
            os.pwrite(
                self._data.fileno(),
                memoryview(column_major).cast("B"),  # type: ignore[arg-type]  # an ndarray is a buffer
                self._offset + (start + i) * self._volume_bytes,
            )

    def read(self, index: int) -> np.ndarray:
        """Volume ``index`` as written, ``(z, y, x)`` float32 (NIfTI's column-major (x, y, z) in C order)."""
        nx, ny, nz = self.shape[:3]
        raw = os.pread(self._data.fileno(), self._volume_bytes, self._offset + int(index) * self._volume_bytes)
        return np.frombuffer(raw, dtype=np.float32).reshape(nz, ny, nx)

    def close(self, compresslevel: int = 1) -> Path:
        """Compress and move into place; returns the final path.

        Level 1: on float relevance maps level 4 compressed only a few percent better
        at about twice the time (level 6: 1.6 % smaller than level 1 on masked maps, 2.5 times the
        time); the stream is still deterministic.  Compressed with ISA-L when installed
        (:func:`gzip_module`).
        """
        self._data.close()
        del self._data
        module = gzip_module()
        if module is not gzip:
            compresslevel = min(compresslevel, 3)  # ISA-L's levels are 0-3
        try:
            with atomic_path(self.path, self.root) as tmp:
                with (
                    open(self._raw, "rb") as src,  # type: ignore[arg-type]  # a str once __init__ returned
                    open(tmp, "wb") as raw_dst,
                    module.GzipFile(
                        filename="", mode="wb", fileobj=raw_dst, compresslevel=compresslevel, mtime=0
                    ) as dst,
                ):
                    shutil.copyfileobj(src, dst, length=1 << 22)
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (on error)."""
        if hasattr(self, "_data"):
            self._data.close()
            del self._data
        if self._raw is not None and os.path.exists(self._raw):
            os.unlink(self._raw)


def _source_roots(sources):
    if isinstance(sources, Mapping):
        return {name: Path(root) for name, root in sources.items()}
    sources = list(sources)
    return dataset_roots(sources[0], sources[1:]) if sources else {}


def dataset_description(sources: Mapping[str, PathLike] | Sequence[PathLike] = (), output_dir: PathLike = ".") -> dict:
    """The ``dataset_description.json`` content of OUTPUT_DIR (BIDS-Derivatives).

    Parameters
    ----------
    sources : mapping or sequence
        The source datasets: ``{name: root}`` (:func:`deeplight_bids.derivatives.links.dataset_roots`),
        or BIDS_DIR followed by the derivative datasets read (named by that function).
    output_dir : str or path
        OUTPUT_DIR: ``DatasetLinks`` and ``SourceDatasets`` give the sources relative to it
        (``../bids``), so the file does not depend on where the machine keeps the data.
    """
    container = None
    if os.environ.get("DEEPLIGHT_CONTAINER"):
        container = {"Type": os.environ.get("DEEPLIGHT_CONTAINER"), "Tag": f"deeplight-bids:{__version__}"}
    generated: dict[str, Any] = {"Name": "deeplight-bids", "Version": __version__}
    if code_url():
        generated["CodeURL"] = code_url()
    generated["Description"] = "DeepLight decoding of task-fMRI volumes with LRP relevance maps"
    if container:
        generated["Container"] = container
    desc: dict[str, Any] = {
        "Name": "deeplight-bids outputs",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        # the authors of the software that generated the outputs (BIDS recommends Authors)
        "Authors": ["deeplight-bids contributors"],
        "HowToAcknowledge": (
            "Cite Thomas, Lindenberger, Samek & Mueller (2021), Evaluating deep transfer "
            "learning for whole-brain cognitive decoding, arXiv:2111.01562, and deeplight-bids."
        ),
    }
    links = dataset_links(_source_roots(sources), output_dir)
    if links:
        # the sidecars' Sources are bids:<name>:<path> URIs resolved through DatasetLinks
        desc["DatasetLinks"] = links
        desc["SourceDatasets"] = [{"URL": location} for location in links.values()]
    return desc


BIDSIGNORE = """\
# BIDS has no names for these deeplight-bids outputs (as fMRIPrep does for *_timeseries.tsv)
*_timeseries.tsv
*_timeseries.json
*_relevance.nii.gz
*_relevance.json
*_relevance.tsv
*_summary.tsv
*_summary.json
*_statmap.nii.gz
*_statmap.json
*.html
logs
models
figures
work
group
tfrecords
"""


def write_dataset_files(output_dir: PathLike, source_dirs: Mapping[str, PathLike] | Sequence[PathLike] = ()) -> None:
    """Write ``dataset_description.json``, ``.bidsignore`` and ``README`` (idempotent, atomic).

    ``source_dirs``: as ``sources`` of :func:`dataset_description`.

    Concurrent jobs (SLURM arrays) each write the same content atomically: a reader
    always sees one complete version, never a mix.
    """
    from deeplight_bids.derivatives.naming import dataset_outputs  # deferred: loads nibabel and SciPy

    output_dir = Path(output_dir)
    names = dataset_outputs(output_dir)
    files = {
        names["description"]: json.dumps(dataset_description(source_dirs, output_dir), indent=2) + "\n",
        names["bidsignore"]: BIDSIGNORE,
        names["readme"]: readme_text(),
    }
    for path, text in files.items():
        try:
            if not path.is_symlink() and path.is_file():
                old = path.read_bytes()
                if old == text.encode():
                    continue  # concurrent jobs: same content, nothing to do
                damage = _damage_of(path, old, text)
                if damage:
                    LOGGER.warning("%s: damaged (%s); rewritten", path, damage)
        except OSError:
            pass  # unreadable: rewrite it
        write_text(path, text, root=output_dir)


def readme_text() -> str:
    """The ``README.md`` of OUTPUT_DIR."""
    return (
        "# deeplight-bids outputs\n\nPer-volume DeepLight decoding (``*_desc-predictions_"
        "timeseries.tsv``) and LRP relevance maps (``*_desc-relevance_bold.nii.gz``), "
        "written by deeplight-bids " + __version__ + ".\n"
    )


def dataset_file_damage(path: PathLike) -> str | None:
    """Why OUTPUT_DIR's ``README.md`` or ``.bidsignore`` is damaged (this version's text cut short, empty, not
    text), or None (as written, or an older version's)."""
    path = Path(path)
    text = {"README.md": readme_text(), ".bidsignore": BIDSIGNORE}.get(path.name)
    old = path.read_bytes()
    return None if text is None or old == text.encode() else _damage_of(path, old, text)


def _damage_of(path, old, text):
    """Why an existing dataset file is damaged (empty, truncated, not text, not JSON), or None (an older version)."""
    if not old:
        return "empty"
    try:
        decoded = old.decode("utf-8")
    except UnicodeDecodeError:
        return "not text (another file?)"
    if path.suffix == ".json":
        try:
            json.loads(decoded)
        except ValueError:
            return "not valid JSON (truncated or another file?)"
    elif text.startswith(decoded):
        return f"{len(old)} of {len(text.encode())} bytes (truncated)"
    return None


def link_or_copy(
    source: str | os.PathLike[str], target: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> None:
    """Put ``source`` at ``target`` atomically: a hard link (no copy, same file system) or else a copy."""
    with atomic_path(target, root) as tmp:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not supported
            shutil.copyfile(source, tmp)

"""Atomic writes of NIfTI/TSV/JSON outputs and the dataset-level files.

Every file is written to a temporary name in the same folder and renamed into
place (``os.replace`` is atomic on POSIX), so a killed job never leaves a partial
file under a final name, and concurrent jobs writing the same shared file (as SLURM
array tasks do) never corrupt it.  Writing through a symbolic link is refused.
"""

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from deeplight_bids import __version__
from deeplight_bids.exceptions import OutputError

CODE_URL = "https://github.com/deeplight-bids/deeplight-bids"


def _check_target(path):
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path}: refusing to write through a symbolic link; remove the link.")
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    The temporary name keeps the final extension (some writers infer the format
    from it, e.g. ``.nii.gz``, ``.keras``).
    """
    path = _check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}")
        os.close(fd)
    except OSError as err:
        raise OutputError(f"{path.parent}: cannot write here ({err.strerror}); choose a writable OUTPUT_DIR.") from err
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"{path}: write failed ({err.strerror or err}); check free space and permissions.") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(path, obj):
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


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


def write_tsv(path, frame):
    """Write a pandas DataFrame as BIDS TSV (tab separated, ``n/a`` for missing)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return Path(path)


def write_nifti(path, img):
    with atomic_path(path) as tmp:
        img.to_filename(str(tmp))
    return Path(path)


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
    """

    def __init__(self, path, shape, affine, t_r, scratch_dir=None, description=""):
        import nibabel as nib

        self.path = _check_target(path)
        self.shape = tuple(int(s) for s in shape)
        header = nib.Nifti1Header()
        header.set_data_shape(self.shape)
        header.set_data_dtype(np.float32)
        header.set_zooms((*np.abs(np.diag(affine)[:3]).tolist(), float(t_r)))
        header.set_xyzt_units("mm", "sec")
        header.set_qform(affine, code=4)
        header.set_sform(affine, code=4)
        if description:
            header["descrip"] = description[:79].encode()
        self.header = header
        scratch = Path(scratch_dir or self.path.parent)
        try:
            scratch.mkdir(parents=True, exist_ok=True)
            fd, self._raw = tempfile.mkstemp(dir=scratch, prefix=".stream.", suffix=".nii")
            with os.fdopen(fd, "wb") as fobj:
                header.write_to(fobj)
                offset = int(header["vox_offset"])
                fobj.seek(offset)
                pad = offset - fobj.tell()
                if pad > 0:
                    fobj.write(b"\0" * pad)
            size = offset + int(np.prod(self.shape)) * 4
            with open(self._raw, "r+b") as fobj:
                fobj.truncate(size)
        except OSError as err:
            raise OutputError(f"{scratch}: cannot write here ({err.strerror}); choose a writable folder.") from err
        self._data = np.memmap(self._raw, dtype=np.float32, mode="r+", offset=offset, shape=self.shape, order="F")

    def write(self, start, volumes):
        """Store ``volumes`` ``(n, x, y, z)`` at time indices ``start .. start + n - 1``."""
        volumes = np.asarray(volumes, dtype=np.float32)
        for i, vol in enumerate(volumes):
            self._data[..., start + i] = vol

    def close(self, compresslevel=4):
        """Flush, compress, and move into place; returns the final path."""
        self._data.flush()
        del self._data
        try:
            with atomic_path(self.path) as tmp:
                with open(self._raw, "rb") as src, gzip.open(tmp, "wb", compresslevel=compresslevel) as dst:
                    shutil.copyfileobj(src, dst, length=1 << 22)
        finally:
            self.abort()
        return self.path

    def abort(self):
        """Remove the temporary file (on error)."""
        if hasattr(self, "_data"):
            del self._data
        if os.path.exists(self._raw):
            os.unlink(self._raw)


def dataset_description(source_dirs=()):
    """The ``dataset_description.json`` content of OUTPUT_DIR (BIDS-Derivatives)."""
    container = None
    if os.environ.get("DEEPLIGHT_CONTAINER"):
        container = {"Type": os.environ.get("DEEPLIGHT_CONTAINER"), "Tag": f"deeplight-bids:{__version__}"}
    generated = {"Name": "deeplight-bids", "Version": __version__, "CodeURL": CODE_URL,
                 "Description": "DeepLight decoding of task-fMRI volumes with LRP relevance maps"}
    if container:
        generated["Container"] = container
    desc = {
        "Name": "deeplight-bids outputs",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "HowToAcknowledge": ("Cite Thomas, Lindenberger, Samek & Mueller (2021), Evaluating deep transfer "
                             "learning for whole-brain cognitive decoding, arXiv:2111.01562, and deeplight-bids."),
    }
    sources = [f"file://{Path(d).absolute()}" for d in source_dirs]
    if sources:
        desc["SourceDatasets"] = [{"URL": url} for url in sources]
    return desc


BIDSIGNORE = """\
# BIDS has no names for these deeplight-bids outputs (as fMRIPrep does for *_timeseries.tsv)
*_timeseries.tsv
*_timeseries.json
*_relevance.nii.gz
*_relevance.json
*_summary.tsv
*_summary.json
*.html
logs
models
figures
work
group
"""


def write_dataset_files(output_dir, source_dirs=()):
    """Write ``dataset_description.json``, ``.bidsignore`` and ``README`` (idempotent, atomic)."""
    output_dir = Path(output_dir)
    files = {
        output_dir / "dataset_description.json": json.dumps(dataset_description(source_dirs), indent=2) + "\n",
        output_dir / ".bidsignore": BIDSIGNORE,
        output_dir / "README.md": ("# deeplight-bids outputs\n\nPer-volume DeepLight decoding (``*_desc-predictions_"
                                   "timeseries.tsv``) and LRP relevance maps (``*_desc-relevance_bold.nii.gz``), "
                                   "written by deeplight-bids " + __version__ + ".\n"),
    }
    for path, text in files.items():
        if path.is_file() and path.read_text() == text:
            continue  # concurrent jobs: same content, nothing to do
        write_text(path, text)

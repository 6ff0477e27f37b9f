"""The template spaces the app can put onto its reference grid, and how (one table).

DeepLight was trained on the MNI152NLin6Asym 2 mm grid (:mod:`deeplight_bids.prepare.grid`).
A preprocessed BOLD is usable when its ``space`` entity is in :data:`KNOWN_SPACES`:

* ``MNI152NLin6Asym`` (any ``res``): the same template; exact re-ordering, or resampling
  within the template's world coordinates (:func:`grid.to_reference_grid`).
* ``MNI152NLin2009cAsym`` (any ``res``): TemplateFlow's inter-template transform
  ``tpl-MNI152NLin6Asym_from-MNI152NLin2009cAsym_mode-image_xfm.h5`` (an ANTs composite
  with a displacement field), read with nitransforms.  As every ITK/ANTs transform used to
  resample an image, it maps points of the *reference* space (here MNI152NLin6Asym) to
  points of the *moving* space (MNI152NLin2009cAsym): for every voxel of the reference grid
  we look up where it lies in the 2009c image, once per job and source grid
  (:class:`TemplateResampler`), and interpolate every volume there (BOLD trilinear, mask
  nearest neighbour).

Anything else (``T1w``, ``func``, ``fsnative``, no ``space`` entity, unknown templates) is
refused: decoding a native-space image as if it were MNI would be silently wrong.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.exceptions import InputDataError
from deeplight_bids.prepare.grid import (
    REFERENCE_AFFINE,
    REFERENCE_SHAPE,
    REFERENCE_SPACE,
    _axis_permutation_to_reference,
    is_on_reference_grid,
    to_reference_grid,
)
from deeplight_bids.utils.identity import sha256sum

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from scipy import sparse

LOGGER = logging.getLogger("deeplight_bids")

__all__ = [
    "KNOWN_SPACES",
    "MNI2009C_TO_6ASYM",
    "ApproximateResampler",
    "SPACE_PREFERENCE",
    "KnownSpace",
    "SpacePlan",
    "SpaceTransformError",
    "TemplateResampler",
    "TransformFile",
    "fetch_transform",
    "load_transform",
    "refusal",
    "templateflow_get",
    "templateflow_home",
]


@dataclass(frozen=True)
class TransformFile:
    """A TemplateFlow transform file and the checksum TemplateFlow publishes for it.

    Attributes
    ----------
    template : str
        TemplateFlow template that holds the file (the target space).
    query : dict
        ``templateflow.api.get`` keyword arguments besides ``template``.
    filename : str
        File name under ``$TEMPLATEFLOW_HOME/tpl-<template>/``.
    md5 : str
        MD5 of the file (TemplateFlow's DataLad annex key ``MD5E-s<size>--<md5>``).
    size : int
        Bytes.
    """

    template: str
    query: dict
    filename: str
    md5: str
    size: int

    @property
    def templateflow_name(self) -> str:
        return f"tpl-{self.template}/{self.filename}"


@dataclass(frozen=True)
class KnownSpace:
    """One row of the table: a space name and the transform to MNI152NLin6Asym (None: the same space)."""

    name: str
    transform: TransformFile | None = None
    note: str = ""


MNI2009C_TO_6ASYM = TransformFile(
    template="MNI152NLin6Asym",
    query={"from": "MNI152NLin2009cAsym", "mode": "image", "suffix": "xfm", "extension": ".h5"},
    filename="tpl-MNI152NLin6Asym_from-MNI152NLin2009cAsym_mode-image_xfm.h5",
    md5="b7130989291ddb85642e19940aaec4c1",
    size=204735104,
)

#: Spaces a preprocessed BOLD may be in (any ``res``), in order of preference.
KNOWN_SPACES = {
    "MNI152NLin6Asym": KnownSpace("MNI152NLin6Asym", None, "the training space: exact re-ordering or resampling"),
    "MNI152NLin2009cAsym": KnownSpace(
        "MNI152NLin2009cAsym",
        MNI2009C_TO_6ASYM,
        "fMRIPrep's default: TemplateFlow's nonlinear transform to MNI152NLin6Asym",
    ),
}
SPACE_PREFERENCE = tuple(KNOWN_SPACES)


class SpaceTransformError(InputDataError):
    """A transform file is missing (offline) or corrupt."""


def refusal(space: str | None) -> str:
    """Why a BOLD in ``space`` (None: no ``space`` entity) cannot be used, one line without the run label."""
    shown = f"space {space}" if space else "native space (no space entity)"
    return (
        f"BOLD in {shown}; DeepLight needs {REFERENCE_SPACE} (or {' or '.join(SPACE_PREFERENCE[1:])}): "
        f"rerun fMRIPrep with --output-spaces {REFERENCE_SPACE}:res-2"
    )


def _file_md5(path, chunk=1 << 22):
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fobj:
        for block in iter(lambda: fobj.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def templateflow_home() -> Path:
    """``$TEMPLATEFLOW_HOME``, else TemplateFlow's default (``~/.cache/templateflow`` on Linux).

    Read without importing ``templateflow`` (whose import may set up the folder).
    """
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        try:
            from platformdirs import user_cache_dir
        except ImportError:  # templateflow depends on platformdirs; without it, its Linux default
            return Path.home() / ".cache" / "templateflow"
        home = user_cache_dir("templateflow")
    return Path(home).absolute()


def templateflow_get(template: str, **query: Any) -> Path | None:
    """``templateflow.api.get(template, **query)`` without its console output: one path, or None.

    TemplateFlow prints ``Downloading <url>`` and a progress bar on stderr, and an offline node
    turns that into a ``requests`` error carrying a urllib3 repr; callers say in one plain line
    what they do instead.  Raises whatever TemplateFlow raises (``OSError`` when offline).
    """
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        try:
            from templateflow import api

            found = api.get(template, **query)
        finally:
            LOGGER.debug("TemplateFlow output: %s", err.getvalue().strip())
    if isinstance(found, (list, tuple)):
        found = found[0] if len(found) == 1 else None
    return Path(found) if found else None


def _how_to_provide(xfm):
    home = templateflow_home()
    return (
        f"run 'deeplight-bids templates fetch' on a machine with internet and copy {home} here (set "
        f"TEMPLATEFLOW_HOME to it), or use the container image (it holds the file), or pass "
        "--allow-approximate-space to accept world-coordinate resampling"
    )


def _templateflow_get(xfm):
    """The file through ``templateflow.api.get`` (downloads into ``$TEMPLATEFLOW_HOME`` when online), or None."""
    return templateflow_get(xfm.template, **xfm.query)


def fetch_transform(xfm: TransformFile, download: bool = True) -> Path:
    """Local path of a TemplateFlow transform file, its checksum verified.

    Parameters
    ----------
    xfm : TransformFile
    download : bool
        Let TemplateFlow download the file when it is not under ``$TEMPLATEFLOW_HOME``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    SpaceTransformError
        Not available (offline, not cached) or checksum mismatch; one line naming the file
        and how to provide it.
    """
    # a pre-fetched file needs no templateflow call (no network probe)
    candidate = templateflow_home() / f"tpl-{xfm.template}" / xfm.filename
    # TemplateFlow's skeleton holds an empty placeholder for every file not yet downloaded
    path = candidate if candidate.is_file() and candidate.stat().st_size > 0 else None
    if path is None and download:
        try:
            path = _templateflow_get(xfm)
        except Exception as err:  # offline nodes raise requests' errors; any failure means "not available"
            LOGGER.debug("TemplateFlow could not provide %s: %s", xfm.filename, err)
            path = None
    if path is None or not path.is_file() or path.stat().st_size == 0:
        raise SpaceTransformError(
            f"TemplateFlow transform {xfm.templateflow_name} is not available (offline, "
            f"not in TEMPLATEFLOW_HOME); {_how_to_provide(xfm)}."
        )
    size = path.stat().st_size
    if size != xfm.size or _file_md5(path) != xfm.md5:
        raise SpaceTransformError(
            f"{path}: checksum mismatch for {xfm.templateflow_name} (expected {xfm.size} "
            f"bytes, MD5 {xfm.md5}); delete it and {_how_to_provide(xfm)}."
        )
    return path


class TemplateResampler:
    """Put images in a source template onto the reference grid through a transform.

    The transform is evaluated once, at the reference grid's voxel centres; for each source
    grid (affine, shape) the interpolation is then precomputed once as a sparse matrix
    (trilinear weights: 8 per output voxel) and applied to every volume and chunk of volumes
    as one sparse product; masks use the nearest source voxel.  BOLD data are smoothed (3 mm
    FWHM) right after, which makes trilinear and cubic interpolation indistinguishable
    downstream while trilinear is about 100x cheaper (``benchmarks/bench_space.py``).

    Parameters
    ----------
    transform : object
        Maps ``(n, 3)`` RAS mm points of the reference template (MNI152NLin6Asym) to the
        source template, with a ``map(points)`` method (e.g. a
        :class:`nitransforms.manip.TransformChain` read from an ITK/ANTs ``.h5``).
    provenance : dict or str
        What the sidecars record as ``SpaceTransform``.
    """

    def __init__(self, transform, provenance):
        self.transform = transform
        self.provenance = provenance
        self._source_points = None  # (n, 3) RAS mm in the source template, NaN where undefined
        self._linear = {}
        self._nearest = {}

    def source_points(self) -> np.ndarray:
        """``(91*109*91, 3)`` source-template RAS mm of the reference voxels (C order of the grid)."""
        if self._source_points is None:
            ijk = np.indices(REFERENCE_SHAPE, dtype=np.float32).reshape(3, -1).T
            ref = ijk @ REFERENCE_AFFINE[:3, :3].T.astype(np.float32) + REFERENCE_AFFINE[:3, 3].astype(np.float32)
            self._source_points = np.asarray(self.transform.map(ref), dtype=np.float64)
            self.transform = None  # the dense field (~0.6 GB in memory for TemplateFlow's) is not needed again
        return self._source_points

    def coordinates(self, affine: np.ndarray, shape: Sequence[int] | np.ndarray) -> np.ndarray:
        """Voxel coordinates ``(3, 91*109*91)`` of the reference voxels in an image with ``affine``/``shape``.

        Points where the transform is undefined (NaN: outside its field) are put far outside
        the image, so they read as 0.
        """
        inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
        vox = self.source_points() @ inv[:3, :3].T + inv[:3, 3]
        vox[~np.isfinite(vox)] = -1e6
        return vox.T

    @staticmethod
    def _key(affine, shape, order="C"):
        return tuple(np.round(np.asarray(affine, float), 6).ravel()), tuple(int(s) for s in shape[:3]), order

    @staticmethod
    def _flat_index(idx, shape, order):
        """Flat source index of voxel indices ``idx`` ``(3, n)``: C order (x slowest) or F order (x fastest)."""
        if order == "F":  # NIfTI files are stored, and read by nibabel, x fastest: no copy to flatten them
            return idx[0] + shape[0] * (idx[1] + shape[1] * idx[2])
        return (idx[0] * shape[1] + idx[1]) * shape[2] + idx[2]

    def linear_weights(
        self, affine: np.ndarray, shape: Sequence[int] | np.ndarray, order: str = "C"
    ) -> sparse.csr_matrix:
        """Sparse ``(91*109*91, prod(shape[:3]))`` trilinear interpolation matrix.

        Rows: reference voxels in C order; columns: source voxels in ``order`` ("C" or "F").
        """
        from scipy import sparse

        key = self._key(affine, shape, order)
        if key not in self._linear:
            shape = np.array(shape[:3])
            coords = self.coordinates(affine, shape)
            base = np.floor(coords)
            frac = (coords - base).astype(np.float32)
            base = base.astype(np.int64)
            n_out = coords.shape[1]
            rows, cols, vals = [], [], []
            for corner in np.ndindex(2, 2, 2):
                idx = base + np.array(corner)[:, None]
                weight = np.prod([frac[a] if corner[a] else 1 - frac[a] for a in range(3)], axis=0)
                ok = np.all((idx >= 0) & (idx < shape[:, None]), axis=0) & (weight > 0)
                flat = self._flat_index(idx, shape, order)
                rows.append(np.flatnonzero(ok))
                cols.append(flat[ok])
                vals.append(weight[ok])
            self._linear[key] = sparse.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(n_out, int(np.prod(shape))),
                dtype=np.float32,
            )
        return self._linear[key]

    def nearest_index(self, affine: np.ndarray, shape: Sequence[int] | np.ndarray, order: str = "C") -> np.ndarray:
        """Flat source index (``order`` "C" or "F") of the nearest voxel of each reference voxel (-1: outside)."""
        key = self._key(affine, shape, order)
        if key not in self._nearest:
            shape = np.array(shape[:3])
            idx = np.floor(self.coordinates(affine, shape) + 0.5).astype(np.int64)  # halves up, as scipy
            ok = np.all((idx >= 0) & (idx < shape[:, None]), axis=0)
            flat = self._flat_index(idx, shape, order)
            self._nearest[key] = np.where(ok, flat, -1)
        return self._nearest[key]

    def __call__(self, img, interpolation="continuous"):
        """``img`` (3D or 4D) on the reference grid.

        ``interpolation``: "nearest" (masks) or "continuous"/"linear" (trilinear).
        """
        import nibabel as nib

        data = np.asarray(img.dataobj, dtype=np.float32)
        n_vol = 1 if data.ndim == 3 else data.shape[3]
        # rows are source voxels, columns volumes; flattened in the order the array is stored (a view, not a copy:
        # chunks read from a NIfTI file are x-fastest, and a C-order flattening of them would be a strided copy)
        order = "F" if data.flags.f_contiguous and not data.flags.c_contiguous else "C"
        flat = data.reshape(-1, n_vol, order=order)
        if interpolation == "nearest":
            index = self.nearest_index(img.affine, img.shape, order)
            out = np.where((index >= 0)[:, None], flat[np.maximum(index, 0)], 0).astype(np.float32)
        else:
            out = np.asarray(self.linear_weights(img.affine, img.shape, order) @ flat, dtype=np.float32)
        out = out.reshape(*REFERENCE_SHAPE, n_vol)
        out = out[..., 0] if data.ndim == 3 else out
        result = nib.Nifti1Image(out, REFERENCE_AFFINE)
        result.set_qform(REFERENCE_AFFINE, code=4)
        return result


def load_transform(path: str | os.PathLike[str]) -> Any:
    """Read an ITK/ANTs composite ``.h5`` (affine and/or displacement field) with nitransforms."""
    from nitransforms.manip import TransformChain

    try:
        return TransformChain.from_filename(str(path), fmt="itk")
    except Exception as err:  # h5py/nitransforms raise several types for a broken file
        raise SpaceTransformError(
            f"{path}: cannot read the transform ({type(err).__name__}: {err}); delete it and "
            "fetch it again ('deeplight-bids templates fetch')."
        ) from None


class _SameWorld:
    """The identity transform: a point of the reference template is the same point of the source."""

    @staticmethod
    def map(points):
        return points


class ApproximateResampler(TemplateResampler):
    """World-coordinate resampling (``--allow-approximate-space``): treats the source as MNI152NLin6Asym.

    Each reference voxel is read at its own world (RAS mm) position in the source image, as
    :func:`nilearn.image.resample_img` would, but with the exact path's precomputed sparse
    weights (:class:`TemplateResampler` with the identity transform): built once per source
    grid, then one sparse product per chunk of volumes instead of nilearn's cubic spline one
    volume at a time (>= 5x faster for a 200-volume run, ``benchmarks/bench_approximate_space.py``).

    Interpolation: BOLD trilinear (nilearn's ``"continuous"``, used before, is a cubic B-spline;
    the two differ by the interpolation error of a trilinear vs a cubic-spline fit of the same
    voxels, which the 3 mm smoothing that follows makes small; ``tests/prepare/test_spaces.py``
    bounds it), masks nearest neighbour (as before).  Images already on the reference grid, or
    on it in another axis order, keep :func:`~deeplight_bids.prepare.grid.to_reference_grid`'s
    exact paths.
    """

    def __init__(self):
        super().__init__(_SameWorld(), "approximate")

    def __call__(self, img, interpolation="continuous"):
        if is_on_reference_grid(img) or _axis_permutation_to_reference(img) is not None:
            return to_reference_grid(img, interpolation=interpolation)
        return super().__call__(img, interpolation)


@dataclass
class SpacePlan:
    """How each source space of a job is brought onto the reference grid, decided before any compute.

    Attributes
    ----------
    allow_approximate : bool
    resolved : dict
        ``space -> (transform path or None, sha256 or None)`` for the spaces with a transform.
    """

    allow_approximate: bool = False
    resolved: dict = field(default_factory=dict)
    _transforms: dict = field(default_factory=dict)

    def prepare(self, spaces: Iterable[str], download: bool = True) -> None:
        """Fetch and verify the transform files the ``spaces`` need; raises :class:`SpaceTransformError`."""
        warned = False
        for space in sorted(set(spaces)):
            xfm = KNOWN_SPACES[space].transform
            if xfm is None or space in self.resolved:
                continue
            try:
                path = fetch_transform(xfm, download=download)
            except SpaceTransformError as err:
                if not self.allow_approximate:
                    raise
                if not warned:  # once per job, however many runs and spaces
                    LOGGER.warning(
                        "--allow-approximate-space: resampling %s in world coordinates as if it were %s "
                        "(approximate; recorded as SpaceTransform 'approximate'), because: %s",
                        space,
                        REFERENCE_SPACE,
                        err,
                    )
                    warned = True
                self.resolved[space] = (None, None)
                continue
            self.resolved[space] = (path, sha256sum(path))

    def resampler_for(self, space: str) -> tuple[Callable[..., Any], dict[str, Any] | str | None]:
        """``(to_grid callable, SpaceTransform provenance)`` for a run whose BOLD is in ``space``."""
        xfm = KNOWN_SPACES[space].transform
        if xfm is None:
            return to_reference_grid, None
        if space not in self.resolved:
            self.prepare([space])
        path, sha = self.resolved[space]
        if path is None:
            # one per job, shared by every space and run: its weights are built once per source grid
            if "approximate" not in self._transforms:
                self._transforms["approximate"] = ApproximateResampler()
            return self._transforms["approximate"], "approximate"
        provenance = {"Name": xfm.templateflow_name, "Sha256": sha}
        # one resampler per space: the transform is evaluated on the reference grid once per job,
        # and the voxel coordinates once per source grid (affine, shape), shared by BOLD and mask
        if space not in self._transforms:
            self._transforms[space] = TemplateResampler(load_transform(path), provenance)
        return self._transforms[space], provenance

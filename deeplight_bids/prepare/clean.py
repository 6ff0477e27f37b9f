"""Preprocessing of one run as used to train the published weights (reference section 2).

For one BOLD run and its brain mask, both brought onto the reference grid
(:mod:`deeplight_bids.prepare.grid`; the mask with nearest-neighbour interpolation):

1. masking with spatial smoothing (FWHM in mm, default 3 mm):
   :func:`nilearn.masking.apply_mask` ``(..., smoothing_fwhm=fwhm, ensure_finite=True)``;
2. per voxel over time, :func:`nilearn.signal.clean` with ``detrend=True``, a
   Butterworth high-pass (default 1/128 Hz, TR-aware) and ``standardize=None``;
3. a z-score per voxel with the *population* SD (``ddof=0``), as the original's old
   nilearn ``standardize=True`` did (nilearn 0.14 only offers ``"zscore_sample"``);
4. voxels whose cleaned signal is flat (SD <= :data:`FLAT_TOLERANCE` x the voxel's
   magnitude, e.g. constant voxels) are 0; voxels outside the mask are 0; NaN and
   +-inf in the input become 0 (nilearn ``ensure_finite``; the original mapped +-inf to
   1e4 — we do not, since infinities in a preprocessed BOLD file are corrupt data).

Memory stays bounded: the BOLD series is read, resampled and masked in chunks of
:data:`VOLUME_CHUNK` volumes (smoothing is per volume, so chunking does not change the
result) and cleaned in chunks of :data:`VOXEL_CHUNK` voxels (cleaning is per voxel).
Only the masked 2D array ``(n_volumes, n_mask_voxels)`` is kept; full volumes are
rebuilt in batches by :meth:`PreparedRun.volumes`.
"""

from __future__ import annotations

import logging
import math
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from deeplight_bids.exceptions import ImageError, MetadataError, UsageError
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE, is_on_reference_grid, to_reference_grid
from deeplight_bids.prepare.labels import check_t_r

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from nibabel.spatialimages import SpatialImage

__all__ = ["FLAT_TOLERANCE", "MAX_EMPTY_MASK_FRACTION", "MIN_VOLUMES", "PreparedRun", "min_volumes", "prepare_run"]

#: Fewest volumes a run may have without high-pass filtering (detrend + z-score).
MIN_VOLUMES = 3
#: Butterworth order used by nilearn.signal.clean (its default).
_BUTTERWORTH_ORDER = 5
#: Volumes read, resampled and smoothed at once (32 x 902,629 float32 ~ 115 MB).
VOLUME_CHUNK = 32
#: Voxels cleaned at once.
VOXEL_CHUNK = 16384
#: ``nilearn.signal.clean`` settings besides the run's high-pass and TR: linear detrend, no
#: standardisation there (z-scoring follows, ddof 0), non-finite values set to 0, and
#: ``butterworth__copy=True``: filter all columns in one vectorised sosfiltfilt (nilearn's
#: default loops over voxels in Python: ~100x slower, same result).
_CLEAN_SETTINGS = {"detrend": True, "standardize": None, "ensure_finite": True, "butterworth__copy": True}
#: A voxel whose cleaned SD is at most this fraction of its magnitude counts as flat (-> 0).
FLAT_TOLERANCE = 1e-6

#: Refuse a run whose BOLD is 0 (all first volumes) in more than this fraction of the mask.
MAX_EMPTY_MASK_FRACTION = 0.5

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)

LOGGER = logging.getLogger("deeplight_bids")


@dataclass
class PreparedRun:
    """One preprocessed run, kept masked to bound memory.

    Attributes
    ----------
    signals : numpy.ndarray, shape (n_volumes, n_mask_voxels), float32
        Cleaned, z-scored time series of the voxels inside :attr:`mask`, in the
        C order of ``mask`` (x slowest, z fastest).
    mask : numpy.ndarray, shape (91, 109, 91), bool
        Brain mask on the reference grid, array order (x, y, z), x stored
        right-to-left (affine :data:`deeplight_bids.prepare.grid.REFERENCE_AFFINE`).
    t_r : float
        Repetition time in seconds.
    source : str or None
        The BOLD file (or a caller-given name), for messages.
    """

    signals: np.ndarray
    mask: np.ndarray
    t_r: float
    source: str | None = field(default=None)

    def __post_init__(self):
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.shape != REFERENCE_SHAPE:
            raise ValueError(f"mask must have the reference shape {REFERENCE_SHAPE}, got {self.mask.shape}.")
        if self.signals.ndim != 2 or self.signals.shape[1] != int(self.mask.sum()):
            raise ValueError(
                f"signals must be (n_volumes, {int(self.mask.sum())} mask voxels), got {self.signals.shape}."
            )

    @property
    def n_volumes(self) -> int:
        """Number of volumes (time points) in the run."""
        return int(self.signals.shape[0])

    @property
    def affine(self) -> np.ndarray:
        """The reference affine (4, 4) of :meth:`volumes`, in mm."""
        return REFERENCE_AFFINE.copy()

    def volumes(self, start: int, stop: int) -> np.ndarray:
        """Full volumes ``start..stop-1`` on the reference grid.

        Parameters
        ----------
        start, stop : int
            ``0 <= start <= stop <= n_volumes``; a batch, so memory stays bounded
            (one volume is 3.6 MB).

        Returns
        -------
        numpy.ndarray, shape (stop - start, 91, 109, 91), float32
            Array order (x, y, z) per volume, 0 outside the mask.
        """
        for name, value in (("start", start), ("stop", stop)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {value!r}.")
        if not 0 <= start <= stop <= self.n_volumes:
            raise IndexError(f"need 0 <= start <= stop <= {self.n_volumes}, got start={start}, stop={stop}.")
        out = np.zeros((stop - start,) + REFERENCE_SHAPE, dtype=np.float32)
        out[:, self.mask] = self.signals[start:stop]
        return out


def min_volumes(t_r: float, high_pass: float | None) -> int:
    """Fewest volumes :func:`prepare_run` accepts.

    Parameters
    ----------
    t_r : float
        Repetition time in seconds.
    high_pass : float or None
        High-pass cutoff in Hz; None means no filter.

    Returns
    -------
    int
        :data:`MIN_VOLUMES` without a filter; with one, one more than the padding
        :func:`scipy.signal.sosfiltfilt` needs for nilearn's order-5 Butterworth.
    """
    if high_pass is None:
        return MIN_VOLUMES
    from scipy import signal as sp_signal

    sos = sp_signal.butter(N=_BUTTERWORTH_ORDER, Wn=high_pass, btype="high", output="sos", fs=1.0 / t_r)
    padlen = 3 * (2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum())))
    return max(MIN_VOLUMES, padlen + 1)


def prepare_run(
    bold_img: str | os.PathLike[str] | SpatialImage,
    mask_img: str | os.PathLike[str] | SpatialImage,
    t_r: float,
    smoothing_fwhm: float | None = 3.0,
    high_pass: float | None = 1 / 128,
    source: str | None = None,
    to_grid: Callable[..., Any] | None = None,
    n_threads: int = 1,
) -> PreparedRun:
    """Mask, smooth, detrend, high-pass and z-score one run on the reference grid.

    Parameters
    ----------
    bold_img : str, pathlib.Path or nibabel.Nifti1Image
        4D BOLD series ``(x, y, z, n_volumes)``, e.g. an fMRIPrep
        ``*_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz``.  Any grid:
        it is brought onto the reference grid without mirroring.
    mask_img : str, pathlib.Path or nibabel.Nifti1Image
        3D brain mask of the run (non-zero = brain), e.g. ``*_desc-brain_mask.nii.gz``
        or HCP ``brainmask_fs.2.nii.gz``; resampled with nearest neighbour.
    t_r : float
        Repetition time in seconds (BIDS ``RepetitionTime``).
    smoothing_fwhm : float or None, default=3.0
        Gaussian smoothing FWHM in mm; None or 0 for none.
    high_pass : float or None, default=1/128
        High-pass cutoff in Hz (Butterworth, as nilearn.signal.clean); None for none.
    source : str or None
        Name used in messages when images are passed as objects (default: the file).
    to_grid : callable or None
        ``to_grid(img, interpolation)`` -> the image on the reference grid; default
        :func:`deeplight_bids.prepare.grid.to_reference_grid` (MNI152NLin6Asym input).  For
        another template, :meth:`deeplight_bids.prepare.spaces.SpacePlan.resampler_for`.
    n_threads : int, default=1
        Threads for the per-voxel cleaning (``--nprocs``); the result does not depend on it.

    Returns
    -------
    PreparedRun
        ``signals`` (n_volumes, n_mask_voxels) float32 with mean 0 and SD 1
        (``ddof=0``) per voxel (flat voxels 0), and the mask on the reference grid.

    Raises
    ------
    deeplight_bids.exceptions.ImageError
        Unreadable/truncated file, a BOLD that is not 4D, a mask that is not 3D or is
        empty, too few volumes (see :func:`min_volumes`), or a BOLD that is 0 in more
        than half of the mask (mask and BOLD in different spaces).
    deeplight_bids.exceptions.MetadataError
        ``t_r`` not a positive finite number of seconds.
    deeplight_bids.exceptions.UsageError
        ``smoothing_fwhm`` negative, or ``high_pass`` not below the Nyquist frequency.
    """
    bold, bold_name = _load(bold_img, source)
    mask, mask_name = _load(mask_img, None)
    t_r = _check_t_r(t_r, bold_name)
    smoothing_fwhm = _check_fwhm(smoothing_fwhm)
    high_pass = _check_high_pass(high_pass, t_r, bold_name)

    if bold.ndim != 4:
        raise ImageError(
            f"{bold_name}: expected a 4D BOLD series (x, y, z, time), got a {bold.ndim}D image "
            f"of shape {tuple(bold.shape)}; pass the run's *_bold.nii.gz."
        )
    n_volumes = int(bold.shape[3])
    needed = min_volumes(t_r, high_pass)
    if n_volumes < needed:
        why = f" (high-pass filtering at {high_pass:.4g} Hz needs more than {needed - 1})" if high_pass else ""
        raise ImageError(
            f"{bold_name}: {n_volumes} volume(s) are too few, need at least {needed}{why}; "
            "use a longer run" + (" or no high-pass filter." if high_pass else ".")
        )
    raw, mask_bool = _masked_signals(bold, bold_name, mask, mask_name, smoothing_fwhm, to_grid)
    _clean_in_place(raw, t_r, high_pass, n_threads=n_threads)
    return PreparedRun(signals=raw, mask=mask_bool, t_r=t_r, source=bold_name)


def masked_signals(
    bold_img: str | os.PathLike[str] | SpatialImage,
    mask_img: str | os.PathLike[str] | SpatialImage,
    smoothing_fwhm: float | None = 3.0,
    source: str | None = None,
    to_grid: Callable[..., Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 of :func:`prepare_run` alone: the in-mask, smoothed BOLD on the reference grid, not cleaned.

    The first-level GLM (:mod:`deeplight_bids.glm`) reads a run through this function, so it
    sees the decoder's resampling, mask and smoothing, and models the drifts itself.

    Parameters
    ----------
    bold_img, mask_img, smoothing_fwhm, source, to_grid
        As for :func:`prepare_run`.

    Returns
    -------
    signals : numpy.ndarray, shape (n_volumes, n_mask_voxels), float32
        The BOLD values (smoothed, not detrended or scaled) of the voxels inside ``mask``,
        in its C order.
    mask : numpy.ndarray, shape (91, 109, 91), bool
        The brain mask on the reference grid, array order (x, y, z).

    Raises
    ------
    deeplight_bids.exceptions.ImageError
        As :func:`prepare_run` (unreadable files, wrong dimensions, empty mask, BOLD and
        mask in different spaces).
    """
    bold, bold_name = _load(bold_img, source)
    mask, mask_name = _load(mask_img, None)
    smoothing_fwhm = _check_fwhm(smoothing_fwhm)
    if bold.ndim != 4:
        raise ImageError(
            f"{bold_name}: expected a 4D BOLD series (x, y, z, time), got a {bold.ndim}D image "
            f"of shape {tuple(bold.shape)}; pass the run's *_bold.nii.gz."
        )
    return _masked_signals(bold, bold_name, mask, mask_name, smoothing_fwhm, to_grid)


def _masked_signals(bold, bold_name, mask, mask_name, smoothing_fwhm, to_grid):
    """Resample, mask and smooth in chunks of :data:`VOLUME_CHUNK` volumes; ``(signals, mask)``."""
    n_volumes = int(bold.shape[3])
    to_grid = to_grid or to_reference_grid
    mask_on_grid = _mask_on_reference_grid(mask, mask_name, to_grid)
    mask_bool = mask_on_grid.get_fdata(dtype=np.float32) > 0
    if not mask_bool.any():
        raise ImageError(
            f"{mask_name}: the brain mask is empty on the MNI152NLin6Asym reference grid (empty mask, "
            "or an image in native space); pass the run's brain mask in template space."
        )
    mask_on_grid = nib.Nifti1Image(mask_bool.astype(np.uint8), REFERENCE_AFFINE)

    raw = np.empty((n_volumes, int(mask_bool.sum())), dtype=np.float32)
    reader = _ChunkReader(bold, bold_name, to_grid)
    for start in range(0, n_volumes, VOLUME_CHUNK):
        stop = min(start + VOLUME_CHUNK, n_volumes)
        chunk = reader.read(start, stop)
        if not is_on_reference_grid(chunk) or not is_on_reference_grid(mask_on_grid):
            raise ImageError(
                f"{bold_name}: BOLD and mask are not on the same grid after resampling; check both headers."
            )
        raw[start:stop] = _apply_mask(chunk, mask_on_grid, smoothing_fwhm)
        del chunk
        if start == 0:
            _check_overlap(raw[:stop], bold_name, mask_name, reader.nonfinite)

    if reader.nonfinite:
        LOGGER.warning(
            "%s: %d NaN/inf voxel value(s) set to 0; check the preprocessing if the decoding looks off.",
            bold_name,
            reader.nonfinite,
        )
    return raw, mask_bool


def _check_overlap(first_volumes, bold_name, mask_name, nonfinite=0):
    """Refuse a BOLD that is 0 in most of the mask (mask and BOLD in different spaces, or NaN/inf data)."""
    empty = float(np.mean(~first_volumes.any(axis=0)))
    if empty > MAX_EMPTY_MASK_FRACTION and nonfinite:
        raise ImageError(
            f"{bold_name}: the BOLD is NaN/inf or 0 in {100 * empty:.0f}% of the brain mask ({nonfinite} NaN/inf "
            "values in the first volumes); re-run the preprocessing of this run."
        )
    if empty > MAX_EMPTY_MASK_FRACTION:
        raise ImageError(
            f"{bold_name}: the BOLD is 0 in {100 * empty:.0f}% of the brain mask {mask_name}; "
            "are the BOLD and the mask in the same space? Pass the run's own mask."
        )


def _load(img, source):
    """Path or image -> (nibabel image, name for messages)."""
    if isinstance(img, (str, Path)):
        name = source or str(img)
        path = Path(img)
        if not path.is_file():
            raise ImageError(f"{name}: file not found; check the path.")
        try:
            loaded = nib.load(path, keep_file_open=True)
        except _READ_ERRORS as exc:
            raise ImageError(
                f"{name}: not a readable NIfTI image ({_short(exc)}); re-create or re-download the file."
            ) from None
        if not isinstance(loaded, nib.Nifti1Image | nib.Nifti2Image):
            raise ImageError(f"{name}: expected a NIfTI image, got {type(loaded).__name__}.")
        return loaded, name
    if isinstance(img, nib.spatialimages.SpatialImage):
        filename = img.get_filename() if hasattr(img, "get_filename") else None
        return img, source or filename or "image"
    raise TypeError(f"expected a NIfTI path or nibabel image, got {type(img).__name__}.")


def _short(exc):
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _check_t_r(t_r, name):
    """:func:`~deeplight_bids.prepare.labels.check_t_r`, failing with the BOLD file's name and the fix."""
    try:
        return check_t_r(t_r)
    except ValueError:
        raise MetadataError(
            f"{name}: RepetitionTime must be a positive number of seconds, got {t_r!r}; "
            "fix RepetitionTime in the BOLD JSON sidecar."
        ) from None


def _number(value):
    """``float(value)``, or NaN when it is no number (the checks below then refuse it)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_fwhm(fwhm):
    if fwhm is None:
        return None
    value = _number(fwhm)
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"smoothing FWHM must be a non-negative number of mm, got {fwhm!r}.")
    return value or None


def _check_high_pass(high_pass, t_r, name):
    if high_pass is None:
        return None
    value = _number(high_pass)
    nyquist = 0.5 / t_r
    if not math.isfinite(value) or value <= 0 or value >= nyquist:
        raise UsageError(
            f"{name}: high-pass cutoff must be in (0, {nyquist:.4g}) Hz (Nyquist for TR {t_r:g} s), "
            f"got {high_pass!r}; use e.g. 1/128 or none."
        )
    return value


def _mask_on_reference_grid(mask, name, to_grid=to_reference_grid):
    if mask.ndim == 4 and mask.shape[3] == 1:
        mask = nib.Nifti1Image(np.asanyarray(mask.dataobj)[..., 0], mask.affine)
    if mask.ndim != 3:
        raise ImageError(
            f"{name}: expected a 3D brain mask, got a {mask.ndim}D image of shape {tuple(mask.shape)}; "
            "pass the run's *_desc-brain_mask.nii.gz."
        )
    try:
        data = np.asanyarray(mask.dataobj)
    except _READ_ERRORS as exc:
        raise ImageError(
            f"{name}: cannot read the mask data ({_short(exc)}); re-create or re-download the file."
        ) from None
    data = np.nan_to_num(data.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    binary = nib.Nifti1Image((data > 0).astype(np.uint8), mask.affine)
    return to_grid(binary, interpolation="nearest")


class _ChunkReader:
    """Read volumes of a 4D image as float32 images on the reference grid.

    For an image read from disk, the stored values are read unscaled and scaled in
    float32 (nibabel scales in float64: ~4x slower, and the difference is float32
    rounding); in-memory images are sliced as they are.
    """

    def __init__(self, img, name, to_grid=to_reference_grid):
        self.img = img
        self.to_grid = to_grid
        self.name = name
        self.nonfinite = 0  # NaN/inf values read so far (set to 0 by the masking)
        self.unscaled = None
        proxy = img.dataobj
        if isinstance(proxy, nib.arrayproxy.ArrayProxy):
            self.slope = np.float32(proxy.slope)
            self.inter = np.float32(proxy.inter)
            spec = (proxy.shape, proxy.dtype, proxy.offset, 1.0, 0.0)
            self.unscaled = nib.arrayproxy.ArrayProxy(proxy.file_like, spec, order=proxy.order, keep_file_open=True)

    def read(self, start, stop):
        try:
            if self.unscaled is not None:
                data = np.asarray(self.unscaled[..., start:stop]).astype(np.float32)
                if self.slope != 1:
                    data *= self.slope
                if self.inter != 0:
                    data += self.inter
            else:
                data = np.asarray(self.img.dataobj[..., start:stop], dtype=np.float32)
        except _READ_ERRORS as exc:
            raise ImageError(
                f"{self.name}: cannot read volumes {start}-{stop - 1} (file truncated or corrupt: {_short(exc)}); "
                "re-create or re-download the file."
            ) from None
        self.nonfinite += int(data.size - np.count_nonzero(np.isfinite(data)))
        chunk = nib.Nifti1Image(data, self.img.affine)
        return self.to_grid(chunk, interpolation="continuous")


def _apply_mask(chunk, mask_img, smoothing_fwhm):
    from nilearn.masking import apply_mask

    return apply_mask(chunk, mask_img, smoothing_fwhm=smoothing_fwhm, ensure_finite=True)


def _clean_in_place(signals, t_r, high_pass, n_threads=1):
    """Detrend, high-pass and z-score (ddof=0) each column of ``signals`` in place.

    Columns are cleaned in blocks of :data:`VOXEL_CHUNK`; with ``n_threads`` > 1 the blocks go to a
    thread pool (numpy and scipy's filters release the GIL).  Each block writes only its own
    columns, so the result is bit-identical for any number of threads.
    """
    from nilearn.signal import clean

    def one_block(start):
        block = signals[:, start : start + VOXEL_CHUNK].astype(np.float64)
        block[~np.isfinite(block)] = 0.0
        scale = np.abs(block).max(axis=0)
        cleaned = clean(block, high_pass=high_pass, t_r=t_r, **_CLEAN_SETTINGS)
        cleaned = np.asarray(cleaned, dtype=np.float64)
        cleaned -= cleaned.mean(axis=0)
        sd = cleaned.std(axis=0)  # ddof=0: population SD, as the original
        flat = ~(sd > FLAT_TOLERANCE * scale) | ~np.isfinite(sd)
        sd[flat] = 1.0
        cleaned /= sd
        cleaned[:, flat] = 0.0
        signals[:, start : start + VOXEL_CHUNK] = np.nan_to_num(cleaned, nan=0.0, posinf=0.0, neginf=0.0)

    starts = range(0, signals.shape[1], VOXEL_CHUNK)
    if n_threads <= 1 or len(starts) < 2:
        for start in starts:
            one_block(start)
        return
    with ThreadPoolExecutor(max_workers=min(int(n_threads), len(starts))) as pool:
        for _ in pool.map(one_block, starts):  # re-raises a block's error here
            pass

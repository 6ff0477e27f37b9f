"""Relevance maps inside the brain: masking and the record of what fell outside the mask.

LRP's flat rule on the first convolution (3D-DeepLight, preset B-flat) spreads relevance
evenly over every voxel of a unit's receptive field, so a map is non-zero a few voxels
beyond the brain mask.  The per-volume maps, the per-state means and everything made from
them are written masked to the run's brain mask (exact zeros outside, which gzip stores in
almost no space), and the fraction of the absolute relevance that was cut off is recorded
per run in the relevance sidecar, so that nothing is hidden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.derivatives.volume_gzip import RELEVANCE_KEEPBITS, round_mantissa

if TYPE_CHECKING:
    import numpy.typing as npt


class RelevanceMasker:
    """Zero the relevance outside a brain mask and tally the share that was outside.

    Parameters
    ----------
    mask : numpy.ndarray, shape (x, y, z), bool
        The run's brain mask on the reference grid (``PreparedRun.mask``).
    keepbits : int or None
        Mantissa bits kept (:func:`round_mantissa`); None: :data:`RELEVANCE_KEEPBITS`.
        The maps are rounded once, here, so that every output made from them (per-volume
        and block files, per-state means, maps made again from the work folder) agrees.

    Attributes
    ----------
    outside_fractions : list of float
        Per volume seen so far: ``sum |R| outside the mask / sum |R|`` (0 for an all-zero map).
    """

    def __init__(self, mask: npt.ArrayLike, keepbits: int | None = None):
        self.mask = np.asarray(mask, dtype=bool)
        self.keepbits = RELEVANCE_KEEPBITS if keepbits is None else int(keepbits)
        self.outside_fractions: list[float] = []

    def apply(self, volumes: npt.ArrayLike) -> np.ndarray:
        """Masked copies of ``volumes``; the outside fractions are recorded.

        Parameters
        ----------
        volumes : numpy.ndarray, shape (n, x, y, z)
            Relevance maps in NIfTI array order (any memory layout, e.g. the transposed
            view of model-order maps).

        Returns
        -------
        numpy.ndarray, shape (n, x, y, z), float32
            ``volumes`` with exact zeros outside the mask, rounded to ``keepbits`` mantissa
            bits, in the memory layout of ``volumes`` (a transposed view gives
            Fortran-ordered volumes).
        """
        volumes = np.asarray(volumes)
        if volumes.shape[1:] != self.mask.shape:
            raise ValueError(f"expected volumes (n, {', '.join(map(str, self.mask.shape))}), got {volumes.shape}")
        magnitude = np.abs(volumes)
        total = magnitude.sum(axis=(1, 2, 3), dtype=np.float64)
        inside = np.where(self.mask, magnitude, 0).sum(axis=(1, 2, 3), dtype=np.float64)
        fractions = np.divide(total - inside, total, out=np.zeros_like(total), where=total > 0)
        self.outside_fractions.extend(float(f) for f in np.clip(fractions, 0.0, 1.0))
        out = volumes.astype(np.float32, order="K", copy=True)  # "K": a transposed view stays Fortran per volume
        np.copyto(out, np.float32(0), where=~self.mask)  # +0.0, not -0.0 as a multiplication would leave
        return round_mantissa(out, self.keepbits)

    def sidecar(self) -> dict[str, Any]:
        """Sidecar entries: the mask rule and the outside fraction's median and max over the run's volumes."""
        fractions = np.asarray(self.outside_fractions, dtype=np.float64)
        return {
            "RelevanceMask": (
                "the run's brain mask on the reference grid (nearest neighbour); relevance outside it "
                "is set to 0 in this map and in every map made from it"
            ),
            "RelevanceOutsideMaskFraction": {
                "Description": "per volume, sum of |relevance| outside the brain mask / sum of |relevance| "
                "(before masking); median and maximum over the run's volumes",
                "Median": float(np.median(fractions)) if fractions.size else None,
                "Max": float(fractions.max()) if fractions.size else None,
                "NumberOfVolumes": int(fractions.size),
            },
        }

"""Cheap header checks of a run's inputs that warn but do not stop it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from deeplight_bids.bids.discover import Run

LOGGER = logging.getLogger("deeplight_bids")


def check_headers(run: Run, log: logging.Logger = LOGGER) -> None:
    """Warn about header inconsistencies that do not stop a run (header reads only; cheap).

    * ``RepetitionTime`` (sidecar) vs the NIfTI ``pixdim[4]``: BIDS makes the sidecar
      authoritative, so it is used; a header value that is set (> 0) and differs by more
      than 1% is reported, as labels depend on the TR.
    * A mask on another grid than the BOLD: both are resampled onto the reference grid
      in world coordinates, which is correct when both headers are; a mask from another
      space is caught later (BOLD 0 in most of the mask).
    """
    import nibabel as nib

    # NIfTI images (nibabel types load() as any image); a run to process has its BOLD, mask and TR
    bold: Any
    mask: Any
    try:
        bold = nib.load(run.bold_file)
        mask = nib.load(run.mask_file)
    except Exception:  # unreadable files get their one-line error from prepare_run
        return
    if len(bold.shape) == 4:
        zoom = float(bold.header.get_zooms()[3])
        unit = bold.header.get_xyzt_units()[1]
        header_tr = zoom / 1000.0 if unit == "msec" else zoom / 1e6 if unit == "usec" else zoom
        if header_tr > 0 and abs(header_tr - run.t_r) > 0.01 * run.t_r:  # type: ignore[operator]
            log.warning(
                "%s: RepetitionTime %g s in the sidecar JSON differs from the NIfTI header (pixdim[4] = %g "
                "s); the sidecar is used (BIDS) - fix whichever is wrong.",
                run.bold,
                run.t_r,
                header_tr,
            )
    if tuple(mask.shape[:3]) != tuple(bold.shape[:3]) or not np.allclose(mask.affine, bold.affine, atol=1e-3):
        log.warning(
            "%s: brain mask grid %s differs from the BOLD grid %s (%s); both are resampled onto the "
            "reference grid - check that the mask belongs to this run.",
            run.mask,
            tuple(mask.shape[:3]),
            tuple(bold.shape[:3]),
            run.bold,
        )

"""The MNI152 2 mm reference grid, and L/R-safe resampling onto it (reference section 1).

The grid is that of HCP ``MNINonLinear`` data and TemplateFlow ``MNI152NLin6Asym``
``res-2``: shape ``(91, 109, 91)``, x stored right-to-left ("LAS").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from deeplight_bids.exceptions import ImageError

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

REFERENCE_SHAPE = (91, 109, 91)
REFERENCE_AFFINE = np.array(
    [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
#: Space of the reference grid in BIDS terms.
REFERENCE_SPACE = "MNI152NLin6Asym"
REFERENCE_RES = "2"

_ATOL = 1e-3  # mm: header round-off tolerated when comparing affines


def is_on_reference_grid(img: SpatialImage) -> bool:
    """True when ``img`` has the reference shape (first 3 axes) and affine."""
    return tuple(img.shape[:3]) == REFERENCE_SHAPE and np.allclose(img.affine, REFERENCE_AFFINE, atol=_ATOL)


def _axis_permutation_to_reference(img):
    """Exact voxel re-ordering that maps ``img`` onto the reference grid, or None.

    Same voxels, other storage order (e.g. the reference stored RAS): each output
    axis is an input axis, possibly reversed.  Returns ``(ornt_transform)`` for
    :func:`nibabel.orientations.apply_orientation` or None if no exact mapping exists.
    """
    src_ornt = nib.orientations.io_orientation(img.affine)
    ref_ornt = nib.orientations.io_orientation(REFERENCE_AFFINE)
    transform = nib.orientations.ornt_transform(src_ornt, ref_ornt)
    shape = np.array(img.shape[:3])
    new_shape = tuple(int(s) for s in shape[transform[:, 0].astype(int)])
    if new_shape != REFERENCE_SHAPE:
        return None
    new_affine = img.affine @ nib.orientations.inv_ornt_aff(transform, img.shape[:3])
    if not np.allclose(new_affine, REFERENCE_AFFINE, atol=_ATOL):
        return None
    return transform


def to_reference_grid(img: SpatialImage, interpolation: str = "continuous") -> SpatialImage:
    """Return ``img`` on the reference grid, never mirrored.

    * already on the grid: returned unchanged (no copy, no interpolation);
    * the same voxels stored in another axis order/direction (e.g. RAS): the data
      array is re-ordered exactly, so the result is bit-identical to the LAS file;
    * anything else (other template, other resolution, native space): resampled by
      :func:`nilearn.image.resample_img` in world coordinates, which keeps left left.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D or 4D image; 4D means ``(x, y, z, n_volumes)``.
    interpolation : {"continuous", "linear", "nearest"}
        Used only when real resampling is needed; use ``"nearest"`` for masks.

    Returns
    -------
    nibabel.Nifti1Image
        Image with shape ``(91, 109, 91[, n_volumes])`` and the reference affine.
    """
    if img.ndim not in (3, 4):
        raise ImageError(f"{_name(img)}: expected a 3D or 4D image, got {img.ndim}D.")
    if is_on_reference_grid(img):
        return img
    transform = _axis_permutation_to_reference(img)
    if transform is not None:
        data = np.asanyarray(img.dataobj)
        data = nib.orientations.apply_orientation(data, transform)
        out = nib.Nifti1Image(np.ascontiguousarray(data), REFERENCE_AFFINE, img.header)
        out.set_sform(REFERENCE_AFFINE, code=4)
        out.set_qform(REFERENCE_AFFINE, code=4)
        return out
    from nilearn.image import resample_img

    return resample_img(
        img,
        target_affine=REFERENCE_AFFINE,
        target_shape=REFERENCE_SHAPE,
        interpolation=interpolation,
        force_resample=True,
        copy_header=True,
    )


def _name(img):
    return getattr(img, "get_filename", lambda: None)() or "image"

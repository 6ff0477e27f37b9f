"""Template images for the group level: MNI152NLin6Asym res-2 T1w and brain mask.

The relevance maps live on the FSL/HCP MNI152 2 mm grid, which is TemplateFlow's
``MNI152NLin6Asym`` at ``res-2``; the figures use its T1w as background and the group
maps are restricted to its brain mask.  TemplateFlow downloads the files on first use
into ``$TEMPLATEFLOW_HOME``.  On an offline node (no cached copy, no network) the
download fails: we fall back to nilearn's bundled MNI152 template (2009 symmetric, a
close but not identical brain) resampled onto the reference grid, and say so with a
warning, in the group-map sidecars and in the report.

Note: ``templateflow`` reads ``TEMPLATEFLOW_HOME`` when it is first imported, so the
variable must be set before anything imports it.
"""

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplight_bids.exceptions import LoggedWarning

LOGGER = logging.getLogger("deeplight_bids")

TEMPLATE = "MNI152NLin6Asym"
RESOLUTION = 2
#: The TemplateFlow queries (``templateflow.api.get`` keyword arguments) of the two images.
QUERIES = {
    "t1w": {"resolution": RESOLUTION, "desc": None, "suffix": "T1w", "extension": ".nii.gz"},
    "mask": {"resolution": RESOLUTION, "desc": "brain", "suffix": "mask", "extension": ".nii.gz"},
}
#: File names TemplateFlow stores them under (relative to ``$TEMPLATEFLOW_HOME``).
FILE_NAMES = {
    "t1w": f"tpl-{TEMPLATE}/tpl-{TEMPLATE}_res-0{RESOLUTION}_T1w.nii.gz",
    "mask": f"tpl-{TEMPLATE}/tpl-{TEMPLATE}_res-0{RESOLUTION}_desc-brain_mask.nii.gz",
}


class TemplateFallbackWarning(LoggedWarning):
    """TemplateFlow was unavailable; nilearn's bundled MNI152 template is used instead."""


@dataclass
class Templates:
    """Background and brain mask on the reference grid.

    Attributes
    ----------
    t1w : nibabel.Nifti1Image
        float32 T1w image, shape ``(91, 109, 91)``, reference affine.
    mask : nibabel.Nifti1Image
        uint8 brain mask (0/1), same grid.
    source : {"templateflow", "nilearn"}
    description : str
        Human-readable origin, used in sidecars and the report.
    files : dict
        ``{"t1w": path, "mask": path}`` of the TemplateFlow files (empty for the fallback).
    """

    t1w: object
    mask: object
    source: str
    description: str
    files: dict = field(default_factory=dict)

    def provenance(self):
        out = {"Source": self.source, "Description": self.description, "Template": TEMPLATE, "Resolution": RESOLUTION}
        if self.files:
            out["Files"] = {k: str(v) for k, v in self.files.items()}
        return out


def _templateflow_files():
    """Paths of the two TemplateFlow files; raises on any failure (offline, not installed, ...)."""
    from templateflow import api

    files = {}
    for key, query in QUERIES.items():
        found = api.get(TEMPLATE, **query)
        if isinstance(found, (list, tuple)):
            if len(found) != 1:
                raise FileNotFoundError(f"TemplateFlow returned {len(found)} files for {TEMPLATE} {query}")
            found = found[0]
        path = Path(found)
        if not path.is_file() or path.stat().st_size == 0:
            raise FileNotFoundError(f"{path}: missing or empty")
        files[key] = path
    return files


def _on_grid(img, interpolation):
    from deeplight_bids.prepare.grid import to_reference_grid

    return to_reference_grid(img, interpolation=interpolation)


def _finish(t1w_img, mask_img):
    import nibabel as nib

    from deeplight_bids.prepare.grid import REFERENCE_AFFINE

    t1w = _on_grid(t1w_img, "continuous")
    mask = _on_grid(mask_img, "nearest")
    t1w = nib.Nifti1Image(np.asarray(t1w.dataobj, dtype=np.float32), REFERENCE_AFFINE)
    mask = nib.Nifti1Image((np.asarray(mask.dataobj) > 0.5).astype(np.uint8), REFERENCE_AFFINE)
    return t1w, mask


def load_templates(allow_fallback=True):
    """T1w and brain mask of MNI152NLin6Asym res-2, from TemplateFlow or the nilearn fallback.

    Parameters
    ----------
    allow_fallback : bool
        If False, a TemplateFlow failure is raised instead of falling back.

    Returns
    -------
    Templates
    """
    import nibabel as nib

    try:
        files = _templateflow_files()
        t1w, mask = _finish(nib.load(files["t1w"]), nib.load(files["mask"]))
        return Templates(t1w, mask, "templateflow", f"TemplateFlow tpl-{TEMPLATE} res-{RESOLUTION:02d}", files)
    except Exception as err:  # offline nodes raise requests' ConnectionError; anything else: same fallback
        if not allow_fallback:
            raise
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return fallback_templates(reason)


def fallback_templates(reason=""):
    """nilearn's bundled MNI152 (2009 symmetric) T1w and brain mask resampled onto the reference grid."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    message = (
        f"TemplateFlow {TEMPLATE} res-{RESOLUTION} is unavailable ({reason}); using nilearn's bundled "
        "MNI152 template resampled to the reference grid for figures and the group mask. To use TemplateFlow "
        "on an offline node, pre-fetch it into $TEMPLATEFLOW_HOME."
    )
    LOGGER.warning("%s", message)
    warnings.warn(message, TemplateFallbackWarning, stacklevel=2)
    t1w, mask = _finish(load_mni152_template(resolution=2), load_mni152_brain_mask(resolution=2))
    return Templates(
        t1w,
        mask,
        "nilearn",
        "nilearn bundled MNI152 (ICBM 2009 symmetric) resampled to the MNI152NLin6Asym 2 mm grid "
        "(fallback: TemplateFlow unavailable)",
    )

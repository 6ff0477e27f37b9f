"""Template images for the group level: MNI152NLin6Asym res-2 T1w and brain mask.

The relevance maps live on the FSL/HCP MNI152 2 mm grid, which is TemplateFlow's
``MNI152NLin6Asym`` at ``res-2``; the figures use its T1w as background and the group
maps are restricted to its brain mask.  The files are read from ``$TEMPLATEFLOW_HOME``
(``deeplight-bids templates fetch`` puts them there, the container image holds them);
where they are missing, TemplateFlow is asked to download them (quietly).  On an offline
node without them (the usual case on compute nodes) we fall back to nilearn's bundled
MNI152 template (2009 symmetric, a close but not identical brain) resampled onto the
reference grid, and say so in one plain log line, in the group-map sidecars and in the
report (:meth:`Templates.provenance`).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deeplight_bids.exceptions import LoggedWarning

LOGGER = logging.getLogger("deeplight_bids")

TEMPLATE = "MNI152NLin6Asym"
RESOLUTION = 2
#: The TemplateFlow queries (``templateflow.api.get`` keyword arguments) of the two images.
QUERIES: dict[str, dict[str, Any]] = {
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

    t1w: Any  # nibabel.Nifti1Image
    mask: Any  # nibabel.Nifti1Image
    source: str
    description: str
    files: dict = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Source": self.source,
            "Description": self.description,
            "Template": TEMPLATE,
            "Resolution": RESOLUTION,
        }
        if self.files:
            out["Files"] = {k: str(v) for k, v in self.files.items()}
        return out


class TemplatesUnavailable(Exception):
    """TemplateFlow's files are not on this machine and cannot be downloaded; ``offline`` says why."""

    def __init__(self, message: str, offline: bool = False):
        super().__init__(message)
        self.offline = offline


def template_paths() -> dict[str, Path]:
    """``{"t1w": path, "mask": path}`` where the two files lie under ``$TEMPLATEFLOW_HOME``."""
    from deeplight_bids.prepare.spaces import templateflow_home  # deferred: loads nibabel and SciPy

    home = templateflow_home()
    return {key: home / name for key, name in FILE_NAMES.items()}


def check_template_file(path: str | os.PathLike[str]) -> None:
    """Raise ValueError unless ``path`` is a 3D NIfTI on the 91 x 109 x 91, 2 mm grid."""
    import nibabel as nib

    from deeplight_bids.prepare.grid import REFERENCE_SHAPE  # deferred: loads nibabel and SciPy

    try:
        img: Any = nib.load(path)  # a NIfTI (nibabel types load() as any image format)
        shape, zooms = tuple(img.shape), tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as err:  # nibabel raises several types for a broken file
        raise ValueError(f"{path}: not a readable NIfTI ({type(err).__name__})") from None
    if shape != tuple(REFERENCE_SHAPE) or not np.allclose(zooms, RESOLUTION):
        raise ValueError(f"{path}: shape {shape}, voxels {zooms} mm; expected {tuple(REFERENCE_SHAPE)}, 2 mm")


def fetch_template_files(download: bool = True) -> dict[str, tuple[Path, bool]]:
    """The two TemplateFlow files, from ``$TEMPLATEFLOW_HOME`` or downloaded there.

    Parameters
    ----------
    download : bool
        Ask TemplateFlow for a file that is not under ``$TEMPLATEFLOW_HOME`` (needs internet).

    Returns
    -------
    dict
        ``{"t1w": (path, fetched), "mask": (path, fetched)}``; ``fetched`` is True for a
        file downloaded by this call.

    Raises
    ------
    TemplatesUnavailable
        A file is missing and cannot be downloaded (``offline`` True when TemplateFlow's
        server cannot be reached), or is not a NIfTI on the reference grid.
    """
    from deeplight_bids.prepare.spaces import templateflow_get  # deferred: loads nibabel and SciPy

    out: dict[str, tuple[Path, bool]] = {}
    for key, local in template_paths().items():
        fetched = False
        # TemplateFlow's skeleton holds an empty placeholder for every file not yet downloaded
        if not (local.is_file() and local.stat().st_size > 0):
            if not download:
                raise TemplatesUnavailable(f"{local} is missing")  # listed by 'templates list'
            try:
                found = templateflow_get(TEMPLATE, **QUERIES[key])
            except OSError as err:  # requests' ConnectionError/Timeout are OSErrors: no connection
                LOGGER.debug("TemplateFlow could not download %s: %r", FILE_NAMES[key], err)
                raise TemplatesUnavailable(
                    f"not in {local.parents[1]} and TemplateFlow's server cannot be reached", offline=True
                ) from None
            except Exception as err:  # not installed, no layout, ...: the same fallback, named
                raise TemplatesUnavailable(
                    f"not in {local.parents[1]} and TemplateFlow failed ({type(err).__name__})"
                ) from None
            if found is None or not found.is_file() or found.stat().st_size == 0:
                raise TemplatesUnavailable(f"TemplateFlow returned no file for {FILE_NAMES[key]}")
            local, fetched = found, True
        try:
            check_template_file(local)
        except ValueError as err:
            raise TemplatesUnavailable(f"{err}; delete it and run 'deeplight-bids templates fetch'") from None
        out[key] = (local, fetched)
    return out


def _on_grid(img, interpolation):
    from deeplight_bids.prepare.grid import to_reference_grid  # deferred: loads nibabel and SciPy

    return to_reference_grid(img, interpolation=interpolation)


def _finish(t1w_img, mask_img):
    import nibabel as nib

    from deeplight_bids.prepare.grid import REFERENCE_AFFINE  # deferred: loads nibabel and SciPy

    t1w = _on_grid(t1w_img, "continuous")
    mask = _on_grid(mask_img, "nearest")
    t1w = nib.Nifti1Image(np.asarray(t1w.dataobj, dtype=np.float32), REFERENCE_AFFINE)
    mask = nib.Nifti1Image((np.asarray(mask.dataobj) > 0.5).astype(np.uint8), REFERENCE_AFFINE)
    return t1w, mask


def load_templates(allow_fallback: bool = True, download: bool = True) -> Templates:
    """T1w and brain mask of MNI152NLin6Asym res-2, from TemplateFlow or the nilearn fallback.

    Parameters
    ----------
    allow_fallback : bool
        If False, a TemplateFlow failure is raised instead of falling back.
    download : bool
        Ask TemplateFlow for files not under ``$TEMPLATEFLOW_HOME`` (False: offline by choice, no
        network probe; the fallback is then said at INFO level, as for an offline node).

    Returns
    -------
    Templates
    """
    import nibabel as nib

    try:
        found = fetch_template_files(download=download)
        files = {key: path for key, (path, _) in found.items()}
        for key, (path, fetched) in found.items():
            if fetched:
                LOGGER.info("templates: downloaded TemplateFlow's %s into %s", FILE_NAMES[key], path.parent)
        t1w, mask = _finish(nib.load(files["t1w"]), nib.load(files["mask"]))
        return Templates(t1w, mask, "templateflow", f"TemplateFlow tpl-{TEMPLATE} res-{RESOLUTION:02d}", files)
    except TemplatesUnavailable as err:
        if not allow_fallback:
            raise
        return fallback_templates(str(err), offline=err.offline or not download)


def fallback_templates(reason: str = "", offline: bool = False) -> Templates:
    """nilearn's bundled MNI152 (2009 symmetric) T1w and brain mask resampled onto the reference grid.

    Says so in one plain line: at INFO level when the node is merely offline (the usual case on
    compute nodes), as a warning when TemplateFlow's files are there but unusable.
    """
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    message = (
        f"templates: TemplateFlow's {TEMPLATE} res-{RESOLUTION} T1w and brain mask are not available ({reason}); "
        "the report's figures and the group mask use nilearn's bundled MNI152 template instead. For "
        "TemplateFlow's: run 'deeplight-bids templates fetch' on a machine with internet and set "
        "TEMPLATEFLOW_HOME to (a copy of) that folder."
    )
    LOGGER.log(logging.INFO if offline else logging.WARNING, "%s", message)
    warnings.warn(message, TemplateFallbackWarning, stacklevel=2)
    t1w, mask = _finish(load_mni152_template(resolution=2), load_mni152_brain_mask(resolution=2))
    return Templates(
        t1w,
        mask,
        "nilearn",
        "nilearn bundled MNI152 (ICBM 2009 symmetric) resampled to the MNI152NLin6Asym 2 mm grid "
        "(fallback: TemplateFlow unavailable)",
    )

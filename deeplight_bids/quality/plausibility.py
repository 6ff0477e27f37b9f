"""Plausibility: do relevance maps point where a reference map says the state lives?

``--reference-map FILE_OR_DIR`` (group level) gives, per state, a map on the reference
space (e.g. a GLM contrast or a meta-analysis map; resampled onto the 2 mm grid).  The
reference *region* of a state is its top ``k`` % of brain voxels (``--reference-top-percent``),
positive values only.  Per participant mean relevance map and state:

* relevance mass accuracy: share of the positive relevance in the brain that lies in
  the region (Arras et al. 2022, CLEVR-XAI);
* relevance rank accuracy: share of the ``K`` most relevant brain voxels that lie in the
  region, ``K`` = region size (same paper);
* Pearson r of relevance and reference over the brain voxels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deeplight_bids.derivatives.sidecars import described
from deeplight_bids.exceptions import InputDataError

COLUMNS = described(
    {
        "participant_id": "participant ('group': the mean over participants' maps)",
        "state": "explained state",
        "mass_accuracy": (
            "share of the positive relevance inside the brain that lies in the reference region (Arras et al. 2022)"
        ),
        "rank_accuracy": (
            "share of the K most relevant brain voxels inside the reference region, K = region size (Arras et al. 2022)"
        ),
        "pearson_r": "Pearson correlation of relevance and reference values over the brain voxels",
        "region_voxels": "voxels of the reference region (top k % of brain voxels, positive values)",
        "region_share": "region_voxels / brain voxels: the mass and rank accuracy of a map that ignores the region",
    }
)
NIFTI = re.compile(r"\.nii(\.gz)?$")


def relevance_in_region(relevance_map: np.ndarray, region: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """Relevance rank and mass accuracy of a map for a region (Arras et al. 2022, CLEVR-XAI).

    Parameters
    ----------
    relevance_map : numpy.ndarray
        A relevance map, e.g. ``(91, 109, 91)``.
    region, brain : numpy.ndarray of bool, same shape

    Returns
    -------
    rank : float
        Share of the K most relevant brain voxels that lie in the region, K = region size.
    mass : float
        Share of the positive relevance inside the brain that lies in the region.
        Both NaN when the map has no positive relevance in the brain.
    """
    positive = np.clip(relevance_map, 0, None) * brain
    total = positive.sum()
    if total <= 0:
        return float("nan"), float("nan")
    k = int(region.sum())
    top = np.argsort(positive.ravel(), kind="stable")[::-1][:k]
    return float(region.ravel()[top].mean()), float(positive[region].sum() / total)


def reference_region(reference: np.ndarray, brain: np.ndarray, top_percent: float) -> np.ndarray:
    """Top ``top_percent`` % of the brain voxels by reference value, positive values only (bool array)."""
    values = reference[brain]
    if values.size == 0:
        return np.zeros(reference.shape, bool)
    threshold = np.percentile(values, 100.0 - float(top_percent))
    return brain & (reference >= threshold) & (reference > 0)


def compare(relevance_map: np.ndarray, reference: np.ndarray, brain: np.ndarray, top_percent: float) -> dict[str, Any]:
    """All plausibility numbers of one map against one reference (dict of :data:`COLUMNS` values)."""
    region = reference_region(reference, brain, top_percent)
    rank, mass = relevance_in_region(relevance_map, region, brain)
    r, q = relevance_map[brain].astype(np.float64), reference[brain].astype(np.float64)
    pearson = float(np.corrcoef(r, q)[0, 1]) if r.size > 1 and np.ptp(r) > 0 and np.ptp(q) > 0 else float("nan")
    return {
        "mass_accuracy": mass,
        "rank_accuracy": rank,
        "pearson_r": pearson,
        "region_voxels": int(region.sum()),
        "region_share": float(region.sum() / max(int(brain.sum()), 1)),
    }


def _label(text):
    return re.sub(r"[^A-Za-z0-9]", "", str(text)).lower()


def find_reference_files(path: str | os.PathLike, states: Sequence[str]) -> dict[str, Path]:
    """``state -> file`` of ``--reference-map``: a file serves every state; a folder one file per state.

    In a folder a file belongs to a state when its name holds ``label-<state>`` or its
    stem is the state (case and non-alphanumerics ignored, so ``MOTOR_lh`` matches
    ``label-MOTORlh``).  States without a file are left out.

    Raises
    ------
    InputDataError
        When ``path`` is neither a NIfTI file nor a folder with a file for any state.
    """
    path = Path(path)
    if path.is_file():
        if not NIFTI.search(path.name):
            raise InputDataError(f"{path}: --reference-map needs a NIfTI file (.nii/.nii.gz) or a folder of them.")
        return {s: path for s in states}
    files = sorted(p for p in path.iterdir() if NIFTI.search(p.name)) if path.is_dir() else []
    found = {}
    for state in states:
        want = _label(state)
        for f in files:
            stem = NIFTI.sub("", f.name)
            labels = [_label(m) for m in re.findall(r"label-([A-Za-z0-9]+)", stem)]
            if want in labels or _label(stem) == want:
                found[state] = f
                break
    if not found:
        raise InputDataError(
            f"{path}: no reference map for any of the states {', '.join(states)}; name the files "
            "'label-<state>' (e.g. 'label-MOTORlh_map.nii.gz') or '<state>.nii.gz'."
        )
    return found


def load_reference(path: str | os.PathLike, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """A reference map resampled onto the grid ``(shape, affine)`` (float32; NaN -> 0).

    Raises
    ------
    InputDataError
        Unreadable, or not 3D (a 4D file with one volume is accepted).
    """
    import nibabel as nib
    from nilearn.image import resample_img

    try:
        img: Any = nib.load(str(path))  # nibabel's stubs type load() as FileBasedImage (no shape, affine)
        data_shape = img.shape
    except Exception as err:  # nibabel raises several types for bad files
        raise InputDataError(f"{path}: cannot read the reference map ({err}); give a 3D NIfTI image.") from err
    if len(data_shape) == 4 and data_shape[3] == 1:
        img = nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine)
    elif len(data_shape) != 3:
        raise InputDataError(f"{path}: the reference map has shape {data_shape}; give one 3D map per state.")
    if img.shape != tuple(shape) or not np.allclose(img.affine, affine, atol=1e-3):
        img = resample_img(
            img,
            target_affine=affine,
            target_shape=tuple(shape),
            interpolation="continuous",
            force_resample=True,
            copy_header=True,
        )
    return np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))


def plausibility_table(
    maps: Iterable[tuple[str, str, np.ndarray]],
    references: Mapping[str, np.ndarray],
    brain: np.ndarray,
    top_percent: float,
) -> pd.DataFrame:
    """Rows per participant map and state, plus a ``group`` row per state (the mean map).

    Parameters
    ----------
    maps : sequence of (participant, state, numpy.ndarray)
        Participant mean relevance maps on the reference grid.
    references : dict
        ``state -> reference map`` (same grid).
    brain : numpy.ndarray of bool
    top_percent : float

    Returns
    -------
    pandas.DataFrame
        Columns of :data:`COLUMNS`.
    """
    by_state: dict[str, list[np.ndarray]]
    rows, by_state = [], {}
    for participant, state, data in maps:
        if state not in references:
            continue
        rows.append(
            {
                "participant_id": f"sub-{participant}",
                "state": state,
                **compare(data, references[state], brain, top_percent),
            }
        )
        by_state.setdefault(state, []).append(data)
    for state, arrays in sorted(by_state.items()):
        rows.append(
            {
                "participant_id": "group",
                "state": state,
                **compare(np.mean(arrays, axis=0), references[state], brain, top_percent),
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))

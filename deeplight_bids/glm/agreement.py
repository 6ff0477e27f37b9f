"""How much a state's relevance map agrees with its GLM map (Thomas, Ré & Poldrack, 2023).

For one state, over the voxels where the GLM was fitted:

* **Pearson r** between the state's mean relevance map and its GLM t-map (the state
  against the mean of the task's other states);
* **Dice overlap of the top k %** (k = 1, 5, 10): the ``ceil(k / 100 * n)`` voxels with the
  highest relevance and the as many with the highest t; both sets have the same size,
  so Dice is the share of one set found in the other.

Voxels are ranked by their signed value in both maps: the highest t is the strongest
activation above the other states, the highest relevance the strongest evidence for the
state (for the published LRP presets, which give no evidence against, the same as the
largest magnitude).  Ties are broken by voxel order (``numpy.argsort``, stable), so the
result is reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["TOP_PERCENTS", "agreement", "dice_top", "region_share_top"]

#: Top shares (percent of in-mask voxels) whose overlap is measured.
TOP_PERCENTS = (1, 5, 10)


def _top(values, n):
    """Indices of the ``n`` largest ``values`` (ties: the earlier voxel first)."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    return order[:n]


def n_top(n_voxels: int, percent: float) -> int:
    """``ceil(percent / 100 * n_voxels)``, at least 1."""
    return max(1, math.ceil(percent / 100.0 * n_voxels - 1e-9))


def dice_top(a: np.ndarray, b: np.ndarray, percent: float) -> float:
    """Dice overlap of the top ``percent`` % of ``a`` and of ``b`` (1-D arrays of equal length)."""
    n = n_top(len(a), percent)
    top_a, top_b = _top(a, n), _top(b, n)
    return float(2 * np.intersect1d(top_a, top_b).size / (top_a.size + top_b.size))


def agreement(relevance: np.ndarray, t_map: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Pearson r and top-k % Dice of a relevance map and a GLM t-map inside ``mask``.

    Parameters
    ----------
    relevance, t_map : numpy.ndarray, shape (91, 109, 91)
        Maps on the reference grid (array order x, y, z).
    mask : numpy.ndarray of bool, shape (91, 109, 91)
        Voxels compared (where the GLM was fitted).

    Returns
    -------
    dict
        ``n_voxels``, ``pearson_r`` (None when either map is constant in the mask) and
        ``dice_top<k>`` for each k of :data:`TOP_PERCENTS`.
    """
    a = np.asarray(relevance, dtype=np.float64)[mask]
    b = np.asarray(t_map, dtype=np.float64)[mask]
    out: dict[str, Any] = {"n_voxels": int(a.size)}
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    r = None
    if a.size > 1 and a.std() > 0 and b.std() > 0:
        r = float(np.corrcoef(a, b)[0, 1])
    out["pearson_r"] = r
    for k in TOP_PERCENTS:
        out[f"dice_top{k}"] = dice_top(a, b, k) if a.size else None
    return out


def region_share_top(values: np.ndarray, region: np.ndarray, mask: np.ndarray, percent: float = 1) -> float:
    """Share of the top ``percent`` % of in-mask voxels of ``values`` that lie in ``region``.

    Parameters
    ----------
    values : numpy.ndarray, shape (91, 109, 91)
    region, mask : numpy.ndarray of bool, same shape
        E.g. a planted region of the demo and the brain mask.

    Returns
    -------
    float
        In [0, 1].
    """
    inside = np.asarray(mask, bool)
    top = _top(np.asarray(values, np.float64)[inside], n_top(int(inside.sum()), percent))
    return float(np.asarray(region, bool)[inside][top].mean())

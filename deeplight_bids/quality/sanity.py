"""Model-parameter randomisation check (Adebayo et al. 2018, "Sanity checks for saliency maps").

Relevance maps that barely change when the model's learned parameters are replaced by
random ones do not explain what the model learned.  The efficient variant used here
compares each map of the trained model with the map of the same volume from one fully
randomised copy (every kernel redrawn, seeded, at the trained kernel's scale; biases and
batch-normalisation parameters back at their initial values), by Spearman rank
correlation and SSIM.  :func:`cascade_blocks` and :func:`cascade_stages` give the
cascading variant (top layers first) that ``--compare-attributions`` uses.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage, stats

from deeplight_bids.derivatives.sidecars import described

if TYPE_CHECKING:
    import pandas as pd

#: Spearman correlation (or SSIM) above which the maps are flagged as not depending on the
#: learned parameters (Adebayo et al. read values near 1 that way; 0.5 is our flag).
HIGH_SIMILARITY = 0.5
#: Gaussian window of SSIM, in voxels (Wang et al. 2004 use sigma 1.5).
SSIM_SIGMA = 1.5

COLUMNS = described(
    {
        "volume": "0-based index of the volume in the run",
        "state": "state whose logit both maps explain (the LRP target of the trained model)",
        "spearman": (
            "Spearman rank correlation of the trained and randomised model's relevance over the in-mask voxels"
        ),
        "spearman_abs": "Spearman rank correlation of the absolute relevance values",
        "ssim": (
            f"structural similarity (Wang et al. 2004; 3D Gaussian window, sigma {SSIM_SIGMA} "
            "voxels) of the two maps after a signed rank transform over the in-mask voxels (sign(R) x "
            "rank(|R|) / in-mask voxels; 0 outside), averaged over the in-mask voxels"
        ),
    }
)


#: How :func:`randomized_copy` randomises a layer (sidecars, settings hash).
RANDOMISATION = (
    "kernels redrawn Glorot-uniform (seeded), then scaled to the SD of the trained kernel they replace; biases 0; "
    "batch normalisation at its initial values (gamma 1, beta 0, moving mean 0, moving variance 1)"
)


def randomized_copy(model: Any, seed: int | Sequence[int] = 0, layers: Collection[str] | None = None) -> Any:
    """A copy of ``model`` whose learned parameters are re-initialised (all, or those of ``layers``).

    A randomised layer's kernels (every weight with two or more axes, LSTM recurrent
    kernels included) are drawn from Glorot-uniform with
    ``numpy.random.default_rng(seed)`` and scaled to the standard deviation of the trained
    kernel they replace; its other variables take the values a freshly built copy starts
    with (biases 0, batch-normalisation gamma 1, beta 0, moving mean 0, moving variance
    1).  Keeping each kernel's scale keeps the activations of the randomised network at
    the trained one's scale (Binder et al. 2023): plain Glorot kernels shrink 2D-DeepLight's
    activations ~1000-fold over its 12 convolutions and LSTM (logits ~1e-3), where the
    published 2D rule's ``z + eps`` denominators meet ``-eps`` and its maps became NaN
    (issue 32).  Layers not randomised keep the trained values.

    Parameters
    ----------
    model : keras.Sequential
    seed : int
    layers : collection of str or None
        Names of the layers to randomise; None: every layer (full randomisation).

    Returns
    -------
    keras.Sequential
        Same architecture, independent variables.
    """
    import keras

    clone = keras.models.clone_model(model)
    if not clone.built:
        clone.build(model.inputs[0].shape)
    redraw(clone, model, seed, layers)
    return clone


def redraw(copy: Any, model: Any, seed: int | Sequence[int] = 0, layers: Collection[str] | None = None) -> None:
    """Draw the randomised kernels of ``copy`` anew, in place: ``copy`` then holds ``randomized_copy(model, seed)``.

    Only kernels are drawn; the other variables of a randomised layer keep the initial values
    the clone started with, which no draw changes, so ``copy`` must come from
    :func:`randomized_copy` of the same ``model`` and ``layers``.  An explainer of ``copy`` whose
    compiled function reads the variables at each call (TensorFlow, PyTorch) then explains the
    new draw without being traced again; under JAX compiled functions hold the values they were
    traced with (build a new explainer after a redraw there).

    Parameters
    ----------
    copy, model : keras.Sequential
        Same architecture.
    seed : int or sequence of int
        Seeds ``numpy.random.default_rng`` (e.g. ``[seed, volume]``).
    layers : collection of str or None
        As :func:`randomized_copy`.
    """
    import keras

    rng = np.random.default_rng(seed)
    for trained_layer, layer in zip(model.layers, copy.layers):
        randomise = layers is None or layer.name in layers
        for trained, variable in zip(trained_layer.weights, layer.weights):
            if not randomise:
                variable.assign(keras.ops.convert_to_numpy(trained.value))
                continue
            shape = tuple(variable.shape)
            if len(shape) >= 2:
                receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
                fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                drawn = rng.uniform(-limit, limit, size=shape)
                scale = float(np.std(keras.ops.convert_to_numpy(trained.value), dtype=np.float64))
                drawn *= scale / max(float(drawn.std()), 1e-30)
                variable.assign(drawn.astype(variable.dtype))


def cascade_blocks(model: Any) -> list[list[str]]:
    """The model's layers in blocks for the randomisation cascade, top (output) block first.

    A block starts at a layer with a kernel (convolution, dense, recurrent) and holds the
    layers up to the next such layer (its dropout and batch normalisation), so
    randomising the top ``k`` blocks randomises everything above the ``k``-th kernel from
    the top (Adebayo et al. 2018's cascading randomisation).

    Returns
    -------
    list of list of str
        Layer names per block, the output block first.
    """
    blocks: list[list[str]] = []
    for layer in model.layers:
        has_kernel = any(len(v.shape) >= 2 for v in layer.weights)
        if has_kernel or not blocks:
            blocks.append([layer.name])
        else:
            blocks[-1].append(layer.name)
    return blocks[::-1]


def cascade_stages(n_blocks: int, n_stages: int = 4) -> list[int]:
    """How many top blocks each stage of the cascade randomises: 1, ~a quarter, ~half, all (sorted, distinct)."""
    sizes = {1, max(1, round(n_blocks / 4)), max(1, round(n_blocks / 2)), n_blocks}
    return sorted(sizes)[-n_stages:] if n_stages < len(sizes) else sorted(sizes)


def ssim(a: npt.ArrayLike, b: npt.ArrayLike, mask: npt.ArrayLike | None = None, sigma: float = SSIM_SIGMA) -> float:
    """Structural similarity of two maps of any dimension (Wang et al. 2004).

    Each map goes through a signed rank transform first (:func:`_unit`: ranks over the
    voxels of ``mask``, values in [-1, 1], 0 outside ``mask``, so relevance scales, heavy
    tails and whatever a map holds outside the mask do not matter, and the dynamic range
    is ``L = 2``); local means, variances and covariance use a Gaussian window;
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``.

    Parameters
    ----------
    a, b : numpy.ndarray, same shape
    mask : numpy.ndarray of bool or None
        Voxels ranked and averaged (default: all).
    sigma : float
        Window width in voxels.

    Returns
    -------
    float
        Mean SSIM over ``mask``, in [-1, 1]; 1 for maps equal up to a positive factor.
    """
    mask = np.ones(np.shape(a), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return PreparedMap(a, mask, sigma).ssim(_unit(b, mask))


def _ssim_box(mask, sigma=SSIM_SIGMA):
    """The mask's bounding box plus the Gaussian window's reach (slices), or None for an empty mask."""
    reach = int(3.5 * float(sigma) + 0.5) + 1
    where = np.argwhere(mask)
    if not len(where):
        return None
    return tuple(slice(max(lo - reach, 0), hi + 1 + reach) for lo, hi in zip(where.min(axis=0), where.max(axis=0)))


def _blur(v, sigma=SSIM_SIGMA):
    return ndimage.gaussian_filter(v, sigma, mode="constant", truncate=3.5)


def _ssim_map(a, b, sigma=SSIM_SIGMA, blurred_a=None):
    """SSIM index at every voxel of two signed-rank maps (values in [-1, 1]; ``L = 2``).

    ``blurred_a``: ``(blur(a), blur(a * a))`` when the caller has them (one map compared with several).
    """
    dynamic_range = 2.0
    c1, c2 = (0.01 * dynamic_range) ** 2, (0.03 * dynamic_range) ** 2
    mu_a, sq_a = (_blur(a, sigma), _blur(a * a, sigma)) if blurred_a is None else blurred_a
    mu_b = _blur(b, sigma)
    var_a = sq_a - mu_a**2
    var_b = _blur(b * b, sigma) - mu_b**2
    cov = _blur(a * b, sigma) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def _unit(v, mask=None, abs_ranks=None):
    """Signed rank transform over ``mask``: ``sign(v) * rank(|v|) / n_mask`` in (0, 1] in magnitude, 0 outside.

    Relevance is heavy-tailed: scaled by its maximum (or RMS) most voxels are ~0, where
    SSIM's constants make any two maps look alike.  Ranks keep the sign and order (what
    the maps claim) and give every map the same value distribution.  The ranks are taken
    over the mask's voxels only: ranked over the whole grid, the out-of-mask zeros took
    the lowest ranks and squeezed every in-mask magnitude into ~[0.75, 1] on a brain
    grid, so SSIM compared little more than the signs of two maps (and two maps of one
    sign looked alike whatever their pattern).  ``abs_ranks``: ``rankdata(|v[mask]|)``
    when the caller has it.
    """
    v = np.asarray(v, dtype=np.float64)
    mask = np.ones(v.shape, dtype=bool) if mask is None else mask
    values = v[mask]
    ranks = stats.rankdata(np.abs(values), method="average") if abs_ranks is None else abs_ranks
    out = np.zeros(v.shape, dtype=np.float64)
    out[mask] = np.sign(values) * ranks / max(values.size, 1)
    return out


def _pearson(a, b):
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


class PreparedMap:
    """A trained model's map ready to be compared with several randomised ones (:func:`compare_maps`).

    Its ranks, signed rank transform and SSIM window statistics are computed once (a cascade
    compares one map with each stage's).

    Parameters
    ----------
    real : numpy.ndarray, e.g. ``(z, y, x)``
    mask : numpy.ndarray of bool, same shape
    sigma : float
        SSIM's window width in voxels.
    """

    def __init__(self, real: npt.ArrayLike, mask: npt.ArrayLike, sigma: float = SSIM_SIGMA) -> None:
        self.mask = np.asarray(mask, dtype=bool)
        self.sigma = sigma
        self.values = np.asarray(real, dtype=np.float64)[self.mask]
        self.ranks = stats.rankdata(self.values)
        self.abs_ranks = stats.rankdata(np.abs(self.values))
        # SSIM on the mask's bounding box plus the window's reach (zeros beyond it change nothing in
        # constant mode), which makes a brain-masked full grid ~2x cheaper
        self.box = _ssim_box(self.mask, sigma)
        if self.box is not None:
            self.unit = _unit(real, self.mask, self.abs_ranks)[self.box]
            self.blurred = (_blur(self.unit, sigma), _blur(self.unit * self.unit, sigma))

    def ssim(self, other_unit: np.ndarray) -> float:
        """Mean SSIM over the mask of this map's and ``other_unit``'s signed rank transforms (:func:`_unit`,
        full grid); NaN for an empty mask."""
        if self.box is None:
            return float("nan")
        return float(
            _ssim_map(self.unit, other_unit[self.box], self.sigma, blurred_a=self.blurred)[self.mask[self.box]].mean()
        )


def compare_maps(
    real: np.ndarray | PreparedMap, random: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """Similarity of a trained and a randomised model's map of one volume.

    Both maps are compared inside ``mask`` only (what either holds outside is ignored).
    Each map is ranked twice (signed values and magnitudes); the Spearman correlations
    are the Pearson correlations of those ranks, and the magnitude ranks also give SSIM's
    signed rank transform.

    Parameters
    ----------
    real : numpy.ndarray (e.g. ``(z, y, x)``) or PreparedMap
        The trained model's map; a :class:`PreparedMap` (which holds its mask) when it is
        compared with several maps.
    random : numpy.ndarray, same shape
    mask : numpy.ndarray of bool, same shape (None with a PreparedMap)

    Returns
    -------
    dict
        ``spearman``, ``spearman_abs``, ``ssim`` (NaN where a map is constant).
    """
    if isinstance(real, PreparedMap):
        prepared = real
    elif mask is None:
        raise TypeError("compare_maps: a plain map needs its mask (a PreparedMap holds its own)")
    else:
        prepared = PreparedMap(real, mask)
    mask = prepared.mask
    r = prepared.values
    q = np.asarray(random, dtype=np.float64)[mask]
    r_abs, q_abs = prepared.abs_ranks, stats.rankdata(np.abs(q))
    rho = _pearson(prepared.ranks, stats.rankdata(q)) if np.ptp(r) > 0 and np.ptp(q) > 0 else np.nan
    rho_abs = _pearson(r_abs, q_abs) if np.ptp(r_abs) > 0 and np.ptp(q_abs) > 0 else np.nan
    return {"spearman": float(rho), "spearman_abs": float(rho_abs), "ssim": prepared.ssim(_unit(random, mask, q_abs))}


def sidecar(seed: int, summary: Mapping[str, Any], copies: str | None = None) -> dict[str, Any]:
    """The JSON sidecar of a run's randomised-model table (``seed``: of the randomised copies;
    ``summary``: :func:`summarize` of the table; ``copies``: how the copies were drawn, if said)."""
    return {
        **COLUMNS,
        "Description": "model-parameter randomisation check (Adebayo et al. 2018): similarity of each map with "
        "the map of a fully randomised copy of the model; high similarity means the maps do not "
        "depend on what the model learned",
        "Randomisation": RANDOMISATION,
        **({"RandomisedCopies": copies} if copies else {}),
        **(
            {
                "Precision": "Summary.median_*_se: bootstrap standard errors of the medians over the volumes (with "
                "one randomised copy per volume they include the spread over random draws)"
            }
            if "median_spearman_se" in summary
            else {}
        ),
        "Seed": seed,
        "Summary": summary,
    }


def summarize(frame: pd.DataFrame, draws: int = 0, seed: int = 0) -> dict[str, Any]:
    """Median similarities of a sanity table, whether they are high (flag), and their standard errors.

    Parameters
    ----------
    frame : pandas.DataFrame
        The per-volume table (:data:`COLUMNS`).
    draws : int
        Bootstrap draws over the volumes for the standard errors of the medians (0: none).
    seed : int
        Seeds the bootstrap.

    Returns
    -------
    dict
        ``median_spearman``, ``median_spearman_abs``, ``median_ssim``, ``n_volumes``,
        ``high_similarity`` (True when the median Spearman or SSIM exceeds
        :data:`HIGH_SIMILARITY`; the absolute-value Spearman is reported, not flagged: the
        magnitude of any LRP map follows the input's, trained or not); with ``draws``, also
        ``median_spearman_se`` and ``median_ssim_se``: the bootstrap standard errors over the
        volumes (with one randomised copy per volume they include the spread over random draws).
    """
    med = {
        f"median_{c}": float(frame[c].median()) if len(frame) else float("nan")
        for c in ("spearman", "spearman_abs", "ssim")
    }
    high = any(med[k] > HIGH_SIMILARITY for k in ("median_spearman", "median_ssim") if np.isfinite(med[k]))
    out = {**med, "n_volumes": len(frame), "high_similarity": bool(high), "high_similarity_threshold": HIGH_SIMILARITY}
    if draws:
        rng = np.random.default_rng(seed)
        for c in ("spearman", "ssim"):
            values = frame[c].dropna().to_numpy(dtype=np.float64)
            if len(values) < 2:
                out[f"median_{c}_se"] = float("nan")
                continue
            resampled = np.median(values[rng.integers(0, len(values), (int(draws), len(values)))], axis=1)
            out[f"median_{c}_se"] = float(resampled.std(ddof=1))
    return out

"""The first-level GLM of one run: nilearn's model on the decoder's data, in bounded memory.

What :class:`nilearn.glm.first_level.FirstLevelModel` computes, on the data the decoder
reads:

1. the run's BOLD and brain mask brought onto the reference grid by the decoder's own
   resampling (the job's :class:`~deeplight_bids.prepare.spaces.SpacePlan`), masked and
   smoothed with ``--smoothing-fwhm`` (:func:`deeplight_bids.prepare.clean.masked_signals`:
   the first step of the decoder's preparation, not its detrending or z-scoring);
2. per voxel, scaling to percent signal change (:func:`nilearn.glm.first_level.mean_scaling`,
   FirstLevelModel's ``signal_scaling=0``);
3. the design (:func:`nilearn.glm.first_level.make_first_level_design_matrix`): one regressor
   per state (:mod:`deeplight_bids.glm.design`) convolved with the Glover HRF, frame times
   ``i * TR`` (``slice_time_ref=0``, as the decoder's labels), and the drifts as regressors: a
   cosine basis up to ``--high-pass`` (the decoder's cut-off; it filters the data with a
   Butterworth filter instead, a GLM models drifts in the design), or with ``--high-pass
   none`` a linear trend (the decoder's detrending);
4. :func:`nilearn.glm.first_level.run_glm` with ``--glm-noise-model`` (``ols`` by default,
   ``ar1`` as FirstLevelModel's default) and :func:`nilearn.glm.contrasts.compute_contrast`
   for each state against the mean of the other states and against baseline.

Steps 2-4 run on chunks of :data:`VOXEL_CHUNK` voxels: both are per voxel (AR(1)
coefficients are binned by value, not by rank), so chunks give the same maps as one fit,
and memory stays at the in-mask float32 series plus one chunk (FirstLevelModel would hold
the whole 4D series in float64: ~3 GB for 405 volumes).  ``tests/glm`` checks the maps
against FirstLevelModel itself.

Noise model: on a 405-volume run (217,000 voxels, 2 busy cores; ``benchmarks/bench_glm.py``) the
``ols`` fit took 5.5 s and the ``ar1`` fit 47 s (nilearn refits every AR bin), beside 36 s of reading
and smoothing and 383 s of decode + LRP.  The agreement measures rank voxels within a map, which the
noise model hardly changes; ``ar1`` gives t values and degrees of freedom fit for inference (OLS t
values are inflated by the autocorrelation of fMRI noise).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.derivatives import naming
from deeplight_bids.glm.design import StateDesign

if TYPE_CHECKING:
    import pandas as pd

    from deeplight_bids.config import Config

LOGGER = logging.getLogger("deeplight_bids")

__all__ = [
    "GLM_VERSION",
    "HRF_MODEL",
    "NOISE_MODELS",
    "VOXEL_CHUNK",
    "Contrast",
    "GLMFit",
    "contrasts_of",
    "design_matrix",
    "fit_glm",
    "glm_settings",
    "glm_settings_hash",
]

#: Bump when the GLM's outputs change meaning (enters the settings hash).
GLM_VERSION = 1
#: Haemodynamic response model (nilearn's name).
HRF_MODEL = "glover"
#: ``--glm-noise-model`` choices.
NOISE_MODELS = ("ols", "ar1")
#: Voxels per GLM fit (405 volumes x 20,000 voxels float64: 65 MB, and as much for the residuals).
VOXEL_CHUNK = 20000


@dataclass(frozen=True)
class Contrast:
    """One contrast of the states.

    Attributes
    ----------
    label : str
        BIDS label (``MOTORlhVsOthers``).
    state : str
        The state tested.
    against : {"others", "baseline"}
    weights : dict
        ``regressor -> weight`` (others: -1 / (number of other states) each).
    """

    label: str
    state: str
    against: str
    weights: dict

    def vector(self, columns: Sequence[str]) -> np.ndarray:
        """The weights over the design's ``columns`` (0 for drifts and the constant)."""
        return np.array([float(self.weights.get(c, 0.0)) for c in columns])

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the sidecars."""
        return {"Name": self.label, "State": self.state, "Against": self.against, "Weights": self.weights}


def contrasts_of(design: StateDesign) -> list[Contrast]:
    """Per state: against the mean of the other states, then against baseline (implicit: time in no state)."""
    out = []
    names = design.regressors
    for state in design.states:
        others = [names[s] for s in design.states if s != state]
        weights = {names[state]: 1.0, **{o: -1.0 / len(others) for o in others}}
        out.append(Contrast(naming.glm_contrast_label(names[state], "others"), state, "others", weights))
    for state in design.states:
        out.append(
            Contrast(naming.glm_contrast_label(names[state], "baseline"), state, "baseline", {names[state]: 1.0})
        )
    return out


def drift_settings(high_pass: float | None) -> dict[str, Any]:
    """``make_first_level_design_matrix`` drift arguments: a cosine basis up to ``high_pass`` Hz, or a linear trend."""
    if high_pass is None:
        return {"drift_model": "polynomial", "drift_order": 1}
    return {"drift_model": "cosine", "high_pass": float(high_pass)}


def design_matrix(design: StateDesign, n_volumes: int, t_r: float, high_pass: float | None) -> pd.DataFrame:
    """The run's design matrix (pandas.DataFrame, one row per volume): states convolved with the HRF, drifts, constant.

    Parameters
    ----------
    design : StateDesign
    n_volumes : int
    t_r : float
        Seconds; volume ``i`` is at ``i * t_r`` (``slice_time_ref`` 0, as the decoder's labels).
    high_pass : float or None
        Hz (``--high-pass``).
    """
    import warnings

    from nilearn.glm.first_level import make_first_level_design_matrix

    frame_times = np.arange(int(n_volumes)) * float(t_r)
    with warnings.catch_warnings():
        # events that start before 0 or end after the run are clipped by nilearn, with a warning each
        warnings.simplefilter("ignore", UserWarning)
        return make_first_level_design_matrix(
            frame_times, design.events, hrf_model=HRF_MODEL, **drift_settings(high_pass)
        )


def glm_settings(config: Config, noise_model: str | None = None) -> dict[str, Any]:
    """The settings that change a run's GLM outputs (recorded in its sidecars; hashed by :func:`glm_settings_hash`)."""
    settings: dict[str, Any] = {
        "glm_version": GLM_VERSION,
        "noise_model": noise_model or config.participant.glm_noise_model,
        "hrf_model": HRF_MODEL,
        "smoothing_fwhm": config.inputs.smoothing_fwhm,
        "high_pass": config.inputs.high_pass,
    }
    if config.inputs.allow_approximate_space:
        settings["allow_approximate_space"] = True
    return settings


def glm_settings_hash(
    settings: Mapping[str, Any], user_state_map: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """16 hex digits over :func:`glm_settings` and the ``--state-map`` (the design's states come from it)."""
    text = json.dumps({**settings, "state_map": user_state_map}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class GLMFit:
    """The contrast maps of one run, in mask order.

    Attributes
    ----------
    maps : dict
        ``contrast label -> {"effect", "variance", "t"}``, each ``(n_mask_voxels,)`` float32.
    dof : float
        Residual degrees of freedom (volumes minus the design's rank; for ``ar1`` as nilearn
        reports it, the same).
    rank : int
        Rank of the design matrix.
    seconds : float
        Time of the fit (not the reading).
    """

    maps: dict
    dof: float
    rank: int
    seconds: float


def fit_glm(
    signals: np.ndarray,
    matrix: pd.DataFrame,
    contrasts: Sequence[Contrast],
    noise_model: str = "ols",
    chunk: int = VOXEL_CHUNK,
) -> GLMFit:
    """Fit the GLM voxel chunk by voxel chunk and compute the contrasts.

    Parameters
    ----------
    signals : numpy.ndarray, shape (n_volumes, n_voxels)
        Smoothed in-mask BOLD (:func:`deeplight_bids.prepare.clean.masked_signals`), not scaled.
    matrix : pandas.DataFrame, shape (n_volumes, n_regressors)
        :func:`design_matrix`.
    contrasts : list of Contrast
    noise_model : {"ols", "ar1"}
    chunk : int
        Voxels per fit.

    Returns
    -------
    GLMFit
    """
    import warnings

    from nilearn.glm.contrasts import compute_contrast
    from nilearn.glm.first_level import mean_scaling, run_glm

    t0 = time.monotonic()
    n_volumes, n_voxels = signals.shape
    values = matrix.to_numpy(dtype=float)
    vectors = {c.label: c.vector(list(matrix.columns)) for c in contrasts}
    maps = {c.label: {s: np.zeros(n_voxels, np.float32) for s in naming.GLM_STATS} for c in contrasts}
    dof = math.nan
    for start in range(0, n_voxels, chunk):
        stop = min(start + chunk, n_voxels)
        block = np.asarray(signals[:, start:stop], dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "mean values of 0": voxels outside the data's support
            block, _ = mean_scaling(block)
            labels, results = run_glm(block, values, noise_model=noise_model)
            for label, vector in vectors.items():
                con = compute_contrast(labels, results, vector, stat_type="t")
                out = maps[label]
                out["effect"][start:stop] = np.ravel(con.effect_size())
                out["variance"][start:stop] = np.ravel(con.effect_variance())
                out["t"][start:stop] = np.nan_to_num(np.ravel(con.stat()), nan=0.0, posinf=0.0, neginf=0.0)
        dof = float(next(iter(results.values())).df_residuals)
        del block, results
    rank = int(np.linalg.matrix_rank(values))
    return GLMFit(maps, dof, rank, time.monotonic() - t0)

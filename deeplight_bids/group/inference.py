"""Second-level inference on per-participant 3D maps: fit, contrast, correction, clusters, writing.

One function does the statistics, :func:`second_level_inference`; one writes what it
returns, :func:`write_inference`.  Both are independent of what the maps are: the group
level calls them on differences of relevance maps between states
(:mod:`deeplight_bids.group.contrasts`), and they take any per-participant maps on the
same grid (e.g. GLM contrast maps) with any second-level design.

What is computed
----------------
* A general linear model per voxel across participants (nilearn
  :class:`~nilearn.glm.second_level.SecondLevelModel`, ordinary least squares, no
  smoothing), fitted inside the *tested* voxels: the brain mask minus the voxels whose
  value is the same in every map (no variance, no test; 0 in the maps below).
* For one contrast ``c`` of the design's columns: the effect ``c·β`` (``stat-effect``), its
  t statistic (``stat-t``, df = participants − rank of the design), the z score with the
  same one-sided p-value (``stat-z``) and that uncorrected p-value (``stat-p``; one-sided,
  H1: effect > 0, as nilearn's ``compute_contrast`` gives it).  Tests are one-sided, as in
  SPM and FSL: a contrast "A vs B" asks where A exceeds B, and "B vs A" is its own contrast.
* A threshold corrected for the voxels tested (``correction``):

  - ``"fdr"``: Benjamini-Hochberg false discovery rate at ``q = alpha`` on the z-map
    (nilearn :func:`~nilearn.glm.threshold_stats_img`, ``height_control="fdr"``, one-sided);
  - ``"fwe-permutation"``: family-wise error at ``alpha`` by the maximum-t distribution over
    random sign flips (intercept-only designs) or permutations (nilearn
    :func:`~nilearn.glm.second_level.non_parametric_inference`), voxel level.  With n
    participants sign flipping has only 2^n distinct outcomes and the smallest p it can give
    is 1/2^n: below ``ceil(log2(1/alpha))`` participants (5 for alpha 0.05) no voxel could
    survive, so the permutations are not run and the result says why (see
    :func:`permutation_allowed`);
  - ``"none"``: no threshold (the maps are shown unthresholded).

* The surviving voxels (z ≥ the threshold inside the tested voxels) and their clusters
  (nilearn :func:`~nilearn.reporting.get_clusters_table`: peak and sub-peaks at least 8 mm
  apart, MNI coordinates in mm, cluster size in mm³; no cluster-extent threshold).

Below :data:`MIN_DOF` degrees of freedom (fewer than 3 participants for a one-sample test)
only the effect is computed, and ``note`` says why.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from deeplight_bids.derivatives.writers import write_json, write_nifti, write_tsv

if TYPE_CHECKING:
    import nibabel as nib

    from deeplight_bids.config import Config

LOGGER = logging.getLogger("deeplight_bids")

#: Corrections for the voxels tested (``--group-threshold``).
CORRECTIONS = ("fdr", "fwe-permutation", "none")
#: Fewest residual degrees of freedom for a t-map (3 participants for a one-sample test).
MIN_DOF = 2
#: Default number of sign flips / permutations for ``"fwe-permutation"``.
DEFAULT_PERMUTATIONS = 5000
#: Smallest distance between reported peaks of a cluster (mm), nilearn's default.
PEAK_DISTANCE_MM = 8.0

#: Columns of the cluster table and their descriptions (its JSON sidecar).
CLUSTER_COLUMNS = {
    "cluster_id": {"Description": "cluster number (by peak z, descending); sub-peaks carry a letter (e.g. 1a)"},
    "x": {"Description": "peak x coordinate", "Units": "mm"},
    "y": {"Description": "peak y coordinate", "Units": "mm"},
    "z": {"Description": "peak z coordinate", "Units": "mm"},
    "peak_stat": {"Description": "z score at the peak (one-sided, H1: effect > 0)"},
    "cluster_size_mm3": {"Description": "volume of the cluster (empty for sub-peaks)", "Units": "mm^3"},
}


@dataclass
class InferenceResult:
    """What :func:`second_level_inference` computed; arrays are 3D float32 on the maps' grid.

    Attributes
    ----------
    effect : ndarray (x, y, z)
        ``c·β`` inside the brain mask, 0 outside.
    t, z, p : ndarray (x, y, z) or None
        t statistic, z score and uncorrected one-sided p-value inside the tested voxels
        (t = z = 0, p = 1 elsewhere); None below :data:`MIN_DOF` degrees of freedom.
    fwe_p : ndarray (x, y, z) or None
        FWE-corrected p-values (``"fwe-permutation"`` only; 1 outside the tested voxels).
    surviving : ndarray of bool (x, y, z) or None
        Voxels above the corrected threshold; None when nothing was thresholded.
    threshold : float or None
        z threshold of ``"fdr"`` (inf when no voxel survives), the smallest surviving z of
        ``"fwe-permutation"`` (None when none survives); None for ``"none"``.
    correction : str
        The correction applied: one of :data:`CORRECTIONS`; ``"not tested"`` when only the effect was
        computed (``test=False``, or too few degrees of freedom); ``"not applied"`` when the
        t-map exists but the correction could not be made (``note`` says why).
    requested : str
        The correction asked for.
    alpha : float
        FDR q or FWE alpha.
    n_participants, dof : int
    n_mask, n_tested, n_surviving : int
        Voxels in the brain mask, tested, above the threshold.
    clusters : pandas.DataFrame or None
        One row per cluster peak and sub-peak (:data:`CLUSTER_COLUMNS`); None when nothing was thresholded.
    n_permutations : int or None
    notes : list of str
        Why something was not computed (joined: :attr:`note`).
    design : pandas.DataFrame
    contrast : ndarray (n_columns,)
    affine : ndarray (4, 4)
        The mask's (and maps') affine.
    """

    effect: np.ndarray
    n_participants: int
    dof: int
    design: pd.DataFrame
    contrast: np.ndarray
    requested: str
    alpha: float
    n_mask: int
    affine: np.ndarray | None = None
    t: np.ndarray | None = None
    z: np.ndarray | None = None
    p: np.ndarray | None = None
    fwe_p: np.ndarray | None = None
    surviving: np.ndarray | None = None
    threshold: float | None = None
    correction: str = "none"
    n_tested: int = 0
    n_surviving: int = 0
    clusters: pd.DataFrame | None = None
    n_permutations: int | None = None
    notes: list = field(default_factory=list)

    @property
    def note(self) -> str | None:
        """The notes joined into one sentence-separated text (None without notes)."""
        return " ".join(self.notes) or None

    @property
    def surviving_share(self) -> float:
        """Share of the brain mask above the threshold (0 when nothing was thresholded)."""
        return self.n_surviving / self.n_mask if self.n_mask else 0.0

    def threshold_text(self) -> str:
        """One line: the correction, q or alpha, threshold and surviving voxels (for captions and logs)."""
        if self.t is None:
            return f"effect only, not tested{': ' + self.note if self.note else ''}"
        n = f"{self.n_surviving} voxel(s) ({100 * self.surviving_share:.2f} % of the brain mask) survive"
        if self.correction == "fdr":  # FDR always sets a threshold (inf when no voxel survives)
            thr = f"z ≥ {self.threshold:.2f}" if np.isfinite(self.threshold) else "no z reaches it"  # type: ignore[arg-type]
            return f"FDR q = {self.alpha:g} (Benjamini-Hochberg, one-sided; {thr}): {n}"
        if self.correction == "fwe-permutation":
            thr = f"; z ≥ {self.threshold:.2f}" if self.threshold is not None else ""
            return f"FWE alpha = {self.alpha:g} (max-t, {self.n_permutations} sign flips/permutations{thr}): {n}"
        if self.correction == "not applied":
            return f"not thresholded: {self.note}"
        return "no correction, not thresholded"

    def summary(self) -> dict[str, Any]:
        """JSON-friendly dict of the model, correction and counts (for sidecars and manifests)."""
        return {
            "Design": {col: [float(v) for v in self.design[col]] for col in self.design.columns},
            "Contrast": [float(v) for v in self.contrast],
            "NumberOfParticipants": self.n_participants,
            "DegreesOfFreedom": self.dof if self.t is not None else None,
            "Sidedness": "one-sided (H1: effect > 0)",
            "CorrectionRequested": self.requested,
            "Correction": self.correction,
            "Alpha": self.alpha,
            "Threshold": None if self.threshold is None or not np.isfinite(self.threshold) else float(self.threshold),
            "ThresholdStatistic": "z" if self.threshold is not None else None,
            "NumberOfPermutations": self.n_permutations,
            "VoxelsInMask": self.n_mask,
            "VoxelsTested": self.n_tested,
            "VoxelsSurviving": self.n_surviving,
            "ShareOfMaskSurviving": self.surviving_share,
            "Note": self.note,
        }


def intercept_design(n: int) -> pd.DataFrame:
    """The one-sample design: one column ``intercept`` of ``n`` ones."""
    return pd.DataFrame({"intercept": np.ones(n)})


def permutations_possible(design: pd.DataFrame) -> int:
    """Distinct relabellings of ``design`` under the null: 2^n sign flips (intercept only), n! otherwise.

    For designs with more columns n! is an upper bound (ties in the design reduce it).
    """
    n = len(design)
    intercept_only = design.shape[1] == 1 and np.allclose(design.iloc[:, 0], design.iloc[0, 0])
    return 2**n if intercept_only else math.factorial(n)


def permutation_allowed(design: pd.DataFrame, alpha: float) -> tuple[bool, str | None]:
    """(allowed, reason): whether the smallest permutation p-value, 1/relabellings, can reach ``alpha``."""
    possible = permutations_possible(design)
    if 1.0 / possible <= alpha:
        return True, None
    need = math.ceil(math.log2(1.0 / alpha))
    return False, (
        f"FWE by sign flipping is impossible with {len(design)} participants: {possible} sign patterns give p >= "
        f"1/{possible} = {1 / possible:.3g} > alpha {alpha:g} (needs {need} participants)."
    )


def _contrast_vector(design, contrast):
    columns = list(design.columns)
    if contrast is None:
        if len(columns) != 1:
            raise ValueError(f"design has {len(columns)} columns {columns}: name the contrast")
        return np.ones(1)
    if isinstance(contrast, str):
        if contrast not in columns:
            raise ValueError(f"contrast {contrast!r} is not a design column {columns}")
        return np.array([1.0 if c == contrast else 0.0 for c in columns])
    vector = np.asarray(contrast, dtype=float).ravel()
    if vector.shape != (len(columns),):
        raise ValueError(f"contrast has {vector.size} weights, the design {len(columns)} columns")
    return vector


def _as_array(img):
    return np.asarray(img.dataobj if hasattr(img, "dataobj") else img, dtype=np.float64)


def group_test(maps: Sequence[Any], mask: nib.Nifti1Image, config: Config, test: bool = True) -> InferenceResult:
    """:func:`second_level_inference` of a one-sample test with the group level's settings.

    ``--group-threshold``, ``--group-alpha``, ``--group-permutations`` and ``--seed`` of ``config``
    (one place for the group maps of relevance and of the GLM).
    """
    return second_level_inference(
        maps,
        mask,
        correction=config.group.group_threshold,
        alpha=config.group.group_alpha,
        n_permutations=config.group.group_permutations,
        seed=config.seed,
        test=test,
    )


def second_level_inference(
    maps: Sequence[Any],
    mask: nib.Nifti1Image,
    design: pd.DataFrame | None = None,
    contrast: str | Sequence[float] | np.ndarray | None = None,
    correction: str = "fdr",
    alpha: float = 0.05,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    n_jobs: int = 1,
    test: bool = True,
) -> InferenceResult:
    """Fit a second-level model to per-participant maps, test one contrast and threshold it.

    Parameters
    ----------
    maps : list of nibabel.Nifti1Image or ndarray (x, y, z)
        One 3D map per participant (row of ``design``), all on ``mask``'s grid.
    mask : nibabel.Nifti1Image
        Brain mask (non-zero inside); its affine is the maps'.
    design : pandas.DataFrame or None
        Second-level design, one row per map (default: :func:`intercept_design`, a one-sample test).
    contrast : str or array-like (n_columns,) or None
        A design column or weights over the columns; None for a one-column design.
    correction : {"fdr", "fwe-permutation", "none"}
    alpha : float
        FDR q or FWE alpha, in (0, 1].
    n_permutations : int
        Sign flips / permutations for ``"fwe-permutation"``.
    seed : int
        Seed of the permutations.
    n_jobs : int
        Processes for the permutations.
    test : bool
        False: the effect only (e.g. for maps that are non-negative by construction, where a test
        of the mean against 0 says nothing about where).

    Returns
    -------
    InferenceResult

    Raises
    ------
    ValueError
        Mismatched maps / design / contrast, or an unknown correction.
    """
    import nibabel as nib

    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    stack = np.stack([_as_array(m) for m in maps])
    n = len(stack)
    design = intercept_design(n) if design is None else design.reset_index(drop=True)
    if len(design) != n:
        raise ValueError(f"{n} maps but {len(design)} design rows")
    vector = _contrast_vector(design, contrast)
    inside = np.asarray(mask.dataobj) > 0
    if stack.shape[1:] != inside.shape:
        raise ValueError(f"maps of shape {stack.shape[1:]} on a mask of shape {inside.shape}")
    x = design.to_numpy(dtype=float)
    rank = int(np.linalg.matrix_rank(x))
    beta = np.linalg.pinv(x) @ stack[:, inside]  # OLS, as nilearn's; the effect exists for any n
    effect = np.zeros(inside.shape, dtype=np.float32)
    effect[inside] = vector @ beta
    result = InferenceResult(
        effect=effect,
        n_participants=n,
        dof=n - rank,
        design=design,
        contrast=vector,
        requested=correction,
        alpha=float(alpha),
        n_mask=int(inside.sum()),
        affine=np.asarray(mask.affine),
    )
    if not test:
        result.correction = "not tested"
        return result
    if result.dof < MIN_DOF:
        result.notes.append(
            f"{n} participant(s), {result.dof} degree(s) of freedom: effect map only (a t-map needs "
            f"{MIN_DOF} degrees of freedom, {rank + MIN_DOF} participants for this design)."
        )
        result.correction = "not tested"
        return result

    from nilearn.glm.second_level import SecondLevelModel

    tested = inside & (stack.std(axis=0) > 0)
    result.n_tested = int(tested.sum())
    result.t = np.zeros(inside.shape, dtype=np.float32)
    result.z = np.zeros(inside.shape, dtype=np.float32)
    result.p = np.ones(inside.shape, dtype=np.float32)
    if not result.n_tested:
        result.notes.append("every voxel has the same value in every map: nothing to test.")
        result.correction = "not applied"
        return result
    tested_img = nib.Nifti1Image(tested.astype(np.uint8), mask.affine)
    imgs = [nib.Nifti1Image(a.astype(np.float32), mask.affine) for a in stack]
    model = SecondLevelModel(mask_img=tested_img, smoothing_fwhm=None, minimize_memory=True)
    model.fit(imgs, design_matrix=design)
    out = model.compute_contrast(vector, output_type="all")
    for name, key in (("t", "stat"), ("z", "z_score"), ("p", "p_value")):
        values = np.asarray(out[key].dataobj, dtype=np.float64)
        fill = 1.0 if name == "p" else 0.0
        values = np.where(tested & np.isfinite(values), values, fill)
        setattr(result, name, values.astype(np.float32))

    if correction == "fdr":
        from nilearn.glm import threshold_stats_img

        z_img = nib.Nifti1Image(result.z, mask.affine)
        with warnings.catch_warnings():  # no voxel survives: the threshold is inf, which nilearn warns about
            warnings.filterwarnings("ignore", message=".*must not exceed.*", category=UserWarning)
            _, thr = threshold_stats_img(
                z_img, mask_img=tested_img, alpha=alpha, height_control="fdr", cluster_threshold=0, two_sided=False
            )
        result.threshold = float(thr)
        result.surviving = tested & (result.z >= thr)
        result.correction = "fdr"
    elif correction == "fwe-permutation":
        allowed, reason = permutation_allowed(design, alpha)
        if not allowed:
            result.notes.append(reason)
            result.correction = "not applied"
        else:
            from nilearn.glm.second_level import non_parametric_inference

            LOGGER.info("group inference: %d sign flips/permutations over %d voxels", n_permutations, result.n_tested)
            logp = non_parametric_inference(
                imgs,
                design_matrix=design,
                second_level_contrast=vector,
                mask=tested_img,
                smoothing_fwhm=None,
                model_intercept=True,  # nilearn's default: adds no column when the tested variate is the intercept
                n_perm=int(n_permutations),
                two_sided_test=False,
                random_state=int(seed),
                n_jobs=int(n_jobs),
            )
            logp = np.asarray(logp.dataobj, dtype=np.float64)
            fwe_p = np.where(tested & np.isfinite(logp), 10.0 ** (-logp), 1.0)
            result.fwe_p = fwe_p.astype(np.float32)
            result.surviving = tested & (fwe_p <= alpha)
            result.n_permutations = int(n_permutations)
            result.correction = "fwe-permutation"
            result.threshold = float(result.z[result.surviving].min()) if result.surviving.any() else None
    if result.surviving is not None:
        result.n_surviving = int(result.surviving.sum())
        result.clusters = cluster_table(result.z, result.surviving, mask.affine)
    return result


def cluster_table(z: np.ndarray, surviving: np.ndarray, affine: np.ndarray) -> pd.DataFrame:
    """Clusters of the surviving voxels of a z-map, with peaks and sub-peaks (:data:`CLUSTER_COLUMNS`).

    Parameters
    ----------
    z : ndarray (x, y, z)
    surviving : ndarray of bool (x, y, z)
    affine : ndarray (4, 4)

    Returns
    -------
    pandas.DataFrame
        Empty (with its columns) when no voxel survives.
    """
    import nibabel as nib

    columns = list(CLUSTER_COLUMNS)
    if not surviving.any():
        return pd.DataFrame(columns=columns)
    from nilearn.reporting import get_clusters_table

    kept = np.where(surviving, z, 0.0).astype(np.float32)
    floor = float(kept[surviving].min())
    # every surviving voxel is >= floor; a hair below it keeps them all and nothing else (the rest is 0)
    stat_threshold = max(floor - 1e-6 * max(abs(floor), 1.0), 1e-12)
    table = get_clusters_table(
        nib.Nifti1Image(kept, affine),
        stat_threshold=stat_threshold,
        cluster_threshold=0,
        two_sided=False,
        min_distance=PEAK_DISTANCE_MM,
    )
    table = table.rename(
        columns={
            "Cluster ID": "cluster_id",
            "X": "x",
            "Y": "y",
            "Z": "z",
            "Peak Stat": "peak_stat",
            "Cluster Size (mm3)": "cluster_size_mm3",
        }
    )
    table["cluster_size_mm3"] = pd.to_numeric(table["cluster_size_mm3"].replace("", np.nan), errors="coerce")
    return table[columns].reset_index(drop=True)


def write_inference(
    result: InferenceResult,
    paths: Mapping[str, Path],
    sidecar: Mapping[str, Any],
    writer: Callable[[Path, np.ndarray, np.ndarray | None, dict[str, Any]], object] | None = None,
) -> dict[str, Path]:
    """Write the maps and the cluster table of one contrast; returns ``{kind: path}`` of what was written.

    Parameters
    ----------
    result : InferenceResult
    paths : dict
        ``{effect, t, z, p, fwe_p, clusters}`` paths
        (:func:`deeplight_bids.derivatives.naming.group_contrast_outputs`); the JSON sidecars go beside them.
    sidecar : dict
        Fields every sidecar shares (what the maps are, provenance); each map's gets
        ``Statistic`` and ``StatisticalModel`` (:meth:`InferenceResult.summary`) added.
    writer : callable or None
        ``writer(path, array, affine, sidecar)``; default: :func:`write_map` (float32 NIfTI in
        MNI space, written atomically, and its sidecar).

    Returns
    -------
    dict
        ``kind -> pathlib.Path`` for each file written (``effect`` always).
    """
    from deeplight_bids.derivatives import naming, sidecars  # deferred: loads nibabel and SciPy

    writer = writer or write_map
    model = result.summary()
    written: dict[str, Path] = {}
    descriptions = {
        "effect": "contrast estimate c·beta of the second-level model",
        "t": f"t statistic of the contrast (df = {result.dof})",
        "z": "z score with the same one-sided p-value as the t statistic (H1: effect > 0)",
        "p": "uncorrected one-sided p-value (H1: effect > 0); 1 outside the tested voxels",
        "fwe_p": f"FWE-corrected one-sided p-value (max-t over {result.n_permutations} sign flips/permutations)",
    }
    for kind in ("effect", "t", "z", "p", "fwe_p"):
        data = getattr(result, kind)
        if data is None:
            continue
        side = {**sidecar, "Statistic": kind, "StatisticDescription": descriptions[kind], "StatisticalModel": model}
        writer(paths[kind], data, result.affine, side)
        written[kind] = paths[kind]
    if result.clusters is not None:
        extra = {
            "Description": "clusters of the voxels above the corrected threshold of the z-map "
            f"({result.threshold_text()}); peaks and sub-peaks at least {PEAK_DISTANCE_MM:g} mm apart "
            "(nilearn get_clusters_table), MNI152NLin6Asym coordinates",
            **{k: v for k, v in sidecar.items() if k not in ("Description", "Sources")},
            "StatisticalModel": model,
        }
        write_tsv(paths["clusters"], result.clusters)
        write_json(
            naming.sidecar_of(paths["clusters"]),
            sidecars.table_sidecar(result.clusters.columns, CLUSTER_COLUMNS, extra),
        )
        written["clusters"] = paths["clusters"]
    return written


def write_map(
    path: str | os.PathLike[str], data: np.ndarray, affine: np.ndarray | None, sidecar: Mapping[str, Any]
) -> None:
    """Write a 3D map as float32 NIfTI (sform/qform code 4: MNI) with its JSON sidecar, atomically."""
    import nibabel as nib

    from deeplight_bids.derivatives import naming  # deferred: loads nibabel and SciPy

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    write_nifti(path, img)
    write_json(naming.sidecar_of(path), sidecar)

"""Offline synthetic BIDS dataset with fMRIPrep-style derivatives and planted signal.

:func:`make_synthetic_dataset` writes, without network access and in seconds:

* ``root/`` — a raw BIDS dataset: ``dataset_description.json``, ``README``,
  ``participants.tsv``, ``task-<task>_bold.json`` (``RepetitionTime``, ``TaskName``),
  ``task-<task>_events.json`` and per run ``sub-XX/func/sub-XX_task-<task>[_run-N]_bold.nii.gz``
  and ``..._events.tsv`` (onset, duration, trial_type).  The raw BOLD is a **stand-in**:
  a tiny valid 4D NIfTI (8 x 8 x 8 voxels of 4 mm, the run's number of volumes and
  TR) so that the BIDS validator accepts the dataset; nothing reads its voxels.
* ``root/derivatives/fmriprep/`` — a derivatives dataset (``DatasetType``
  ``"derivative"``, ``GeneratedBy`` names this generator, not fMRIPrep) with per run
  ``..._space-<space>_res-2_desc-preproc_bold.nii.gz`` and
  ``..._space-<space>_res-2_desc-brain_mask.nii.gz`` plus JSON sidecars.

The data
--------
* Grid: the reference grid (91 x 109 x 91, 2 mm, LAS; ``grid="reference"``), the same
  grid stored RAS (``grid="ras"``: data flipped along x, affine adjusted — the same
  voxels, for the orientation tests) or a 3 mm RAS grid of the same field of view
  (``grid="other"``, 61 x 73 x 61, ``res-3``: must be resampled).
* Brain: a synthetic ellipsoid (centre (0, -18, 14) mm, semi-axes (70, 90, 66) mm in
  MNI x, y, z), not a template brain mask: nilearn's bundled templates are not on the
  reference grid and TemplateFlow cannot download here.  Mean intensity ~1000,
  brighter in the centre.
* Design: a block design.  Each state (trial type) gets ``blocks_per_state`` blocks in
  a balanced random order (seeded per run): ``blocks_per_state`` rounds, each a random
  permutation of the states, never the same state twice in a row.  Rest separates the
  blocks; block (~2/3) and rest (~1/3) lengths are whole volumes chosen to fill the run
  after a 2-volume lead-in, leaving >= 3 volumes at the end.
* Signal: each state activates its own sphere (radius :data:`REGION_RADIUS` mm) at a
  fixed MNI coordinate (:data:`REGION_CENTERS`): ``lh`` (left hand) -> right motor
  cortex (x = +40 mm), ``rh`` -> left motor cortex (x = -40 mm), ``t`` -> medial,
  ``lf``/``rf`` -> right/left dorsal; other states take the next free coordinate of
  :data:`_SPARE_CENTERS`.  The time course is the state's boxcar convolved with the SPM
  HRF (:func:`nilearn.glm.first_level.compute_regressor`), scaled to a peak of
  ``signal`` percent of the mean (per participant x U(0.8, 1.2)).
* Noise: white Gaussian noise (SD ``noise`` percent of the mean), spatially smooth
  noise (6 random smooth maps, sigma 4 mm, with random time courses; SD ``noise / 2``
  percent) and a global linear drift of up to 1 %.
* Storage: int16 with ``scl_slope`` (nibabel picks the scaling), gzip.

Determinism: the data of ``sub-XX`` run ``N`` depend only on ``seed``, the participant
and run index and the size parameters, not on ``n_participants``.

State names: when ``task`` is an HCP task (``motor``, ``gambling``, ...; case-insensitive)
the trial types must be that task's HCP trial types and ``state_map`` maps them to the
HCP vocabulary (``lh -> MOTOR_lh``), so :func:`deeplight_bids.prepare.labels.resolve_state_map`
gives the same map without a user file.  For any other task ``state_map`` is the
identity (``trial_type -> trial_type``) and must be passed as a user state map.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from deeplight_bids._version import __version__
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_RES, REFERENCE_SHAPE, REFERENCE_SPACE
from deeplight_bids.states import HCP_TASK_STATES, hcp_state_map, hcp_task_name

__all__ = [
    "GRIDS",
    "REGION_CENTERS",
    "REGION_RADIUS",
    "SyntheticDataset",
    "SyntheticRun",
    "make_synthetic_dataset",
    "planted_truth",
    "region_center",
]

#: Radius (mm) of each state's activated sphere.
REGION_RADIUS = 10.0
#: Period (mm) of the sign stripes of ``make_synthetic_dataset(stripes=True)``.
STRIPE_PERIOD = 12.0
#: MNI coordinates (mm, x y z) of the regions of the HCP MOTOR trial types.
REGION_CENTERS = {
    "lh": (40.0, -20.0, 50.0),  # left hand -> right motor cortex
    "rh": (-40.0, -20.0, 50.0),  # right hand -> left motor cortex
    "t": (0.0, -10.0, 60.0),  # tongue -> medial (synthetic, not anatomical)
    "lf": (20.0, -40.0, 60.0),  # left foot -> right dorsal
    "rf": (-20.0, -40.0, 60.0),  # right foot -> left dorsal
}
#: Coordinates (mm) given, in order, to states without an entry in REGION_CENTERS.
_SPARE_CENTERS = (
    (-30.0, 20.0, 20.0),
    (30.0, 20.0, 20.0),
    (-30.0, -70.0, 10.0),
    (30.0, -70.0, 10.0),
    (0.0, 40.0, -10.0),
    (0.0, -60.0, 40.0),
    (-50.0, -30.0, 10.0),
    (50.0, -30.0, 10.0),
    (0.0, -30.0, 0.0),
)
_BRAIN_CENTER = np.array([0.0, -18.0, 14.0])
_BRAIN_RADII = np.array([70.0, 90.0, 66.0])
_MEAN_INTENSITY = 1000.0
_N_SMOOTH_MAPS = 6
_SMOOTH_SIGMA_MM = 4.0
_LEAD_IN = 2  # volumes of rest before the first block
_TAIL = 3  # volumes of rest after the last block (at least)

_RAS_AFFINE = np.array([[2.0, 0.0, 0.0, -90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]])
_OTHER_AFFINE = np.array(
    [[3.0, 0.0, 0.0, -90.0], [0.0, 3.0, 0.0, -126.0], [0.0, 0.0, 3.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
_OTHER_SHAPE = (61, 73, 61)
#: grid name -> (shape, affine, res label) of the stored derivatives.
GRIDS = {
    "reference": (REFERENCE_SHAPE, REFERENCE_AFFINE, REFERENCE_RES),
    "ras": (REFERENCE_SHAPE, _RAS_AFFINE, REFERENCE_RES),
    "other": (_OTHER_SHAPE, _OTHER_AFFINE, "3"),
}


@dataclass(frozen=True)
class SyntheticRun:
    """Files of one synthetic run (absolute paths)."""

    participant: str  #: label without ``sub-``
    run: int | None  #: run index, None when the dataset has one run per participant
    bold: Path  #: derivatives ``desc-preproc_bold.nii.gz``
    mask: Path  #: derivatives ``desc-brain_mask.nii.gz``
    events: Path  #: raw ``events.tsv``
    raw_bold: Path  #: raw stand-in ``bold.nii.gz``


@dataclass
class SyntheticDataset:
    """What :func:`make_synthetic_dataset` wrote, and the truth planted in it.

    Attributes
    ----------
    bids_dir, derivatives_dir : pathlib.Path
        Raw dataset root and ``derivatives/fmriprep``.
    participants : list of str
        Labels without ``sub-`` (``["01", "02", ...]``).
    task : str
        BIDS task label.
    states : tuple of str
        Trial types, each with its own region.
    t_r : float
        Repetition time in seconds.
    n_volumes, n_runs : int
    space, grid : str
        ``space`` entity of the derivatives and storage grid (see :data:`GRIDS`).
    state_map : dict
        ``trial_type -> state name`` (HCP names for HCP tasks, else identity).
    regions : dict of numpy.ndarray
        ``trial_type -> bool (91, 109, 91)``: the activated voxels on the reference
        grid, array order (x, y, z), whatever ``grid`` the files use.
    region_centers : dict
        ``trial_type -> (x, y, z)`` MNI coordinates in mm.
    brain_mask : numpy.ndarray
        bool (91, 109, 91), the ellipsoid brain on the reference grid (x, y, z).
    runs : list of SyntheticRun
    """

    bids_dir: Path | None
    derivatives_dir: Path | None
    participants: list
    task: str
    states: tuple
    t_r: float
    n_volumes: int
    n_runs: int
    space: str
    grid: str
    state_map: dict
    regions: dict
    region_centers: dict
    brain_mask: np.ndarray
    runs: list = field(default_factory=list)

    @property
    def regions_by_state(self) -> dict[str, np.ndarray]:
        """``state name -> bool (91, 109, 91)`` region (x, y, z)."""
        return {self.state_map[t]: mask for t, mask in self.regions.items()}


def region_center(states: Sequence[str], state: str) -> tuple[float, ...]:
    """MNI coordinate (mm) of ``state``'s region among ``states`` (see module doc)."""
    spare = iter(_SPARE_CENTERS)
    for name in states:
        center = REGION_CENTERS.get(name) or next(spare)
        if name == state:
            return tuple(float(c) for c in center)
    raise KeyError(state)


def planted_truth(
    task: str = "motor",
    states: Sequence[str] | None = None,
    region_radius: float = REGION_RADIUS,
    n_volumes: int = 60,
    t_r: float = 2.0,
) -> SyntheticDataset:
    """The truth :func:`make_synthetic_dataset` plants, without writing a dataset.

    Regions, brain mask, states and state map depend only on ``task``, ``states`` and
    ``region_radius`` (not on the seed, the participants or the data), so the demo gets
    them here instead of from a throw-away copy of the dataset.

    Returns
    -------
    SyntheticDataset
        With ``bids_dir`` and ``derivatives_dir`` None, no participants and no runs; the
        regions and the brain on the reference grid (x, y, z).
    """
    states, state_map, _ = _check_params(1, 1, task, n_volumes, t_r, states, 1.0, 1.0, "reference", 2)
    world = _world_coordinates(REFERENCE_SHAPE, REFERENCE_AFFINE)
    brain, _ = _ellipsoid(world)
    centers = {s: region_center(states, s) for s in states}
    regions = {s: _sphere(world, centers[s], region_radius) & brain for s in states}
    return SyntheticDataset(
        bids_dir=None,
        derivatives_dir=None,
        participants=[],
        task=task,
        states=tuple(states),
        t_r=float(t_r),
        n_volumes=int(n_volumes),
        n_runs=1,
        space=REFERENCE_SPACE,
        grid="reference",
        state_map=dict(state_map),
        regions=regions,
        region_centers=centers,
        brain_mask=brain,
    )


def make_synthetic_dataset(
    root: str | os.PathLike[str],
    n_participants: int = 4,
    n_runs: int = 1,
    task: str = "motor",
    n_volumes: int = 60,
    t_r: float = 2.0,
    states: Sequence[str] | None = None,
    seed: int = 0,
    noise: float = 1.0,
    signal: float = 2.0,
    space: str = REFERENCE_SPACE,
    grid: str = "reference",
    blocks_per_state: int = 2,
    region_radius: float = REGION_RADIUS,
    stripes: bool = False,
    stripe_low: float = -1.0,
    stripe_duty: float = 0.5,
) -> SyntheticDataset:
    """Write a small synthetic BIDS dataset with fMRIPrep-style derivatives.

    Parameters
    ----------
    root : str or pathlib.Path
        Directory of the raw dataset; created if needed.  Must not already hold a
        ``dataset_description.json`` (refuses to overwrite a dataset).
    n_participants : int, default=4
    n_runs : int, default=1
        Runs per participant; with 1 the file names have no ``run`` entity.
    task : str, default="motor"
        BIDS task label.  An HCP task (case-insensitive) makes the states HCP states.
    n_volumes : int, default=60
        Volumes per run; small values (e.g. 24) make fast test fixtures as long as
        every block still gets >= 2 volumes and >= 1 volume of rest.
    t_r : float, default=2.0
        Repetition time in seconds.
    states : sequence of str or None
        Trial types.  Default: ``("lh", "rh", "t")`` for MOTOR and non-HCP tasks, the
        task's HCP trial types otherwise.  At most 14.
    seed : int, default=0
    noise : float, default=1.0
        SD of the white noise in percent of the mean intensity (the smooth noise has
        half of it).
    signal : float, default=2.0
        Peak signal change of a region during its state, in percent of the mean.
    space : str, default="MNI152NLin6Asym"
        ``space`` entity of the derivatives.
    grid : {"reference", "ras", "other"}, default="reference"
        Storage grid of the derivatives (see :data:`GRIDS`).
    blocks_per_state : int, default=2
        Blocks of each state per run.
    region_radius : float, default=REGION_RADIUS
        Radius in mm of each state's activated sphere.
    stripes : bool, default=False
        If True, each region responds with a state-specific pattern of signs (stripes
        of period :data:`STRIPE_PERIOD` mm along x for the first state, y for the
        second, z for the third, ...) instead of uniformly.  Left- and right-hand
        regions are mirror images, which a network with global average pooling can
        only tell apart by subtle border effects; the stripes give each state a local
        signature too, so a brief fit (the demo) learns the states instead of
        memorising participants.  Region masks are unchanged.
    stripe_low : float, default=-1.0
        With ``stripes``, the response of the weak stripes relative to the strong ones
        (``-1``: a pattern of signs; ``0``: stripes of signal and stripes of none;
        ``0 < stripe_low < 1``: the whole region activates, alternately at full and at
        ``stripe_low`` strength).
    stripe_duty : float, default=0.5
        With ``stripes``, the share of each stripe period at full strength (the rest
        at ``stripe_low``).

    Returns
    -------
    SyntheticDataset
    """
    params = _check_params(n_participants, n_runs, task, n_volumes, t_r, states, noise, signal, grid, blocks_per_state)
    states, state_map, (block_len, rest_len) = params
    root = Path(root).absolute()
    if (root / "dataset_description.json").exists():
        raise FileExistsError(f"{root}: already holds a BIDS dataset; pass an empty or new directory.")
    deriv = root / "derivatives" / "fmriprep"
    width = max(2, len(str(n_participants)))
    participants = [f"{i:0{width}d}" for i in range(1, n_participants + 1)]
    shape, affine, res = GRIDS[grid]
    centers = {s: region_center(states, s) for s in states}

    # Geometry on the generation grid (the reference grid for "reference" and "ras").
    gen_shape, gen_affine = (REFERENCE_SHAPE, REFERENCE_AFFINE) if grid != "other" else (shape, affine)
    world = _world_coordinates(gen_shape, gen_affine)
    brain, rho2 = _ellipsoid(world)
    gen_regions = {s: _sphere(world, centers[s], region_radius) & brain for s in states}
    patterns = {
        s: (
            _stripes(world, i % 3, low=stripe_low, duty=stripe_duty)
            if stripes
            else np.ones(world.shape[:3], np.float32)
        )
        for i, s in enumerate(states)
    }
    ref_world = world if grid != "other" else _world_coordinates(REFERENCE_SHAPE, REFERENCE_AFFINE)
    ref_brain = brain if grid != "other" else _ellipsoid(ref_world)[0]
    ref_regions = (
        gen_regions
        if grid != "other"
        else {s: _sphere(ref_world, centers[s], region_radius) & ref_brain for s in states}
    )

    _write_raw_top(root, participants, task, t_r, states, state_map)
    _write_deriv_top(deriv)
    run_indices = [None] if n_runs == 1 else list(range(1, n_runs + 1))
    records = []
    for p_index, label in enumerate(participants):
        for r_index, run in enumerate(run_indices):
            rng = np.random.default_rng([seed, p_index, r_index])
            events = _block_design(rng, states, n_volumes, t_r, block_len, rest_len, blocks_per_state)
            data = _run_data(
                rng, events, states, n_volumes, t_r, brain, rho2, gen_regions, gen_affine, noise, signal, patterns
            )
            if grid == "ras":
                data = data[::-1]
            stem = f"sub-{label}_task-{task}" + (f"_run-{run}" if run is not None else "")
            func = root / f"sub-{label}" / "func"
            dfunc = deriv / f"sub-{label}" / "func"
            func.mkdir(parents=True, exist_ok=True)
            dfunc.mkdir(parents=True, exist_ok=True)
            raw_bold = func / f"{stem}_bold.nii.gz"
            events_tsv = func / f"{stem}_events.tsv"
            bold = dfunc / f"{stem}_space-{space}_res-{res}_desc-preproc_bold.nii.gz"
            mask = dfunc / f"{stem}_space-{space}_res-{res}_desc-brain_mask.nii.gz"
            _write_events(events_tsv, events)
            _write_raw_standin(raw_bold, n_volumes, t_r)
            _write_bold(bold, data, affine, t_r)
            mask_data = brain[::-1] if grid == "ras" else brain
            _write_mask(mask, mask_data, affine)
            source = f"bids:raw:sub-{label}/func/{raw_bold.name}"  # DatasetLinks "raw" = ../..
            resolution = f"{'2' if grid != 'other' else '3'} mm isotropic (synthetic)"
            _write_json(
                bold.with_name(bold.name.replace(".nii.gz", ".json")),
                {
                    "RepetitionTime": float(t_r),
                    "TaskName": task,
                    "SkullStripped": False,
                    "Resolution": resolution,
                    "Sources": [source],
                },
            )
            _write_json(
                mask.with_name(mask.name.replace(".nii.gz", ".json")),
                {"Type": "Brain", "Resolution": resolution, "Sources": [source]},
            )
            records.append(SyntheticRun(label, run, bold, mask, events_tsv, raw_bold))

    return SyntheticDataset(
        bids_dir=root,
        derivatives_dir=deriv,
        participants=participants,
        task=task,
        states=tuple(states),
        t_r=float(t_r),
        n_volumes=int(n_volumes),
        n_runs=int(n_runs),
        space=space,
        grid=grid,
        state_map=dict(state_map),
        regions=ref_regions,
        region_centers=centers,
        brain_mask=ref_brain,
        runs=records,
    )


# --------------------------------------------------------------------------- checks


def _check_params(n_participants, n_runs, task, n_volumes, t_r, states, noise, signal, grid, blocks_per_state):
    for name, value, low in (
        ("n_participants", n_participants, 1),
        ("n_runs", n_runs, 1),
        ("n_volumes", n_volumes, 1),
        ("blocks_per_state", blocks_per_state, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if not isinstance(task, str) or not task.isalnum():
        raise ValueError(f"task must be an alphanumeric BIDS label, got {task!r}.")
    if not (isinstance(t_r, (int, float)) and math.isfinite(t_r) and t_r > 0):
        raise ValueError(f"t_r must be a positive number of seconds, got {t_r!r}.")
    for name, value in (("noise", noise), ("signal", signal)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a non-negative percentage, got {value!r}.")
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}.")

    hcp = hcp_task_name(task)
    if states is None:
        states = ("lh", "rh", "t") if hcp in (None, "MOTOR") else HCP_TASK_STATES[hcp]
    states = tuple(str(s) for s in states)
    if not states or len(set(states)) != len(states):
        raise ValueError(f"states must be distinct trial types, got {states!r}.")
    if len(states) > len(REGION_CENTERS) + len(_SPARE_CENTERS):
        raise ValueError(f"at most {len(REGION_CENTERS) + len(_SPARE_CENTERS)} states, got {len(states)}.")
    for s in states:
        if not s or any(c.isspace() for c in s) or s == "n/a":
            raise ValueError(f"state {s!r} is not a usable trial_type.")
    if hcp is not None:
        full = hcp_state_map(task)
        wrong = [s for s in states if s not in full]
        if wrong:
            raise ValueError(
                f"task {task!r} is the HCP task {hcp}: states must be its trial types "
                f"({', '.join(sorted(full))}), got {', '.join(wrong)}; or use a non-HCP task label."
            )
        state_map = {s: full[s] for s in states}
    else:
        state_map = {s: s for s in states}

    n_blocks = len(states) * blocks_per_state
    per_block = (n_volumes - _LEAD_IN - _TAIL) // n_blocks
    if per_block < 3:
        need = _LEAD_IN + _TAIL + 3 * n_blocks
        raise ValueError(
            f"n_volumes={n_volumes} is too few for {n_blocks} blocks ({len(states)} states x {blocks_per_state}); "
            f"need at least {need}."
        )
    block_len = math.ceil(2 * per_block / 3)
    return states, state_map, (block_len, per_block - block_len)


# --------------------------------------------------------------------------- geometry


def _world_coordinates(shape, affine):
    """(x, y, z, 3) float32 world coordinates in mm of every voxel centre."""
    ijk = np.indices(shape, dtype=np.float32)
    return np.einsum("ij,j...->...i", affine[:3, :3].astype(np.float32), ijk) + affine[:3, 3].astype(np.float32)


def _ellipsoid(world):
    """Brain mask (bool) and squared normalised radius of the synthetic ellipsoid."""
    rho2 = (((world - _BRAIN_CENTER.astype(np.float32)) / _BRAIN_RADII.astype(np.float32)) ** 2).sum(axis=-1)
    return rho2 <= 1.0, rho2


def _stripes(world, axis, period=None, low=-1.0, duty=0.5):
    """1/``low`` stripes of ``period`` mm along world ``axis``, ``duty`` of each period at 1 (float32, grid shape)."""
    period = STRIPE_PERIOD if period is None else period
    if not -1.0 <= float(low) < 1.0:
        raise ValueError(f"stripe_low must be in [-1, 1), got {low!r}")
    if not 0.0 < float(duty) < 1.0:
        raise ValueError(f"stripe_duty must be in (0, 1), got {duty!r}")
    # sin >= cos(pi * duty) on a share `duty` of each period
    threshold = np.cos(np.pi * float(duty))
    return np.where(np.sin(2 * np.pi * world[..., axis] / period + 0.5) >= threshold, 1.0, float(low)).astype(
        np.float32
    )


def _sphere(world, center, radius=REGION_RADIUS):
    return ((world - np.asarray(center, dtype=np.float32)) ** 2).sum(axis=-1) <= float(radius) ** 2


# --------------------------------------------------------------------------- design and data


def _block_design(rng, states, n_volumes, t_r, block_len, rest_len, blocks_per_state):
    """Balanced random block order -> events DataFrame (onset, duration in s, trial_type)."""
    order = []
    for _ in range(blocks_per_state):  # rounds: each state once per round, in random order
        round_ = list(rng.permutation(len(states)))
        if order and len(states) > 1 and round_[0] == order[-1]:
            round_[0], round_[-1] = round_[-1], round_[0]  # no state twice in a row
        order.extend(int(i) for i in round_)
    per_block = block_len + rest_len
    onsets = [(_LEAD_IN + k * per_block) * t_r for k in range(len(order))]
    return pd.DataFrame(
        {
            "onset": [round(o, 6) for o in onsets],
            "duration": [round(block_len * t_r, 6)] * len(order),
            "trial_type": [states[i] for i in order],
        }
    )


def _run_data(rng, events, states, n_volumes, t_r, brain, rho2, regions, affine, noise, signal, patterns):
    """(x, y, z, n_volumes) float32 array, Fortran order, 0 outside the brain."""
    from nilearn.glm.first_level import compute_regressor
    from scipy.ndimage import gaussian_filter

    n_brain = int(brain.sum())
    baseline = (_MEAN_INTENSITY * (1.1 - 0.2 * rho2[brain])).astype(np.float32)  # (n_brain,)
    frame_times = np.arange(n_volumes) * t_r

    values = rng.standard_normal((n_volumes, n_brain), dtype=np.float32) * np.float32(noise / 100.0)
    voxel_mm = float(np.abs(affine[0, 0]))
    smooth = np.empty((_N_SMOOTH_MAPS, n_brain), dtype=np.float32)
    for k in range(_N_SMOOTH_MAPS):
        field_ = gaussian_filter(rng.standard_normal(brain.shape, dtype=np.float32), _SMOOTH_SIGMA_MM / voxel_mm)
        field_ = field_[brain]
        smooth[k] = field_ / max(float(field_.std()), 1e-12)
    courses = rng.standard_normal((n_volumes, _N_SMOOTH_MAPS)).astype(np.float32)
    values += (courses @ smooth) * np.float32(0.5 * noise / 100.0 / math.sqrt(_N_SMOOTH_MAPS))
    drift = rng.uniform(-0.01, 0.01) * np.linspace(-1.0, 1.0, n_volumes, dtype=np.float32)
    values += drift.astype(np.float32)[:, None]

    for s in states:
        rows = events[events["trial_type"] == s]
        condition = np.vstack([rows["onset"], rows["duration"], np.ones(len(rows))])
        regressor = compute_regressor(condition, "spm", frame_times, oversampling=16)[0][:, 0]
        peak = regressor.max()
        if peak > 0:
            regressor = regressor / peak
        amplitude = signal / 100.0 * rng.uniform(0.8, 1.2)
        columns = regions[s][brain]
        values[:, columns] += (amplitude * regressor).astype(np.float32)[:, None] * patterns[s][brain][columns][None, :]

    values += np.float32(1.0)
    values *= baseline[None, :]
    data = np.zeros(brain.shape + (n_volumes,), dtype=np.float32, order="F")
    data[brain] = values.T
    return data


# --------------------------------------------------------------------------- writers


def _write_json(path, content):
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _write_raw_top(root, participants, task, t_r, states, state_map):
    root.mkdir(parents=True, exist_ok=True)
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "deeplight-bids synthetic dataset",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["deeplight-bids synthetic generator"],
            "GeneratedBy": [{"Name": "deeplight-bids", "Version": __version__, "Description": "demo.synth"}],
        },
    )
    (root / "README").write_text(
        "Synthetic block-design task fMRI made by deeplight_bids.demo.synth for demos and tests.\n"
        "The raw *_bold.nii.gz files are tiny stand-ins; the data are the derivatives in\n"
        "derivatives/fmriprep (space-*_desc-preproc_bold), with planted activation.\n",
        encoding="utf-8",
    )
    pd.DataFrame({"participant_id": [f"sub-{p}" for p in participants]}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    _write_json(root / f"task-{task}_bold.json", {"RepetitionTime": float(t_r), "TaskName": task})
    _write_json(
        root / f"task-{task}_events.json",
        {
            "onset": {"Description": "Block onset", "Units": "s"},
            "duration": {"Description": "Block duration", "Units": "s"},
            "trial_type": {
                "Description": "Condition of the block",
                "Levels": {s: f"synthetic block of state {state_map[s]}" for s in states},
            },
        },
    )


def _write_deriv_top(deriv):
    deriv.mkdir(parents=True, exist_ok=True)
    _write_json(
        deriv / "dataset_description.json",
        {
            "Name": "Synthetic fMRIPrep-style derivatives",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "deeplight-bids-synth",
                    "Version": __version__,
                    "Description": "deeplight_bids.demo.synth: fMRIPrep-style outputs with planted signal",
                }
            ],
            "DatasetLinks": {"raw": "../.."},
            "SourceDatasets": [{"URL": "../.."}],
        },
    )
    (deriv / "README").write_text(
        "fMRIPrep-style derivatives (desc-preproc_bold, desc-brain_mask) made by\n"
        "deeplight_bids.demo.synth: synthetic data with planted block-design activation.\n",
        encoding="utf-8",
    )


def _write_events(path, events):
    table = events.copy()
    table["onset"] = [repr(float(v)) for v in table["onset"]]
    table["duration"] = [repr(float(v)) for v in table["duration"]]
    table.to_csv(path, sep="\t", index=False)


def _write_raw_standin(path, n_volumes, t_r):
    data = np.full((8, 8, 8, n_volumes), 100, dtype=np.int16)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -16.0
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((4.0, 4.0, 4.0, float(t_r)))
    nib.save(img, path)


def _write_bold(path, data, affine, t_r):
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.int16)  # nibabel chooses scl_slope/scl_inter on save
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(tuple(float(z) for z in np.abs(np.diag(affine)[:3])) + (float(t_r),))
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    nib.save(img, path)


def _write_mask(path, mask, affine):
    img = nib.Nifti1Image(np.asfortranarray(mask.astype(np.uint8)), affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    nib.save(img, path)

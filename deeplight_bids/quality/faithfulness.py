"""Faithfulness of relevance maps: deletion curves (Samek et al. 2017, "AOPC").

A map is faithful when removing the voxels it calls most relevant changes the decision
more than removing as many voxels in a random order.  "Removing" sets a voxel to 0, the
run's z-scored mean (the baseline of the prepared input), and only in-mask voxels are
ranked.  For each volume, the explained logit (the LRP target's) is recorded at the
removed fractions :data:`FRACTIONS` for both orders, with whether the decision (argmax)
still equals the unperturbed one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from deeplight_bids.derivatives.sidecars import described

#: Shares of the in-mask voxels removed, most relevant (or random) first: 0, 2, 10 and 50 % (each step five
#: times the last).  Chosen by precision at least cost (benchmarks/RESULTS.md, "Quality precision"): on two
#: runs of the demo's model the area between the curves with these 4 fractions is within 3 % of the area on a
#: 14-fraction grid (0 ... 50 %; the 8 fractions used before: within 1 %), far below its standard error over
#: volumes (~20 % at 12 volumes), which hardly depends on the fractions; each fraction above 0 costs two forward
#: passes per volume (6 instead of 14).
FRACTIONS = (0.0, 0.02, 0.10, 0.50)
#: Most perturbed inputs per network call of :func:`deletion_curves` (whole volumes' copies go together).
DELETION_BATCH = 16
#: Orders in which voxels are removed.
ORDERS = ("relevance", "random")

COLUMNS = described(
    {
        "volume": "0-based index of the volume in the run",
        "state": "state whose logit the relevance map explains (the LRP target)",
        "order": {
            "Description": "order of removal: 'relevance' (most relevant voxel first) or 'random' (seeded "
            "permutation of the in-mask voxels)",
            "Levels": {"relevance": "most relevant first", "random": "random order"},
        },
        "fraction": {
            "Description": "share of the in-mask voxels set to 0 (the z-scored baseline)",
            "Units": "arbitrary",
        },
        "n_removed": "number of in-mask voxels set to 0",
        "logit": {"Description": "logit of the explained state after removal", "Units": "arbitrary"},
        "logit_drop": {"Description": "logit at fraction 0 minus logit after removal", "Units": "arbitrary"},
        "decision_holds": {
            "Description": "1 if the predicted state after removal equals the one without removal",
            "Levels": {"0": "decision changed", "1": "decision holds"},
        },
    }
)


def sidecar(seed: int, n_mask_voxels: int, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON sidecar of a run's deletion-curves table.

    Parameters
    ----------
    seed : int
        Seed of the volume choice and the random orders.
    n_mask_voxels : int
        In-mask voxels of the run (the fractions' denominator).
    summary : dict
        :func:`area_between_curves` of the table.
    """
    return {
        **COLUMNS,
        "Description": "deletion curves: the explained logit as the most relevant (or randomly chosen) in-mask "
        "voxels are set to 0, the z-scored baseline, one row per volume x fraction x order",
        "Fractions": list(FRACTIONS),
        "Seed": seed,
        "NumberOfMaskVoxels": n_mask_voxels,
        "VolumeSelection": "stratified by predicted state (states take turns, seeded)",
        "Precision": "Summary.area_between_curves_se: standard error of the area over the volumes (the SD of the "
        "volumes' own areas / sqrt(volumes)); more volumes (--quality-volumes) lower it as 1 / sqrt(volumes)",
        "Summary": summary,
    }


def select_volumes(predicted: npt.ArrayLike, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` volume indices, stratified by predicted state.

    States take turns (in order of their index), each giving one of its volumes drawn
    without replacement in a seeded random order, so every predicted state is represented
    as evenly as its volumes allow.

    Parameters
    ----------
    predicted : array-like of int, shape (n_volumes,)
        Predicted state index of each volume.
    n : int
        Volumes wanted.
    seed : int

    Returns
    -------
    numpy.ndarray of int
        Sorted volume indices, ``min(n, n_volumes)`` of them.
    """
    predicted = np.asarray(predicted)
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(predicted == s))) for s in np.unique(predicted)]
    chosen: list[int] = []
    while len(chosen) < min(int(n), len(predicted)):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    return np.sort(np.asarray(chosen, dtype=int))


def removal_counts(n_mask: int, fractions: Sequence[float] = FRACTIONS) -> np.ndarray:
    """Voxels removed at each fraction: ``round(fraction * n_mask)``, shape (n_fractions,)."""
    return np.rint(np.asarray(fractions, dtype=float) * int(n_mask)).astype(int)


def deletion_inputs(
    x: np.ndarray,
    relevance: np.ndarray,
    mask_index: np.ndarray,
    rng: np.random.Generator,
    fractions: Sequence[float] = FRACTIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """The perturbed copies of one volume, for both orders.

    Parameters
    ----------
    x : numpy.ndarray
        One input volume, any shape (e.g. ``(z, y, x, 1)``); flattened in C order.
    relevance : numpy.ndarray
        Its relevance map, ``x.size`` values in the same C order (channel axis dropped).
    mask_index : numpy.ndarray of int
        Flat indices of the in-mask voxels.
    rng : numpy.random.Generator
        Draws the random order.
    fractions : sequence of float
        Must start with 0.

    Returns
    -------
    inputs : numpy.ndarray, shape (1 + 2 * (n_fractions - 1), *x.shape)
        The unperturbed volume, then one copy per removed fraction > 0 for each of
        :data:`ORDERS`.
    counts : numpy.ndarray of int, shape (n_fractions,)
    """
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    rel = np.asarray(relevance, dtype=np.float64).reshape(-1)[mask_index]
    # stable sort of -R: ties keep voxel order, so the result does not depend on the platform
    by_relevance = mask_index[np.argsort(-rel, kind="stable")]
    by_random = rng.permutation(mask_index)
    counts = removal_counts(len(mask_index), fractions)
    inputs = [flat]
    for order in (by_relevance, by_random):
        for k in counts[1:]:
            copy = flat.copy()
            copy[order[:k]] = 0.0
            inputs.append(copy)
    return np.stack(inputs).reshape((len(inputs), *np.shape(x))), counts


def deletion_curves(
    logits_fn: Callable[[np.ndarray], npt.ArrayLike],
    volumes: Sequence[int] | np.ndarray,
    x_of: Callable[[int], np.ndarray],
    relevance_of: Callable[[int], np.ndarray],
    targets: np.ndarray,
    mask_index: np.ndarray,
    seed: int = 0,
    fractions: Sequence[float] = FRACTIONS,
    known_logits: np.ndarray | None = None,
    max_inputs: int = DELETION_BATCH,
) -> pd.DataFrame:
    """Deletion curves of several volumes, one table.

    Parameters
    ----------
    logits_fn : callable
        ``inputs (n, *volume shape) -> logits (n, n_states)``; batched by the caller
        (e.g. :meth:`deeplight_bids.models.decode.Decoder.logits`).
    volumes : sequence of int
        Volume indices of the run.
    x_of, relevance_of : callable
        ``index -> volume`` and ``index -> relevance map`` (same flat order).
    targets : numpy.ndarray of int, shape (n_volumes_in_run,)
        Explained state index of each volume of the run.
    mask_index : numpy.ndarray of int
    seed : int
        The random order of volume ``v`` uses ``numpy.random.default_rng([seed, v])``.
    fractions : sequence of float
    known_logits : numpy.ndarray or None, shape (n_volumes_in_run, n_states)
        Logits of the unperturbed volumes when the caller has them (the decoding pass):
        then only the perturbed copies go through the network (``2 * (n_fractions - 1)``
        passes per volume instead of one more).
    max_inputs : int
        Most perturbed inputs per ``logits_fn`` call: the copies of several volumes go
        together (whole volumes, at least one), so that the network gets full batches
        (``logits_fn`` may split them; a GPU takes them at once); each input is one
        float32 volume (3.6 MB on the reference grid).

    Returns
    -------
    pandas.DataFrame
        One row per volume x fraction x order, columns of :data:`COLUMNS` with
        ``state`` as the target index (the caller names it).
    """
    fractions = tuple(float(f) for f in fractions)
    if fractions[0] != 0.0:
        raise ValueError(f"fractions must start with 0; got {fractions}")
    rows = []
    n_steps = len(fractions) - 1
    volumes = [int(v) for v in volumes]
    skip = 0 if known_logits is None else 1  # the unperturbed copy needs no pass when its logits are known
    per_volume = 1 + 2 * n_steps - skip
    group = max(1, int(max_inputs) // per_volume)
    for first in range(0, len(volumes), group):
        part = volumes[first : first + group]
        made = [
            deletion_inputs(x_of(v), relevance_of(v), mask_index, np.random.default_rng([seed, v]), fractions)
            for v in part
        ]
        counts = made[0][1]
        inputs = made[0][0][skip:] if len(made) == 1 else np.concatenate([m[0][skip:] for m in made])
        del made
        out = np.asarray(logits_fn(inputs), dtype=np.float64).reshape(len(part), per_volume, -1)
        del inputs
        for j, v in enumerate(part):
            logits = (
                out[j]
                if known_logits is None
                else np.concatenate([np.asarray(known_logits[v : v + 1], np.float64), out[j]])
            )
            target = int(targets[v])
            decision = int(logits[0].argmax())
            for o, order in enumerate(ORDERS):
                picks = [0] + list(range(1 + o * n_steps, 1 + (o + 1) * n_steps))
                for f, k, i in zip(fractions, counts, picks):
                    rows.append(
                        {
                            "volume": v,
                            "state": target,
                            "order": order,
                            "fraction": f,
                            "n_removed": int(k),
                            "logit": logits[i, target],
                            "logit_drop": logits[0, target] - logits[i, target],
                            "decision_holds": int(logits[i].argmax() == decision),
                        }
                    )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def area_between_curves(frame: pd.DataFrame) -> dict[str, Any]:
    """AOPC-style summaries of a deletion table.

    ``aopc_<order>``: the mean logit drop over the removal steps (fractions > 0), averaged
    over volumes (Samek et al. 2017's AOPC, in logit units).  ``area_between_curves``:
    the area between the mean random-order and relevance-order logit curves over the
    fraction axis (trapezoids), divided by the largest fraction, so it is a mean logit
    difference; positive when the relevance order lowers the explained logit faster.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of :func:`deletion_curves`.

    Returns
    -------
    dict
        ``aopc_relevance``, ``aopc_random``, ``area_between_curves``,
        ``decision_holds_at_max_relevance``, ``decision_holds_at_max_random`` (shares),
        ``n_volumes``, ``area_between_curves_se`` (its standard error over the volumes: the
        SD of the volumes' own areas / sqrt(volumes)); NaN values where the table is empty.
    """
    if frame.empty:
        nan = float("nan")
        return {
            "aopc_relevance": nan,
            "aopc_random": nan,
            "area_between_curves": nan,
            "decision_holds_at_max_relevance": nan,
            "decision_holds_at_max_random": nan,
            "n_volumes": 0,
            "area_between_curves_se": nan,
        }
    steps = frame[frame["fraction"] > 0]
    out = {f"aopc_{o}": float(steps.loc[steps["order"] == o, "logit_drop"].mean()) for o in ORDERS}
    mean = frame.groupby(["order", "fraction"])["logit"].mean()
    fr = np.asarray(sorted(frame["fraction"].unique()))
    gap = mean["random"].reindex(fr).to_numpy() - mean["relevance"].reindex(fr).to_numpy()
    width = fr[-1] - fr[0]
    out["area_between_curves"] = float(np.trapezoid(gap, fr) / width) if width > 0 else float("nan")
    last = frame[frame["fraction"] == fr[-1]]
    for o in ORDERS:
        out[f"decision_holds_at_max_{o}"] = float(last.loc[last["order"] == o, "decision_holds"].mean())
    out["n_volumes"] = int(frame["volume"].nunique())
    # the run's figure is the mean of the volumes' own areas (trapezoids are linear): its standard error
    per_volume = frame.pivot_table(index="volume", columns=["order", "fraction"], values="logit")
    gaps = (per_volume["random"] - per_volume["relevance"]).reindex(columns=fr).to_numpy()
    areas = np.trapezoid(gaps, fr, axis=1) / width if width > 0 else np.full(len(gaps), np.nan)
    out["area_between_curves_se"] = (
        float(np.std(areas, ddof=1) / np.sqrt(len(areas))) if len(areas) > 1 else float("nan")
    )
    return out

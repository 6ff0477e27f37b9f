"""Is decoding better than chance?  Per participant and task, and across participants.

* Permutation test that keeps the temporal structure: within each run, the state labels
  of whole blocks (maximal stretches of identical labelled states) are shuffled among the
  blocks, the predictions stay in place, and accuracy is recomputed.  Neighbouring
  volumes are correlated (haemodynamics, smoothing), so shuffling single volumes would
  understate the null's spread.  ``p = (1 + #{null >= observed}) / (1 + n_permutations)``.
  With few blocks per run there are few distinct permutations and ``p`` cannot be small:
  the table gives the number of blocks.
* Binomial test of the correct count against chance (1 / number of labelled states),
  one-sided; it treats volumes as independent, so it is optimistic and is shown beside
  the permutation test, not instead of it.
* Group: one-sample t test (one-sided) of participants' accuracy minus chance, and the
  count of participants whose permutation p is below ``alpha``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from deeplight_bids.derivatives.sidecars import described

PARTICIPANT_COLUMNS = described(
    {
        "participant_id": "participant",
        "n_runs": "runs pooled",
        "n_labelled": "labelled volumes with a state the model can output",
        "n_correct": "labelled volumes decoded correctly",
        "accuracy": "n_correct / n_labelled",
        "chance_level": "1 / number of distinct labelled states",
        "n_blocks": "blocks whose labels are permuted (summed over runs)",
        "n_permutations": "block-label permutations",
        "null_mean": "mean accuracy under the permuted block labels",
        "p_permutation": "one-sided permutation p-value of accuracy (block labels permuted within runs)",
        "p_binomial": (
            "one-sided binomial p-value of n_correct against chance_level (treats volumes as independent: optimistic)"
        ),
        "significant": {"Description": "1 if p_permutation < alpha", "Levels": {"0": "no", "1": "yes"}},
    }
)
GROUP_COLUMNS = described(
    {
        "n_participants": "participants with labelled volumes",
        "mean_accuracy_minus_chance": "mean over participants of accuracy - chance_level",
        "t": "one-sample t statistic of accuracy - chance_level against 0",
        "df": "degrees of freedom (n_participants - 1)",
        "p_t": "one-sided p-value of the t test (accuracy above chance)",
        "n_significant": "participants with p_permutation < alpha",
        "n_significant_binomial": "participants with p_binomial < alpha",
        "alpha": "significance level of the per-participant counts",
    }
)


def blocks(true_state: Iterable[Any]) -> list[tuple[int, int, Any]]:
    """Blocks of one run: ``[(start, stop, state), ...]`` over maximal stretches of one labelled state.

    Parameters
    ----------
    true_state : sequence
        Per volume state, ``None``/NaN where unlabelled.
    """
    out: list[tuple[int, int, Any]]
    start: Any  # None outside a block, the block's first index inside one
    out, start, prev = [], None, None
    for i, s in enumerate(list(true_state) + [None]):
        missing = s is None or (isinstance(s, float) and np.isnan(s))
        if missing or s != prev:
            if prev is not None:
                out.append((start, i, prev))
            start, prev = (None, None) if missing else (i, s)
    return out


def permutation_test(
    runs: Iterable[tuple[Iterable[Any], npt.ArrayLike]],
    n_permutations: int = 1000,
    seed: int | Sequence[int] = 0,
) -> dict[str, Any]:
    """Block-label permutation test of the accuracy of one participant's runs (pooled).

    Parameters
    ----------
    runs : sequence of (true_state, predicted_state)
        Per run, per-volume labels (``None``/NaN: unlabelled, left out) and predictions.
    n_permutations : int
    seed : int or sequence of int
        ``numpy.random.default_rng(seed)``.

    Returns
    -------
    dict
        ``n_labelled``, ``n_correct``, ``accuracy``, ``n_blocks``, ``null_mean``,
        ``p_permutation``, ``n_permutations``.
    """
    rng = np.random.default_rng(seed)
    observed, n_lab, n_blocks = 0, 0, 0
    null = np.zeros(int(n_permutations))
    for true_state, predicted in runs:
        predicted = np.asarray(predicted, dtype=object)
        run_blocks = blocks(true_state)
        if not run_blocks:
            continue
        labels = sorted({b[2] for b in run_blocks} | set(predicted.tolist()), key=str)
        index = {s: i for i, s in enumerate(labels)}
        # hits[b, s]: volumes of block b predicted as state s
        hits = np.zeros((len(run_blocks), len(labels)), dtype=np.int64)
        for b, (start, stop, _) in enumerate(run_blocks):
            for p in predicted[start:stop]:
                hits[b, index[p]] += 1
        block_label = np.array([index[b[2]] for b in run_blocks])
        rows = np.arange(len(run_blocks))
        observed += int(hits[rows, block_label].sum())
        n_lab += int(sum(stop - start for start, stop, _ in run_blocks))
        n_blocks += len(run_blocks)
        perms = np.argsort(rng.random((int(n_permutations), len(run_blocks))), axis=1)
        null += hits[rows, block_label[perms]].sum(axis=1)
    if n_lab == 0:
        return {
            "n_labelled": 0,
            "n_correct": 0,
            "accuracy": np.nan,
            "n_blocks": 0,
            "null_mean": np.nan,
            "p_permutation": np.nan,
            "n_permutations": int(n_permutations),
        }
    return {
        "n_labelled": n_lab,
        "n_correct": observed,
        "accuracy": observed / n_lab,
        "n_blocks": n_blocks,
        "null_mean": float(null.mean() / n_lab),
        "p_permutation": float((1 + np.sum(null >= observed)) / (1 + len(null))),
        "n_permutations": int(n_permutations),
    }


def participant_table(
    runs_by_participant: Mapping[str, Sequence[tuple[Sequence[Any], Sequence[Any]]]],
    n_permutations: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per participant (runs pooled) with both tests.

    Parameters
    ----------
    runs_by_participant : dict
        ``participant label -> [(true_state, predicted_state), ...]`` per run.
    n_permutations, seed : int
        Participant ``p`` uses ``numpy.random.default_rng([seed, crc32(p)])``.
    alpha : float

    Returns
    -------
    pandas.DataFrame
        Columns of :data:`PARTICIPANT_COLUMNS`.
    """
    rows = []
    for subject, runs in sorted(runs_by_participant.items()):
        test = permutation_test(runs, n_permutations, seed=[int(seed), zlib.crc32(str(subject).encode())])
        states = {s for true_state, _ in runs for (_, _, s) in blocks(true_state)}
        chance = 1.0 / len(states) if states else np.nan
        p_binom = (
            float(stats.binomtest(test["n_correct"], test["n_labelled"], chance, alternative="greater").pvalue)
            if test["n_labelled"]
            else np.nan
        )
        rows.append(
            {
                "participant_id": f"sub-{subject}",
                "n_runs": len(runs),
                "chance_level": chance,
                **test,
                "p_binomial": p_binom,
                "significant": int(test["p_permutation"] < alpha) if np.isfinite(test["p_permutation"]) else 0,
            }
        )
    return pd.DataFrame(rows, columns=list(PARTICIPANT_COLUMNS))


def group_test(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One-sample t test of accuracy - chance over participants, and counts of significant participants.

    Returns
    -------
    pandas.DataFrame
        One row, columns of :data:`GROUP_COLUMNS`; t and p NaN for fewer than 2 participants.
    """
    diff = (table["accuracy"] - table["chance_level"]).dropna().to_numpy(dtype=float)
    t = p = np.nan
    if len(diff) >= 2 and np.ptp(diff) > 0:
        res = stats.ttest_1samp(diff, 0.0, alternative="greater")
        t, p = float(res.statistic), float(res.pvalue)
    row = {
        "n_participants": len(diff),
        "mean_accuracy_minus_chance": float(diff.mean()) if len(diff) else np.nan,
        "t": t,
        "df": max(len(diff) - 1, 0),
        "p_t": p,
        "n_significant": int(table["significant"].sum()),
        "n_significant_binomial": int((table["p_binomial"] < alpha).sum()),
        "alpha": alpha,
    }
    return pd.DataFrame([row], columns=list(GROUP_COLUMNS))


def runs_by_participant(
    run_records: Iterable[Any],  # group.stats.RunRecord: the group layer, not imported here (tests/test_layers.py)
) -> dict[str, list[tuple[list[Any], list[Any]]]]:
    """``participant -> [(true_state, predicted_state), ...]`` from group-level run records (labelled only)."""
    out: dict[str, list[tuple[list[Any], list[Any]]]] = {}
    for rec in sorted(run_records, key=lambda r: r.label):
        frame = rec.read()
        true = frame["true_state"].astype(object).where(frame["true_state"].notna() & frame["correct"].notna(), None)
        out.setdefault(rec.subject, []).append((list(true), list(frame["predicted_state"])))
    return out

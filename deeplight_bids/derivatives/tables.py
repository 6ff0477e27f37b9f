"""The participant level's tables: per-volume predictions, per-participant accuracy, the job's run table."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from deeplight_bids.exceptions import OutputError
from deeplight_bids.utils.tsv import read_tsv

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Protocol

    class _RunOutcome(Protocol):
        """What the run table reads of a run's result (``deeplight_bids.workflows.run.RunResult``)."""

        @property
        def label(self) -> str: ...
        @property
        def status(self) -> str: ...
        @property
        def detail(self) -> str | None: ...


def predictions_frame(
    states: Sequence[str],
    t_r: float,
    labels: Sequence[str | None],
    true_idx: np.ndarray,
    pred_idx: np.ndarray,
    probs: np.ndarray,
    targets: np.ndarray | None = None,
    in_training: int | None = None,
) -> pd.DataFrame:
    """One row per volume of a run (``*_desc-predictions_timeseries.tsv``).

    Parameters
    ----------
    states : sequence of str
        Model output states, in output order.
    t_r : float
        Repetition time (s): ``onset = volume * t_r``.
    labels : sequence of (str or None), length n_volumes
        True state per volume (None: unlabelled).
    true_idx, pred_idx : ndarray of int, shape (n_volumes,)
        Index into ``states`` of the true (-1: none the model can output) and predicted state.
    probs : ndarray, shape (n_volumes, n_states)
        Softmax probabilities.
    targets : ndarray of int, shape (n_volumes,), or None
        Explained state per volume (-1: none); None without LRP (no ``lrp_target`` column).
    in_training : int or None
        1/0: the participant was/was not in the model's training set (model card); None: unknown.
    """
    n_vol = len(labels)
    frame = pd.DataFrame(
        {
            "volume": np.arange(n_vol),
            "onset": np.arange(n_vol) * float(t_r),
            "true_state": [s if s is not None else None for s in labels],
            "predicted_state": [states[i] for i in pred_idx],
            "correct": [None if t < 0 else int(p == t) for p, t in zip(pred_idx, true_idx)],
            "training_participant": [in_training] * n_vol,
        }
    )
    frame["training_participant"] = frame["training_participant"].astype("Int64")
    if targets is not None:
        frame["lrp_target"] = [states[t] if t >= 0 else None for t in targets]
    for i, state in enumerate(states):
        frame[f"prob_{state}"] = probs[:, i]
    frame["correct"] = frame["correct"].astype("Int64")
    return frame


def in_training_set(card: Mapping[str, Any] | None, subject: str | None) -> int | None:
    """1/0 when the model card lists its training participants, else None (unknown, e.g. published weights)."""
    trained_on = card.get("training_participants") if card else None
    if trained_on and subject is not None:
        return int(str(subject) in {str(p).removeprefix("sub-") for p in trained_on})
    return None


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A predictions table as written (``n/a`` as missing).

    Raises
    ------
    deeplight_bids.exceptions.OutputError
        The file is missing, empty, truncated or not a predictions table: one line naming
        it and the fix (exit code 5), never a pandas traceback.
    """
    try:
        frame = read_tsv(path, allow_empty=False)
        missing = {"volume", "predicted_state", "correct"} - set(frame.columns)
        if missing:
            raise ValueError(f"no column {', '.join(sorted(missing))}")
        if frame["volume"].dtype.kind not in "iu":
            raise ValueError("its volume column is not whole numbers")
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise OutputError(
            f"{path}: damaged ({reason}); re-run the participant level for this participant (with --overwrite if "
            "it says the outputs exist)."
        ) from None
    return frame


def accuracy_row(label: str, task: str, frame: pd.DataFrame) -> dict[str, Any]:
    """One run's row of the participant's accuracy summary, from its predictions table."""
    labelled = frame["correct"].notna()
    n_lab = int(labelled.sum())
    n_cor = int(frame.loc[labelled, "correct"].sum())
    return {
        "run": label,
        "task": task,
        "n_volumes": len(frame),
        "n_labelled": n_lab,
        "n_correct": n_cor,
        "accuracy": n_cor / n_lab if n_lab else np.nan,
    }


def accuracy_summary(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The participant's accuracy summary: the runs' rows, then one ``all`` row per task (runs pooled)."""
    summary = pd.DataFrame(rows)
    for task, group in summary.groupby("task"):
        n_lab = group["n_labelled"].sum()
        n_cor = group["n_correct"].sum()
        summary.loc[len(summary)] = {
            "run": "all",
            "task": task,
            "n_volumes": group["n_volumes"].sum(),
            "n_labelled": n_lab,
            "n_correct": n_cor,
            "accuracy": n_cor / n_lab if n_lab else np.nan,
        }
    return summary


def run_table(results: Iterable[_RunOutcome]) -> pd.DataFrame:
    """What happened to every run of a job (``run``, ``status``, ``detail``): read by the group report."""
    return pd.DataFrame(
        [{"run": r.label, "status": r.status, "detail": r.detail} for r in results], columns=["run", "status", "detail"]
    )


def format_results(results: Sequence[_RunOutcome]) -> str:
    """The job's closing summary as text: one line per run, then the counts per status."""
    lines = [f"{'run':<48} {'status':<8} detail"]
    lines += [f"{r.label:<48} {r.status:<8} {r.detail}" for r in results]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)

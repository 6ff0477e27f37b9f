"""Decoding accuracy of predicted against true states (participant, held-out and group tables)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["decoding_metrics"]


def decoding_metrics(true: Sequence[Any] | np.ndarray, pred: Sequence[Any] | np.ndarray) -> dict[str, Any]:
    """dict(n_labelled, n_correct, accuracy, balanced_accuracy, chance_level, n_states)."""
    true = np.asarray(true, dtype=object)
    pred = np.asarray(pred, dtype=object)
    n = len(true)
    if n == 0:
        return {
            "n_labelled": 0,
            "n_correct": 0,
            "accuracy": np.nan,
            "balanced_accuracy": np.nan,
            "chance_level": np.nan,
            "n_states": 0,
        }
    hit = true == pred
    states = sorted(set(true))
    recalls = [hit[true == s].mean() for s in states]
    return {
        "n_labelled": n,
        "n_correct": int(hit.sum()),
        "accuracy": float(hit.mean()),
        "balanced_accuracy": float(np.mean(recalls)),
        "chance_level": 1.0 / len(states),
        "n_states": len(states),
    }

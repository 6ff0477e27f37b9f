"""Participant splits for fine-tuning: a held-out participant never chooses anything.

In ``--cv-folds`` mode, early stopping uses an inner validation participant taken from
the fold's training participants, never the held-out fold.  In the single-split mode
without early stopping the held-out participants' loss is logged per epoch but chooses
nothing; with early stopping a validation participant is drawn (seeded) from the training
participants (issue 13).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

from deeplight_bids.exceptions import UsageError

LOGGER = logging.getLogger("deeplight_bids")

#: Share of participants held out in the one-split mode (at least one).
VALIDATION_SHARE = 0.2


def make_folds(participants: Iterable[str], k: int, seed: int) -> list[list[str]]:
    """Participant-wise folds: shuffled with ``seed``, dealt round-robin; each fold sorted."""
    order = list(np.random.default_rng(int(seed)).permutation(sorted(participants)))
    return [sorted(str(p) for p in order[i::k]) for i in range(k)]


def participant_splits(
    participants: Iterable[str],
    cv_folds: int = 0,
    val_participants: Sequence[str] | None = None,
    early_stopping_patience: int = 0,
    seed: int = 0,
    log: logging.Logger = LOGGER,
) -> list[tuple[str, list[str], list[str], list[str]]]:
    """Training, validation and held-out participants of every fold.

    Parameters
    ----------
    participants : list of str
        Labels (without ``sub-``) of the participants with labelled volumes, sorted.
    cv_folds : int
        ``--cv-folds``: K-fold cross-validation (0: one split).
    val_participants : sequence of str or None
        ``--val-participants`` of the one-split mode (default: the last 20 %).
    early_stopping_patience : int
        Non-zero: a validation participant apart from the held-out ones is needed.
    seed : int
        Draws the folds and the inner validation participants.

    Returns
    -------
    list of tuple
        ``(fold name, training, validation, held out)``; the fold name is ``"fold-<k>"``,
        or ``""`` in the one-split mode.  Without early stopping in the one-split mode the
        validation list *is* the held-out list (its loss is logged and chooses nothing).
    """
    parts = list(participants)
    if cv_folds:
        k = int(cv_folds)
        if k < 2 or k > len(parts):
            raise UsageError(f"--cv-folds {k}: needs 2 <= K <= the number of participants ({len(parts)}).")
        out = []
        for i, held in enumerate(make_folds(parts, k, seed), start=1):
            train = [p for p in parts if p not in held]
            val = []
            if early_stopping_patience:
                if len(train) >= 3:
                    # inner validation participant (never the held-out fold)
                    val = [list(np.random.default_rng([seed, i]).permutation(train))[0]]
                    train = [p for p in train if p not in val]
                else:
                    log.warning(
                        "fine-tune: fold %d has %d training participants; no inner validation "
                        "participant for early stopping (needs 3)",
                        i,
                        len(train),
                    )
            out.append((f"fold-{i}", sorted(train), sorted(val), held))
        return out
    if val_participants:
        val = sorted(str(v) for v in val_participants)
        unknown = [v for v in val if v not in parts]
        if unknown:
            raise UsageError(
                f"--val-participants {' '.join(unknown)}: not among the participants with labelled "
                f"volumes ({', '.join(parts)})."
            )
    else:
        n_val = max(1, int(round(VALIDATION_SHARE * len(parts))))
        val = parts[-n_val:]
    train = [p for p in parts if p not in val]
    if not train:
        raise UsageError("--val-participants leaves no participant for training.")
    if not early_stopping_patience:
        # the held-out participants' loss is only logged per epoch: it chooses nothing
        return [("", train, val, val)]
    # early stopping chooses the epoch: its validation participant must not be a held-out one,
    # or the held-out accuracy is biased (issue 13); take it from the training participants
    if len(train) < 2:
        raise UsageError(
            f"--early-stopping-patience without --cv-folds needs a validation participant apart from "
            f"the held-out ones ({', '.join(val)}) and at least one training participant; there "
            f"are only {len(parts)} participants: drop --early-stopping-patience or add participants."
        )
    inner = [str(np.random.default_rng([seed, 0]).permutation(train)[0])]
    return [("", [p for p in train if p not in inner], inner, val)]

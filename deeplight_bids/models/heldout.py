"""Held-out evaluation of fine-tuned models and its tables.

Held-out accuracy is measured only on participants the model never saw in training.
Outputs in ``OUTPUT_DIR/models/<name>/``: ``<name>_desc-heldout_predictions.tsv`` (one row
per held-out volume), ``<name>_desc-heldout_summary.{tsv,json}`` (per participant and
pooled); and, once models from ``--init scratch`` and ``--init pretrained`` exist for the
same folds, ``OUTPUT_DIR/group/finetune-comparison_arch-<A>[_frozen].{tsv,json}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.writers import write_json, write_tsv
from deeplight_bids.models.decode import softmax
from deeplight_bids.models.metrics import decoding_metrics

if TYPE_CHECKING:
    import os

    from deeplight_bids.prepare.cache import Samples, VolumeReader

LOGGER = logging.getLogger("deeplight_bids")


def predict_logits(model: Any, reader: VolumeReader, samples: Samples, batch_size: int) -> np.ndarray:
    """Logits ``(n_samples, n_states)`` float32 of ``samples`` read in batches of ``batch_size``."""
    out = np.zeros((len(samples), int(model.output_shape[-1])), np.float32)
    for start in range(0, len(samples), batch_size):
        stop = min(start + batch_size, len(samples))
        out[start:stop] = np.asarray(model(reader.batch(samples, start, stop), training=False), np.float32)
    return out


def accuracy(
    labels: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray
) -> tuple[float, float] | tuple[None, None]:
    """``(accuracy, balanced accuracy)`` of predicted vs true labels; ``(None, None)`` when empty.

    As :func:`deeplight_bids.models.metrics.decoding_metrics` (balanced: the mean of the
    per-state recalls of the states present).
    """
    if not len(labels):
        return None, None
    metrics = decoding_metrics(np.asarray(labels).tolist(), np.asarray(pred).tolist())
    return metrics["accuracy"], metrics["balanced_accuracy"]


def prediction_rows(samples: Samples, logits: np.ndarray, states: Sequence[str], fold: str) -> list[dict[str, Any]]:
    """One row per held-out volume: true and predicted state, correctness and the softmax probabilities."""
    pred = logits.argmax(axis=1)
    probs = softmax(logits, np.float32)  # float32 as the fine-tuning tables have always been written
    rows = []
    for i in range(len(samples)):
        row = {
            "participant_id": f"sub-{samples.subject[i]}",
            "run": samples.run_label[i],
            "volume": int(samples.volume[i]),
            "true_state": states[samples.label[i]],
            "predicted_state": states[pred[i]],
            "correct": int(pred[i] == samples.label[i]),
            "fold": fold or "single",
            "training_participant": 0,
        }
        row.update({f"prob_{s}": float(probs[i, j]) for j, s in enumerate(states)})
        rows.append(row)
    return rows


def fold_metrics(
    state: dict[str, Any], labels: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, n_states: int
) -> dict[str, Any]:
    """Training history and held-out accuracy of one fold (``state``: see :func:`~.train.fit_resumable`)."""
    history = state["history"]
    last = history[-1] if history else {}
    best = next((h for h in history if h["epoch"] == state.get("best_epoch")), last)
    acc, bacc = accuracy(labels, pred)
    return {
        "train_accuracy_last_epoch": last.get("accuracy"),
        "train_loss_last_epoch": last.get("loss"),
        "validation_accuracy": best.get("val_accuracy"),
        "validation_loss": best.get("val_loss"),
        "heldout_accuracy": acc,
        "heldout_balanced_accuracy": bacc,
        "heldout_volumes": int(len(labels)),
        "chance": 1.0 / n_states,
        "epochs_done": state["epoch"],
        "best_epoch": state.get("best_epoch"),
        "stopped_early": bool(state.get("stopped_early")),
        "resumed_from_epoch": state["resumed_from"],
    }


def write_heldout_tables(
    model_dir: str | os.PathLike, name: str, preds: list[dict[str, Any]], states: Iterable[str]
) -> list[dict[str, Any]]:
    """Write the predictions and per-participant summary TSVs.

    Returns
    -------
    rows : list of dict
        Per-participant rows, then the pooled ``"all"`` row.
    """
    import pandas as pd

    outputs = naming.finetune_heldout_outputs(model_dir, name)
    states = list(states)
    frame = pd.DataFrame(preds)
    write_tsv(outputs["predictions"], frame)
    rows = []
    for subject, part in frame.groupby("participant_id", sort=True):
        acc, bacc = accuracy(
            [states.index(s) for s in part["true_state"]], [states.index(s) for s in part["predicted_state"]]
        )
        rows.append(
            {
                "participant_id": subject,
                "fold": part["fold"].iloc[0],
                "n_volumes": len(part),
                "n_correct": int(part["correct"].sum()),
                "accuracy": acc,
                "balanced_accuracy": bacc,
                "chance_level": 1.0 / len(states),
            }
        )
    acc, bacc = accuracy(
        [states.index(s) for s in frame["true_state"]], [states.index(s) for s in frame["predicted_state"]]
    )
    rows.append(
        {
            "participant_id": "all",
            "fold": "all",
            "n_volumes": len(frame),
            "n_correct": int(frame["correct"].sum()),
            "accuracy": acc,
            "balanced_accuracy": bacc,
            "chance_level": 1.0 / len(states),
        }
    )
    write_tsv(outputs["summary"], pd.DataFrame(rows))
    return rows


def heldout_summaries(output_dir: str | os.PathLike) -> list[tuple[float, dict[str, Any]]]:
    """``[(modification time, summary dict)]`` of every ``OUTPUT_DIR/models/*/*_desc-heldout_summary.json``.

    Unreadable files are left out (a fine-tuning still writing, or a damaged file).
    """
    out = []
    for path in sorted(Path(output_dir).glob(naming.FINETUNE_SUMMARY_GLOB)):
        try:
            out.append((path.stat().st_mtime, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def write_comparison(output_dir: str | os.PathLike, log: logging.Logger = LOGGER) -> list[Path]:
    """Side-by-side held-out accuracy of ``--init scratch`` and ``--init pretrained`` on the same folds.

    Scans ``OUTPUT_DIR/models/*/*_desc-heldout_summary.json``; for every architecture with
    both inits on the same participant folds and states (the newest summary of each init,
    frozen and full fine-tuning kept apart), writes
    ``OUTPUT_DIR/group/finetune-comparison_arch-<A>[_frozen].{tsv,json}``.  Returns the written paths.
    """
    import pandas as pd

    output_dir = Path(output_dir)
    groups: dict[tuple[Any, ...], dict[str, tuple[float, dict[str, Any]]]] = {}
    for mtime, s in heldout_summaries(output_dir):
        folds = tuple(tuple(f["heldout_participants"]) for f in s.get("folds", []))
        key = (s["architecture"], bool(s.get("freeze_body")), tuple(s["states"]), folds)
        slot = groups.setdefault(key, {})
        if s["init"] not in slot or slot[s["init"]][0] < mtime:
            slot[s["init"]] = (mtime, s)
    written = []
    for (arch, frozen, states, _folds), by_init in sorted(groups.items()):
        if not {"scratch", "pretrained"} <= set(by_init):
            continue
        scratch, pretrained = by_init["scratch"][1], by_init["pretrained"][1]
        rows = []
        for fs, fp in zip(scratch["folds"], pretrained["folds"]):
            rows.append(
                {
                    "fold": fs["fold"],
                    "heldout_participants": " ".join(fs["heldout_participants"]),
                    "n_volumes": fs["heldout_volumes"],
                    "accuracy_scratch": fs["heldout_accuracy"],
                    "accuracy_pretrained": fp["heldout_accuracy"],
                    "difference": fp["heldout_accuracy"] - fs["heldout_accuracy"],
                    "balanced_accuracy_scratch": fs["heldout_balanced_accuracy"],
                    "balanced_accuracy_pretrained": fp["heldout_balanced_accuracy"],
                }
            )
        rows.append(
            {
                "fold": "all",
                "heldout_participants": "all",
                "n_volumes": scratch["n_volumes"],
                "accuracy_scratch": scratch["heldout_accuracy_pooled"],
                "accuracy_pretrained": pretrained["heldout_accuracy_pooled"],
                "difference": pretrained["heldout_accuracy_pooled"] - scratch["heldout_accuracy_pooled"],
                "balanced_accuracy_scratch": scratch["heldout_balanced_accuracy_pooled"],
                "balanced_accuracy_pretrained": pretrained["heldout_balanced_accuracy_pooled"],
            }
        )
        tsv = naming.finetune_comparison_output(output_dir, arch, frozen)
        write_tsv(tsv, pd.DataFrame(rows))
        write_json(
            naming.sidecar_of(tsv),
            {
                "Description": "held-out accuracy of models fitted from scratch and from the pretrained body on the "
                "same participant folds (each participant predicted by a model that never saw it)",
                "architecture": arch,
                "freeze_body": frozen,
                "states": list(states),
                "chance": 1.0 / len(states),
                "models": {"scratch": scratch["name"], "pretrained": pretrained["name"]},
                "settings": {
                    init: {k: s[k] for k in ("learning_rate", "batch_size", "epochs", "seed")}
                    for init, s in (("scratch", scratch), ("pretrained", pretrained))
                },
                "rows": rows,
            },
        )
        written.append(tsv)
        log.info("fine-tune: comparison scratch vs pretrained (%s) written to %s", arch, tsv)
    return written

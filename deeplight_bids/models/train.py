"""Fitting DeepLight: checkpointed, resumable Keras training (``group --finetune`` and the demo)."""

import logging
import time

import numpy as np

LOGGER = logging.getLogger("deeplight_bids")


#: Files in a training folder.
CHECKPOINT_FILE = "checkpoint.keras"
BEST_WEIGHTS_FILE = "best.weights.h5"
STATE_FILE = "training_state.json"


def training_devices():
    """``(n_gpus, strategy or None, mixed_precision)``: MirroredStrategy with several GPUs, float16 on GPU."""
    from deeplight_bids.backend import tensorflow_or_exit

    tf = tensorflow_or_exit("fine-tuning (tf.data input, MirroredStrategy)")
    gpus = tf.config.list_physical_devices("GPU")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else None
    return len(gpus), strategy, bool(gpus)


def _atomic_json(path, content):
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(__import__("json").dumps(content, indent=1, default=float))
    os.replace(tmp, path)


def _make_checkpointer(folder, fingerprint, state, patience, epochs, log):
    """Keras callback: after every epoch save the model (with optimizer), the best weights and the state."""
    import os

    import keras

    class Checkpointer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            if log.isEnabledFor(logging.DEBUG) and (batch + 1) % 10 == 0:
                logs = logs or {}
                log.debug("batch %d: loss %.4f, accuracy %.3f (%.1f s into the epoch)", batch + 1,
                          float(logs.get("loss", np.nan)), float(logs.get("accuracy", np.nan)),
                          time.monotonic() - self._t0)

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            seconds = time.monotonic() - self._t0
            row = {"epoch": epoch + 1, **logs, "seconds": round(seconds, 3)}
            state["history"].append(row)
            monitor = logs.get("val_loss")
            if monitor is not None and np.isfinite(monitor):
                if state["best_val_loss"] is None or monitor < state["best_val_loss"] - 1e-6:
                    state["best_val_loss"], state["best_epoch"], state["wait"] = monitor, epoch + 1, 0
                    tmp = folder / f".{BEST_WEIGHTS_FILE}.tmp.weights.h5"
                    self.model.save_weights(tmp)
                    os.replace(tmp, folder / BEST_WEIGHTS_FILE)
                else:
                    state["wait"] += 1
            tmp = folder / f".{CHECKPOINT_FILE}.tmp.keras"
            self.model.save(tmp)
            os.replace(tmp, folder / CHECKPOINT_FILE)
            state["epoch"] = epoch + 1
            if patience and state["wait"] >= patience:
                state["stopped_early"] = True
                self.model.stop_training = True
            _atomic_json(folder / STATE_FILE, {"fingerprint": fingerprint, **state})
            val = (f", val_loss {logs['val_loss']:.4f}, val_accuracy {logs.get('val_accuracy', np.nan):.3f}"
                   if "val_loss" in logs else "")
            log.info("epoch %d/%d: loss %.4f, accuracy %.3f%s (%.1f s)%s", epoch + 1, epochs,
                     logs.get("loss", np.nan), logs.get("accuracy", np.nan), val, seconds,
                     "; early stop" if state.get("stopped_early") else "")

    return Checkpointer()


def fit_resumable(build_model, train_data, folder, fingerprint, epochs, learning_rate, val_data=None,
                  patience=0, restore_best=True, callbacks=(), log=LOGGER, make_train_data=None):
    """Fit with a checkpoint every epoch; re-running with the same ``fingerprint`` resumes.

    Parameters
    ----------
    build_model : callable
        ``() -> keras.Model`` (uncompiled, logits) for a fresh start.  Called inside a
        ``MirroredStrategy`` scope when several GPUs are visible.
    train_data : tf.data.Dataset or None
        Batches of ``(x, y)``; or None with ``make_train_data(start_epoch)`` given (so
        that a resumed run continues the per-epoch shuffling sequence).
    folder : path
        Training folder: ``checkpoint.keras`` (model + optimizer state after the last
        finished epoch), ``best.weights.h5`` (lowest validation loss) and
        ``training_state.json`` (epochs done, history, early-stopping counters).
    fingerprint : str
        Settings + data identity; a folder holding another fingerprint starts over.
    epochs : int
        Total epochs (a resumed run does the remaining ones).
    val_data : tf.data.Dataset or None
        Validation batches (early stopping on ``val_loss``; best weights restored).
    patience : int
        Stop after this many epochs without a lower validation loss (0: never); with
        ``restore_best`` the weights of the lowest validation loss are returned (only when
        early stopping is on: otherwise the validation data choose nothing).
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, run after the checkpoint is written.

    Returns
    -------
    model : keras.Model
        The best (validation) or last weights.
    state : dict
        ``history`` (one dict per epoch), ``epoch``, ``best_epoch``, ``stopped_early``,
        ``resumed_from`` (epochs already done when this call started).
    """
    import json
    from pathlib import Path

    import keras

    import deeplight_bids.models.two  # noqa: F401  (registers 2D layers for loading checkpoints)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE_FILE
    state = None
    if state_path.is_file() and (folder / CHECKPOINT_FILE).is_file():
        try:
            saved = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError):
            saved = {}
        if saved.get("fingerprint") == fingerprint:
            state = {k: v for k, v in saved.items() if k != "fingerprint"}
        else:
            log.info("%s: checkpoint of other settings or data; starting over", folder)
    _, strategy, _ = training_devices()
    scope = strategy.scope() if strategy is not None else _nullcontext()
    with scope:
        if state is not None:
            model = keras.models.load_model(folder / CHECKPOINT_FILE, compile=True)
            log.info("%s: resuming after epoch %d of %d", folder, state["epoch"], epochs)
        else:
            for name in (CHECKPOINT_FILE, BEST_WEIGHTS_FILE, STATE_FILE):
                (folder / name).unlink(missing_ok=True)
            state = {"epoch": 0, "history": [], "best_val_loss": None, "best_epoch": None, "wait": 0,
                     "stopped_early": False}
            model = build_model()
            model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    state["resumed_from"] = state["epoch"]
    if state["epoch"] < epochs and not state.get("stopped_early"):
        if train_data is None:
            train_data = make_train_data(state["epoch"])
        checkpointer = _make_checkpointer(folder, fingerprint, state, patience, epochs, log)
        model.fit(train_data, validation_data=val_data, epochs=int(epochs), initial_epoch=int(state["epoch"]),
                  verbose=0, shuffle=False, callbacks=[checkpointer, *callbacks])
    elif state["epoch"]:
        log.info("%s: training already finished (%d epochs)", folder, state["epoch"])
    if restore_best and patience and val_data is not None and (folder / BEST_WEIGHTS_FILE).is_file():
        model.load_weights(folder / BEST_WEIGHTS_FILE)
        log.info("%s: best validation loss at epoch %s; using those weights", folder, state["best_epoch"])
    return model, state


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def write_history(history, tsv_path, png_path=None, title=""):
    """History TSV (one row per epoch) and a learning-curve PNG (loss and accuracy, matplotlib Agg)."""
    import pandas as pd

    from deeplight_bids.derivatives.writers import write_tsv

    frame = pd.DataFrame(history)
    write_tsv(tsv_path, frame)
    if png_path is not None and len(frame):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for prefix, style in (("", "-o"), ("val_", "--s")):
                if prefix + metric in frame:
                    ax.plot(frame["epoch"], frame[prefix + metric], style, label=(prefix or "train_") + metric)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.legend(fontsize=8)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(png_path, dpi=90)
        plt.close(fig)

"""Fitting DeepLight on prepared, labelled volumes (used by the demo; fine-tuning builds on it)."""

import logging
import time

import numpy as np

from deeplight_bids.models.three import to_model_order

LOGGER = logging.getLogger("deeplight_bids")


def collect_labelled_volumes(runs, states, smoothing_fwhm=3.0, high_pass=1 / 128, state_maps=None, log=LOGGER):
    """Prepare runs and keep their labelled volumes, in model order.

    Parameters
    ----------
    runs : list of deeplight_bids.bids.discover.Run
        Processable runs (bold, mask, events, t_r set).
    states : sequence of str
        Output states in output order; volumes of other states are dropped.
    state_maps : dict or None
        ``{task: {trial_type: state}}`` (default: the HCP vocabulary).

    Returns
    -------
    x : numpy.ndarray, float32 (n, z, y, x, 1)
    y : numpy.ndarray, int (n,)
        Index into ``states``.
    groups : numpy.ndarray of str (n,)
        Participant label of each volume (for participant-wise splits).
    """
    from deeplight_bids.prepare.clean import prepare_run
    from deeplight_bids.prepare.labels import read_events, resolve_state_map, volume_labels

    index = {s: i for i, s in enumerate(states)}
    xs, ys, groups = [], [], []
    for run in runs:
        t0 = time.monotonic()
        prepared = prepare_run(run.bold, run.mask, run.t_r, smoothing_fwhm=smoothing_fwhm, high_pass=high_pass)
        state_map = resolve_state_map(run.entities["task"], state_maps)
        labels = volume_labels(read_events(run.events), prepared.n_volumes, run.t_r, state_map)
        keep = np.array([s in index for s in labels])
        for i in np.flatnonzero(keep):
            xs.append(to_model_order(prepared.volumes(int(i), int(i) + 1))[0])
            ys.append(index[labels[i]])
            groups.append(run.subject)
        log.info("%s: %d labelled volumes for training (%.1f s)", run.label, int(keep.sum()), time.monotonic() - t0)
    if not xs:
        return np.zeros((0,)), np.zeros((0,), int), np.zeros((0,), str)
    return np.stack(xs), np.asarray(ys), np.asarray(groups)


class _EpochLogger:
    """Keras callback factory printing one line per epoch (progress for long fits)."""

    @staticmethod
    def make(log, epochs):
        import keras

        class EpochLogger(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.monotonic()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                log.info("epoch %d/%d: loss %.4f, accuracy %.3f (%.0f s)", epoch + 1, epochs, logs.get("loss", np.nan),
                         logs.get("accuracy", np.nan), time.monotonic() - self._t0)

        return EpochLogger()


def fit_deeplight(model, x, y, epochs=5, batch_size=8, learning_rate=1e-3, seed=0, log=LOGGER):
    """Fit a DeepLight model with Adam and cross-entropy on logits (reference section 5).

    Parameters
    ----------
    model : keras.Model
        Outputs logits ``(batch, n_states)``.
    x : numpy.ndarray, float32 (n, z, y, x, 1)
    y : numpy.ndarray, int (n,)
    epochs, batch_size : int
    learning_rate : float
    seed : int
        Seeds Python, NumPy and TensorFlow (shuffling, dropout, initialisation).

    Returns
    -------
    keras.callbacks.History
    """
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
                     callbacks=[_EpochLogger.make(log, epochs)])


# ----------------------------------------------------------------------------------------------
# Checkpointed, resumable training (fine-tuning)

#: Files in a training folder.
CHECKPOINT_FILE = "checkpoint.keras"
BEST_WEIGHTS_FILE = "best.weights.h5"
STATE_FILE = "training_state.json"


def training_devices():
    """``(n_gpus, strategy or None, mixed_precision)``: MirroredStrategy with several GPUs, float16 on GPU."""
    import tensorflow as tf

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

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

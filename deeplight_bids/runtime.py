"""Where a job runs: backend threads, numeric precision and logging (software versions: :mod:`deeplight_bids.versions`).

Every level (participant, group, fine-tuning, demo) enters :func:`compute_session`
before it builds a model, so thread pools are set once from ``--nprocs`` and a
precision policy set for a stage is restored when the stage ends, also on error.
"""

import contextlib
import logging
import os
import sys
import warnings

LOGGER = logging.getLogger("deeplight_bids")

#: Format of the lines copied to ``OUTPUT_DIR/logs/*.log``.
FILE_LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s"


def configure_threads(nprocs, log=LOGGER):
    """The Keras backend's thread pools for ``--nprocs`` (TensorFlow: intra-op N, inter-op at most 2).

    Logs the settings in force (e.g. ``TensorFlow threads: intra-op N, inter-op M``), so
    a job's log shows that ``--nprocs`` was respected (e.g. a SLURM task's
    ``--cpus-per-task``).  See :func:`deeplight_bids.backend.configure_threads`.

    Parameters
    ----------
    nprocs : int
        CPU threads (>= 1).
    log : logging.Logger
    """
    from deeplight_bids import backend

    backend.configure_threads(nprocs, log)


@contextlib.contextmanager
def precision_policy(name):
    """Keras' global dtype policy ``name`` (e.g. ``"mixed_float16"``) inside, the previous one after.

    The previous policy is restored in ``finally``, so an error inside never leaves a
    process-wide mixed-precision policy behind for the next model built.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield keras.mixed_precision.global_policy()
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def compute_session(nprocs, precision=None, log=LOGGER):
    """Set up the backend for one job: thread pools from ``nprocs``, optionally a precision policy.

    Parameters
    ----------
    nprocs : int
        CPU threads (``--nprocs``).
    precision : str or None
        Keras dtype policy for the session (None: leave it, i.e. float32).
    log : logging.Logger

    Yields
    ------
    None
    """
    configure_threads(nprocs, log)
    with precision_policy(precision) if precision else contextlib.nullcontext():
        yield


def setup_logging(verbose=0):
    """Log to stderr at INFO (``-vv``: DEBUG; ``verbose < 0``: WARNING) under the ``deeplight_bids`` logger."""
    from deeplight_bids.exceptions import LoggedWarning

    level = logging.WARNING if verbose < 0 else logging.INFO if verbose < 2 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s deeplight-bids %(levelname)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("deeplight_bids")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # warnings that are also logged (e.g. the offline-template fallback) are shown once, as log lines
    warnings.simplefilter("ignore", LoggedWarning)
    # TensorFlow's C++ start-up chatter is noise for users.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def log_file(path, log=LOGGER):
    """Copy the log of this job to ``path`` (``OUTPUT_DIR/logs/*.log``, as fMRIPrep keeps its logs) while inside.

    A file that cannot be opened is a warning, not an error: the job logs to the terminal only.
    """
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as err:
        log.warning("cannot write the log file %s (%s); logging to the terminal only", path, err)
        yield None
        return
    handler.setFormatter(logging.Formatter(FILE_LOG_FORMAT))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        handler.close()

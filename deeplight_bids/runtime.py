"""Where a job runs: backend threads, numeric precision and logging (software versions: :mod:`deeplight_bids.versions`).

Every level (participant, group, fine-tuning, demo) enters :func:`compute_session`
before it builds a model, so thread pools are set once from ``--nprocs`` and a
precision policy set for a stage is restored when the stage ends, also on error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from deeplight_bids import backend
from deeplight_bids.exceptions import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    DeepLightBidsError,
    Interrupted,
    LoggedWarning,
)

LOGGER = logging.getLogger("deeplight_bids")

#: Format of the lines copied to ``OUTPUT_DIR/logs/*.log``.
FILE_LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s"


def configure_threads(nprocs: int, log: logging.Logger = LOGGER) -> None:
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
    backend.configure_threads(nprocs, log)


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[Any]:
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
def compute_session(nprocs: int, precision: str | None = None, log: logging.Logger = LOGGER) -> Iterator[None]:
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


#: cgroup limits at or above this are "no limit" (the kernel's unlimited value is ~2**63).
_UNLIMITED_BYTES = 2**60


def memory_limit(
    requested_mb: int = 0,
    environ: Mapping[str, str] | None = None,
    cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
) -> tuple[int | None, str]:
    """The memory this job may use, in MiB, and where that figure comes from.

    In order: ``--mem-mb`` (``requested_mb`` > 0); the SLURM job's allocation
    (``SLURM_MEM_PER_NODE``, else ``SLURM_MEM_PER_CPU`` x ``SLURM_CPUS_PER_TASK``, both in
    MB as ``sbatch --mem`` sets them); the container's cgroup limit (v2 ``memory.max``, v1
    ``memory/memory.limit_in_bytes``); the machine's physical memory.

    Parameters
    ----------
    requested_mb : int
        ``--mem-mb``; 0: detect.
    environ : mapping, optional
        Environment to read (default ``os.environ``).
    cgroup_root : str or pathlib.Path
        Where the cgroup file system is mounted.

    Returns
    -------
    limit_mib : int or None
        None only when nothing could be read.
    source : str
        E.g. ``"--mem-mb"``, ``"SLURM_MEM_PER_NODE"``, ``"cgroup memory.max"``, ``"physical memory"``.
    """
    from pathlib import Path

    environ = os.environ if environ is None else environ
    if requested_mb and int(requested_mb) > 0:
        return int(requested_mb), "--mem-mb"
    per_node = environ.get("SLURM_MEM_PER_NODE", "")
    if per_node.isdigit() and int(per_node) > 0:
        return int(per_node), "SLURM_MEM_PER_NODE"
    per_cpu, cpus = environ.get("SLURM_MEM_PER_CPU", ""), environ.get("SLURM_CPUS_PER_TASK", "1")
    if per_cpu.isdigit() and int(per_cpu) > 0:
        return int(per_cpu) * (int(cpus) if cpus.isdigit() else 1), "SLURM_MEM_PER_CPU x SLURM_CPUS_PER_TASK"
    root = Path(cgroup_root)
    for name, path in (
        ("cgroup memory.max", root / "memory.max"),
        ("cgroup memory.limit_in_bytes", root / "memory" / "memory.limit_in_bytes"),
    ):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED_BYTES:
            return int(text) // 2**20, name
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20, "physical memory"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (as logging's own last-resort handler).

    A handler bound to the ``sys.stderr`` of the moment would keep writing to a stream that an embedding
    program (a notebook, a test's captured stderr) has since replaced and closed.
    """

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ and setStream assign it; the current stderr wins
        pass


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr at INFO (``-vv``: DEBUG; ``verbose < 0``: WARNING) under the ``deeplight_bids`` logger."""
    level = logging.WARNING if verbose < 0 else logging.INFO if verbose < 2 else logging.DEBUG
    handler = _StderrHandler()
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
def log_file(path: str | os.PathLike, log: logging.Logger = LOGGER) -> Iterator[logging.FileHandler | None]:
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


# -- the command lines' error shell --------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Turn SIGTERM (``kill``, SLURM/PBS time limits) into :class:`~deeplight_bids.exceptions.Interrupted` inside.

    The exception unwinds the stack like Ctrl-C, so temporaries are removed and no
    partial file is left under a final name.  Only possible in the main thread.
    """

    def _raise(signum, frame):
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_guarded(
    job: Callable[[], int | None],
    prog: str,
    resume_hint: str,
    output_name: str = "OUTPUT_DIR",
    memory_hint: str = "",
    verbose: int = 0,
    stderr: TextIO | None = None,
    log: logging.Logger = LOGGER,
    trace_user_errors: bool = True,
    removes_temporaries: bool = True,
) -> int:
    """Run one command's ``job`` and turn what it raises into one line on stderr and an exit code.

    The one error shell of every command line (``deeplight-bids`` and its sub-commands,
    ``deeplight-bids-hcp``): a user's mistake or an environment problem is one line that
    names the file and the fix, never a traceback (``-vv`` adds it to the log).

    Parameters
    ----------
    job : callable
        ``job() -> exit code`` (``None``: 0).
    prog : str
        Program name that starts each line, e.g. ``"deeplight-bids"``.
    resume_hint : str
        What an interrupted user should do, e.g. ``"finished runs are kept, re-run to resume."``.
    output_name : str
        How the help names the output folder (an ``OSError`` asks to check its space and permissions).
    memory_hint : str
        The fix for ``MemoryError``, e.g. ``"lower --batch-size."``.
    verbose : int
        ``-v`` count; from 2 the traceback of an error is logged.
    stderr : file-like or None
        Where the line goes (``sys.stderr`` at the time of the error when None).
    log : logging.Logger
    trace_user_errors : bool
        Log the traceback of a user error at ``-vv`` (internal errors' always are); the HCP
        download does not: botocore's frames would show request details.
    removes_temporaries : bool
        Whether unwinding on SIGTERM removes the job's temporary files (the atomic writers'), as the
        SIGTERM line then says; the HCP download keeps its partial files to resume them.

    Returns
    -------
    int
        The job's exit code, or the error's: :class:`~deeplight_bids.exceptions.DeepLightBidsError`
        its ``exit_code``, SIGTERM its own, Ctrl-C 130, anything else 1 (an internal error).
    """

    def say(line):
        print(f"{prog}: {line}", file=sys.stderr if stderr is None else stderr)

    try:
        with terminate_as_exception():
            code = job()
    except DeepLightBidsError as err:
        if verbose >= 2 and trace_user_errors:
            log.exception("error")
        say(f"error: {err}")
        return err.exit_code
    except Interrupted as err:
        removed = "temporary files removed, " if removes_temporaries else ""
        say(f"terminated by signal {signal.Signals(err.signum).name}; {removed}{resume_hint}")
        return err.exit_code
    except KeyboardInterrupt:
        say(f"interrupted; {resume_hint}")
        return EXIT_INTERRUPTED
    except MemoryError:
        say(f"error: out of memory{'; ' + memory_hint if memory_hint else '.'}")
        return EXIT_INTERNAL
    except OSError as exc:
        log.debug("file system error", exc_info=True)
        say(
            f"error: {getattr(exc, 'filename', None) or 'output'}: {exc.strerror or exc}; "
            f"check free disk space and permissions of {output_name}."
        )
        return EXIT_OUTPUT
    except Exception as exc:  # a bug: one line by default, the traceback with -vv
        log.debug("internal error", exc_info=True)
        say(f"error: internal error ({type(exc).__name__}); please report it with the -vv output.")
        return EXIT_INTERNAL
    return EXIT_OK if code is None else code

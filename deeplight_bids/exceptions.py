"""User-facing errors and the exit codes the command line maps them to.

Every error raised for a *user* mistake carries a one-line message that names the
offending file (or option) and says how to fix it.  The command line prints
``deeplight-bids: error: <message>`` and exits with :attr:`exit_code`; it never shows
a traceback for these (use ``-vv`` to see one).

Exit codes (documented in the README and ``--help``):

==== ==============================================================
0    success: every selected run was processed (or already done)
1    internal error (a bug: please report it with the ``-vv`` log)
2    command-line usage error (argparse)
3    input data error (BIDS_DIR, derivatives, events, images)
4    model / weights error (missing, corrupt or mismatched weights)
5    output error (OUTPUT_DIR not writable, disk full)
6    partial success: some runs failed or were skipped for bad data
130  interrupted (Ctrl-C); 143 terminated (SIGTERM, e.g. a SLURM time limit):
     temporaries are removed, finished runs are kept, a re-run resumes
==== ==============================================================
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_WEIGHTS = 4
EXIT_OUTPUT = 5
EXIT_PARTIAL = 6
EXIT_INTERRUPTED = 130


class DeepLightBidsError(Exception):
    """Base class of all errors meant for the user (one line, no traceback).

    A subclass names its exit code in its header (``class UsageError(DeepLightBidsError,
    exit_code=EXIT_USAGE)``); without one it keeps its parent's.
    """

    exit_code = EXIT_INTERNAL

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code

    def __init__(self, message: object) -> None:
        # One line: the CLI prints the message as is.
        super().__init__(" ".join(str(message).split()))


class UsageError(DeepLightBidsError, exit_code=EXIT_USAGE):
    """A wrong combination of command-line options."""


class InputDataError(DeepLightBidsError, exit_code=EXIT_INPUT):
    """Something in BIDS_DIR or the derivatives cannot be used."""


class NoRunsFoundError(InputDataError):
    """Discovery found nothing to process."""


class ImageError(InputDataError):
    """A NIfTI image is unreadable, of the wrong dimensionality, or on the wrong grid."""


class EventsError(InputDataError):
    """An ``events.tsv`` file is missing columns or holds invalid values."""


class NonFiniteMapError(InputDataError):
    """A run's attribution maps hold NaN or inf (the rule divided by 0 on its data): that run fails, others go on."""


class MetadataError(InputDataError):
    """Required BIDS metadata (e.g. ``RepetitionTime``) is missing or inconsistent."""


class WeightsError(DeepLightBidsError, exit_code=EXIT_WEIGHTS):
    """Model weights are missing, corrupt, or do not match the architecture."""


class OutputError(DeepLightBidsError, exit_code=EXIT_OUTPUT):
    """OUTPUT_DIR cannot be written."""


class LoggedWarning(UserWarning):
    """A warning that is also written to the ``deeplight_bids`` log: the command line shows only the log line."""


class Interrupted(BaseException):
    """A termination signal (SIGTERM) received while running.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that no ``except Exception``
    swallows it: it unwinds the stack, whose ``finally``/``except BaseException``
    blocks remove temporary files, and the command line exits with ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum

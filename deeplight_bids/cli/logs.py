"""Logging of the ``deeplight-bids`` commands (shared by :mod:`.run` and :mod:`.demo`)."""

import logging
import os
import sys
import warnings

from deeplight_bids.exceptions import LoggedWarning


def setup_logging(verbose: int = 0) -> None:
    """Log lines of ``deeplight_bids`` to stderr: WARNING (``verbose < 0``), INFO, or DEBUG (``verbose >= 2``)."""
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

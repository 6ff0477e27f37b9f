"""deeplight-bids: DeepLight cognitive decoding and LRP explanations for BIDS datasets.

The package is organised along the data flow of one participant-level run::

    bids.discover -> prepare (grid, clean, labels) -> models (build, weights, decode)
    -> lrp (rules, composites, analyzer) -> derivatives (naming, writers)

and the group level in ``group/``.
"""

from __future__ import annotations

from typing import Any

from deeplight_bids._version import __version__

__all__ = ["__version__", "load_relevance"]


def __getattr__(name: str) -> Any:
    if name == "load_relevance":
        # deferred: ``import deeplight_bids`` stays light (readback loads nibabel, pandas and SciPy)
        from deeplight_bids.readback import load_relevance

        return load_relevance
    raise AttributeError(f"module 'deeplight_bids' has no attribute {name!r}")

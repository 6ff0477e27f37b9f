"""deeplight-bids: DeepLight cognitive decoding and LRP explanations for BIDS datasets.

The package is organised along the data flow of one participant-level run::

    bids.discover -> prepare (grid, clean, labels) -> models (build, weights, decode)
    -> lrp (rules, composites, analyzer) -> derivatives (naming, writers)

and the group level in ``group/``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

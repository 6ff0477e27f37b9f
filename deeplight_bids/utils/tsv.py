"""Reading the TSV tables this app writes: tab-separated, ``n/a`` for a missing value (BIDS)."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

__all__ = ["read_tsv"]


def read_tsv(path: str | os.PathLike[str], allow_empty: bool = True, **kwargs: Any) -> pd.DataFrame:
    """A BIDS TSV as a DataFrame: ``n/a`` is missing, other strings stay strings.

    Parameters
    ----------
    path : path-like
    allow_empty : bool, default=True
        An empty file (no header; group outputs of older versions) gives an empty frame; with False it
        raises :class:`pandas.errors.EmptyDataError` (for the checks that call such a file damaged).
    **kwargs
        Passed to :func:`pandas.read_csv` (e.g. ``dtype={"run": str}``).
    """
    try:
        return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False, **kwargs)
    except pd.errors.EmptyDataError:
        if not allow_empty:
            raise
        return pd.DataFrame()

"""Argparse ``type=`` converters shared by the option groups: checked numbers and BIDS labels.

A failed check raises :class:`argparse.ArgumentTypeError`, which argparse prints as
``argument --option: expected ..., got ...`` after the usage and exits with 2, so the
message names the option and no traceback is shown.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

_Number = TypeVar("_Number", int, float)


def number_in(
    cast: Callable[[str], _Number], what: str, low: float, high: float = math.inf, *, low_open: bool = False
) -> Callable[[str], _Number]:
    """A ``type=`` check: ``cast(value)`` must lie in ``[low, high]`` (``(low, high]`` with ``low_open``).

    Parameters
    ----------
    cast : callable
        ``int`` or ``float``; a ``ValueError`` from it is reported as "expected ``what``".
    what : str
        What the value is, e.g. ``"a whole number"``, ``"a percentage"``.
    low, high : float
        Bounds; ``high`` infinite means no upper bound.
    low_open : bool
        Refuse ``low`` itself.

    Returns
    -------
    callable
        ``str -> cast`` that raises :class:`argparse.ArgumentTypeError` on bad input (NaN included).
    """
    if math.isinf(high):
        bounds = f"{'>' if low_open else '>='} {low}"
    else:
        bounds = f"in {'(' if low_open else '['}{low}, {high}]"

    def check(value):
        try:
            number = cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        above_low = number > low if low_open else number >= low
        if not (above_low and number <= high):  # also refuses NaN
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {value!r}")
        return number

    return check


positive_int = number_in(int, "a whole number", 1)
non_negative_int = number_in(int, "a whole number", 0)
positive_float = number_in(float, "a number", 0, low_open=True)
non_negative_float = number_in(float, "a number", 0)
percent = number_in(float, "a percentage", 0, 100, low_open=True)
probability = number_in(float, "a probability", 0, 1)


def label_without(prefix: str) -> Callable[[str], str]:
    """A ``type=`` converter: a BIDS label given with or without its ``prefix`` (``"sub-"``, ``"ses-"``)."""

    def strip(value):
        return str(value).removeprefix(prefix)

    return strip

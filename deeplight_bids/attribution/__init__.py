"""Attribution methods beside LRP, and the registry of every method by name.

:mod:`.methods` names every method, LRP composites included (``--attribution``), and
imports no Keras (the command-line parser reads it); :mod:`.gradients` holds the
gradient-based methods (gradient, gradient x input, integrated gradients, SmoothGrad),
written with ``keras.ops`` like the LRP rules.
"""

from .methods import CHOICES, METHODS, PUBLISHED, STANDARD_SET, AttributionMethod, get_method, published_method, resolve

__all__ = [
    "CHOICES",
    "METHODS",
    "PUBLISHED",
    "STANDARD_SET",
    "AttributionMethod",
    "get_method",
    "published_method",
    "resolve",
]

"""Attribution methods beside LRP, and the registry of every method by name.

:mod:`.gradients` holds the gradient-based methods (gradient, gradient x input,
integrated gradients, SmoothGrad), written with ``keras.ops`` like the LRP rules;
:mod:`.methods` names every method, LRP composites included (``--attribution``).
"""

from .gradients import Gradient, GradientMethod, GradientXInput, IntegratedGradients, SmoothGrad, riemann_middle
from .methods import (
    CHOICES,
    METHODS,
    PUBLISHED,
    STANDARD_SET,
    AttributionMethod,
    get_method,
    published_method,
    resolve,
)

__all__ = [
    "CHOICES",
    "METHODS",
    "PUBLISHED",
    "STANDARD_SET",
    "AttributionMethod",
    "Gradient",
    "GradientMethod",
    "GradientXInput",
    "IntegratedGradients",
    "SmoothGrad",
    "get_method",
    "published_method",
    "resolve",
    "riemann_middle",
]

"""Layer-wise relevance propagation (LRP) for the DeepLight models (reference section 7).

Organised like zennit: :mod:`.rules` (one class per rule), :mod:`.types` (Keras layer
classes grouped), :mod:`.composites` (layer type -> rule maps and named presets) and
:mod:`.analyzer` (:class:`LRPAnalyzer`, the entry point).
"""

from .analyzer import RELEVANCE_START, LRPAnalyzer
from .composites import COMPOSITES, Composite, UnmappedLayerError, get_composite, register_composite
from .rules import AlphaBeta, BatchNormScale, Epsilon, Flat, Pass, PlusEpsilon, Rule, ZPlus, ZRule

__all__ = [
    "COMPOSITES",
    "RELEVANCE_START",
    "AlphaBeta",
    "BatchNormScale",
    "Composite",
    "Epsilon",
    "Flat",
    "LRPAnalyzer",
    "Pass",
    "PlusEpsilon",
    "Rule",
    "UnmappedLayerError",
    "ZPlus",
    "ZRule",
    "get_composite",
    "register_composite",
]

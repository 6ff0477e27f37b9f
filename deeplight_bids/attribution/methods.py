"""The attribution methods by name (``--attribution``, ``--compare-attributions``).

>>> method = get_method("integrated_gradients")                  # doctest: +SKIP
>>> explainer = method.explainer(model, steps=32)                  # doctest: +SKIP
>>> logits, maps = explainer.explain(x)                            # doctest: +SKIP

Two families: LRP composites (:mod:`deeplight_bids.lrp`; the published rule of each
architecture among them) and gradient-based methods (:mod:`.gradients`).  Every
explainer has the same interface: ``explain(x, target) -> (logits, maps)``,
``description`` (for the sidecars) and ``for_model(model)`` (the same method on another
model, e.g. a randomised copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from deeplight_bids.config import Config
    from deeplight_bids.lrp.analyzer import LRPAnalyzer

    from .gradients import GradientMethod

#: ``--attribution``'s default: the published rule of the architecture.
PUBLISHED = "published"


@dataclass(frozen=True)
class AttributionMethod:
    """One attribution method.

    Attributes
    ----------
    name : str
        Registry and command-line name.
    family : {"lrp", "gradient"}
    signed : bool
        Whether its maps carry evidence for (positive) and against (negative) the explained
        state; the group level tests such maps against zero, and only such maps.
    summary : str
        One line for ``--help`` and the docs.
    architectures : tuple of str
        The DeepLight variants it applies to.
    composite : str or None
        The LRP composite (family ``"lrp"``).
    explainer_class : str or None
        Class name in :mod:`.gradients` (family ``"gradient"``).
    parameters : tuple of str
        The keyword parameters it takes (from the command line's options).
    """

    name: str
    family: str
    signed: bool
    summary: str
    architectures: tuple = ("3D", "2D")
    composite: str | None = None
    explainer_class: str | None = None
    parameters: tuple = field(default_factory=tuple)

    def explainer(
        self,
        model: Any,
        max_batch: int | Literal["auto"] | None = "auto",
        stem_batch: int | Literal["auto"] | None = "auto",
        **parameters: Any,
    ) -> LRPAnalyzer | GradientMethod:
        """An explainer of ``model`` (parameters it does not take are ignored).

        Parameters
        ----------
        model : keras.Model
        max_batch, stem_batch
            See :class:`~deeplight_bids.lrp.analyzer.LRPAnalyzer` (``stem_batch``: LRP only).
        **parameters
            ``steps`` (integrated gradients), ``samples``, ``noise``, ``seed`` (SmoothGrad),
            ``epsilon`` (the LRP epsilon rule's, zennit-convention composites).
        """
        taken = {k: v for k, v in parameters.items() if k in self.parameters}
        if self.family == "lrp":
            from deeplight_bids.lrp.analyzer import LRPAnalyzer  # deferred: loads TensorFlow/Keras
            from deeplight_bids.lrp.composites import COMPOSITES  # deferred: loads TensorFlow/Keras

            # an lrp method always names its composite, a gradient one its class (METHODS below)
            composite = COMPOSITES[self.composite](**taken)  # type: ignore[index]
            return LRPAnalyzer(model, composite=composite, max_batch=max_batch, stem_batch=stem_batch)
        from . import gradients  # deferred: loads TensorFlow/Keras

        return getattr(gradients, self.explainer_class)(model, max_batch=max_batch, **taken)  # type: ignore[arg-type]

    def sidecar(self, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``"Attribution"`` entry of the relevance sidecars."""
        taken = {k: v for k, v in (parameters or {}).items() if k in self.parameters}
        return {
            "Method": self.name,
            "Family": self.family,
            "Signed": self.signed,
            "Parameters": taken,
            "Description": self.summary,
        }


METHODS = {
    method.name: method
    for method in (
        AttributionMethod(
            "preset_b_flat",
            "lrp",
            False,
            "LRP as published for 3D-DeepLight (iNNvestigate preset B-flat: flat first layer, alpha 2 beta 1, "
            "epsilon 1e-6); near non-negative maps of where the input drives the decision",
            architectures=("3D",),
            composite="preset_b_flat",
        ),
        AttributionMethod(
            "deeplight_2d",
            "lrp",
            True,
            "LRP as published for 2D-DeepLight (epsilon 1e-3 everywhere, the original code's z + eps stabiliser)",
            architectures=("2D",),
            composite="deeplight_2d",
        ),
        AttributionMethod(
            "deeplight_2d_signed",
            "lrp",
            True,
            "2D-DeepLight's epsilon rule with the sign-aware stabiliser z + eps*sign(z) (--lrp-rule signed)",
            architectures=("2D",),
            composite="deeplight_2d_signed",
        ),
        AttributionMethod(
            "gradient",
            "gradient",
            True,
            "gradient of the explained logit with respect to the input (signed saliency)",
            explainer_class="Gradient",
        ),
        AttributionMethod(
            "gradient_x_input",
            "gradient",
            True,
            "gradient times input",
            explainer_class="GradientXInput",
        ),
        AttributionMethod(
            "integrated_gradients",
            "gradient",
            True,
            "integrated gradients from the baseline 0 (the z-scored run mean), midpoint rule, --ig-steps points",
            explainer_class="IntegratedGradients",
            parameters=("steps",),
        ),
        AttributionMethod(
            "smoothgrad",
            "gradient",
            True,
            "SmoothGrad: the mean gradient over --smoothgrad-samples noisy copies (noise SD --smoothgrad-noise x the "
            "input's SD)",
            explainer_class="SmoothGrad",
            parameters=("samples", "noise", "seed"),
        ),
        AttributionMethod(
            "epsilon",
            "lrp",
            True,
            "LRP epsilon rule (--lrp-epsilon) on every layer with weights (zennit's conventions)",
            composite="zennit_epsilon",
            parameters=("epsilon",),
        ),
        AttributionMethod(
            "epsilon_plus",
            "lrp",
            False,
            "LRP z+ on convolutions, epsilon on dense and recurrent layers (zennit EpsilonPlus)",
            composite="zennit_epsilon_plus",
            parameters=("epsilon",),
        ),
        AttributionMethod(
            "alpha2_beta1",
            "lrp",
            True,
            "LRP alpha 2 beta 1 on convolutions, epsilon on dense and recurrent layers (zennit EpsilonAlpha2Beta1)",
            composite="zennit_epsilon_alpha2_beta1",
            parameters=("epsilon",),
        ),
    )
}

#: ``--compare-attributions`` without names: the published rule and methods of both families.
STANDARD_SET = (
    PUBLISHED,
    "gradient",
    "gradient_x_input",
    "integrated_gradients",
    "smoothgrad",
    "epsilon",
    "epsilon_plus",
    "alpha2_beta1",
)

#: Every name ``--attribution`` accepts.
CHOICES = (PUBLISHED, *METHODS)


def parameters_from(config: Config) -> dict[str, Any]:
    """The methods' parameters from a :class:`~deeplight_bids.config.Config` (each method takes the ones it knows)."""
    return {
        "steps": config.participant.ig_steps,
        "samples": config.participant.smoothgrad_samples,
        "noise": config.participant.smoothgrad_noise,
        "seed": config.seed,
        "epsilon": config.participant.lrp_epsilon,
    }


def published_method(architecture: str, lrp_rule: str = "published") -> str:
    """The published rule's name for ``architecture`` (``lrp_rule``: 2D ``--lrp-rule``)."""
    if architecture == "3D":
        return "preset_b_flat"
    return "deeplight_2d_signed" if lrp_rule == "signed" else "deeplight_2d"


def resolve(name: str, architecture: str, lrp_rule: str = "published") -> AttributionMethod:
    """The :class:`AttributionMethod` that ``name`` means for ``architecture``.

    Parameters
    ----------
    name : str
        One of :data:`CHOICES` (``"published"``: :func:`published_method`).
    architecture : {"3D", "2D"}
    lrp_rule : {"published", "signed"}

    Raises
    ------
    ValueError
        An unknown name, or a method that does not apply to ``architecture`` (the message
        says which do).
    """
    if name == PUBLISHED:
        name = published_method(architecture, lrp_rule)
    method = get_method(name)
    if architecture not in method.architectures:
        usable = ", ".join(n for n, m in METHODS.items() if architecture in m.architectures)
        raise ValueError(
            f"attribution method {name!r} applies to {'/'.join(method.architectures)}-DeepLight only; "
            f"for {architecture} use one of: {PUBLISHED}, {usable}"
        )
    return method


def get_method(name: str) -> AttributionMethod:
    """The registered :class:`AttributionMethod` called ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; must be one of {', '.join(CHOICES)}")
    return METHODS[name]


def for_outputs(sidecar: dict[str, Any] | None, architecture: str = "3D") -> dict[str, Any]:
    """The ``"Attribution"`` entry of a relevance sidecar, or the published rule's for outputs made before it existed."""
    entry = (sidecar or {}).get("Attribution")
    if entry:
        return entry
    return get_method(published_method(architecture, (sidecar or {}).get("LRPRule", "published"))).sidecar()

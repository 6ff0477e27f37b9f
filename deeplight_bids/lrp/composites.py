"""Composites: which LRP rule each layer of a model gets.

A :class:`Composite` holds ordered ``(layer type tuple, rule)`` maps; for each layer the
first entry whose types match wins.  ``first_map`` is consulted only for the *first*
layer of the model (in layer order) that one of its entries matches, e.g. the first
convolution (zennit's ``SpecialFirstLayerMapComposite``; iNNvestigate's
"input layer rule").  A layer no entry covers raises :class:`UnmappedLayerError`;
there is no silent fallback to a plain gradient.

Named presets live in :data:`COMPOSITES` (see :func:`get_composite`):

- ``"preset_b_flat"``: 3D-DeepLight as published (reference section 7, iNNvestigate
  ``LRPSequentialPresetBFlat`` with epsilon 1e-6): first conv :class:`~.rules.Flat`,
  other convs :class:`~.rules.AlphaBeta` (2, 1), BN :class:`~.rules.BatchNormScale`,
  global average pooling :class:`~.rules.ZRule`, dense :class:`~.rules.Epsilon` (1e-6),
  ReLU / dropout / reshapes :class:`~.rules.Pass`.
- ``"epsilon"``: 2D-DeepLight as published: :class:`~.rules.Epsilon` (1e-3) for every
  conv, dense and global average pooling layer, pass-throughs :class:`~.rules.Pass`.
- ``"deeplight_2d"``: 2D-DeepLight as published (reference section 7), the original
  code's equations exactly: :class:`~.rules.Epsilon` (1e-3) for the per-slice Conv2D
  layers (the original divides by the post-ReLU output + eps; relevance is 0 wherever
  that output is, so this is the same), :class:`~.rules.PlusEpsilon` (1e-3, ``z + eps``)
  for the dense output, :class:`~.lstm.LSTMEpsilon` (1e-3, ``z + eps``) for the
  bidirectional LSTM (signal-take-all gates, directions summed), :class:`~.rules.Pass`
  for slice folding/unfolding, dropout and spatial dropout (the identity at inference).
- ``"deeplight_2d_signed"``: the same with the sign-aware stabiliser ``z + eps * sign(z)``
  in the LSTM and the dense layer (:class:`~.lstm.LSTMSignedEpsilon`,
  :class:`~.rules.Epsilon`): a deliberate deviation from the published code that never
  divides by a near-zero denominator; maps differ substantially from the published ones.

Three further composites follow zennit 0.5.1's conventions exactly (its ``layer_map_base``:
activations and batch normalisation :class:`~.rules.Pass`, average pooling ``Norm``, i.e.
the epsilon rule with the stabiliser 1e-6; every stabiliser ``z + 1e-6 * sign(z)``), for
any DeepLight (the 2D model's LSTM gets the sign-aware :class:`~.lstm.LSTMSignedEpsilon`):

- ``"zennit_epsilon"``: :class:`~.rules.Epsilon` (epsilon :data:`DEFAULT_LRP_EPSILON`, 0.25) on every conv
  and dense layer (zennit has
  no preset of this name: a ``LayerMapComposite`` with ``Epsilon`` for both);
- ``"zennit_epsilon_plus"``: :class:`~.rules.ZPlus` on convs, epsilon on dense layers
  (zennit ``EpsilonPlus``);
- ``"zennit_epsilon_alpha2_beta1"``: :class:`~.rules.AlphaBeta` (2, 1, zennit's bias
  convention) on convs, epsilon on dense layers (zennit ``EpsilonAlpha2Beta1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keras.layers import Layer

from . import rules, types
from .lstm import LSTMEpsilon, LSTMSignedEpsilon
from .rules import Rule


class UnmappedLayerError(TypeError):
    """A layer of the model has no rule in the composite."""


class Composite:
    """Ordered layer-type -> rule maps with a special rule for the first matching layer.

    Parameters
    ----------
    layer_map : sequence of (tuple of type, Rule)
        Consulted in order for every layer; first match wins.
    first_map : sequence of (tuple of type, Rule), optional
        Consulted before ``layer_map`` for the first layer (in model order) that one of
        its entries matches, and for no other layer.
    name : str
        Name written to output sidecars.
    reference : str, optional
        Where the composite comes from (written to output sidecars).
    """

    def __init__(
        self,
        layer_map: Sequence[tuple[tuple[type, ...], Rule | LSTMEpsilon]],
        first_map: Sequence[tuple[tuple[type, ...], Rule | LSTMEpsilon]] = (),
        name: str = "custom",
        reference: str | None = None,
    ) -> None:
        self.layer_map = [(tuple(layer_types), rule) for layer_types, rule in layer_map]
        self.first_map = [(tuple(layer_types), rule) for layer_types, rule in first_map]
        self.name = str(name)
        self.reference = reference

    @staticmethod
    def _match(entries, layer):
        for layer_types, rule in entries:
            if isinstance(layer, layer_types):
                return rule
        return None

    def assign(self, layers: Sequence[Layer]) -> list[tuple[Layer, Rule | LSTMEpsilon]]:
        """The rule for every layer, in order.

        Parameters
        ----------
        layers : sequence of keras.layers.Layer
            The model's layers in forward order (``model.layers`` of a Sequential).

        Returns
        -------
        list of (keras.layers.Layer, Rule)

        Raises
        ------
        UnmappedLayerError
            If a layer matches no entry; the message names the layer and its class.
        """
        assigned = []
        first_pending = bool(self.first_map)
        for layer in layers:
            rule = self._match(self.first_map, layer) if first_pending else None
            if rule is not None:
                first_pending = False
            else:
                rule = self._match(self.layer_map, layer)
            if rule is None:
                raise UnmappedLayerError(
                    f"composite {self.name!r} has no LRP rule for layer {layer.name!r} ({type(layer).__name__}); "
                    "add an entry for its type to the composite"
                )
            assigned.append((layer, rule))
        return assigned

    def __repr__(self) -> str:
        return f"Composite(name={self.name!r}, first_map={self.first_map!r}, layer_map={self.layer_map!r})"


#: Preset factories by name; each call returns a fresh :class:`Composite`.
COMPOSITES: dict[str, Callable[..., Composite]] = {}


def register_composite(name: str) -> Callable[[Callable[..., Composite]], Callable[..., Composite]]:
    """Decorator registering a zero-argument factory of a :class:`Composite` under ``name``."""

    def decorator(factory):
        COMPOSITES[name] = factory
        return factory

    return decorator


def get_composite(composite: str | Composite) -> Composite:
    """A :class:`Composite` from a registered name or the object itself.

    Raises
    ------
    ValueError
        If ``composite`` is a string that is not registered.
    """
    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise ValueError(f"unknown LRP composite {composite!r}; must be one of {sorted(COMPOSITES)}")
    return COMPOSITES[composite]()


@register_composite("preset_b_flat")
def preset_b_flat(epsilon: float = 1e-6) -> Composite:
    """3D-DeepLight's published LRP (iNNvestigate ``LRPSequentialPresetBFlat``, epsilon 1e-6)."""
    return Composite(
        name="preset_b_flat",
        reference=f"iNNvestigate 1.0.8 LRPSequentialPresetBFlat (epsilon {epsilon:g}, dedicated BN rule), as published for 3D-DeepLight",
        first_map=[(types.Conv + types.Dense, rules.Flat())],
        layer_map=[
            (types.Conv, rules.AlphaBeta(alpha=2.0, beta=1.0)),
            (types.Dense, rules.Epsilon(eps=epsilon)),
            (types.BatchNorm, rules.BatchNormScale()),
            (types.GlobalAvgPool, rules.ZRule()),
            (types.PassThrough, rules.Pass()),
        ],
    )


@register_composite("epsilon")
def epsilon_everywhere(epsilon: float = 1e-3) -> Composite:
    """2D-DeepLight's published LRP: the epsilon rule (1e-3) through every layer with weights."""
    epsilon_rule = rules.Epsilon(eps=epsilon)
    return Composite(
        name="epsilon",
        reference=f"epsilon rule (epsilon {epsilon:g}) through every layer, as published for 2D-DeepLight",
        layer_map=[
            (types.Linear + types.GlobalAvgPool, epsilon_rule),
            (types.PassThrough, rules.Pass()),
        ],
    )


@register_composite("deeplight_2d")
def deeplight_2d(epsilon: float = 1e-3) -> Composite:
    """2D-DeepLight's published LRP, the original code's equations: epsilon (1e-3), ``+eps`` stabiliser.

    Per-slice ``Conv2D``: :class:`~.rules.Epsilon`; ``Dense``: :class:`~.rules.PlusEpsilon`
    (``src/modules/linear.py`` line 123 at 4a8eeaa); ``Bidirectional`` LSTM:
    :class:`~.lstm.LSTMEpsilon` (``src/deeplight/two/_lstm.py`` lines 198-206: the cell
    state's relevance split by epsilon, gates get none, forward and backward input
    relevances summed); ``FoldSlices`` / ``UnfoldSlices``, ``Dropout`` /
    ``SpatialDropout2D``: :class:`~.rules.Pass`.
    """
    return Composite(
        name="deeplight_2d",
        reference=(
            f"epsilon rule (epsilon {epsilon:g}) through the per-slice convs, the bidirectional LSTM (cell-state "
            "split by epsilon, gates pass none, directions summed) and the linear layer, denominators z + eps "
            "whatever the sign (athms/evaluating-deeplight-transfer@4a8eeaa src/deeplight/two/_lstm.py, "
            "src/modules/linear.py), as published for 2D-DeepLight"
        ),
        layer_map=[
            (types.Conv, rules.Epsilon(eps=epsilon)),
            (types.Dense, rules.PlusEpsilon(eps=epsilon)),
            (types.Recurrent, LSTMEpsilon(eps=epsilon)),
            (types.PassThrough, rules.Pass()),
        ],
    )


@register_composite("deeplight_2d_signed")
def deeplight_2d_signed(epsilon: float = 1e-3) -> Composite:
    """:func:`deeplight_2d` with the sign-aware stabiliser ``z + eps * sign(z)`` (a deliberate deviation).

    ``Conv2D`` and ``Dense``: :class:`~.rules.Epsilon`; ``Bidirectional`` LSTM:
    :class:`~.lstm.LSTMSignedEpsilon` (Arras et al.'s ``lrp_linear`` form).  Avoids
    near-zero denominators where a cell state or candidate pre-activation is near
    ``-eps``; the maps differ substantially from the published code's.
    """
    return Composite(
        name="deeplight_2d_signed",
        reference=(
            f"epsilon rule (epsilon {epsilon:g}) through the per-slice convs, the bidirectional LSTM and the linear "
            "layer with denominators z + eps*sign(z) (Arras et al. 2017): a deliberate deviation from the published "
            "2D-DeepLight code (z + eps), which avoids near-zero denominators"
        ),
        layer_map=[
            (types.Conv + types.Dense, rules.Epsilon(eps=epsilon)),
            (types.Recurrent, LSTMSignedEpsilon(eps=epsilon)),
            (types.PassThrough, rules.Pass()),
        ],
    )


def _zennit_composite(name, zennit_name, conv_rule, epsilon=1e-6, stabilizer=1e-6):
    return Composite(
        name=name,
        reference=(
            f"zennit 0.5.1 {zennit_name} (epsilon {epsilon:g}, stabiliser {stabilizer:g}; layer_map_base: batch "
            "normalisation and activations passed through, average pooling by the epsilon rule); the 2D model's LSTM "
            "by the sign-aware epsilon rule"
        ),
        layer_map=[
            (types.Conv, conv_rule),
            (types.Dense, rules.Epsilon(eps=epsilon)),
            (types.Recurrent, LSTMSignedEpsilon(eps=epsilon)),
            (types.GlobalAvgPool, rules.Epsilon(eps=stabilizer)),
            (types.PassThrough + types.BatchNorm, rules.Pass()),
        ],
    )


#: The epsilon of the zennit-convention composites' epsilon rule (``--lrp-epsilon``): Montavon et al.
#: (2019, "Layer-wise relevance propagation: an overview") use ~0.25 so that weak or contradictory
#: contributions are absorbed; at 1e-6 the rule divides by near-zero sums of mixed-sign terms, whose
#: float32 rounding then dominates the map (measured: 1.2e-2 of the largest relevance between two float32
#: implementations on the full grid, against 1e-6 for the gradient).
DEFAULT_LRP_EPSILON = 0.25


@register_composite("zennit_epsilon")
def zennit_epsilon(epsilon: float = DEFAULT_LRP_EPSILON) -> Composite:
    """Epsilon on every conv and dense layer, zennit's conventions (a ``LayerMapComposite``)."""
    return _zennit_composite(
        "zennit_epsilon", "LayerMapComposite([(Convolution, Epsilon), (Linear, Epsilon)])", rules.Epsilon(eps=epsilon)
    )


@register_composite("zennit_epsilon_plus")
def zennit_epsilon_plus(epsilon: float = DEFAULT_LRP_EPSILON) -> Composite:
    """z+ on convolutions, epsilon on dense layers (zennit ``EpsilonPlus``)."""
    return _zennit_composite("zennit_epsilon_plus", "EpsilonPlus", rules.ZPlus(eps=1e-6), epsilon=epsilon)


@register_composite("zennit_epsilon_alpha2_beta1")
def zennit_epsilon_alpha2_beta1(epsilon: float = DEFAULT_LRP_EPSILON) -> Composite:
    """Alpha 2, beta 1 on convolutions, epsilon on dense layers (zennit ``EpsilonAlpha2Beta1``)."""
    return _zennit_composite(
        "zennit_epsilon_alpha2_beta1",
        "EpsilonAlpha2Beta1",
        rules.AlphaBeta(alpha=2.0, beta=1.0, convention="zennit", eps=1e-6),
        epsilon=epsilon,
    )

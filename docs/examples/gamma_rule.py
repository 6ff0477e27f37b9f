"""A new LRP rule and a composite that uses it: the worked example of ``docs/lrp.rst``.

``tests/test_docs.py`` imports this file and checks the rule against a NumPy derivation,
so the how-to cannot drift from the code.
"""

from keras import ops

from deeplight_bids.lrp import Composite, register_composite, rules, types


class Gamma(rules.Rule):
    """Gamma rule (Montavon et al. 2019): positive contributions favoured by ``1 + gamma``.

    With ``W' = W + gamma * max(W, 0)`` and ``b' = b + gamma * max(b, 0)``::

        z = W' x + b'
        R_in = x * W'^T (R_out / z)

    ``gamma = 0`` is the z-rule; a large ``gamma`` approaches the z+ rule.

    Parameters
    ----------
    gamma : float
        Weight of the positive parts, >= 0.
    """

    def __init__(self, gamma=0.25):
        if not gamma >= 0:
            raise ValueError(f"Gamma needs gamma >= 0; got {gamma}")
        self.gamma = float(gamma)

    def forward(self, layer, inputs):
        # Only the modified forward changes; dividing R_out by z (output_gradient) and
        # multiplying the gradient by the input (reduce) are the base class's defaults.
        kernel, bias = rules.layer_parameters(layer)
        kernel = kernel + self.gamma * ops.relu(kernel)
        if bias is not None:
            bias = bias + self.gamma * ops.relu(bias)
        return rules.linear_forward(layer, inputs, kernel, bias)

    def describe(self):
        # Written into the relevance sidecar, one entry per layer.
        return {"rule": "Gamma", "gamma": self.gamma, "formula": "R_in = x * W'^T (R_out / (W'x + b'))"}


@register_composite("gamma_example")
def gamma_example(gamma=0.25):
    """Flat rule on the first layer, the gamma rule on every other conv / dense layer."""
    return Composite(
        name="gamma_example",
        reference=f"docs/examples/gamma_rule.py (gamma {gamma:g})",
        first_map=[(types.Linear, rules.Flat())],
        layer_map=[
            (types.Linear, Gamma(gamma)),
            (types.BatchNorm, rules.BatchNormScale()),
            (types.GlobalAvgPool, rules.ZRule()),
            (types.PassThrough, rules.Pass()),
        ],
    )

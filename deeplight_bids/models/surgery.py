"""Model surgery for fine-tuning: a published (or given) body with a new output layer.

The "body" is every layer but the output layer(s) in :data:`HEAD_LAYERS`; its last layer
is :data:`BODY_END`.  With ``--freeze-body`` the model is cut there into a body (volumes ->
features, run once per volume) and a head (features -> logits, the only part trained).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from deeplight_bids.exceptions import WeightsError
from deeplight_bids.models.three import build_3d_deeplight
from deeplight_bids.models.train import precision_policy
from deeplight_bids.models.weights import load_deeplight

LOGGER = logging.getLogger("deeplight_bids")

#: Output layers replaced by fine-tuning; everything else is "the body".
HEAD_LAYERS = {"3D": ("conv_13",), "2D": ("linear",)}
#: Last body layer (its output feeds the head).
BODY_END = {"3D": "bn_12", "2D": "bilstm"}
#: 3D training set-up: SpatialDropout3D(0.2) of the original stalls short fits on small
#: data (features maps of 8 channels dropped whole); a positive output bias keeps the output
#: ReLU alive; faster batch-norm statistics for short fits.  Dropout is inactive when decoding.
TRAIN_3D: dict[str, Any] = {"dropout_rate": 0.0, "output_bias": 0.1, "bn_momentum": 0.8}


def build_architecture(architecture: str, n_states: int) -> Any:
    """A fresh (random) DeepLight of ``architecture`` ("3D" or "2D") with ``n_states`` logits."""
    from deeplight_bids.models.two import build_2d_deeplight  # deferred: loads TensorFlow/Keras

    if architecture == "3D":
        return build_3d_deeplight(n_states=n_states, **TRAIN_3D)
    return build_2d_deeplight(n_states=n_states)


def _source_record(src) -> dict:
    """Where a pretrained body came from (for the model card)."""
    return {"name": src.name, "file": str(src.weights_path), "sha256": src.weights_sha256, "states": list(src.states)}


def pretrained_source(architecture: str, weights: str | os.PathLike | None = None) -> dict:
    """The model-card record of the weights ``--init pretrained`` takes its body from."""
    return _source_record(load_deeplight(weights, architecture))


def build_finetune_model(
    architecture: str,
    n_states: int,
    init: str,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    log: logging.Logger = LOGGER,
) -> tuple[Any, dict | None]:
    """A DeepLight model with ``n_states`` outputs: published (or ``weights``) body + new head, or random.

    Parameters
    ----------
    architecture : {"3D", "2D"}
    n_states : int
        Outputs of the new output layer (logits).
    init : {"pretrained", "scratch"}
        Copy the body from ``weights`` (default: the published weights), or keep it random.
    weights : str or Path or None
        ``--weights``: published weights or a ``.keras`` model of this tool.
    seed : int
        Seeds the random initial weights (head, and the whole model from scratch).

    Returns
    -------
    model : keras.Model
    source : dict or None
        Where the body came from (path, sha256, name) for ``init="pretrained"``.
    """
    import keras

    keras.utils.set_random_seed(int(seed))
    model = build_architecture(architecture, n_states)
    if init != "pretrained":
        return model, None
    src = load_deeplight(weights, architecture)
    if src.architecture != architecture:
        raise WeightsError(
            f"{src.weights_path}: holds {src.architecture}-DeepLight weights but --architecture "
            f"{architecture} was asked for."
        )
    copied = 0
    for layer in model.layers:
        if layer.name in HEAD_LAYERS[architecture] or not layer.weights:
            continue
        try:
            src_layer = src.model.get_layer(layer.name)
        except ValueError:
            raise WeightsError(
                f"{src.weights_path}: no layer '{layer.name}' to take the pretrained body from; "
                f"pass published {architecture}-DeepLight weights or a .keras model of this tool."
            ) from None
        values = src_layer.get_weights()
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise WeightsError(
                f"{src.weights_path}: layer '{layer.name}' has other shapes than "
                f"{architecture}-DeepLight's; pass matching weights."
            )
        layer.set_weights(values)
        copied += 1
    log.info(
        "fine-tune: body of %d layers from %s; new output layer for %d states", copied, src.weights_path.name, n_states
    )
    return model, _source_record(src)


def split_body_head(model: Any, architecture: str) -> tuple[Any, Any]:
    """``(body, head)``: body maps volumes to features, head maps features to logits (fresh layers)."""
    import keras

    end = BODY_END[architecture]
    body = keras.Model(model.inputs[0], model.get_layer(end).output, name="body")
    names = [layer.name for layer in model.layers]
    after = model.layers[names.index(end) + 1 :]
    head = keras.Sequential(name="head")
    head.add(keras.Input(shape=tuple(body.output.shape[1:]), name="features"))
    for layer in after:
        head.add(layer.__class__.from_config(layer.get_config()))
    for src, dst in zip(after, head.layers):
        if src.weights:
            dst.set_weights(src.get_weights())
    return body, head


def copy_head(head: Any, model: Any) -> None:
    """Copy trained head weights back into the full model (layers matched by name)."""
    for layer in head.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


def float32_model(model: Any, architecture: str, n_states: int) -> Any:
    """``model`` itself when it computes in float32, else a float32 copy (for saving)."""
    if getattr(model, "dtype_policy", None) is None or model.dtype_policy.name == "float32":
        return model
    with precision_policy("float32"):
        clone = build_architecture(architecture, n_states)
    clone.set_weights(model.get_weights())
    return clone

"""Load the published 2D-DeepLight weights and convert them to the Keras model.

The published file (reference section 6) is a pickled dict saved with ``np.save``:
34 float32 arrays keyed by the ``str()`` of TF-1 variables, e.g.
``<tf.Variable 'model/conv2d_1/weights:0' shape=(3, 3, 1, 8) dtype=float32_ref>``.
Unpickling runs code, so the file's sha256 is checked *before* ``np.load(...,
allow_pickle=True)``; any other file is refused unless the caller says
``trusted=True``.

Conversion (original layout -> Keras layer of :func:`build_2d_deeplight`):

======================================  ==============================================
``conv2d_{1,3,...,23}/weights, biases`` ``conv_1..conv_12`` kernel (3, 3, in, out) and
                                        bias, unchanged (same layout)
``lstm_fw_26/*``, ``lstm_bw_27/*``      ``bilstm`` forward / backward LSTM: the four
                                        64-row gate blocks reordered i, j, f, o ->
                                        i, f, c(=j), o and transposed; ``biases_xh +
                                        biases_hh`` summed, +1.0 on the forget block
                                        (the original adds it at run time)
``linear_29/weights, biases``           ``linear`` kernel (128, n) and bias, unchanged
======================================  ==============================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.derivatives.writers import atomic_path, write_json
from deeplight_bids.exceptions import WeightsError
from deeplight_bids.models.two import (
    CONV_BLOCKS_2D,
    INPUT_SHAPE_2D,
    LSTM_UNITS_2D,
    build_2d_deeplight,
    slice_feature_shape,
)
from deeplight_bids.states import PRETRAINED_STATES
from deeplight_bids.utils.identity import sha256sum
from deeplight_bids.versions import software_versions

if TYPE_CHECKING:
    import numpy.typing as npt

#: File name and sha256 of the published weights (reference section 6).
PUBLISHED_2D_FILENAME = "model-2D_DeepLight_desc-pretrained_model.npy"
PUBLISHED_2D_SHA256 = "d1070ea1fadf4fc93f053c57bcadc6e37b38a6763276246efb25f35e1d1df90c"

#: Original variable scopes of the twelve convolutions, in order.
CONV_SCOPES_2D = tuple(f"conv2d_{k}" for k in range(1, 24, 2))
LSTM_SCOPES_2D = {"forward": "lstm_fw_26", "backward": "lstm_bw_27"}
LINEAR_SCOPE_2D = "linear_29"

#: Forget bias the original LSTM adds at run time (not stored in the file).
FORGET_BIAS = 1.0

# Original gate block order in the 4*units rows, and the Keras order built from it.
_ORIGINAL_GATES = ("i", "j", "f", "o")
_KERAS_GATES = ("i", "f", "j", "o")

_VARIABLE_RE = re.compile(r"^<tf\.Variable '(?:model/)?(?P<name>[^':]+)(?::\d+)?'.*>$")


def variable_name(key: object) -> str:
    """Short variable name of a published key.

    ``"<tf.Variable 'model/conv2d_1/weights:0' shape=(3, 3, 1, 8) dtype=float32_ref>"``
    -> ``"conv2d_1/weights"``.  Plain names (``"model/conv2d_1/weights:0"``,
    ``"conv2d_1/weights"``) are accepted too.
    """
    key = str(key).strip()
    match = _VARIABLE_RE.match(key)
    name = match.group("name") if match else key
    name = name.removeprefix("model/")
    return re.sub(r":\d+$", "", name)


def expected_shapes_2d(n_states: int = 16, lstm_input: int = 768, units: int = 64) -> dict[str, tuple[int, ...]]:
    """Shapes of the published arrays by short name (original layout).

    Parameters
    ----------
    n_states : int
        Number of outputs of the linear layer.
    lstm_input : int
        Size of a flattened slice (768 on the reference grid).
    units : int
        LSTM units per direction.

    Returns
    -------
    dict
        ``short name -> shape``, 34 entries for the reference architecture.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    channels = 1
    for scope, (filters, _) in zip(CONV_SCOPES_2D, CONV_BLOCKS_2D):
        shapes[f"{scope}/weights"] = (3, 3, channels, filters)
        shapes[f"{scope}/biases"] = (filters,)
        channels = filters
    for scope in LSTM_SCOPES_2D.values():
        shapes[f"{scope}/weights_xh"] = (4 * units, lstm_input)
        shapes[f"{scope}/biases_xh"] = (4 * units,)
        shapes[f"{scope}/weights_hh"] = (4 * units, units)
        shapes[f"{scope}/biases_hh"] = (4 * units,)
    shapes[f"{LINEAR_SCOPE_2D}/weights"] = (2 * units, n_states)
    shapes[f"{LINEAR_SCOPE_2D}/biases"] = (n_states,)
    return shapes


def load_published_2d(path: str | os.PathLike, trusted: bool = False) -> dict[str, np.ndarray]:
    """Load the published 2D-DeepLight ``.npy`` after checking its sha256.

    Parameters
    ----------
    path : str or Path
        The published ``model-2D_DeepLight_desc-pretrained_model.npy``.
    trusted : bool
        Unpickle a file whose sha256 differs from the published one (e.g. weights
        fine-tuned with the original code).  Unpickling can run arbitrary code: only
        for files you made yourself.

    Returns
    -------
    dict of str to numpy.ndarray
        Short variable name (``"conv2d_1/weights"``) -> float32 array, original layout.

    Raises
    ------
    WeightsError
        Missing or unreadable file, checksum mismatch without ``trusted``, or content
        that is not a dict of arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"2D-DeepLight weights not found: {path}")
    digest = sha256sum(path)
    if digest != PUBLISHED_2D_SHA256 and not trusted:
        raise WeightsError(
            f"{path}: sha256 {digest} is not that of the published 2D-DeepLight weights "
            f"({PUBLISHED_2D_SHA256}); refusing to unpickle it (pass trusted=True only for a file you made)"
        )
    try:
        loaded = np.load(path, allow_pickle=True)
        content = loaded[()] if isinstance(loaded, np.ndarray) and loaded.dtype == object else loaded
    except Exception as error:  # numpy/pickle raise many types for a corrupt file
        raise WeightsError(f"{path}: cannot read 2D-DeepLight weights ({type(error).__name__}: {error})") from None
    if not isinstance(content, dict):
        raise WeightsError(f"{path}: expected a pickled dict of arrays, found {type(content).__name__}")
    arrays = {}
    for key, value in content.items():
        name = variable_name(key)
        if name in arrays:
            raise WeightsError(f"{path}: variable {name} appears twice")
        try:
            arrays[name] = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise WeightsError(f"{path}: variable {name} is not a numeric array ({type(value).__name__})") from None
    return arrays


def check_arrays_2d(
    arrays: Mapping[str, np.ndarray], n_states: int = 16, lstm_input: int = 768, units: int = 64
) -> dict[str, np.ndarray]:
    """Check names and shapes of published-layout arrays.

    Parameters
    ----------
    arrays : dict of str to array
        Keyed by short name (``"conv2d_1/weights"``) or by the original key string.
    n_states, lstm_input, units : int
        See :func:`expected_shapes_2d`.

    Returns
    -------
    dict of str to numpy.ndarray
        Keyed by short name, float32.

    Raises
    ------
    WeightsError
        One line naming the first missing key, extra key or wrong shape.
    """
    expected = expected_shapes_2d(n_states=n_states, lstm_input=lstm_input, units=units)
    named = {variable_name(key): np.asarray(value, dtype=np.float32) for key, value in arrays.items()}
    for name, shape in expected.items():
        if name not in named:
            raise WeightsError(f"2D-DeepLight weights: missing key {name} (expected shape {shape})")
        if named[name].shape != shape:
            raise WeightsError(
                f"2D-DeepLight weights: key {name} has shape {named[name].shape}, expected shape {shape}"
            )
    extra = sorted(set(named) - set(expected))
    if extra:
        raise WeightsError(
            f"2D-DeepLight weights: unexpected key {extra[0]} (shape {named[extra[0]].shape}); "
            f"expected only the {len(expected)} keys of the 2D architecture"
        )
    return named


def lstm_to_keras(
    weights_xh: np.ndarray,
    biases_xh: np.ndarray,
    weights_hh: np.ndarray,
    biases_hh: np.ndarray,
    forget_bias: float = FORGET_BIAS,
    dtype: npt.DTypeLike = np.float32,
) -> list[np.ndarray]:
    """Convert one original LSTM direction to Keras ``[kernel, recurrent_kernel, bias]``.

    Parameters
    ----------
    weights_xh : array, shape (4 * units, n_in)
        Input weights, row blocks in the original gate order i, j, f, o.
    biases_xh : array, shape (4 * units,)
    weights_hh : array, shape (4 * units, units)
        Recurrent weights, same row blocks.
    biases_hh : array, shape (4 * units,)
    forget_bias : float
        Added to the forget block (the original adds it at run time).
    dtype : numpy dtype
        Of the returned arrays, and of the bias sum (float32 as stored; float64 for a
        float64 model that must match the original's equations to rounding).

    Returns
    -------
    list of numpy.ndarray
        ``kernel (n_in, 4 * units)``, ``recurrent_kernel (units, 4 * units)``,
        ``bias (4 * units,)``, column blocks in the Keras order i, f, c, o.
    """
    units = weights_hh.shape[1]

    def reorder(rows):
        blocks = {gate: rows[k * units : (k + 1) * units] for k, gate in enumerate(_ORIGINAL_GATES)}
        return np.concatenate([blocks[gate] for gate in _KERAS_GATES], axis=0)

    kernel = reorder(np.asarray(weights_xh, dtype)).T
    recurrent = reorder(np.asarray(weights_hh, dtype)).T
    bias = reorder(np.asarray(biases_xh, dtype) + np.asarray(biases_hh, dtype))
    bias[units : 2 * units] += forget_bias  # Keras block 1 is the forget gate
    return [np.ascontiguousarray(kernel), np.ascontiguousarray(recurrent), bias]


def convert_published_2d(
    arrays: Mapping[str, np.ndarray],
    n_states: int = 16,
    input_shape: Sequence[int] | None = None,
    name: str = "DeepLight2D",
) -> Any:
    """Build 2D-DeepLight and set the published (original-layout) weights.

    Parameters
    ----------
    arrays : dict of str to array
        As returned by :func:`load_published_2d` (original keys also accepted).
    n_states : int
        Number of outputs (16 for the published weights).
    input_shape : tuple of int, optional
        ``(z, y, x, 1)``; default the reference grid ``(91, 109, 91, 1)``.
    name : str
        Model name.

    Returns
    -------
    keras.Model
        :func:`~deeplight_bids.models.two.build_2d_deeplight` with the weights set;
        input ``(batch, z, y, x, 1)`` in (z, y, x) order, output logits.

    Raises
    ------
    WeightsError
        A missing or extra key, or a wrong shape (one line naming key and shape).
    """
    input_shape = INPUT_SHAPE_2D if input_shape is None else tuple(input_shape)
    lstm_input = int(np.prod(slice_feature_shape(input_shape)))
    named = check_arrays_2d(arrays, n_states=n_states, lstm_input=lstm_input, units=LSTM_UNITS_2D)
    model = build_2d_deeplight(n_states=n_states, input_shape=input_shape, name=name)
    for k, scope in enumerate(CONV_SCOPES_2D, start=1):
        model.get_layer(f"conv_{k}").set_weights([named[f"{scope}/weights"], named[f"{scope}/biases"]])
    bilstm = model.get_layer("bilstm")
    for direction, layer in (("forward", bilstm.forward_layer), ("backward", bilstm.backward_layer)):
        scope = LSTM_SCOPES_2D[direction]
        layer.set_weights(
            lstm_to_keras(
                named[f"{scope}/weights_xh"],
                named[f"{scope}/biases_xh"],
                named[f"{scope}/weights_hh"],
                named[f"{scope}/biases_hh"],
            )
        )
    model.get_layer("linear").set_weights([named[f"{LINEAR_SCOPE_2D}/weights"], named[f"{LINEAR_SCOPE_2D}/biases"]])
    return model


def save_converted(
    model: Any, out_path: str | os.PathLike, source_path: str | os.PathLike, states: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Write a converted model as ``.keras`` plus a model-card JSON beside it.

    Parameters
    ----------
    model : keras.Model
        From :func:`convert_published_2d`.
    out_path : str or Path
        Target ``.keras`` file; the card is ``out_path`` with suffix ``.json``.
    source_path : str or Path
        The published ``.npy`` the model was converted from (name and sha256 go into
        the card).
    states : sequence of str, optional
        Output state names in output order; default
        :data:`deeplight_bids.states.PRETRAINED_STATES` (the published 16).

    Returns
    -------
    tuple of Path
        ``(model_path, card_path)``.  Both are written atomically (temp file + rename).
    """

    out_path = Path(out_path)
    if out_path.suffix != ".keras":
        raise ValueError(f"out_path must end in .keras; got {out_path}")
    source_path = Path(source_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_states = int(model.output_shape[-1])
    states = list(PRETRAINED_STATES if states is None else states)
    if len(states) != n_states:
        raise ValueError(f"the model has {n_states} outputs but {len(states)} state names were given")

    with atomic_path(out_path) as tmp:
        model.save(tmp)

    card = {
        "architecture": "2D",
        "name": model.name,
        "input_shape": list(model.input_shape[1:]),
        "input_order": "z, y, x, channel (NIfTI x, y, z transposed)",
        "output": "logits",
        "n_states": n_states,
        "states": states,
        "model_file": out_path.name,
        "model_sha256": sha256sum(out_path),
        "source": {"file": source_path.name, "sha256": sha256sum(source_path)},
        "conversion": {
            "lstm_gates": "original i, j, f, o -> Keras i, f, c, o; kernels transposed",
            "lstm_bias": f"biases_xh + biases_hh, forget block + {FORGET_BIAS}",
        },
        "software": software_versions(),
    }
    card_path = write_json(out_path.with_suffix(".json"), card)
    return out_path, card_path


def load_converted(path: str | os.PathLike) -> Any:
    """Load a ``.keras`` file written by :func:`save_converted` (no pickle, safe mode).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    keras.Model
    """
    import keras

    # Importing deeplight_bids.models.two (above) registered FoldSlices / UnfoldSlices.
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"converted 2D-DeepLight model not found: {path}")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError/TypeError/OSError etc.
        raise WeightsError(
            f"{path}: cannot load converted 2D-DeepLight model ({type(error).__name__}: {error})"
        ) from None

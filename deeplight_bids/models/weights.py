"""Find, verify and load DeepLight weights.

Three kinds of weights are understood:

* the published files (a registry below knows their name, source URL at the pinned
  commit and git blob / sha256): the 3D whole-model ``.hdf5`` saved by tf.keras 2.x,
  read with Keras 3 ``Model.load_weights`` into :func:`build_3d_deeplight`, and the
  2D pickled ``.npy`` (converted by :mod:`deeplight_bids.models.published_2d`);
* native Keras 3 ``.keras`` files written by this tool (demo, fine-tuning, converter),
  each with a model card JSON beside it that lists the output states in order;
* a folder holding one ``.keras`` file and its card (``OUTPUT_DIR/models/<name>/``).

Published files live in a cache folder: ``$DEEPLIGHT_WEIGHTS_DIR`` if set, else
``$XDG_CACHE_HOME/deeplight-bids/weights`` (``~/.cache/...``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeplight_bids.exceptions import WeightsError

if TYPE_CHECKING:
    import keras
from deeplight_bids.states import PRETRAINED_STATES
from deeplight_bids.utils.identity import sha256sum

ORIGINAL_REPOSITORY = "https://github.com/athms/evaluating-deeplight-transfer"
ORIGINAL_COMMIT = "4a8eeaa174e61f5a81feb93489e3662891c30248"


@dataclass(frozen=True)
class PublishedWeights:
    """One published weights file of the original DeepLight repository.

    Attributes
    ----------
    architecture : str
        ``"3D"`` or ``"2D"``; the registry name is ``"<architecture>-pretrained"``.
    filename : str
        File name in the repository and in the cache.
    repo_folder : str
        Folder of the file in the repository at :data:`ORIGINAL_COMMIT`.
    git_blob : str
        Git blob hash of the file (checked when no ``sha256`` is known).
    sha256, size : str or None, int or None
        Expected checksum and size in bytes, where known.
    states : tuple of str
        Output states in model order.
    """

    architecture: str
    filename: str
    repo_folder: str
    git_blob: str
    sha256: str | None = None
    size: int | None = None
    states: tuple = PRETRAINED_STATES

    @property
    def name(self) -> str:
        return f"{self.architecture}-pretrained"

    @property
    def repo_path(self) -> str:
        return f"{self.repo_folder}/{self.filename}"

    @property
    def url(self) -> str:
        return f"{ORIGINAL_REPOSITORY}/raw/{ORIGINAL_COMMIT}/{self.repo_path}"


_PUBLISHED = (
    PublishedWeights(
        "3D",
        "model-3D_DeepLight_desc-pretrained_model.hdf5",
        "src/deeplight/three/pretrained_model",
        git_blob="fc8de447a9e65595650f317d5f483b1f9d2df1a4",
    ),
    PublishedWeights(
        "2D",
        "model-2D_DeepLight_desc-pretrained_model.npy",
        "src/deeplight/two/pretrained_model",
        git_blob="d5d6fa36a2feaf8da01edc580b253b08cf7142df",
        sha256="d1070ea1fadf4fc93f053c57bcadc6e37b38a6763276246efb25f35e1d1df90c",
        size=3573425,
    ),
)
#: The published weights by name (``"3D-pretrained"``, ``"2D-pretrained"``).
REGISTRY = {weights.name: weights for weights in _PUBLISHED}
DEFAULT_WEIGHTS = {"3D": "3D-pretrained", "2D": "2D-pretrained"}


def weights_cache_dir() -> Path:
    """Folder of the published weights (``$DEEPLIGHT_WEIGHTS_DIR`` or the user cache)."""
    env = os.environ.get("DEEPLIGHT_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "deeplight-bids" / "weights"


def git_blob_sha1(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The git blob id of a file (``git hash-object``), to check files named by blob."""
    size = Path(path).stat().st_size
    digest = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as fobj:
        for block in iter(lambda: fobj.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_published(entry: PublishedWeights, path: str | os.PathLike) -> bool:
    """True when ``path`` is exactly the published file ``entry`` (by sha256 or git blob)."""
    if entry.sha256 is not None:
        return sha256sum(path) == entry.sha256
    return git_blob_sha1(path) == entry.git_blob


def published_path(name: str) -> Path:
    """Cached path of a published file, verified; WeightsError with a fix if missing or corrupt."""
    entry = REGISTRY[name]
    path = weights_cache_dir() / entry.filename
    if not path.is_file():
        raise WeightsError(
            f"{path}: published {entry.architecture} weights not found; run 'deeplight-bids weights fetch "
            f"{name}' (needs internet), set DEEPLIGHT_WEIGHTS_DIR to a folder holding {entry.filename}, "
            "or pass --weights PATH."
        )
    if not verify_published(entry, path):
        raise WeightsError(
            f"{path}: checksum does not match the published {entry.filename}; delete it and run "
            f"'deeplight-bids weights fetch {name}' again."
        )
    return path


def fetch_published(
    name: str, dest_dir: str | os.PathLike | None = None, progress: Callable[[str], Any] = print
) -> Path:
    """Download a published file from the original repository at its pinned commit.

    Written to a temporary file, verified, then renamed: a partial download is never
    taken as complete.  Returns the final path.
    """
    entry = REGISTRY[name]
    dest_dir = Path(dest_dir or weights_cache_dir())
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / entry.filename
    if final.is_file() and verify_published(entry, final):
        progress(f"{name}: already present and verified at {final}")
        return final
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{entry.filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                progress(f"{name}: {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else ""))
        if not verify_published(entry, tmp):
            raise WeightsError(f"{entry.url}: downloaded file failed its checksum; try again later.")
        os.replace(tmp, final)
    except OSError as err:
        raise WeightsError(
            f"{entry.url}: download failed ({err}); check the network or copy the file into {dest_dir} by hand."
        ) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final


@dataclass
class DeepLightModel:
    """A ready-to-decode DeepLight network and its provenance.

    Attributes
    ----------
    model : keras.Model
        Maps ``(batch, z, y, x, 1)`` float32 to ``(batch, n_states)`` logits.
    architecture : {"3D", "2D"}
    states : tuple of str
        Output states in output order.
    weights_path : pathlib.Path
    weights_sha256 : str
    card : dict
        Model card (training data, preprocessing, ...); empty for published weights.
    """

    model: Any
    architecture: str
    states: tuple
    weights_path: Path
    weights_sha256: str
    name: str = ""
    card: dict = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable description for output sidecars."""
        info = {
            "Architecture": f"{self.architecture}-DeepLight",
            "Name": self.name,
            "WeightsFile": self.weights_path.name,
            "WeightsSHA256": self.weights_sha256,
            "States": list(self.states),
        }
        if self.card.get("training_participants"):
            info["TrainingParticipants"] = list(self.card["training_participants"])
        if self.card.get("validation_participants"):
            # fitted on too (early stopping, model choice): the group level does not expect outputs of them
            info["ValidationParticipants"] = list(self.card["validation_participants"])
        return info


def model_card_path(keras_path: str | os.PathLike) -> Path | None:
    """Model card JSON beside a ``.keras`` file: ``<stem>.json`` (or ``model_card.json``)."""
    keras_path = Path(keras_path)
    for cand in (keras_path.with_suffix(".json"), keras_path.parent / "model_card.json"):
        if cand.is_file():
            return cand
    return None


def load_model_card(keras_path: str | os.PathLike) -> dict[str, Any]:
    card_path = model_card_path(keras_path)
    if card_path is None:
        raise WeightsError(
            f"{keras_path}: no model card ({Path(keras_path).with_suffix('.json').name}) beside the model; it lists "
            "the output states — keep the card that was written with the model."
        )
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as err:  # truncated, emptied, another file (UnicodeDecodeError is a ValueError)
        raise WeightsError(
            f"{card_path}: model card is damaged or not valid JSON ({' '.join(str(err).split())[:120]}); restore "
            "the card written with the model (or fine-tune again)."
        ) from None
    if not isinstance(card, dict):
        raise WeightsError(f"{card_path}: model card is not a JSON object; restore the card written with the model.")
    if not isinstance(card.get("states"), list) or not card["states"]:
        raise WeightsError(f"{card_path}: model card has no 'states' list; it must name the outputs in order.")
    return card


#: Bounds on a ``.keras`` archive's uncompressed members (a tiny archive can inflate to gigabytes).
KERAS_MAX_TOTAL_BYTES = 2 << 30
KERAS_MAX_CONFIG_BYTES = 16 << 20


def check_keras_archive(
    path: str | os.PathLike, max_total: int = KERAS_MAX_TOTAL_BYTES, max_config: int = KERAS_MAX_CONFIG_BYTES
) -> None:
    """Refuse a ``.keras`` archive that is not a zip or whose members inflate beyond the bounds.

    Parameters
    ----------
    path : path-like
    max_total : int
        Most bytes all members may hold uncompressed (default 2 GiB; 3D-DeepLight's weights
        are ~10 MB, the 2D model's ~4 MB).
    max_config : int
        Most bytes of ``config.json`` / ``metadata.json`` (default 16 MiB; DeepLight's are
        a few kB).

    Raises
    ------
    WeightsError
        Not a zip archive, or a bound exceeded (sizes from the zip directory, before any
        member is decompressed).
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise WeightsError(f"{path}: not a readable Keras model (not a .keras zip archive: {err}).") from err
    total = sum(m.file_size for m in members)
    big = [m for m in members if m.filename in ("config.json", "metadata.json") and m.file_size > max_config]
    if big or total > max_total:
        if big:
            what = (
                f"{big[0].filename} inflates to {big[0].file_size / 2**20:.0f} MiB (bound {max_config / 2**20:.0f} MiB)"
            )
        else:
            what = f"its members inflate to {total / 2**20:.0f} MiB (bound {max_total / 2**20:.0f} MiB)"
        raise WeightsError(
            f"{path}: refusing this .keras archive: {what}; it is not a DeepLight model, pass the "
            "model file that deeplight-bids wrote."
        )


def save_model(model: keras.Model, path: str | os.PathLike, card: dict) -> Path:
    """Save a Keras model as ``.keras`` plus its model card (its sidecar), atomically."""
    from deeplight_bids.derivatives.naming import sidecar_of  # deferred: loads nibabel and SciPy
    from deeplight_bids.derivatives.writers import atomic_path, write_json  # deferred: keeps NumPy out of --help

    path = Path(path)
    with atomic_path(path) as tmp:
        model.save(tmp)
    write_json(sidecar_of(path), card)
    return path


def load_deeplight(weights: str | os.PathLike | None = None, architecture: str = "3D") -> DeepLightModel:
    """Resolve ``weights`` (path, folder, registry name or None) into a :class:`DeepLightModel`.

    Parameters
    ----------
    weights : str, Path or None
        ``None``: the published weights of ``architecture`` (``"3D-pretrained"`` or
        ``"2D-pretrained"``, from :func:`weights_cache_dir`, checksum-verified); a
        registry name; a ``.keras`` file (or a folder holding one) with its model card;
        a published ``.hdf5`` (3D) or ``.npy`` (2D, converted on load).
    architecture : {"3D", "2D"}
        The variant asked for (``--architecture``).  A ``.keras`` model's card and a
        published file name their own architecture, which is used; asking for ``"2D"``
        and getting 3D weights is an error.

    Raises
    ------
    WeightsError
        Missing, corrupt or mismatching weights (one line saying what to do).
    """
    from deeplight_bids.models.three import build_3d_deeplight  # deferred: keeps NumPy out of --help

    if architecture not in DEFAULT_WEIGHTS:
        raise WeightsError(f"unknown architecture {architecture!r}; expected one of {', '.join(DEFAULT_WEIGHTS)}.")
    if weights is None:
        weights = DEFAULT_WEIGHTS[architecture]
    if str(weights) in REGISTRY:
        entry = REGISTRY[str(weights)]
        path = published_path(entry.name)
        loaded = _load_file(path, entry.architecture, build_3d_deeplight, published=entry)
        return _check_architecture(loaded, architecture)
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsError(
            f"{path}: weights not found; pass an existing .keras/.hdf5/.npy file or folder, or one of "
            f"{', '.join(REGISTRY)}."
        )
    if path.is_dir():
        found = sorted(path.glob("*.keras"))
        if len(found) != 1:
            raise WeightsError(f"{path}: expected exactly one .keras model in the folder, found {len(found)}.")
        path = found[0]
    published = next((e for e in REGISTRY.values() if e.filename == path.name), None)
    loaded = _load_file(path, architecture, build_3d_deeplight, published=published)
    return _check_architecture(loaded, architecture)


def _check_architecture(loaded, architecture):
    """Refuse 3D weights when 2D-DeepLight was asked for (the default, 3D, takes what the file holds)."""
    if architecture == "2D" and loaded.architecture != "2D":
        raise WeightsError(
            f"{loaded.weights_path}: holds {loaded.architecture}-DeepLight weights but --architecture 2D was asked "
            "for; pass 2D weights (the published .npy, '2D-pretrained', or a .keras made by 'deeplight-bids weights "
            "convert') or use --architecture 3D."
        )
    return loaded


def _is_2d_model(model):
    """Whether a Keras model has 2D-DeepLight's structure (slice folding and a bidirectional LSTM)."""
    import keras

    from deeplight_bids.models.two import FoldSlices  # deferred: loads TensorFlow/Keras

    found = {type(layer) for layer in getattr(model, "layers", [])}
    return any(issubclass(t, FoldSlices) for t in found) and any(
        issubclass(t, keras.layers.Bidirectional) for t in found
    )


def _card_architecture(path, card, model, requested):
    """Architecture of a ``.keras`` model: its card's, else inferred from the layers (2D) or ``requested``."""
    card_arch = card.get("architecture")
    if card_arch is None:
        return "2D" if _is_2d_model(model) else requested
    if card_arch not in DEFAULT_WEIGHTS:
        raise WeightsError(
            f"{path}: model card names architecture {card_arch!r}; expected one of {', '.join(DEFAULT_WEIGHTS)}."
        )
    if card_arch == "2D" and not _is_2d_model(model):
        raise WeightsError(
            f"{path}: model card says architecture 2D but the model has no slice folding and "
            "bidirectional LSTM; keep the card that was written with the model."
        )
    return card_arch


def _load_file(path, architecture, build_3d, published=None):
    suffix = "".join(path.suffixes[-1:]).lower()
    digest = sha256sum(path)
    if suffix == ".keras":
        import keras

        import deeplight_bids.models.two  # noqa: F401  (registers the 2D model's custom layers; deferred: loads TensorFlow/Keras)

        card = load_model_card(path)
        check_keras_archive(path)
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as err:  # keras raises many types for corrupt archives
            raise WeightsError(f"{path}: not a readable Keras model ({type(err).__name__}: {err}).") from err
        if not isinstance(model, keras.Sequential):
            # decoding and LRP walk the layers in order: only DeepLight's Sequential form is understood
            raise WeightsError(
                f"{path}: a {type(model).__name__} Keras model, not a keras.Sequential; deeplight-bids needs "
                "DeepLight as a Sequential model (as 'deeplight-bids weights convert', the demo and group "
                "--finetune save it): rebuild it with keras.Sequential(layers) and save it again."
            )
        n_out = model.output_shape[-1]
        if n_out != len(card["states"]):
            raise WeightsError(
                f"{path}: the model has {n_out} outputs but its card lists {len(card['states'])} states."
            )
        return DeepLightModel(
            model,
            _card_architecture(path, card, model, architecture),
            tuple(card["states"]),
            path,
            digest,
            name=card.get("name", path.stem),
            card=card,
        )
    if suffix in (".hdf5", ".h5"):
        states = published.states if published else PRETRAINED_STATES
        model = build_3d(n_states=len(states))
        try:
            model.load_weights(path)
        except Exception as err:
            raise WeightsError(
                f"{path}: cannot read 3D-DeepLight weights with {len(states)} outputs from this file "
                f"({type(err).__name__}: {str(err)[:200]}); pass the published 3D .hdf5 or a .keras model."
            ) from err
        return DeepLightModel(model, "3D", tuple(states), path, digest, name=published.name if published else path.stem)
    if suffix == ".npy":
        # deferred: loads TensorFlow/Keras
        from deeplight_bids.models.published_2d import convert_published_2d, load_published_2d

        # load_published_2d checks the sha256 before unpickling; convert_published_2d names
        # a missing/extra key or wrong shape in one line (both raise WeightsError).
        states = published.states if published else PRETRAINED_STATES
        model = convert_published_2d(load_published_2d(path), n_states=len(states))
        return DeepLightModel(
            model, "2D", tuple(states), path, digest, name=published.name if published else "2D-pretrained"
        )
    raise WeightsError(f"{path}: unknown weights format '{suffix}'; expected .keras, .hdf5/.h5 or .npy.")

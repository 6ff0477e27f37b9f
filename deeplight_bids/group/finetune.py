"""Fine-tuning (transfer learning) of DeepLight on a dataset's own states.

``deeplight-bids BIDS_DIR OUTPUT_DIR group --finetune [options]``:

1. discover the runs (as the participant level does), prepare them once into the
   work-folder cache (:mod:`deeplight_bids.prepare.cache`, in parallel up to ``--nprocs``)
   and label their volumes (``--states``; default: every labelled state found);
2. split participants: ``--cv-folds K`` (participant-wise; every participant gets
   predictions from the model of the fold that held it out) or one split with
   ``--val-participants`` (default: the last 20 % of participants, at least one);
3. per fold, build the model: ``--init pretrained`` copies the body (every layer but the
   output layer) from the published weights of ``--architecture`` (or ``--weights``),
   ``--init scratch`` starts from random weights; the output layer is new, sized to the
   states.  ``--freeze-body`` trains the output layer only: the (frozen) body's features
   are computed once per volume and the head is trained on them (much faster, same model);
4. train with Adam and class-balanced, shuffled batches (:func:`deeplight_bids.models.train.fit_resumable`:
   a checkpoint every epoch in ``WORK_DIR/finetune/<name>/<fold>/``, resumed on re-run;
   early stopping on the validation participants' loss with ``--early-stopping-patience``);
5. write ``OUTPUT_DIR/models/<name>/`` (one model, or ``fold-<k>/`` per fold): the
   ``.keras`` model and its model card JSON, the history TSV and a learning-curve PNG,
   held-out predictions ``<name>_desc-heldout_predictions.tsv`` and the accuracy
   summary ``<name>_desc-heldout_summary.{tsv,json}``;
6. when models made with ``--init scratch`` and ``--init pretrained`` exist for the same
   folds, a side-by-side table ``OUTPUT_DIR/group/finetune-comparison_arch-<A>.{tsv,json}``.

Honesty: held-out accuracy is measured only on participants the model never saw in
training.  In ``--cv-folds`` mode, early stopping uses an inner validation participant
taken from the fold's training participants, never the held-out fold.  In the
single-split mode without early stopping the held-out participants' loss is logged per epoch
but chooses nothing; with early stopping a validation participant is drawn (seeded) from the
training participants, so the held-out accuracy never comes from a participant that chose
anything.
"""

import hashlib
import json
import logging
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from deeplight_bids import __version__
from deeplight_bids.exceptions import EXIT_OK, InputDataError, UsageError, WeightsError
from deeplight_bids.models.weights import sha256sum

LOGGER = logging.getLogger("deeplight_bids")

#: Output layers replaced by fine-tuning; everything else is "the body".
HEAD_LAYERS = {"3D": ("conv_13",), "2D": ("linear",)}
#: Last body layer (its output feeds the head).
BODY_END = {"3D": "bn_12", "2D": "bilstm"}
#: Reference learning rates (sections 5 and 6).
DEFAULT_LEARNING_RATE = {"3D": 1e-3, "2D": 1e-4}
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 8
#: 3D training set-up: SpatialDropout3D(0.2) of the original stalls short fits on small
#: data (features maps of 8 channels dropped whole); a positive output bias keeps the output
#: ReLU alive; faster batch-norm statistics for short fits.  Dropout is inactive when decoding.
TRAIN_3D = {"dropout_rate": 0.0, "output_bias": 0.1, "bn_momentum": 0.8}
VALIDATION_SHARE = 0.2


# ----------------------------------------------------------------------------------------- CLI


def add_finetune_arguments(parser):
    """Add the "Fine-tuning options" group to the main parser."""

    def bounded(cast, low, strict, what):
        """A ``type=`` check: ``cast(value)`` must be > ``low`` (``strict``) or >= ``low``."""

        def check(value):
            import argparse

            try:
                number = cast(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
            if not (number > low if strict else number >= low):  # also refuses NaN
                raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {low}, got {value!r}")
            return number

        return check

    positive_int = bounded(int, 1, False, "a whole number")
    non_negative_int = bounded(int, 0, False, "a whole number")
    positive_float = bounded(float, 0, True, "a number")

    group = parser.add_argument_group(
        "Fine-tuning options",
        "group level with --finetune: fit DeepLight to this dataset's states, evaluated on held-out participants")
    group.add_argument("--finetune", action="store_true",
                       help="group level: fine-tune (transfer learning) instead of the group statistics%(default).0s")
    group.add_argument("--init", choices=("pretrained", "scratch"), default="pretrained", dest="finetune_init",
                       help="start from the published body of --architecture (or --weights) with a new output "
                            "layer, or from random weights")
    group.add_argument("--states", nargs="+", metavar="STATE", dest="finetune_states",
                       help="states to train on, in output order (default: every labelled state found, sorted)%(default).0s")
    group.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help="training epochs")
    group.add_argument("--learning-rate", type=positive_float, metavar="LR",
                       help="Adam learning rate (default: 1e-3 for 3D, 1e-4 for 2D)%(default).0s")
    group.add_argument("--finetune-batch-size", type=positive_int, metavar="N",
                       help=f"training batch size (default: {DEFAULT_BATCH_SIZE}; --batch-size is for decoding)%(default).0s")
    group.add_argument("--cv-folds", type=non_negative_int, default=0, metavar="K",
                       help="participant-wise K-fold cross-validation (every participant is predicted by a model "
                            "that never saw it); 0: one split (see --val-participants)")
    group.add_argument("--val-participants", nargs="+", metavar="LABEL",
                       type=lambda v: str(v).removeprefix("sub-"),
                       help="participants held out for validation in the one-split mode "
                            "(default: the last 20%% of participants, at least one)%(default).0s")
    group.add_argument("--early-stopping-patience", type=non_negative_int, default=0, metavar="N",
                       help="stop after N epochs without a lower validation loss and keep the best weights "
                            "(0: train all epochs)")
    group.add_argument("--seed", type=non_negative_int, default=0,
                       help="random seed (folds, weights, shuffling; also the quality measures' volume choice, random "
                            "orders and randomised model, and the significance permutations)")
    group.add_argument("--freeze-body", action="store_true",
                       help="train the output layer only (the body's features are computed once)%(default).0s")
    group.add_argument("--model-name", metavar="NAME",
                       help="folder name under OUTPUT_DIR/models (default: finetune-<architecture>-<init>"
                            "[-frozen])%(default).0s")
    return group


# ------------------------------------------------------------------------------------ helpers


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def software_versions():
    import nibabel
    import nilearn

    from deeplight_bids import backend

    return {"deeplight_bids": __version__, **backend.versions(),
            "numpy": np.__version__, "nilearn": nilearn.__version__, "nibabel": nibabel.__version__,
            "python": platform.python_version()}


def make_folds(participants, k, seed):
    """Participant-wise folds: shuffled with ``seed``, dealt round-robin; each fold sorted."""
    order = list(np.random.default_rng(int(seed)).permutation(sorted(participants)))
    return [sorted(str(p) for p in order[i::k]) for i in range(k)]


def enable_determinism(seed, log=LOGGER):
    """Same seed, same model: seed every generator and make TensorFlow's ops deterministic.

    ``keras.utils.set_random_seed`` seeds Python, NumPy and TensorFlow (initial weights,
    dropout); ``tf.config.experimental.enable_op_determinism`` makes TensorFlow pick
    deterministic kernels (reductions, convolution gradients; on a GPU an op without one
    raises).  The input order is already drawn from NumPy generators seeded with the seed
    (:func:`deeplight_bids.prepare.cache.make_volume_dataset`).

    Returns
    -------
    bool
        True when op determinism is on (recorded in the model card).
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception as err:  # e.g. a TensorFlow build without it: train anyway, and say so
        log.warning("fine-tune: TensorFlow op determinism could not be enabled (%s); the fit may differ between "
                    "runs with the same --seed", err)
        return False
    return True


def build_finetune_model(architecture, n_states, init, weights=None, seed=0, log=LOGGER):
    """A DeepLight model with ``n_states`` outputs: published (or ``weights``) body + new head, or random.

    Returns
    -------
    model : keras.Model
    source : dict or None
        Where the body came from (path, sha256, name) for ``init="pretrained"``.
    """
    import keras

    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.two import build_2d_deeplight
    from deeplight_bids.models.weights import load_deeplight

    keras.utils.set_random_seed(int(seed))
    if architecture == "3D":
        model = build_3d_deeplight(n_states=n_states, **TRAIN_3D)
    else:
        model = build_2d_deeplight(n_states=n_states)
    if init != "pretrained":
        return model, None
    src = load_deeplight(weights, architecture)
    if src.architecture != architecture:
        raise WeightsError(f"{src.weights_path}: holds {src.architecture}-DeepLight weights but --architecture "
                           f"{architecture} was asked for.")
    copied = 0
    for layer in model.layers:
        if layer.name in HEAD_LAYERS[architecture] or not layer.weights:
            continue
        try:
            src_layer = src.model.get_layer(layer.name)
        except ValueError:
            raise WeightsError(f"{src.weights_path}: no layer '{layer.name}' to take the pretrained body from; "
                               f"pass published {architecture}-DeepLight weights or a .keras model of this tool."
                               ) from None
        values = src_layer.get_weights()
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise WeightsError(f"{src.weights_path}: layer '{layer.name}' has other shapes than "
                               f"{architecture}-DeepLight's; pass matching weights.")
        layer.set_weights(values)
        copied += 1
    log.info("fine-tune: body of %d layers from %s; new output layer for %d states", copied, src.weights_path.name,
             n_states)
    return model, {"name": src.name, "file": str(src.weights_path), "sha256": src.weights_sha256,
                   "states": list(src.states)}


def split_body_head(model, architecture):
    """``(body, head)``: body maps volumes to features, head maps features to logits (fresh layers)."""
    import keras

    end = BODY_END[architecture]
    body = keras.Model(model.inputs[0], model.get_layer(end).output, name="body")
    names = [layer.name for layer in model.layers]
    after = model.layers[names.index(end) + 1:]
    head = keras.Sequential(name="head")
    head.add(keras.Input(shape=tuple(body.output.shape[1:]), name="features"))
    for layer in after:
        head.add(layer.__class__.from_config(layer.get_config()))
    for src, dst in zip(after, head.layers):
        if src.weights:
            dst.set_weights(src.get_weights())
    return body, head


def copy_head(head, model, architecture):
    """Copy trained head weights back into the full model."""
    for layer in head.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


def _predict_logits(model, reader, samples, batch_size):
    out = np.zeros((len(samples), int(model.output_shape[-1])), np.float32)
    for start in range(0, len(samples), batch_size):
        stop = min(start + batch_size, len(samples))
        out[start:stop] = np.asarray(model(reader.batch(samples, start, stop), training=False), np.float32)
    return out


def _accuracy(labels, pred):
    labels, pred = np.asarray(labels), np.asarray(pred)
    if not len(labels):
        return None, None
    recalls = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return float((pred == labels).mean()), float(np.mean(recalls))


def _float32_model(model, architecture, n_states):
    """A float32 copy of a (possibly mixed-precision) model for saving."""
    import keras

    if getattr(model, "dtype_policy", None) is None or model.dtype_policy.name == "float32":
        return model
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.two import build_2d_deeplight

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clone = build_3d_deeplight(n_states, **TRAIN_3D) if architecture == "3D" else build_2d_deeplight(n_states)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


# ------------------------------------------------------------------------------------ the job


class FinetuneJob:
    """One ``--finetune`` invocation (all folds of one init)."""

    def __init__(self, config, callbacks=(), log=LOGGER):
        self.config = config
        self.callbacks = list(callbacks)
        self.log = log
        self.arch = config.architecture
        self.init = config.finetune_init
        self.lr = config.learning_rate or DEFAULT_LEARNING_RATE[self.arch]
        self.batch_size = config.finetune_batch_size or DEFAULT_BATCH_SIZE
        suffix = "-frozen" if config.freeze_body else ""
        self.name = config.model_name or f"finetune-{self.arch}-{self.init}{suffix}"
        if not self.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UsageError(f"--model-name {self.name!r}: use letters, digits, '-', '_' and '.' only.")
        self.model_dir = Path(config.output_dir) / "models" / self.name
        self.ckpt_root = Path(config.work_dir) / "finetune" / self.name

    # -- data ------------------------------------------------------------------------------
    def load_data(self):
        from deeplight_bids.bids.discover import build_layout, discover_runs, find_derivatives
        from deeplight_bids.exceptions import NoRunsFoundError
        from deeplight_bids.prepare.cache import VolumeReader, label_volumes, prepare_cached
        from deeplight_bids.prepare.labels import load_state_map_file

        cfg = self.config
        layout = build_layout(cfg.bids_dir, find_derivatives(cfg.bids_dir, cfg.derivatives))
        runs = discover_runs(layout, space=cfg.space, participant_label=cfg.participant_label,
                             session_label=cfg.session_label, task=cfg.task, bids_filters=cfg.bids_filters)
        for run in runs:
            if run.skip_reason:
                self.log.warning("fine-tune: skipping %s: %s", run.label, run.skip_reason)
        runs = [r for r in runs if r.skip_reason is None]
        if not runs:
            raise NoRunsFoundError(f"{cfg.bids_dir}: no processable runs to fine-tune on (see the warnings above).")
        state_maps = load_state_map_file(cfg.state_map_file) if cfg.state_map_file else None
        self.runs = runs
        self.entries, self.cache_stats = prepare_cached(runs, cfg.work_dir, cfg.smoothing_fwhm, cfg.high_pass,
                                                        nprocs=cfg.nprocs, log=self.log)
        _, counts = label_volumes(self.entries, runs, None, state_maps)
        if cfg.finetune_states:
            states = tuple(cfg.finetune_states)
            empty = [s for s in states if not counts.get(s)]
            if empty:
                raise InputDataError(
                    f"{cfg.bids_dir}: state(s) {', '.join(empty)} have no labelled volumes (found: "
                    f"{', '.join(f'{s} ({n})' for s, n in sorted(counts.items())) or 'none'}); fix --states, the "
                    "events files or --state-map.")
        else:
            states = tuple(sorted(counts))
        if len(states) < 2:
            raise InputDataError(
                f"{cfg.bids_dir}: fine-tuning needs at least 2 states with labelled volumes, found "
                f"{', '.join(states) or 'none'}; check the events files (trial_type) and --state-map.")
        self.states = states
        self.samples, _ = label_volumes(self.entries, runs, states, state_maps)
        self.participants = sorted(set(self.samples.subject))
        if len(self.participants) < 2:
            raise InputDataError(
                f"{cfg.bids_dir}: held-out evaluation needs at least 2 participants with labelled volumes, found "
                f"{len(self.participants)} ({', '.join('sub-' + p for p in self.participants) or 'none'}); add "
                "participants or widen --participant-label.")
        self.reader = VolumeReader(self.entries)
        self.log.info("fine-tune: %d labelled volumes of %d participants, states %s (%s)", len(self.samples),
                      len(self.participants), ", ".join(states),
                      ", ".join(str(int((self.samples.label == i).sum())) for i in range(len(states))))

    def splits(self):
        """List of ``(fold name, training, validation, held out)`` participant lists."""
        cfg = self.config
        parts = self.participants
        if cfg.cv_folds:
            k = int(cfg.cv_folds)
            if k < 2 or k > len(parts):
                raise UsageError(f"--cv-folds {k}: needs 2 <= K <= the number of participants ({len(parts)}).")
            folds = make_folds(parts, k, cfg.seed)
            out = []
            for i, held in enumerate(folds, start=1):
                train = [p for p in parts if p not in held]
                val = []
                if cfg.early_stopping_patience:
                    if len(train) >= 3:
                        # inner validation participant (never the held-out fold)
                        val = [list(np.random.default_rng([cfg.seed, i]).permutation(train))[0]]
                        train = [p for p in train if p not in val]
                    else:
                        self.log.warning("fine-tune: fold %d has %d training participants; no inner validation "
                                         "participant for early stopping (needs 3)", i, len(train))
                out.append((f"fold-{i}", sorted(train), sorted(val), held))
            return out
        if cfg.val_participants:
            val = sorted(str(v) for v in cfg.val_participants)
            unknown = [v for v in val if v not in parts]
            if unknown:
                raise UsageError(f"--val-participants {' '.join(unknown)}: not among the participants with labelled "
                                 f"volumes ({', '.join(parts)}).")
        else:
            n_val = max(1, int(round(VALIDATION_SHARE * len(parts))))
            val = parts[-n_val:]
        train = [p for p in parts if p not in val]
        if not train:
            raise UsageError("--val-participants leaves no participant for training.")
        if not cfg.early_stopping_patience:
            # the held-out participants' loss is only logged per epoch: it chooses nothing
            return [("", train, val, val)]
        # early stopping chooses the epoch: its validation participant must not be a held-out one,
        # or the held-out accuracy is biased (issue 13); take it from the training participants
        if len(train) < 2:
            raise UsageError(f"--early-stopping-patience without --cv-folds needs a validation participant apart from "
                             f"the held-out ones ({', '.join(val)}) and at least one training participant; there "
                             f"are only {len(parts)} participants: drop --early-stopping-patience or add participants.")
        inner = [str(np.random.default_rng([cfg.seed, 0]).permutation(train)[0])]
        return [("", [p for p in train if p not in inner], inner, val)]

    # -- outputs ---------------------------------------------------------------------------
    def _check_existing(self):
        """An existing model folder of other states: refuse (or remove with --overwrite)."""
        if self.config.overwrite:
            shutil.rmtree(self.model_dir, ignore_errors=True)
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
            return
        for card_path in sorted(self.model_dir.glob("**/*.json")):
            try:
                card = json.loads(card_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(card, dict) and "states" in card and "architecture" in card:
                if list(card["states"]) != list(self.states) or card["architecture"] != self.arch:
                    raise WeightsError(
                        f"{card_path}: model card lists {card['architecture']} states {', '.join(card['states'])} "
                        f"but this fine-tuning has {self.arch} states {', '.join(self.states)}; pass another "
                        "--model-name, matching --states, or --overwrite.")

    def _input_checksums(self, subjects):
        out = []
        for run in self.runs:
            if run.subject in subjects:
                out.append({"run": run.label, "bold": run.bold.name, "bold_sha256": sha256sum(run.bold),
                            "mask_sha256": sha256sum(run.mask), "events_sha256": sha256sum(run.events)})
        return out

    def _labels_identity(self):
        """What the labels derive from (the cache entries key the BOLD and mask): events files and state map."""
        from deeplight_bids.bids.identity import digest, file_identity

        cfg = self.config
        state_map = file_identity(cfg.state_map_file) if cfg.state_map_file else None
        return digest({"events": [file_identity(r.events) if r.events else None for r in self.runs],
                       "state_map": state_map, "states": list(self.states)})

    def _weights_identity(self):
        """``--weights`` as given, and the identity of the file(s) it names (a re-saved file is other weights)."""
        from deeplight_bids.bids.identity import file_identity

        given = self.config.weights
        if given is None or self.init == "scratch" or not Path(given).exists():
            return given  # published weights are verified by checksum when loaded
        files = sorted(Path(given).glob("*.keras")) if Path(given).is_dir() else [Path(given)]
        return [str(given), *(file_identity(f) for f in files)]

    # -- training --------------------------------------------------------------------------
    def _body_features(self):
        """Frozen-body features of every sample, computed once and kept in ``WORK_DIR/finetune/features``.

        The body is the same in every fold (same init, same seed), so one pass over the volumes
        serves all folds and re-runs (keyed by the body's weights, the cache entries and the samples).
        """
        cfg = self.config
        model0, source = build_finetune_model(self.arch, len(self.states), self.init, cfg.weights, cfg.seed,
                                              self.log)
        body, _ = split_body_head(model0, self.arch)
        weights_digest = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes()
                                                 for w in body.get_weights())).hexdigest()[:16]
        key = _digest({"body": weights_digest, "arch": self.arch, "entries": [e.key for e in self.entries],
                       "samples": [self.samples.entry.tolist(), self.samples.volume.tolist()],
                       "events": self._labels_identity()})
        path = Path(cfg.work_dir) / "finetune" / "features" / f"{key}.npy"
        if path.is_file():
            self.log.info("fine-tune: reusing frozen-body features from %s", path)
            return np.load(path), source
        t0 = time.monotonic()
        batch = max(1, int(cfg.batch_size))
        features = np.concatenate([
            np.asarray(body(self.reader.batch(self.samples, s, min(s + batch, len(self.samples))), training=False),
                       np.float32) for s in range(0, len(self.samples), batch)])
        self.log.info("fine-tune: frozen-body features of %d volumes in %.1f s (%s)", len(features),
                      time.monotonic() - t0, "x".join(str(d) for d in features.shape[1:]))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npy")
        np.save(tmp, features)
        tmp.replace(path)
        return features, source

    def run(self):
        """Fit, evaluate and write; TensorFlow op determinism is on for the fit only."""
        self.deterministic = enable_determinism(self.config.seed, self.log)
        try:
            return self._run()
        finally:
            if self.deterministic:  # process-wide: leave the rest of the process (decoding, LRP) as it was
                from tensorflow.python.framework import config as tf_config  # no public "disable" in TF 2.21

                tf_config.disable_op_determinism()

    def _run(self):
        import keras

        from deeplight_bids.models.train import fit_resumable, training_devices, write_history
        from deeplight_bids.models.weights import save_model
        from deeplight_bids.prepare.cache import make_array_dataset, make_volume_dataset

        cfg = self.config
        t_start = time.monotonic()
        self.load_data()
        self._check_existing()
        splits = self.splits()
        n_gpus, _, mixed = training_devices()
        if mixed:
            keras.mixed_precision.set_global_policy("mixed_float16")
        n_states = len(self.states)
        source = None
        features = None
        if cfg.freeze_body:
            # the body is the same in every fold (same init, same seed): features once per volume
            features, source = self._body_features()
        preds = []
        fold_reports = []
        for fold_index, (fold, train, val, held) in enumerate(splits):
            self.log.info("fine-tune %s%s: training on %s; validation %s; held out %s", self.name,
                          f" {fold}" if fold else "", ", ".join(train),
                          "none (the held-out loss is logged per epoch and chooses nothing)" if val == held
                          else ", ".join(val) or "none", ", ".join(held))
            tr = np.isin(self.samples.subject, train)
            va = np.isin(self.samples.subject, val)
            fingerprint = _digest({"arch": self.arch, "init": self.init, "weights": self._weights_identity(),
                                   "states": self.states,
                                   "train": train, "val": val, "lr": self.lr, "batch": self.batch_size,
                                   "seed": cfg.seed, "freeze": cfg.freeze_body, "patience": cfg.early_stopping_patience,
                                   "cache": [e.key for e in self.entries], "n": int(tr.sum()), "train3d": TRAIN_3D,
                                   "events": self._labels_identity()})
            holder = {}

            if cfg.freeze_body:
                def build(holder=holder):
                    model, src = build_finetune_model(self.arch, n_states, self.init, cfg.weights, cfg.seed,
                                                      self.log)
                    holder["model"], holder["source"] = model, src
                    return split_body_head(model, self.arch)[1]

                def make_train(start_epoch, tr=tr, fold_index=fold_index):
                    return make_array_dataset(features[tr], self.samples.label[tr], self.batch_size,
                                              seed=[cfg.seed, fold_index], start_epoch=start_epoch)
                val_ds = (make_array_dataset(features[va], self.samples.label[va], 64, shuffle=False, balance=False)
                          if va.any() else None)
            else:
                def build(holder=holder):
                    model, src = build_finetune_model(self.arch, n_states, self.init, cfg.weights, cfg.seed,
                                                      self.log)
                    holder["source"] = src
                    return model

                def make_train(start_epoch, tr=tr, fold_index=fold_index):
                    return make_volume_dataset(self.reader, self.samples.subset(tr), self.batch_size,
                                               seed=[cfg.seed, fold_index], start_epoch=start_epoch)
                val_ds = (make_volume_dataset(self.reader, self.samples.subset(va), self.batch_size, shuffle=False,
                                              balance=False) if va.any() else None)
            trained, state = fit_resumable(build, None, self.ckpt_root / (fold or "single"), fingerprint,
                                           cfg.epochs, self.lr, val_data=val_ds,
                                           patience=cfg.early_stopping_patience if va.any() else 0,
                                           restore_best=bool(cfg.early_stopping_patience),
                                           callbacks=self.callbacks, log=self.log, make_train_data=make_train)
            if cfg.freeze_body:
                full = holder.get("model")
                if full is None:  # resumed: the body is rebuilt the same way
                    full, holder["source"] = build_finetune_model(self.arch, n_states, self.init, cfg.weights,
                                                                  cfg.seed, self.log)
                copy_head(trained, full, self.arch)
                held_mask = np.isin(self.samples.subject, held)
                logits = np.asarray(trained.predict(features[held_mask], batch_size=64, verbose=0), np.float32)
            else:
                full = trained
                if holder.get("source") is None and self.init == "pretrained":
                    holder["source"] = _source_info(self.arch, cfg.weights)
                held_mask = np.isin(self.samples.subject, held)
                logits = _predict_logits(full, self.reader, self.samples.subset(held_mask), cfg.batch_size)
            source = holder.get("source") or source
            held_samples = self.samples.subset(held_mask)
            pred = logits.argmax(axis=1)
            acc, bacc = _accuracy(held_samples.label, pred)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            for i in range(len(held_samples)):
                row = {"participant_id": f"sub-{held_samples.subject[i]}", "run": held_samples.run_label[i],
                       "volume": int(held_samples.volume[i]), "true_state": self.states[held_samples.label[i]],
                       "predicted_state": self.states[pred[i]], "correct": int(pred[i] == held_samples.label[i]),
                       "fold": fold or "single", "training_participant": 0}
                row.update({f"prob_{s}": float(probs[i, j]) for j, s in enumerate(self.states)})
                preds.append(row)
            history = state["history"]
            last = history[-1] if history else {}
            best = next((h for h in history if h["epoch"] == state.get("best_epoch")), last)
            metrics = {"train_accuracy_last_epoch": last.get("accuracy"), "train_loss_last_epoch": last.get("loss"),
                       "validation_accuracy": best.get("val_accuracy"), "validation_loss": best.get("val_loss"),
                       "heldout_accuracy": acc, "heldout_balanced_accuracy": bacc,
                       "heldout_volumes": int(len(held_samples)), "chance": 1.0 / n_states,
                       "epochs_done": state["epoch"], "best_epoch": state.get("best_epoch"),
                       "stopped_early": bool(state.get("stopped_early")), "resumed_from_epoch": state["resumed_from"]}
            out_dir = self.model_dir / fold if fold else self.model_dir
            stem = f"{self.name}_{fold}" if fold else self.name
            card = {
                "name": stem, "architecture": self.arch, "init": self.init, "init_weights": source,
                "states": list(self.states), "fold": fold or None,
                "training_participants": list(train), "validation_participants": list(val),
                "heldout_participants": list(held),
                "preprocessing": {"smoothing_fwhm": cfg.smoothing_fwhm, "high_pass": cfg.high_pass,
                                  "space": cfg.space, "grid": "MNI152NLin6Asym 2 mm (91, 109, 91), (z, y, x) input"},
                "training": {"deterministic": bool(getattr(self, "deterministic", False)),
                             "determinism": "keras.utils.set_random_seed(seed) + TensorFlow op determinism; input "
                                            "order from NumPy generators seeded with the seed",
                             "epochs": cfg.epochs, "learning_rate": self.lr, "batch_size": self.batch_size,
                             "optimizer": "Adam", "loss": "sparse categorical cross-entropy on logits",
                             "class_balancing": "oversampling to the largest class per epoch",
                             "freeze_body": bool(cfg.freeze_body), "early_stopping_patience":
                                 cfg.early_stopping_patience, "mixed_precision": bool(mixed), "gpus": n_gpus,
                             **({"dropout_rate": TRAIN_3D["dropout_rate"], "bn_momentum": TRAIN_3D["bn_momentum"],
                                 "output_bias": TRAIN_3D["output_bias"]} if self.arch == "3D" else {})},
                "seed": cfg.seed, "metrics": metrics, "software": software_versions(),
                "inputs": self._input_checksums(set(train) | set(val)),
                "dataset": str(cfg.bids_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "description": "fine-tuned by 'deeplight-bids ... group --finetune'",
            }
            out_dir.mkdir(parents=True, exist_ok=True)
            save_model(_float32_model(full, self.arch, n_states), out_dir / f"{stem}.keras", card)
            write_history(history, out_dir / f"{stem}_history.tsv", out_dir / f"{stem}_learningcurve.png",
                          title=f"{stem}: {self.arch} {self.init}")
            fold_reports.append({"fold": fold or "single", "training_participants": train,
                                 "validation_participants": val, "heldout_participants": held,
                                 "model": str((out_dir / f"{stem}.keras").relative_to(cfg.output_dir)), **metrics})
            self.log.info("fine-tune %s%s: held-out accuracy %.3f (balanced %.3f, %d volumes, chance %.3f)",
                          self.name, f" {fold}" if fold else "", acc, bacc, len(held_samples), 1.0 / n_states)
        if mixed:
            keras.mixed_precision.set_global_policy("float32")
        summary = self._write_summary(preds, fold_reports, splits, time.monotonic() - t_start)
        write_comparison(cfg.output_dir, self.log)
        return summary

    def _write_summary(self, preds, fold_reports, splits, seconds):
        import pandas as pd

        from deeplight_bids.derivatives.writers import write_json, write_tsv

        cfg = self.config
        frame = pd.DataFrame(preds)
        write_tsv(self.model_dir / f"{self.name}_desc-heldout_predictions.tsv", frame)
        rows = []
        for subject, part in frame.groupby("participant_id", sort=True):
            idx = [self.states.index(s) for s in part["true_state"]]
            acc, bacc = _accuracy(idx, [self.states.index(s) for s in part["predicted_state"]])
            rows.append({"participant_id": subject, "fold": part["fold"].iloc[0], "n_volumes": len(part),
                         "n_correct": int(part["correct"].sum()), "accuracy": acc, "balanced_accuracy": bacc,
                         "chance_level": 1.0 / len(self.states)})
        true_all = [self.states.index(s) for s in frame["true_state"]]
        acc, bacc = _accuracy(true_all, [self.states.index(s) for s in frame["predicted_state"]])
        rows.append({"participant_id": "all", "fold": "all", "n_volumes": len(frame),
                     "n_correct": int(frame["correct"].sum()), "accuracy": acc, "balanced_accuracy": bacc,
                     "chance_level": 1.0 / len(self.states)})
        write_tsv(self.model_dir / f"{self.name}_desc-heldout_summary.tsv", pd.DataFrame(rows))
        per_participant = [r["accuracy"] for r in rows[:-1]]
        summary = {
            "name": self.name, "architecture": self.arch, "init": self.init, "freeze_body": bool(cfg.freeze_body),
            "states": list(self.states), "seed": cfg.seed, "cv_folds": int(cfg.cv_folds or 0),
            "learning_rate": self.lr, "batch_size": self.batch_size, "epochs": cfg.epochs,
            "heldout_accuracy_pooled": acc, "heldout_balanced_accuracy_pooled": bacc,
            "heldout_accuracy_mean_over_participants": float(np.mean(per_participant)),
            "chance": 1.0 / len(self.states), "n_volumes": len(frame),
            # never since issue 13: early stopping validates on a participant that is not held out
            "validation_used_for_early_stopping": any(set(f["validation_participants"]) & set(f["heldout_participants"])
                                                      and cfg.early_stopping_patience for f in fold_reports),
            "folds": fold_reports, "participants": rows[:-1],
            "cache": {"prepared": self.cache_stats.prepared, "reused": self.cache_stats.reused},
            "seconds": round(seconds, 1), "software": software_versions(),
        }
        write_json(self.model_dir / f"{self.name}_desc-heldout_summary.json", summary)
        self.log.info("fine-tune %s: held-out accuracy %.3f over %d volumes of %d participants (chance %.3f); "
                      "outputs in %s", self.name, acc, len(frame), len(rows) - 1, 1.0 / len(self.states),
                      self.model_dir)
        return summary


def _source_info(architecture, weights):
    from deeplight_bids.models.weights import load_deeplight

    src = load_deeplight(weights, architecture)
    return {"name": src.name, "file": str(src.weights_path), "sha256": src.weights_sha256, "states": list(src.states)}


# ------------------------------------------------------------------------------ comparison


def heldout_summaries(output_dir):
    """``[(modification time, summary dict)]`` of every ``OUTPUT_DIR/models/*/*_desc-heldout_summary.json``.

    Unreadable files are left out (a fine-tuning still writing, or a damaged file).
    """
    out = []
    for path in sorted((Path(output_dir) / "models").glob("*/*_desc-heldout_summary.json")):
        try:
            out.append((path.stat().st_mtime, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def write_comparison(output_dir, log=LOGGER):
    """Side-by-side held-out accuracy of ``--init scratch`` and ``--init pretrained`` on the same folds.

    Scans ``OUTPUT_DIR/models/*/*_desc-heldout_summary.json``; for every architecture with
    both inits on the same participant folds and states (the newest summary of each init,
    frozen and full fine-tuning kept apart), writes
    ``OUTPUT_DIR/group/finetune-comparison_arch-<A>[_frozen].{tsv,json}``.  Returns the written paths.
    """
    import pandas as pd

    from deeplight_bids.derivatives.writers import write_json, write_tsv

    output_dir = Path(output_dir)
    groups = {}
    for mtime, s in heldout_summaries(output_dir):
        folds = tuple(tuple(f["heldout_participants"]) for f in s.get("folds", []))
        key = (s["architecture"], bool(s.get("freeze_body")), tuple(s["states"]), folds)
        slot = groups.setdefault(key, {})
        if s["init"] not in slot or slot[s["init"]][0] < mtime:
            slot[s["init"]] = (mtime, s)
    written = []
    for (arch, frozen, states, folds), by_init in sorted(groups.items()):
        if not {"scratch", "pretrained"} <= set(by_init):
            continue
        scratch, pretrained = by_init["scratch"][1], by_init["pretrained"][1]
        rows = []
        for fs, fp in zip(scratch["folds"], pretrained["folds"]):
            rows.append({"fold": fs["fold"], "heldout_participants": " ".join(fs["heldout_participants"]),
                         "n_volumes": fs["heldout_volumes"], "accuracy_scratch": fs["heldout_accuracy"],
                         "accuracy_pretrained": fp["heldout_accuracy"],
                         "difference": fp["heldout_accuracy"] - fs["heldout_accuracy"],
                         "balanced_accuracy_scratch": fs["heldout_balanced_accuracy"],
                         "balanced_accuracy_pretrained": fp["heldout_balanced_accuracy"]})
        rows.append({"fold": "all", "heldout_participants": "all", "n_volumes": scratch["n_volumes"],
                     "accuracy_scratch": scratch["heldout_accuracy_pooled"],
                     "accuracy_pretrained": pretrained["heldout_accuracy_pooled"],
                     "difference": pretrained["heldout_accuracy_pooled"] - scratch["heldout_accuracy_pooled"],
                     "balanced_accuracy_scratch": scratch["heldout_balanced_accuracy_pooled"],
                     "balanced_accuracy_pretrained": pretrained["heldout_balanced_accuracy_pooled"]})
        stem = f"finetune-comparison_arch-{arch}" + ("_frozen" if frozen else "")
        tsv = output_dir / "group" / f"{stem}.tsv"
        write_tsv(tsv, pd.DataFrame(rows))
        write_json(tsv.with_suffix(".json"), {
            "Description": "held-out accuracy of models fitted from scratch and from the pretrained body on the "
                           "same participant folds (each participant predicted by a model that never saw it)",
            "architecture": arch, "freeze_body": frozen, "states": list(states), "chance": 1.0 / len(states),
            "models": {"scratch": scratch["name"], "pretrained": pretrained["name"]},
            "settings": {init: {k: s[k] for k in ("learning_rate", "batch_size", "epochs", "seed")}
                         for init, s in (("scratch", scratch), ("pretrained", pretrained))},
            "rows": rows})
        written.append(tsv)
        log.info("fine-tune: comparison scratch vs pretrained (%s) written to %s", arch, tsv)
    return written


def run_finetune(config, callbacks=(), log=LOGGER):
    """Run ``group --finetune``; returns the exit code (errors raise :class:`DeepLightBidsError`)."""
    from deeplight_bids.runtime import configure_threads as _configure_threads

    _configure_threads(config.nprocs)
    FinetuneJob(config, callbacks=callbacks, log=log).run()
    return EXIT_OK

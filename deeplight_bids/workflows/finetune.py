"""Fine-tuning (transfer learning) of DeepLight on a dataset's own states: the stages.

``deeplight-bids BIDS_DIR OUTPUT_DIR group --finetune [options]`` (options:
:mod:`deeplight_bids.cli.finetune`):

1. load the data (:func:`deeplight_bids.models.datasets.load_training_data`): discover the
   runs as the participant level does, prepare them once into the work-folder cache (in
   parallel up to ``--nprocs``) and label their volumes (``--states``; default: every
   labelled state found);
2. split participants (:func:`deeplight_bids.models.splits.participant_splits`):
   ``--cv-folds K`` (every participant is predicted by the model of the fold that held it
   out) or one split with ``--val-participants`` (default: the last 20 %, at least one);
3. per fold, build the model (:func:`deeplight_bids.models.surgery.build_finetune_model`):
   ``--init pretrained`` copies the body from the published weights of ``--architecture``
   (or ``--weights``), ``--init scratch`` starts from random weights; the output layer is
   new, sized to the states.  ``--freeze-body`` trains the output layer only on the
   (frozen) body's features, computed once per volume
   (:func:`deeplight_bids.models.datasets.body_features`);
4. train (:func:`deeplight_bids.models.train.fit_resumable`): Adam, class-balanced shuffled
   batches, a checkpoint every epoch in ``WORK_DIR/finetune/<name>/<fold>/`` resumed on
   re-run, early stopping on the validation participants' loss with
   ``--early-stopping-patience``;
5. write ``OUTPUT_DIR/models/<name>/`` (one model, or ``fold-<k>/`` per fold): the
   ``.keras`` model and its model card JSON, the history TSV and a learning-curve PNG; then
   the held-out predictions and summaries, and the scratch-vs-pretrained comparison
   (:mod:`deeplight_bids.models.heldout`).

Honesty: held-out accuracy is measured only on participants the model never saw in
training, and a held-out participant never chooses an epoch (see
:mod:`deeplight_bids.models.splits`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.derivatives import naming
from deeplight_bids.derivatives.writers import write_json
from deeplight_bids.exceptions import EXIT_OK, UsageError, WeightsError
from deeplight_bids.models import datasets, heldout, linear_baseline
from deeplight_bids.models.input_pipeline import make_array_dataset, make_volume_dataset
from deeplight_bids.models.linear_baseline import estimator_description, write_fold
from deeplight_bids.models.splits import participant_splits
from deeplight_bids.models.surgery import (
    TRAIN_3D,
    build_finetune_model,
    copy_head,
    float32_model,
    pretrained_source,
    split_body_head,
)
from deeplight_bids.models.train import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEARNING_RATE,
    PRECISE_BN_VOLUMES,
    deterministic_ops,
    fit_resumable,
    precision_policy,
    training_devices,
    write_history,
)
from deeplight_bids.models.weights import save_model
from deeplight_bids.runtime import configure_threads as _configure_threads
from deeplight_bids.utils.identity import digest
from deeplight_bids.versions import software_versions

if TYPE_CHECKING:
    from deeplight_bids.config import Config

LOGGER = logging.getLogger("deeplight_bids")


class FinetuneJob:
    """One ``--finetune`` invocation (all folds of one init).

    Parameters
    ----------
    config : deeplight_bids.config.Config
        Settings (``--finetune`` options, BIDS filters, preparation, output and work folders).
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks for every fit.
    """

    def __init__(self, config: Config, callbacks: Sequence[Any] = (), log: logging.Logger = LOGGER) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.log = log
        self.arch = config.inputs.architecture
        self.init = config.finetune.init
        self.lr = config.finetune.learning_rate or DEFAULT_LEARNING_RATE[self.arch]
        self.batch_size = config.finetune.batch_size or DEFAULT_BATCH_SIZE
        suffix = "-frozen" if config.finetune.freeze_body else ""
        self.name = config.finetune.model_name or f"finetune-{self.arch}-{self.init}{suffix}"
        if not self.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UsageError(f"--model-name {self.name!r}: use letters, digits, '-', '_' and '.' only.")
        self.model_dir = naming.finetune_model_dir(config.inputs.output_dir, self.name)
        self.ckpt_root = naming.finetune_work_dir(config.inputs.work_dir, self.name)
        # a datasets.TrainingData from load_data() on (the first stage); Any: its fields are typed `object` there
        self.data: Any = None
        self.participants: list[str] = []
        self.deterministic = False
        self._linear_features = None  # the linear baseline's feature index, built once for all folds

    # -- stages ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Fit, evaluate and write every fold; returns the held-out summary (dict).

        TensorFlow op determinism (the whole job) and, on a GPU, the mixed-precision policy
        (the fits) are process-wide: both are reset afterwards, also when the job fails, so
        decoding and LRP in the same process run as before.
        """
        t_start = time.monotonic()
        with deterministic_ops(self.config.seed, self.log) as self.deterministic:
            self.load_data()
            self.check_existing()
            splits = self.splits()
            n_gpus, _, mixed = training_devices()
            with precision_policy("mixed_float16" if mixed else None):
                features = self.body_features() if self.config.finetune.freeze_body else None
                folds = [self.fit_fold(i, split, features, n_gpus, mixed) for i, split in enumerate(splits)]
            summary = self.write_summary(folds, time.monotonic() - t_start)
            heldout.write_comparison(self.config.inputs.output_dir, self.log)
        return summary

    def load_data(self) -> None:
        """Stage 1: prepared, labelled volumes (``self.data``) and their participants."""
        self.data = datasets.load_training_data(self.config, self.log)
        self.participants = self.data.participants

    @property
    def states(self) -> tuple[str, ...]:
        """State names in output order (after :meth:`load_data`)."""
        return self.data.states

    def splits(self) -> list[tuple[str, list[str], list[str], list[str]]]:
        """Stage 2: list of ``(fold name, training, validation, held out)`` participant lists."""
        cfg = self.config
        return participant_splits(
            self.participants,
            cfg.finetune.cv_folds,
            cfg.finetune.val_participants,
            cfg.finetune.early_stopping_patience,
            cfg.seed,
            self.log,
        )

    def check_existing(self) -> None:
        """An existing model folder of other states: refuse (or remove with --overwrite)."""
        if self.config.overwrite:
            shutil.rmtree(self.model_dir, ignore_errors=True)
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
            return
        for card_path in sorted(self.model_dir.glob("**/*.json")):
            try:
                card = json.loads(card_path.read_text())
            except (OSError, ValueError):  # damaged (or not a card): not ours to judge here
                continue
            if isinstance(card, dict) and "states" in card and "architecture" in card:
                if list(card["states"]) != list(self.states) or card["architecture"] != self.arch:
                    raise WeightsError(
                        f"{card_path}: model card lists {card['architecture']} states {', '.join(card['states'])} "
                        f"but this fine-tuning has {self.arch} states {', '.join(self.states)}; pass another "
                        "--model-name, matching --states, or --overwrite."
                    )

    def body_features(self) -> np.ndarray:
        """``--freeze-body``: the frozen body's features of every volume (the body is the same in every fold)."""
        cfg = self.config
        model, _ = build_finetune_model(self.arch, len(self.states), self.init, cfg.inputs.weights, cfg.seed, self.log)
        body, _ = split_body_head(model, self.arch)
        return datasets.body_features(
            body,
            self.data,
            cfg.inputs.work_dir,
            cfg.participant.batch_size,
            {"arch": self.arch, "events": self._labels_identity()},
            self.log,
        )

    def fit_fold(
        self,
        fold_index: int,
        split: tuple[str, list[str], list[str], list[str]],
        features: np.ndarray | None,
        n_gpus: int,
        mixed: bool,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Stages 3-5 for one fold: build, train (resumable), predict the held-out participants, save the model."""
        cfg, data = self.config, self.data
        fold, train, val, held = split
        t_fit = time.monotonic()
        self.log.info(
            "fine-tune %s%s: training on %s; validation %s; held out %s",
            self.name,
            f" {fold}" if fold else "",
            ", ".join(train),
            "none (the held-out loss is logged per epoch and chooses nothing)"
            if val == held
            else ", ".join(val) or "none",
            ", ".join(held),
        )
        tr = np.isin(data.samples.subject, train)
        va = np.isin(data.samples.subject, val)
        held_mask = np.isin(data.samples.subject, held)
        fingerprint = digest(
            {
                "arch": self.arch,
                "init": self.init,
                "weights": self._weights_identity(),
                "states": self.states,
                "train": train,
                "val": val,
                "lr": self.lr,
                "batch": self.batch_size,
                "seed": cfg.seed,
                "freeze": cfg.finetune.freeze_body,
                "patience": cfg.finetune.early_stopping_patience,
                **({"mix_same_state": cfg.finetune.mix_same_state} if cfg.finetune.mix_same_state else {}),
                "cache": [e.key for e in data.entries],
                "n": int(tr.sum()),
                "train3d": TRAIN_3D,
                "events": self._labels_identity(),
            },
            16,
        )
        built = {}

        def build():
            built["model"], built["source"] = build_finetune_model(
                self.arch, len(self.states), self.init, cfg.inputs.weights, cfg.seed, self.log
            )
            return split_body_head(built["model"], self.arch)[1] if cfg.finetune.freeze_body else built["model"]

        make_train, val_ds, stats_ds = self._datasets(fold_index, tr, va, features)
        trained, state = fit_resumable(
            build,
            None,
            self.ckpt_root / (fold or "single"),
            fingerprint,
            cfg.finetune.epochs,
            self.lr,
            val_data=val_ds,
            patience=cfg.finetune.early_stopping_patience if va.any() else 0,
            restore_best=bool(cfg.finetune.early_stopping_patience),
            callbacks=self.callbacks,
            log=self.log,
            make_train_data=make_train,
            statistics_data=stats_ds,
        )
        held_samples = data.samples.subset(held_mask)
        if cfg.finetune.freeze_body:
            if "model" not in built:  # resumed: the body is rebuilt the same way
                build()
            full = built["model"]
            copy_head(trained, full)
            # features is given whenever --freeze-body is (run())
            logits = np.asarray(trained.predict(features[held_mask], batch_size=64, verbose=0), np.float32)  # type: ignore[index]
        else:
            full = trained
            logits = heldout.predict_logits(full, data.reader, held_samples, cfg.participant.batch_size)
        if built.get("source") is None and self.init == "pretrained":  # resumed: the model was not built
            built["source"] = pretrained_source(self.arch, cfg.inputs.weights)
        rows = heldout.prediction_rows(held_samples, logits, self.states, fold)
        metrics = heldout.fold_metrics(state, held_samples.label, logits.argmax(axis=1), len(self.states))
        seconds_fit = time.monotonic() - t_fit
        out_dir = self.model_dir / fold if fold else self.model_dir
        stem = f"{self.name}_{fold}" if fold else self.name
        linear = self._linear_baseline(fold, tr, held_mask, rows, metrics) if cfg.finetune.linear_baseline else None
        card = self._model_card(
            stem, fold, train, val, held, built.get("source"), metrics, n_gpus, mixed, state["bn_statistics_batches"]
        )
        if linear is not None:
            card["linear_baseline"] = {**linear.metrics, "estimator": self._linear_estimator()}
        self._save(full, state["history"], out_dir, stem, card)
        if linear is not None:
            write_fold(linear, out_dir, stem, root=cfg.inputs.output_dir)
        self.log.info(
            "fine-tune %s%s: held-out accuracy %.3f (balanced %.3f, %d volumes, chance %.3f)",
            self.name,
            f" {fold}" if fold else "",
            metrics["heldout_accuracy"],
            metrics["heldout_balanced_accuracy"],
            len(held_samples),
            1.0 / len(self.states),
        )
        report = {
            "fold": fold or "single",
            "training_participants": train,
            "validation_participants": val,
            "heldout_participants": held,
            "model": str(naming.finetune_outputs(out_dir, stem)["model"].relative_to(cfg.inputs.output_dir)),
            **metrics,
            "seconds_fit": round(seconds_fit, 2),
        }
        if linear is not None:
            report["linear_baseline"] = linear.metrics
        return report, rows

    def write_summary(
        self, folds: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]], seconds: float
    ) -> dict[str, Any]:
        """Held-out predictions, per-participant and pooled summaries of all folds."""
        cfg = self.config
        fold_reports = [report for report, _ in folds]
        rows = heldout.write_heldout_tables(
            self.model_dir, self.name, [r for _, fold in folds for r in fold], self.states
        )
        pooled = rows[-1]
        n_states = len(self.states)
        summary = {
            "name": self.name,
            "architecture": self.arch,
            "init": self.init,
            "freeze_body": bool(cfg.finetune.freeze_body),
            "states": list(self.states),
            "seed": cfg.seed,
            "cv_folds": int(cfg.finetune.cv_folds or 0),
            "learning_rate": self.lr,
            "batch_size": self.batch_size,
            "epochs": cfg.finetune.epochs,
            "heldout_accuracy_pooled": pooled["accuracy"],
            "heldout_balanced_accuracy_pooled": pooled["balanced_accuracy"],
            "heldout_accuracy_mean_over_participants": float(np.mean([r["accuracy"] for r in rows[:-1]])),
            "chance": 1.0 / n_states,
            "n_volumes": pooled["n_volumes"],
            # never since issue 13: early stopping validates on a participant that is not held out
            "validation_used_for_early_stopping": any(
                set(f["validation_participants"]) & set(f["heldout_participants"])
                and cfg.finetune.early_stopping_patience
                for f in fold_reports
            ),
            "folds": fold_reports,
            "participants": rows[:-1],
            "cache": {"prepared": self.data.cache_stats.prepared, "reused": self.data.cache_stats.reused},
            "seconds": round(seconds, 1),
            "software": software_versions(),
        }
        if all("linear_baseline" in f for f in fold_reports):  # the linear baseline beside DeepLight
            preds = [r for _, fold in folds for r in fold]
            seconds_fit = sum(f["seconds_fit"] for f in fold_reports)
            summary["linear_baseline"] = linear_baseline.summarise(fold_reports, preds, self.states, seconds_fit)
            linear_baseline.write_summary(self.model_dir, self.name, summary["linear_baseline"])
            self._log_linear(summary["linear_baseline"])

        write_json(naming.finetune_heldout_outputs(self.model_dir, self.name)["summary_json"], summary)
        self.log.info(
            "fine-tune %s: held-out accuracy %.3f over %d volumes of %d participants (chance %.3f); outputs in %s",
            self.name,
            pooled["accuracy"],
            pooled["n_volumes"],
            len(rows) - 1,
            1.0 / n_states,
            self.model_dir,
        )
        return summary

    # -- the linear baseline (deeplight_bids.models.linear_baseline) ----------------------------
    def _linear_baseline(self, fold, tr, held_mask, rows, metrics):
        """The linear decoder of one fold on the same volumes; its predictions join the held-out rows."""
        if self._linear_features is None:
            self._linear_features = linear_baseline.InMaskFeatures(self.data.entries)
        result = linear_baseline.fit_fold(
            self.data, tr, held_mask, fold, self.config.seed, self._linear_features, self.log
        )
        labels = self.data.samples.label[held_mask]
        for row, predicted, true in zip(rows, result.predicted, labels):
            row["linear_predicted_state"] = self.states[predicted]
            row["linear_correct"] = int(predicted == true)
        self.log.info(
            "fine-tune %s%s: linear baseline held-out accuracy %.3f (balanced %.3f) beside DeepLight's %.3f "
            "(balanced %.3f); %d of %d voxels after screening, %.1f s",
            self.name,
            f" {fold}" if fold else "",
            result.metrics["heldout_accuracy"],
            result.metrics["heldout_balanced_accuracy"],
            metrics["heldout_accuracy"],
            metrics["heldout_balanced_accuracy"],
            result.metrics["features"],
            result.metrics["features_before_screening"],
            result.metrics["seconds"],
        )
        return result

    @staticmethod
    def _linear_estimator():
        return estimator_description()

    def _log_linear(self, linear):
        test = linear["paired_test_accuracy"]
        self.log.info(
            "fine-tune %s: held-out accuracy DeepLight %.3f, linear baseline %.3f (%s); linear fit %.1f s = %.1f %% "
            "of DeepLight's %.1f s",
            self.name,
            linear["deeplight_heldout_accuracy_pooled"],
            linear["heldout_accuracy_pooled"],
            f"paired permutation test over {test['n_folds']} folds: p = {test['p_value']:.3g}"
            if test.get("test")
            else test["note"],
            linear["seconds_linear"],
            100 * (linear["cost_ratio"] or 0),
            linear["seconds_deeplight_fit"],
        )

    # -- helpers -----------------------------------------------------------------------------
    def _datasets(self, fold_index, tr, va, features):
        """``(make_train(start_epoch), validation dataset or None, statistics dataset)`` of one fold: volumes, or
        frozen features.  The statistics dataset: at most :data:`~deeplight_bids.models.train.PRECISE_BN_VOLUMES`
        training volumes spread evenly over them, in order, for the batch-norm statistics after the fit."""
        cfg, samples = self.config, self.data.samples
        seed = [cfg.seed, fold_index]
        rows = np.flatnonzero(tr)
        if len(rows) > PRECISE_BN_VOLUMES:
            rows = rows[np.unique(np.linspace(0, len(rows) - 1, PRECISE_BN_VOLUMES).round().astype(int))]
        statistics = np.zeros_like(tr)
        statistics[rows] = True
        if cfg.finetune.freeze_body:
            if cfg.finetune.mix_same_state:
                self.log.warning(
                    "--mix-same-state is ignored with --freeze-body (the body's features are computed once)"
                )

            def make_train(start_epoch):
                return make_array_dataset(
                    features[tr], samples.label[tr], self.batch_size, seed=seed, start_epoch=start_epoch
                )

            val_ds = (
                make_array_dataset(features[va], samples.label[va], 64, shuffle=False, balance=False)
                if va.any()
                else None
            )
            stats_ds = make_array_dataset(
                features[statistics], samples.label[statistics], self.batch_size, shuffle=False, balance=False
            )
        else:

            def make_train(start_epoch):
                return make_volume_dataset(
                    self.data.reader,
                    samples.subset(tr),
                    self.batch_size,
                    seed=seed,
                    start_epoch=start_epoch,
                    mix_same_state=cfg.finetune.mix_same_state,
                )

            val_ds = (
                make_volume_dataset(self.data.reader, samples.subset(va), self.batch_size, shuffle=False, balance=False)
                if va.any()
                else None
            )
            stats_ds = make_volume_dataset(
                self.data.reader, samples.subset(statistics), self.batch_size, shuffle=False, balance=False
            )
        return make_train, val_ds, stats_ds

    def _model_card(self, stem, fold, train, val, held, source, metrics, n_gpus, mixed, bn_batches):
        cfg = self.config
        return {
            "name": stem,
            "architecture": self.arch,
            "init": self.init,
            "init_weights": source,
            "states": list(self.states),
            "fold": fold or None,
            "training_participants": list(train),
            "validation_participants": list(val),
            "heldout_participants": list(held),
            "preprocessing": {
                "smoothing_fwhm": cfg.inputs.smoothing_fwhm,
                "high_pass": cfg.inputs.high_pass,
                "space": cfg.inputs.space,
                "grid": "MNI152NLin6Asym 2 mm (91, 109, 91), (z, y, x) input",
            },
            "training": {
                "deterministic": bool(self.deterministic),
                "determinism": "keras.utils.set_random_seed(seed) + TensorFlow op determinism; input "
                "order from NumPy generators seeded with the seed",
                "epochs": cfg.finetune.epochs,
                "learning_rate": self.lr,
                "batch_size": self.batch_size,
                "optimizer": "Adam",
                "loss": "sparse categorical cross-entropy on logits",
                "class_balancing": "oversampling to the largest class per epoch",
                "same_state_mixing": (
                    f"with probability {cfg.finetune.mix_same_state:g} a training volume is the mean of itself and a "
                    "volume of the same state from another training participant, drawn anew every epoch"
                    if cfg.finetune.mix_same_state and not cfg.finetune.freeze_body
                    else "none"
                ),
                "freeze_body": bool(cfg.finetune.freeze_body),
                "early_stopping_patience": cfg.finetune.early_stopping_patience,
                "batch_norm_statistics": (
                    f"recomputed after the fit from the final weights' batch statistics on the training volumes "
                    f"({bn_batches} batches; at most {PRECISE_BN_VOLUMES} volumes, spread evenly; precise BN)"
                    if bn_batches
                    else "moving averages of the last epochs (not recomputed: several GPUs, or no trainable "
                    "batch-norm layer)"
                ),
                "mixed_precision": bool(mixed),
                "gpus": n_gpus,
                **(
                    {
                        "dropout_rate": TRAIN_3D["dropout_rate"],
                        "bn_momentum": TRAIN_3D["bn_momentum"],
                        "output_bias": TRAIN_3D["output_bias"],
                    }
                    if self.arch == "3D"
                    else {}
                ),
            },
            "seed": cfg.seed,
            "metrics": metrics,
            "software": software_versions(),
            "inputs": datasets.input_checksums(self.data.runs, set(train) | set(val)),
            "dataset": str(cfg.inputs.bids_dir),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "description": "fine-tuned by 'deeplight-bids ... group --finetune'",
        }

    def _save(self, model, history, out_dir, stem, card):
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs = naming.finetune_outputs(out_dir, stem)
        save_model(float32_model(model, self.arch, len(self.states)), outputs["model"], card)
        write_history(history, outputs["history"], outputs["learning_curve"], title=f"{stem}: {self.arch} {self.init}")

    def _labels_identity(self):
        return datasets.labels_identity(self.data.runs, self.config.inputs.state_map_file, self.states)

    def _weights_identity(self):
        return datasets.weights_identity(self.config.inputs.weights, self.init)


def run_finetune(config: Config, callbacks: Sequence[Any] = (), log: logging.Logger = LOGGER) -> int:
    """Run ``group --finetune``; returns the exit code (errors raise :class:`DeepLightBidsError`)."""
    _configure_threads(config.nprocs)
    FinetuneJob(config, callbacks=callbacks, log=log).run()
    return EXIT_OK

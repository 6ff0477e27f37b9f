"""The one settings object of a run, built from the parsed command line.

A frozen dataclass passed explicitly (no module-level state), so concurrent
participant jobs (SLURM arrays) stay independent; dumped as TOML under
``OUTPUT_DIR/logs/`` for provenance.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from deeplight_bids import __version__


@dataclass(frozen=True)
class Config:
    """Settings of one ``deeplight-bids`` invocation.

    Attributes
    ----------
    bids_dir, output_dir, work_dir : pathlib.Path
        Input dataset (read only), derivatives output, scratch.
    derivatives : tuple of pathlib.Path
        Folders searched for preprocessed BOLD and masks.
    participant_label, session_label, task : tuple of str or None
        Selection (labels without ``sub-``/``ses-``).
    bids_filters : dict
        Extra pybids filters for the BOLD query.
    space : str or None
        Template space of the preprocessed BOLD (None: MNI152NLin6Asym, else MNI152NLin2009cAsym, per run).
    allow_approximate_space : bool
        World-coordinate resampling when an inter-template transform is unavailable.
    architecture : {"3D", "2D"}
    weights : str or None
        Path or registry name; None means the published weights of ``architecture``.
    state_map_file : pathlib.Path or None
    smoothing_fwhm : float
        mm.
    high_pass : float or None
        Hz.
    lrp : bool
    lrp_target : {"predicted", "true"}
    lrp_rule : {"published", "signed"}
        2D LRP stabiliser: the original code's ``z + eps`` or ``z + eps * sign(z)``.
    backend : {"tensorflow", "jax", "torch"}
        Keras backend (``--backend``; set before Keras is imported).
    batch_size, nprocs : int
    overwrite, skip_bids_validation : bool
    relevance_maps : {"volumes", "blocks", "means"}
        Relevance written per run: per volume, per event block, or only the per-state means.
    save_tfrecords : bool
        Also export prepared, labelled volumes in the original TFRecord schema.
    quality : bool
        Per run, faithfulness and sanity of the relevance maps (``--quality``/``--no-quality``).
    quality_volumes : int
        Volumes per run they use (``--quality-volumes``).
    reference_map : pathlib.Path or None
        Group level: reference map file or folder for plausibility (``--reference-map``).
    reference_top_percent : float
        Group level: share of the reference map's voxels counted as its region.
    significance_permutations : int
        Group level: permutations of the block labels per participant and task.
    correct_only, reports_only : bool
        Group level: add maps from correctly decoded volumes only; only rebuild the report.
    verbose : int
    finetune, finetune_init, finetune_states, epochs, learning_rate, finetune_batch_size, cv_folds,
    val_participants, early_stopping_patience, seed, freeze_body, model_name
        Group level ``--finetune`` (see :mod:`deeplight_bids.group.finetune`).
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    work_dir: Path | None = None
    derivatives: tuple = ()
    participant_label: tuple | None = None
    session_label: tuple | None = None
    task: tuple | None = None
    bids_filters: dict = field(default_factory=dict)
    space: str | None = None
    allow_approximate_space: bool = False
    architecture: str = "3D"
    weights: str | None = None
    state_map_file: Path | None = None
    smoothing_fwhm: float = 3.0
    high_pass: float | None = 1.0 / 128
    lrp: bool = True
    lrp_target: str = "predicted"
    lrp_rule: str = "published"
    backend: str = "tensorflow"
    batch_size: int = 4
    nprocs: int = 0
    overwrite: bool = False
    save_tfrecords: bool = False
    quality: bool = True
    quality_volumes: int = 16
    reference_map: Path | None = None
    reference_top_percent: float = 10.0
    significance_permutations: int = 1000
    relevance_maps: str = "volumes"
    skip_bids_validation: bool = False
    correct_only: bool = False
    reports_only: bool = False
    verbose: int = 0
    finetune: bool = False
    finetune_init: str = "pretrained"
    finetune_states: tuple | None = None
    epochs: int = 10
    learning_rate: float | None = None
    finetune_batch_size: int | None = None
    cv_folds: int = 0
    val_participants: tuple | None = None
    early_stopping_patience: int = 0
    seed: int = 0
    freeze_body: bool = False
    model_name: str | None = None
    version: str = __version__

    @classmethod
    def from_args(cls, args):
        """Build from an :class:`argparse.Namespace` of :func:`cli.parser.parse_args`."""
        output_dir = Path(args.output_dir)
        return cls(
            bids_dir=Path(args.bids_dir),
            output_dir=output_dir,
            analysis_level=args.analysis_level,
            work_dir=Path(args.work_dir).absolute() if args.work_dir else output_dir / "work",
            derivatives=tuple(Path(p) for p in (args.derivatives or ())),
            participant_label=tuple(args.participant_label) if args.participant_label else None,
            session_label=tuple(args.session_label) if args.session_label else None,
            task=tuple(args.task) if args.task else None,
            bids_filters=dict(args.bids_filter_file or {}),
            space=args.space,
            allow_approximate_space=bool(getattr(args, "allow_approximate_space", False)),
            architecture=args.architecture,
            weights=args.weights,
            state_map_file=Path(args.state_map) if args.state_map else None,
            smoothing_fwhm=float(args.smoothing_fwhm),
            high_pass=args.high_pass,
            lrp=not args.no_lrp,
            lrp_target=args.lrp_target,
            lrp_rule=getattr(args, "lrp_rule", "published"),
            backend=getattr(args, "backend", None) or os.environ.get("KERAS_BACKEND", "tensorflow"),
            batch_size=int(args.batch_size),
            nprocs=int(args.nprocs or os.cpu_count() or 1),
            overwrite=bool(args.overwrite),
            save_tfrecords=bool(getattr(args, "save_tfrecords", False)),
            quality=not getattr(args, "no_quality", False),
            quality_volumes=int(getattr(args, "quality_volumes", 16)),
            reference_map=Path(args.reference_map) if getattr(args, "reference_map", None) else None,
            reference_top_percent=float(getattr(args, "reference_top_percent", 10.0)),
            significance_permutations=int(getattr(args, "significance_permutations", 1000)),
            relevance_maps=getattr(args, "relevance_maps", "volumes"),
            skip_bids_validation=bool(args.skip_bids_validation),
            correct_only=bool(getattr(args, "correct_only", False)),
            reports_only=bool(getattr(args, "reports_only", False)),
            verbose=int(args.verbose),
            finetune=bool(getattr(args, "finetune", False)),
            finetune_init=getattr(args, "finetune_init", "pretrained"),
            finetune_states=tuple(args.finetune_states) if getattr(args, "finetune_states", None) else None,
            epochs=int(getattr(args, "epochs", 10)),
            learning_rate=getattr(args, "learning_rate", None),
            finetune_batch_size=getattr(args, "finetune_batch_size", None),
            cv_folds=int(getattr(args, "cv_folds", 0) or 0),
            val_participants=tuple(args.val_participants) if getattr(args, "val_participants", None) else None,
            early_stopping_patience=int(getattr(args, "early_stopping_patience", 0) or 0),
            seed=int(getattr(args, "seed", 0) or 0),
            freeze_body=bool(getattr(args, "freeze_body", False)),
            model_name=getattr(args, "model_name", None),
        )

    def to_dict(self):
        """JSON/TOML-friendly dict (paths as strings, pybids queries as text)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            elif isinstance(value, dict):
                value = {k: (v if isinstance(v, (str, int, float, list)) else str(v)) for k, v in value.items()}
            if value is None:
                continue  # TOML has no null
            out[f.name] = value
        return out

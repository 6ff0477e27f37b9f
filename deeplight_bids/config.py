"""The one settings object of a run, built from the parsed command line.

Settings come in sections, one frozen dataclass each: :class:`InputsConfig` (what data
goes in and how it is prepared), :class:`ParticipantConfig` (decoding and explaining
runs), :class:`GroupConfig` (group statistics and report) and :class:`FinetuneConfig`
(``group --finetune``); :class:`Config` holds them with the settings of the whole job
(level, backend, threads, seed).  The sections' field defaults are the only defaults:
the command-line parser reads them (:func:`default`).

A :class:`Config` is passed explicitly (no module-level state), so concurrent
participant jobs (SLURM arrays) stay independent; it is dumped as TOML under
``OUTPUT_DIR/logs/`` (:meth:`Config.save`) and read back with :meth:`Config.load`.

Every setting also reads as a flat attribute (``config.batch_size`` is
``config.participant.batch_size``; the fine-tuning settings keep their command-line
names: ``config.finetune_init`` is ``config.finetune.init``), and :class:`Config` takes
flat keyword arguments, so ``Config(bids_dir=..., output_dir=..., epochs=3)`` works.

Every field of a section and every setting of :class:`Config` itself says, in its field
metadata (key :data:`OUTPUTS`), how it bears on a participant-level run's outputs, i.e. on
whether a re-run may keep them (:func:`deeplight_bids.derivatives.resume.settings_hash`):

``"hashed"`` (:data:`HASHED`)
    Changes the outputs and enters the settings hash wherever it does: directly, or through
    the attribution method's parameters, :meth:`RunQuality.settings
    <deeplight_bids.quality.run_quality.RunQuality.settings>` or
    :meth:`AttributionComparison.settings <deeplight_bids.quality.compare.AttributionComparison.settings>`.
``"inputs"`` (:data:`INPUTS`)
    Selects which runs and files are read; a run's files are identified by its inputs digest.
``"elsewhere"`` (:data:`ELSEWHERE`)
    Changes outputs, but another check covers it: the weights' SHA-256, the ``--state-map``
    content, or the GLM stage's own settings hash.
``"neutral"`` (:data:`NEUTRAL`)
    Does not change a run's outputs: where they go, resources, logging, modes.
``"group"`` (:data:`GROUP`)
    Read by the group level only.

A new option needs one (``tests/derivatives/test_settings_hash.py`` fails without it, and
checks that each ``"hashed"`` one changes the hash); :func:`output_decisions` lists them.
"""

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deeplight_bids._version import __version__

#: The default work folder's name inside OUTPUT_DIR.  The leading dot keeps it out of what pybids
#: indexes (it ignores every path with a "/." part) and of what bids-validator reads (dot files
#: and folders are not part of a dataset), so the per-volume maps kept there are never seen twice,
#: while it stays on OUTPUT_DIR's file system (the ``volumes`` output is a hard link to its file,
#: no second copy) and travels with OUTPUT_DIR to the next job, container or cluster node.
WORK_FOLDER = ".work"

#: ``--relevance-maps``: per volume, per event block, or only the per-state means (one definition: the parser,
#: the writer and the reader take it from here).
RELEVANCE_MAP_KINDS = ("volumes", "blocks", "means")

#: Field-metadata key of a setting's bearing on a run's outputs, and its values (see the module docstring).
OUTPUTS = "outputs"
HASHED, INPUTS, ELSEWHERE, NEUTRAL, GROUP = "hashed", "inputs", "elsewhere", "neutral", "group"
DECISIONS = (HASHED, INPUTS, ELSEWHERE, NEUTRAL, GROUP)


def _setting(default, outputs):
    """A dataclass field with its default and its :data:`OUTPUTS` decision."""
    return field(default=default, metadata={OUTPUTS: outputs})


def default_work_dir(output_dir: str | os.PathLike) -> Path:
    """``OUTPUT_DIR/.work``: the work folder when ``--work-dir`` is not given."""
    return Path(output_dir) / WORK_FOLDER


@dataclass(frozen=True)
class InputsConfig:
    """What goes in: folders, selection, model weights and preparation.

    Attributes
    ----------
    bids_dir, output_dir, work_dir : pathlib.Path
        Input dataset (read only), derivatives output, scratch (default ``OUTPUT_DIR/.work``, :data:`WORK_FOLDER`).
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
    skip_bids_validation : bool
    architecture : {"3D", "2D"}
    weights : str or None
        Path or registry name; None means the published weights of ``architecture``.
    state_map_file : pathlib.Path or None
    smoothing_fwhm : float
        mm.
    high_pass : float or None
        Hz.
    """

    # Typed as set: every job sets the three folders (Config.from_args; None only in a bare Config()).
    bids_dir: Path = _setting(None, INPUTS)
    output_dir: Path = _setting(None, NEUTRAL)  # where they go; each OUTPUT_DIR is resumed on its own
    work_dir: Path = _setting(None, NEUTRAL)
    derivatives: tuple = _setting((), INPUTS)
    participant_label: tuple | None = _setting(None, INPUTS)
    session_label: tuple | None = _setting(None, INPUTS)
    task: tuple | None = _setting(None, INPUTS)
    bids_filters: dict = field(default_factory=dict, metadata={OUTPUTS: INPUTS})
    space: str | None = _setting(None, INPUTS)  # picks the BOLD file of the run
    allow_approximate_space: bool = _setting(False, HASHED)
    skip_bids_validation: bool = _setting(False, NEUTRAL)
    architecture: str = _setting("3D", ELSEWHERE)  # picks the weights (their SHA-256)
    weights: str | None = _setting(None, ELSEWHERE)
    state_map_file: Path | None = _setting(None, ELSEWHERE)  # its content is hashed (user_state_map)
    smoothing_fwhm: float = _setting(3.0, HASHED)
    high_pass: float | None = _setting(1.0 / 128, HASHED)


@dataclass(frozen=True)
class ParticipantConfig:
    """Participant level: decoding, LRP, outputs.

    Attributes
    ----------
    lrp : bool
        Explain the decisions (``--no-lrp``: decode only).
    lrp_target : {"predicted", "true"}
    lrp_rule : {"published", "signed"}
        2D LRP stabiliser: the original code's ``z + eps`` or ``z + eps * sign(z)``.
    attribution : str
        The method of the relevance maps (``--attribution``; ``"published"``: the published rule of the
        architecture; :mod:`deeplight_bids.attribution.methods`).
    ig_steps : int
        Integrated gradients' points on the path (midpoint rule).
    smoothgrad_samples : int
    smoothgrad_noise : float
        SmoothGrad's noise SD as a share of the input's SD.
    lrp_epsilon : float
        The epsilon of the zennit-convention LRP composites (methods epsilon, epsilon_plus, alpha2_beta1).
    compare_attributions : tuple of str or None
        ``--compare-attributions``: None off; empty: the standard set.
    compare_volumes : int
        Volumes per run for the comparison's checks.
    batch_size : int
        Volumes per step.
    relevance_maps : {"volumes", "blocks", "means"}
        Relevance written per run: per volume, per event block, or only the per-state means.
    save_tfrecords : bool
        Also export prepared, labelled volumes in the original TFRecord schema.
    quality : bool
        Per run, faithfulness and sanity of the relevance maps (``--quality``/``--no-quality``).
    quality_volumes : int
        Volumes per run they use (``--quality-volumes``; also
        :data:`deeplight_bids.quality.run_quality.DEFAULT_VOLUMES`).
    verify : bool
        ``--verify``: check a finished OUTPUT_DIR for damaged files, recompute nothing
        (:func:`deeplight_bids.derivatives.integrity.verify_output_dir`).
    glm : bool
        Per run, the dataset's own first-level GLM and its agreement with the relevance maps
        (``--no-glm`` turns it off; :mod:`deeplight_bids.glm`).
    glm_noise_model : {"ols", "ar1"}
        The GLM's temporal noise model (``--glm-noise-model``).
    """

    lrp: bool = _setting(True, HASHED)
    lrp_target: str = _setting("predicted", HASHED)
    lrp_rule: str = _setting("published", HASHED)
    attribution: str = _setting("published", HASHED)
    ig_steps: int = _setting(32, HASHED)  # this and the next three: the methods' parameters
    smoothgrad_samples: int = _setting(16, HASHED)
    smoothgrad_noise: float = _setting(0.2, HASHED)
    lrp_epsilon: float = _setting(0.25, HASHED)
    compare_attributions: tuple | None = _setting(None, HASHED)  # this and the next: the comparison's settings
    compare_volumes: int = _setting(8, HASHED)
    batch_size: int = _setting(4, NEUTRAL)  # each volume's maps are the same in any batch
    relevance_maps: str = _setting("volumes", HASHED)
    save_tfrecords: bool = _setting(False, HASHED)  # only when on (added with issue 28)
    quality: bool = _setting(True, HASHED)  # this and the next: RunQuality.settings
    quality_volumes: int = _setting(12, HASHED)
    glm: bool = _setting(True, ELSEWHERE)  # the GLM stage has its own markers and settings hash
    glm_noise_model: str = _setting("ols", ELSEWHERE)
    verify: bool = _setting(False, NEUTRAL)


@dataclass(frozen=True)
class GroupConfig:
    """Group level: statistics, quality tables and report.

    Attributes
    ----------
    reference_map : pathlib.Path or None
        Reference map file or folder for plausibility (``--reference-map``).
    reference_top_percent : float
        Share of the reference map's voxels counted as its region.
    significance_permutations : int
        Permutations of the block labels per participant and task.
    correct_only, reports_only : bool
        Add maps from correctly decoded volumes only; only rebuild the report.
    group_threshold : {"fdr", "fwe-permutation", "none"}
        Correction of the group maps' threshold (:mod:`deeplight_bids.group.inference`).
    group_alpha : float
        Its FDR q or FWE alpha.
    group_permutations : int
        Sign flips for ``fwe-permutation``.
    pairwise_contrasts : bool
        Also contrast each ordered pair of states (``--pairwise-contrasts``).
    contrast_scaling : {"brain-mean", "none"}
        Scaling of each participant's state maps before states are compared (``--contrast-scaling``).
    download_templates : bool
        Ask TemplateFlow for the report's template files when they are not under ``$TEMPLATEFLOW_HOME``
        (needs internet; a machine without it waits a few seconds for the refusal). Not an option: the
        demo, offline by design, turns it off; either way nilearn's MNI152 stands in for missing files.
    """

    reference_map: Path | None = _setting(None, HASHED)  # --compare-attributions: its states and files
    reference_top_percent: float = _setting(10.0, HASHED)
    significance_permutations: int = _setting(1000, GROUP)
    correct_only: bool = _setting(False, GROUP)
    reports_only: bool = _setting(False, GROUP)
    group_threshold: str = _setting("fdr", GROUP)
    group_alpha: float = _setting(0.05, GROUP)
    group_permutations: int = _setting(5000, GROUP)
    pairwise_contrasts: bool = _setting(False, GROUP)
    contrast_scaling: str = _setting("brain-mean", GROUP)
    download_templates: bool = _setting(True, GROUP)


@dataclass(frozen=True)
class FinetuneConfig:
    """Group level ``--finetune`` (see :mod:`deeplight_bids.workflows.finetune`).

    Attributes
    ----------
    enabled : bool
        ``--finetune``.
    init : {"pretrained", "scratch"}
    states : tuple of str or None
    epochs : int
    learning_rate : float or None
        None: the architecture's reference rate.
    batch_size : int
        Training batch size (``--finetune-batch-size``; None: the default, 8).
    cv_folds : int
    val_participants : tuple of str or None
    early_stopping_patience : int
    freeze_body : bool
    model_name : str or None
    mix_same_state : float
        Probability that a training volume is mixed with a volume of the same state from
        another participant (``--mix-same-state``; 0: never).
    linear_baseline : bool
        Also fit a linear decoder on the same volumes and folds (``--no-linear-baseline``
        turns it off; :mod:`deeplight_bids.models.linear_baseline`).
    """

    enabled: bool = _setting(False, GROUP)
    init: str = _setting("pretrained", GROUP)
    states: tuple | None = _setting(None, GROUP)
    epochs: int = _setting(10, GROUP)
    learning_rate: float | None = _setting(None, GROUP)
    batch_size: int | None = _setting(8, GROUP)
    cv_folds: int = _setting(0, GROUP)
    val_participants: tuple | None = _setting(None, GROUP)
    early_stopping_patience: int = _setting(0, GROUP)
    freeze_body: bool = _setting(False, GROUP)
    model_name: str | None = _setting(None, GROUP)
    mix_same_state: float = _setting(0.0, GROUP)
    linear_baseline: bool = _setting(True, GROUP)


#: Section name -> dataclass.
SECTIONS = {"inputs": InputsConfig, "participant": ParticipantConfig, "group": GroupConfig, "finetune": FinetuneConfig}
#: Flat names of fine-tuning settings that differ from their field names (the command line's ``dest``).
_FLAT_ALIASES = {
    "finetune": ("finetune", "enabled"),
    "finetune_init": ("finetune", "init"),
    "finetune_states": ("finetune", "states"),
    "finetune_batch_size": ("finetune", "batch_size"),
}


def _flat_names():
    names = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            names.setdefault(f.name, (section, f.name))  # batch_size: the participant's (decoding)
    names.update(_FLAT_ALIASES)
    return names


#: Flat setting name -> (section, field).
FLAT_NAMES = _flat_names()


def output_decisions() -> dict[str, str | None]:
    """Flat setting name -> its :data:`OUTPUTS` decision (None where a field has none).

    Covers every field of the sections (under its flat name, e.g. ``"finetune_batch_size"``)
    and :class:`Config`'s own settings.
    """
    flat = {where: name for name, where in FLAT_NAMES.items()}  # the aliases come last, so they win
    fields = [(flat[section, f.name], f) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    fields += [(f.name, f) for f in dataclasses.fields(Config) if f.name not in SECTIONS]
    return {name: f.metadata.get(OUTPUTS) for name, f in fields}


def default(name: str) -> typing.Any:
    """The default of a setting by its flat name (e.g. ``"batch_size"``, ``"finetune_init"``, ``"nprocs"``)."""
    if name in FLAT_NAMES:
        section, key = FLAT_NAMES[name]
        f = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[key]
    else:
        f = {f.name: f for f in dataclasses.fields(Config)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass(frozen=True, init=False)
class Config:
    """Settings of one ``deeplight-bids`` invocation: sections plus the job's own settings.

    Attributes
    ----------
    inputs : InputsConfig
    participant : ParticipantConfig
    group : GroupConfig
    finetune : FinetuneConfig
    analysis_level : {"participant", "group"}
    backend : {"tensorflow", "jax", "torch"}
        Keras backend (``--backend``; set before Keras is imported).
    nprocs : int
        CPU threads (0: all).
    mem_mb : int
        Memory the job may use, in MB (``--mem-mb``; 0: detect, see
        :func:`deeplight_bids.runtime.memory_limit`).
    overwrite : bool
        Recompute existing outputs (participant runs, fine-tuned models).
    seed : int
        Fine-tuning, the quality measures' volume choice and the significance permutations.
    verbose : int
    version : str
        deeplight-bids version that made the settings.

    Parameters
    ----------
    inputs, participant, group, finetune : section or dict or None
        A section, or a dict of its fields.
    **settings
        Flat settings (``bids_dir=...``, ``epochs=...``; see :data:`FLAT_NAMES`), put into their sections.
    """

    inputs: InputsConfig
    participant: ParticipantConfig
    group: GroupConfig
    finetune: FinetuneConfig
    analysis_level: str = _setting("participant", NEUTRAL)
    backend: str = _setting("tensorflow", NEUTRAL)  # the same maps up to rounding (recorded in the sidecars)
    nprocs: int = _setting(0, NEUTRAL)
    mem_mb: int = _setting(0, NEUTRAL)
    overwrite: bool = _setting(False, NEUTRAL)
    seed: int = _setting(0, HASHED)  # quality, comparison and SmoothGrad settings
    verbose: int = _setting(0, NEUTRAL)
    version: str = _setting(__version__, NEUTRAL)  # a record: the hash takes the running version

    def __init__(
        self,
        inputs: "InputsConfig | dict[str, typing.Any] | None" = None,
        participant: "ParticipantConfig | dict[str, typing.Any] | None" = None,
        group: "GroupConfig | dict[str, typing.Any] | None" = None,
        finetune: "FinetuneConfig | dict[str, typing.Any] | bool | None" = None,
        **settings: typing.Any,
    ) -> None:
        given = {"inputs": inputs, "participant": participant, "group": group, "finetune": finetune}
        if isinstance(finetune, bool):  # the flat setting --finetune, not the section
            given["finetune"] = None
            settings["finetune"] = finetune
        values: dict[str, dict[str, typing.Any]] = {name: {} for name in SECTIONS}
        own = {}
        own_names = {f.name for f in dataclasses.fields(Config)} - set(SECTIONS)
        for name, value in settings.items():
            if name in own_names:
                own[name] = value
            elif name in FLAT_NAMES:
                section, key = FLAT_NAMES[name]
                values[section][key] = value
            else:
                raise TypeError(f"Config: unknown setting {name!r}")
        for name, cls in SECTIONS.items():
            section = given[name]
            if isinstance(section, dict):
                section = cls(**section)
            section = dataclasses.replace(section or cls(), **values[name])
            object.__setattr__(self, name, section)
        for f in dataclasses.fields(Config):
            if f.name not in SECTIONS:
                object.__setattr__(self, f.name, own.get(f.name, f.default))

    def __getattr__(self, name: str) -> typing.Any:
        # only called for names that are not attributes: the flat view of the sections
        if name in FLAT_NAMES:
            section, key = FLAT_NAMES[name]
            return getattr(object.__getattribute__(self, section), key)
        raise AttributeError(f"'Config' has no setting {name!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> typing.Self:
        """Build from an :class:`argparse.Namespace` of :func:`cli.parser.parse_args`.

        Options absent from ``args`` take their defaults from the sections.
        """

        def arg(name, dest=None):
            return getattr(args, dest or name, default(name))

        output_dir = Path(args.output_dir)
        return cls(
            analysis_level=args.analysis_level,
            backend=getattr(args, "backend", None) or os.environ.get("KERAS_BACKEND", default("backend")),
            nprocs=int(getattr(args, "nprocs", None) or os.cpu_count() or 1),
            mem_mb=int(getattr(args, "mem_mb", None) or 0),
            overwrite=bool(arg("overwrite")),
            seed=int(arg("seed") or 0),
            verbose=int(arg("verbose")),
            inputs=InputsConfig(
                bids_dir=Path(args.bids_dir),
                output_dir=output_dir,
                work_dir=Path(args.work_dir).absolute()
                if getattr(args, "work_dir", None)
                else default_work_dir(output_dir),
                derivatives=tuple(Path(p) for p in (getattr(args, "derivatives", None) or ())),
                participant_label=_tuple_or_none(arg("participant_label")),
                session_label=_tuple_or_none(arg("session_label")),
                task=_tuple_or_none(arg("task")),
                bids_filters=dict(getattr(args, "bids_filter_file", None) or {}),
                space=arg("space"),
                allow_approximate_space=bool(arg("allow_approximate_space")),
                skip_bids_validation=bool(arg("skip_bids_validation")),
                architecture=arg("architecture"),
                weights=arg("weights"),
                state_map_file=Path(args.state_map) if getattr(args, "state_map", None) else None,
                smoothing_fwhm=float(arg("smoothing_fwhm")),
                high_pass=arg("high_pass"),
            ),
            participant=ParticipantConfig(
                lrp=not getattr(args, "no_lrp", not default("lrp")),
                lrp_target=arg("lrp_target"),
                lrp_rule=arg("lrp_rule"),
                attribution=arg("attribution"),
                ig_steps=int(arg("ig_steps")),
                smoothgrad_samples=int(arg("smoothgrad_samples")),
                smoothgrad_noise=float(arg("smoothgrad_noise")),
                lrp_epsilon=float(arg("lrp_epsilon")),
                compare_attributions=(
                    None if arg("compare_attributions") is None else tuple(arg("compare_attributions"))
                ),
                compare_volumes=int(arg("compare_volumes")),
                batch_size=int(arg("batch_size")),
                relevance_maps=arg("relevance_maps"),
                save_tfrecords=bool(arg("save_tfrecords")),
                quality=not getattr(args, "no_quality", not default("quality")),
                quality_volumes=int(arg("quality_volumes")),
                glm=not getattr(args, "no_glm", not default("glm")),
                glm_noise_model=arg("glm_noise_model"),
                verify=bool(arg("verify")),
            ),
            group=GroupConfig(
                reference_map=Path(args.reference_map) if getattr(args, "reference_map", None) else None,
                reference_top_percent=float(arg("reference_top_percent")),
                significance_permutations=int(arg("significance_permutations")),
                correct_only=bool(arg("correct_only")),
                reports_only=bool(arg("reports_only")),
                group_threshold=arg("group_threshold"),
                group_alpha=float(arg("group_alpha")),
                group_permutations=int(arg("group_permutations")),
                pairwise_contrasts=bool(arg("pairwise_contrasts")),
                contrast_scaling=arg("contrast_scaling"),
            ),
            finetune=FinetuneConfig(
                enabled=bool(arg("finetune")),
                init=arg("finetune_init"),
                states=_tuple_or_none(arg("finetune_states")),
                epochs=int(arg("epochs")),
                learning_rate=arg("learning_rate"),
                batch_size=arg("finetune_batch_size"),
                cv_folds=int(arg("cv_folds") or 0),
                val_participants=_tuple_or_none(arg("val_participants")),
                early_stopping_patience=int(arg("early_stopping_patience") or 0),
                freeze_body=bool(arg("freeze_body")),
                model_name=arg("model_name"),
                mix_same_state=float(arg("mix_same_state")),
                linear_baseline=not getattr(args, "no_linear_baseline", not default("linear_baseline")),
            ),
        )

    # -- TOML ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, typing.Any]:
        """TOML-friendly nested dict: the job's settings, then one table per section.

        Paths are strings, tuples lists, pybids queries ``"Query.NONE"``/``"Query.ANY"``.
        TOML has no null: a None setting is left out where None is its default, and
        written as ``"none"`` where it is not (``high_pass = "none"``, as on the command line).
        """
        out = {}
        for f in dataclasses.fields(self):
            if f.name in SECTIONS:
                continue
            out[f.name] = getattr(self, f.name)
        for name in SECTIONS:
            section = getattr(self, name)
            table = {}
            for f in dataclasses.fields(section):
                value = _to_toml(getattr(section, f.name))
                if value is None:
                    if f.default is None or f.default is dataclasses.MISSING:
                        continue
                    value = "none"
                table[f.name] = value
            out[name] = table
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, typing.Any]) -> typing.Self:
        """Inverse of :meth:`to_dict` (unknown keys are an error naming them)."""
        own = {k: v for k, v in data.items() if k not in SECTIONS}
        sections = {}
        for name, section_cls in SECTIONS.items():
            table = dict(data.get(name, {}))
            hints = typing.get_type_hints(section_cls)
            fields = {f.name: f for f in dataclasses.fields(section_cls)}
            unknown = set(table) - set(fields)
            if unknown:
                raise ValueError(f"[{name}]: unknown setting(s) {', '.join(sorted(unknown))}")
            sections[name] = section_cls(**{k: _from_toml(v, hints[k], fields[k].default) for k, v in table.items()})
        return cls(**sections, **own)

    def save(self, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
        """Write :meth:`to_dict` as TOML to ``path`` (atomic); returns the path.

        ``root``: OUTPUT_DIR, see :func:`deeplight_bids.derivatives.writers.atomic_path`.
        """
        import tomli_w

        from deeplight_bids.derivatives.writers import write_text  # deferred: keeps NumPy out of --help

        return write_text(path, tomli_w.dumps(self.to_dict()), root=root)

    @classmethod
    def load(cls, path: str | os.PathLike) -> typing.Self:
        """Read a TOML written by :meth:`save`."""
        import tomllib

        return cls.from_dict(tomllib.loads(Path(path).read_text()))


def _tuple_or_none(value):
    return tuple(value) if value else None


def _to_toml(value):
    from enum import Enum

    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [str(v) for v in value]
    if isinstance(value, Enum):  # pybids Query.NONE / Query.ANY in --bids-filter-file
        return f"Query.{value.name}"
    if isinstance(value, dict):
        return {k: _to_toml(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_toml(v) for v in value]
    return value


def _from_toml(value, hint, field_default):
    if value == "none" and field_default is not None and _allows_none(hint):
        return None
    base = _non_none(hint)
    if base is Path:
        return Path(value)
    if base is tuple:
        return tuple(value)
    if base is dict:
        return {k: _query_from_text(v) for k, v in value.items()}
    if base is float and isinstance(value, int):
        return float(value)
    return value


def _allows_none(hint):
    return type(None) in typing.get_args(hint)


def _non_none(hint):
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _query_from_text(value):
    if isinstance(value, str) and value.startswith("Query."):
        from bids.layout import Query

        return Query[value.removeprefix("Query.")]
    if isinstance(value, list):
        return [_query_from_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _query_from_text(v) for k, v in value.items()}
    return value

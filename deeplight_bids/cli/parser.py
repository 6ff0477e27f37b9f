"""Command-line parser in the BIDS-Apps / fMRIPrep style.

``deeplight-bids BIDS_DIR OUTPUT_DIR {participant,group} [options]`` plus the
sub-commands ``deeplight-bids demo OUTPUT_DIR`` and ``deeplight-bids weights ...``.
Validation lives in ``type=`` callables that either return a clean value or report the
mistake (``parser.error``, or the numeric checks of :mod:`deeplight_bids.cli.types`; usage +
exit 2): a user mistake never produces a traceback.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from deeplight_bids._version import __version__
from deeplight_bids.attribution.methods import CHOICES as ATTRIBUTION_CHOICES
from deeplight_bids.attribution.methods import PUBLISHED, STANDARD_SET
from deeplight_bids.attribution.methods import resolve as resolve_attribution
from deeplight_bids.cli.finetune import add_finetune_arguments
from deeplight_bids.cli.options import add_labels, add_option, add_switch
from deeplight_bids.cli.types import non_negative_float, number_in, percent, positive_float, positive_int
from deeplight_bids.config import RELEVANCE_MAP_KINDS, default

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_CODES_HELP = """exit codes:
  0  success (every selected run processed or already done)
  1  internal error (please report with the -vv log)
  2  command-line usage error
  3  input data error (BIDS_DIR, derivatives, events, images)
  4  model / weights error
  5  output error (OUTPUT_DIR not writable, disk full)
  6  partial success: some runs were skipped or failed (see the run table)
"""

ANALYSIS_LEVELS = ("participant", "group")


def _path_exists(value, parser):
    try:
        path = Path(value).expanduser()
        exists = path.exists()  # raises OSError for a name the file system refuses (e.g. over 255 bytes)
    except (OSError, RuntimeError, ValueError) as err:  # RuntimeError: "~user" of no such user
        parser.error(f"not a usable path: <{value}> ({getattr(err, 'strerror', None) or err}).")
    if not exists:
        parser.error(f"path does not exist: <{path}>.")
    return path.absolute()


def _is_file(value, parser):
    path = _path_exists(value, parser)
    if not path.is_file():  # exists() succeeded: is_file() cannot raise for the name
        parser.error(f"path is not a file: <{path}>.")
    return path


def _high_pass(value, parser):
    if str(value).lower() in ("none", "off", "0"):
        return None
    try:
        if "/" in str(value):
            num, den = str(value).split("/", 1)
            number = float(num) / float(den)
        else:
            number = float(value)
    except (ValueError, ZeroDivisionError):
        parser.error(f"--high-pass expects a frequency in Hz (e.g. 0.0078125 or 1/128) or 'none', got {value!r}.")
    if number <= 0:
        parser.error(f"--high-pass must be > 0 Hz (or 'none'), got {value!r}.")
    return number


def _bids_filter(value, parser):
    """Load a pybids filter JSON (``null`` -> Query.NONE, ``"*"`` -> Query.ANY)."""
    from bids.layout import Query

    path = Path(value).expanduser()
    if not path.is_file():
        parser.error(f"--bids-filter-file: file not found: <{path}>.")

    def _hook(obj):
        return {k: (Query.NONE if v is None else Query.ANY if v == "*" else v) for k, v in obj.items()}

    try:
        loaded = json.loads(path.read_text(), object_hook=_hook)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        parser.error(f"--bids-filter-file: <{path}> is not valid JSON ({err}); fix the file or drop the option.")
    if not isinstance(loaded, dict):
        parser.error(
            f"--bids-filter-file: <{path}> must hold a JSON object (entity: value), not {type(loaded).__name__}."
        )
    return loaded


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the main ``deeplight-bids`` command."""
    parser = argparse.ArgumentParser(
        prog="deeplight-bids",
        description=(
            "DeepLight cognitive decoding with LRP explanations for BIDS datasets. "
            "Participant level: decode every volume of each preprocessed task-fMRI run "
            "(fMRIPrep-style derivatives on MNI152NLin6Asym 2 mm) and explain each decision "
            "with LRP. Group level: combine participants. "
            "Also: 'deeplight-bids demo OUTPUT_DIR' (synthetic end-to-end demo), "
            "'deeplight-bids weights {list,fetch,convert}', "
            "'deeplight-bids templates {list,fetch}' (TemplateFlow transforms for offline nodes)."
        ),
        formatter_class=lambda prog: argparse.ArgumentDefaultsHelpFormatter(prog, width=100),
        epilog=EXIT_CODES_HELP,
    )
    PathExists = partial(_path_exists, parser=parser)
    IsFile = partial(_is_file, parser=parser)
    HighPass = partial(_high_pass, parser=parser)
    BidsFilter = partial(_bids_filter, parser=parser)

    parser.add_argument(
        "bids_dir", type=PathExists, help="the root folder of a BIDS dataset (read only; never written)"
    )
    parser.add_argument("output_dir", type=Path, help="where BIDS-Derivatives are written (created if missing)")
    parser.add_argument("analysis_level", choices=ANALYSIS_LEVELS, help="processing stage")
    parser.add_argument("--version", action="version", version=f"deeplight-bids {__version__}")

    g_bids = parser.add_argument_group("Options for filtering BIDS queries")
    add_labels(
        g_bids,
        "--participant-label",
        "--participant_label",
        prefix="sub-",
        text="participants to process, with or without 'sub-' (default: all)",
    )
    add_labels(
        g_bids, "--session-label", prefix="ses-", text="sessions to process, with or without 'ses-' (default: all)"
    )
    g_bids.add_argument(
        "-t", "--task", nargs="+", metavar="TASK", help="task labels to process (case-insensitive; default: all)"
    )
    g_bids.add_argument(
        "--bids-filter-file",
        type=BidsFilter,
        metavar="FILE",
        help="JSON file of extra pybids filters for the BOLD query, "
        "e.g. {\"run\": 1}; null means 'entity absent', \"*\" means 'any value'",
    )
    g_bids.add_argument(
        "-d",
        "--derivatives",
        nargs="+",
        type=PathExists,
        metavar="PATH",
        help="fMRIPrep-style derivatives holding the preprocessed BOLD and brain masks "
        "(default: BIDS_DIR/derivatives/fmriprep* if present, else BIDS_DIR itself "
        "when it is a derivatives dataset)",
    )
    g_bids.add_argument(
        "--space",
        default=None,
        help="template space of the preprocessed BOLD to use: MNI152NLin6Asym (any res; exact) or "
        "MNI152NLin2009cAsym (any res; TemplateFlow's nonlinear transform to MNI152NLin6Asym); "
        "native spaces (T1w, func, fsnative) are refused (default: MNI152NLin6Asym where a run "
        "has it, else MNI152NLin2009cAsym)",
    )
    g_bids.add_argument(
        "--allow-approximate-space",
        action="store_true",
        help="when the TemplateFlow transform file is unavailable (offline), resample "
        "MNI152NLin2009cAsym in world coordinates as if it were MNI152NLin6Asym (approximate; "
        "warned once and recorded as SpaceTransform 'approximate' in the sidecars)",
    )
    g_bids.add_argument(
        "--skip-bids-validation",
        action="store_true",
        help="do not validate BIDS_DIR with bids-validator-deno before processing",
    )

    g_model = parser.add_argument_group("Model and LRP options")
    g_model.add_argument(
        "--architecture",
        choices=("3D", "2D"),
        default=default("architecture"),
        help="DeepLight variant: 3D convolutions, or 2D slice convolutions + bidirectional LSTM",
    )
    g_model.add_argument(
        "--weights",
        metavar="PATH|NAME",
        help="model weights: a .keras file or folder from 'deeplight-bids demo'/fine-tuning, "
        "a published .hdf5/.npy file, or a registry name (see 'deeplight-bids weights list'); "
        "default: the published weights of --architecture",
    )
    g_model.add_argument(
        "--state-map",
        type=IsFile,
        metavar="FILE",
        help="JSON {task: {trial_type: state}} mapping trial types to model output states "
        "(default: the HCP vocabulary for HCP tasks)",
    )
    g_model.add_argument(
        "--lrp-target",
        choices=("predicted", "true"),
        default=default("lrp_target"),
        help="state whose logit LRP explains ('true' uses the labelled state; unlabelled "
        "volumes then fall back to the predicted state)",
    )
    g_model.add_argument("--no-lrp", action="store_true", help="decode only; write no relevance maps")
    g_model.add_argument(
        "--lrp-rule",
        choices=("published", "signed"),
        default=default("lrp_rule"),
        help="2D only: 'published' = the original 2D-DeepLight code's epsilon rule exactly "
        "(denominators z + eps, composite deeplight_2d); 'signed' = z + eps*sign(z) in the "
        "LSTM and output layer (composite deeplight_2d_signed), a deliberate deviation that "
        "avoids near-zero denominators. 3D always uses the published preset B-flat",
    )
    g_model.add_argument(
        "--attribution",
        choices=ATTRIBUTION_CHOICES,
        default=default("attribution"),
        metavar="METHOD",
        help="how each decision is explained (docs/quality.rst says which to choose): 'published' = the "
        "published LRP rule (3D preset_b_flat; 2D deeplight_2d, or deeplight_2d_signed with --lrp-rule "
        "signed); 'gradient', 'gradient_x_input', 'integrated_gradients' (--ig-steps), 'smoothgrad' "
        "(--smoothgrad-samples, --smoothgrad-noise); LRP composites 'epsilon', 'epsilon_plus', "
        "'alpha2_beta1' (--lrp-epsilon; zennit's conventions); or a published rule by name. The maps keep "
        "their names; the sidecars record the method",
    )
    add_option(
        g_model,
        "--ig-steps",
        number_in(int, "a whole number", 2),
        "N",
        "integrated gradients: points on the straight path from the baseline 0 (the z-scored run mean) to "
        "the volume, midpoint rule; the cost is N gradient passes per volume",
    )
    add_option(
        g_model,
        "--smoothgrad-samples",
        positive_int,
        "N",
        "SmoothGrad: noisy copies per volume (the cost is N gradient passes per volume)",
    )
    add_option(
        g_model,
        "--smoothgrad-noise",
        positive_float,
        "SHARE",
        "SmoothGrad: noise SD as a share of the volume's SD",
    )
    add_option(
        g_model,
        "--lrp-epsilon",
        positive_float,
        "EPS",
        "the epsilon of the LRP epsilon rule in the methods epsilon, epsilon_plus and alpha2_beta1 "
        "(dense and recurrent layers; every layer for epsilon)",
    )

    g_quality = parser.add_argument_group("Quality of the explanations and of the decoding (see docs/quality.rst)")
    g_quality.add_argument(
        "--quality",
        dest="no_quality",
        action="store_false",
        default=argparse.SUPPRESS,
        help="participant level: per run, on a subsample of volumes, measure faithfulness (deletion "
        "curves: most relevant vs random in-mask voxels set to 0) and sanity (similarity with "
        "the maps of a randomised model); the default, needs LRP",
    )
    g_quality.add_argument(
        "--no-quality",
        dest="no_quality",
        action="store_true",
        help="participant level: skip the quality measures (faster)",
    )
    g_quality.add_argument(
        "--compare-attributions",
        nargs="*",
        choices=ATTRIBUTION_CHOICES,
        metavar="METHOD",
        help="participant level: per run, compare attribution methods on the same volumes (faithfulness, "
        "randomisation cascade, class sensitivity, plausibility with --reference-map, cost) in one table; "
        f"without names: {' '.join(STANDARD_SET)}",
    )
    add_option(
        g_quality,
        "--compare-volumes",
        positive_int,
        "N",
        "participant level: volumes per run for --compare-attributions, stratified by predicted state (the "
        "costliest checks of integrated gradients and SmoothGrad use at most half of them; the table says how many)",
    )
    add_option(
        g_quality,
        "--quality-volumes",
        positive_int,
        "N",
        "participant level: volumes per run for the quality measures, stratified by predicted state",
    )
    g_quality.add_argument(
        "--reference-map",
        type=PathExists,
        metavar="FILE_OR_DIR",
        help="group level (and --compare-attributions at the participant level): reference map(s) for "
        "plausibility on the reference grid's space "
        "(MNI152NLin6Asym; resampled onto the 2 mm grid): one NIfTI for every state, or a "
        "folder with one NIfTI per state named with 'label-<state>' or '<state>.nii[.gz]'",
    )
    add_option(
        g_quality,
        "--reference-top-percent",
        percent,
        "PCT",
        "group level: the reference map's top PCT %% of brain voxels form its region "
        "(relevance mass and rank accuracy)",
    )
    add_option(
        g_quality,
        "--significance-permutations",
        positive_int,
        "N",
        "group level: permutations of the block labels per participant and task for the "
        "test of accuracy against chance (seeded with --seed)",
    )

    g_glm = parser.add_argument_group("Evidence beside the maps: the dataset's GLM and a linear decoder (docs/glm.rst)")
    g_glm.add_argument(
        "--no-glm",
        action="store_true",
        help="participant level: do not fit the first-level GLM of each run (state against the other states "
        "and against baseline, on the decoder's data) nor compare it with the relevance maps",
    )
    g_glm.add_argument(
        "--glm-noise-model",
        choices=("ols", "ar1"),
        default=default("glm_noise_model"),
        help="participant level: the GLM's temporal noise model: 'ols' (fast; t values ignore the noise's "
        "autocorrelation) or 'ar1' (nilearn's default, t values fit for inference; its fit takes ~8x as long: "
        "~40 s more per 405-volume run on 2 cores)",
    )
    g_glm.add_argument(
        "--no-linear-baseline",
        action="store_true",
        help="group --finetune: do not fit the linear baseline decoder (standardisation, ANOVA screening, "
        "L2 logistic regression) on the same volumes and participant folds as DeepLight",
    )

    g_prep = parser.add_argument_group("Preprocessing options (reference: DeepLight, Thomas et al. 2021)")
    add_option(
        g_prep,
        "--smoothing-fwhm",
        non_negative_float,
        "MM",
        "Gaussian smoothing FWHM in mm applied while masking (0 = none)",
    )
    add_option(g_prep, "--high-pass", HighPass, "HZ", "high-pass cut-off in Hz (e.g. 1/128), or 'none'")

    g_perf = parser.add_argument_group("Options to handle performance")
    g_perf.add_argument(
        "--nprocs",
        "--n-cpus",
        type=positive_int,
        metavar="N",
        help="CPU threads for TensorFlow and preparation (default: all available)",
    )
    g_perf.add_argument(
        "--mem-mb",
        "--mem_mb",
        type=positive_int,
        metavar="MB",
        help="memory the job may use, in MB (default: the SLURM job's or the container's limit, else the "
        "machine's); below 6144 the LRP pass on CPU explains the full-resolution layers one volume at a time "
        "(its peak then does not depend on the host's scratch for 4 volumes; ~8 %% slower)%(default).0s",
    )
    add_option(
        g_perf,
        "--batch-size",
        positive_int,
        "N",
        "volumes read, decoded, explained and written per step; on CPU the network takes at most 4 "
        "at a time (bounded memory), on a GPU the whole batch",
    )
    g_perf.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        default=None,
        help="Keras backend that runs the models and LRP (default: $KERAS_BACKEND, else tensorflow); "
        "jax / torch need 'pip install deeplight-bids[jax]' / '[torch]'; recorded in the sidecars",
    )
    g_perf.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        metavar="PATH",
        help="scratch folder (default: OUTPUT_DIR/.work, which pybids and bids-validator ignore; removable after a successful run)",
    )

    g_group = parser.add_argument_group("Group level options")
    g_group.add_argument(
        "--correct-only",
        action="store_true",
        help="group level: also make group relevance maps from only the correctly decoded volumes "
        "(reads every run's 4D relevance map)",
    )
    g_group.add_argument(
        "--reports-only",
        action="store_true",
        help="group level: only rebuild OUTPUT_DIR/deeplight_report.html from existing group outputs",
    )
    g_group.add_argument(
        "--group-threshold",
        choices=("fdr", "fwe-permutation", "none"),
        default=default("group_threshold"),
        help="group level: correction of the group maps' threshold (figures, cluster tables): 'fdr' = "
        "Benjamini-Hochberg false discovery rate at q = --group-alpha (nilearn threshold_stats_img), "
        "'fwe-permutation' = family-wise error at --group-alpha by max-t over sign flips (nilearn "
        "non_parametric_inference; needs at least log2(1/alpha) participants, 5 for 0.05), 'none' = "
        "unthresholded; tests are one-sided (state > the others)",
    )
    add_option(
        g_group,
        "--group-alpha",
        number_in(float, "a probability", 0, 1, low_open=True),
        "Q",
        "group level: the FDR q or FWE alpha of --group-threshold",
    )
    add_option(
        g_group,
        "--group-permutations",
        positive_int,
        "N",
        "group level: sign flips for --group-threshold fwe-permutation (seeded with --seed)",
    )
    add_switch(
        g_group,
        "--pairwise-contrasts",
        "group level: besides each state vs the mean of the task's other states, contrast each ordered "
        "pair of states (<A>Vs<B>)",
    )
    g_group.add_argument(
        "--contrast-scaling",
        choices=("brain-mean", "none"),
        default=default("contrast_scaling"),
        help="group level: before states are compared, divide each participant's mean relevance map of each "
        "state by its mean absolute relevance in the brain mask ('brain-mean': compares where relevance lies; LRP "
        "gives a state explained with larger logits more relevance everywhere), or use the maps as written "
        "('none')",
    )

    add_finetune_arguments(parser)

    g_out = parser.add_argument_group("Output options")
    g_out.add_argument(
        "--relevance-maps",
        choices=RELEVANCE_MAP_KINDS,
        default=default("relevance_maps"),
        help="relevance written per run (masked to the run's brain mask): one map per volume, one mean "
        "map per event block / trial (4D + TSV), or none (the per-state mean maps per participant "
        "are written in every case)",
    )
    g_out.add_argument(
        "--save-tfrecords",
        action="store_true",
        help="also write each run's prepared, labelled volumes as TFRecords in the original "
        "DeepLight schema (OUTPUT_DIR/tfrecords/; HCP states and numeric participant labels)",
    )

    g_other = parser.add_argument_group("Other options")
    g_other.add_argument(
        "--overwrite", action="store_true", help="recompute runs whose outputs already exist (default: skip them)"
    )
    add_switch(
        g_other,
        "--verify",
        "participant level: check a finished OUTPUT_DIR (e.g. after copying it) for damaged files against the "
        "sizes and checksums its runs recorded, recompute nothing, write nothing; lists the damaged files and "
        "exits with 5 if any (a re-run without --verify recomputes them)",
    )
    g_other.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug, and tracebacks for errors)"
    )
    return parser


def check_cross_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Checks that need several arguments (after parsing); calls ``parser.error``."""
    bids_dir = Path(args.bids_dir).resolve()
    output_dir = Path(args.output_dir).expanduser().absolute()
    if _inside(output_dir, bids_dir):
        parser.error(
            f"the output folder <{output_dir}> is inside the input BIDS folder, which is never written to; "
            f"use a folder outside it, e.g. <{bids_dir.parent / (bids_dir.name + '-deeplight')}>."
        )
    if args.work_dir is not None and _inside(Path(args.work_dir).expanduser().absolute(), bids_dir):
        parser.error(f"the work folder <{args.work_dir}> is inside the BIDS dataset; choose a folder outside it.")
    architecture = getattr(args, "architecture", default("architecture"))
    for method in [getattr(args, "attribution", PUBLISHED), *(getattr(args, "compare_attributions", None) or ())]:
        try:
            resolve_attribution(method, architecture, getattr(args, "lrp_rule", default("lrp_rule")))
        except ValueError as err:
            parser.error(f"{err}.")
    if getattr(args, "no_lrp", False) and (
        getattr(args, "attribution", PUBLISHED) != PUBLISHED or getattr(args, "compare_attributions", None) is not None
    ):
        parser.error("--no-lrp writes no maps: leave out --attribution and --compare-attributions, or --no-lrp.")
    if getattr(args, "verify", False) and (args.analysis_level != "participant" or args.overwrite):
        parser.error(
            "--verify checks a participant-level OUTPUT_DIR and recomputes nothing: use it with "
            "'participant' and without --overwrite."
        )
    args.output_dir = output_dir
    return args


def _inside(path, parent):
    try:
        path.resolve().relative_to(parent)
    except ValueError:
        return False
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and run the cross-argument checks."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return check_cross_arguments(parser, args)

"""``deeplight-bids demo OUTPUT_DIR``: the command line of the demo workflow (:mod:`deeplight_bids.workflows.demo`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from deeplight_bids.cli.types import probability
from deeplight_bids.runtime import setup_logging
from deeplight_bids.workflows.demo import DEFAULTS, format_report, run_demo

if TYPE_CHECKING:
    from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplight-bids demo",
        description="Synthetic end-to-end demo: make a dataset, fit 3D-DeepLight on all participants but two (one "
        "validates the fit, one is held out), "
        "decode and explain the held-out one, report accuracy and relevance in the planted regions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("output_dir", type=Path, help="folder for the dataset, the model and the outputs")
    # the options of the demo's dataset and fit, each defaulting to its DEFAULTS entry
    for flag, cast, text in (
        ("--participants", int, "synthetic participants (the last is held out, the one before validates the fit)"),
        ("--volumes", int, "volumes per run"),
        ("--signal", float, "peak signal change of a state's region, in percent of the mean intensity"),
        ("--region-radius", float, "radius of each planted region in mm"),
        ("--epochs", int, "training epochs"),
        ("--batch-size", int, "training batch size"),
        ("--learning-rate", float, "Adam learning rate"),
        (
            "--mix-same-state",
            probability,
            "share of training volumes mixed with a volume of the same state from another participant "
            "(as 'group --finetune --mix-same-state')",
        ),
    ):
        parser.add_argument(flag, type=cast, default=DEFAULTS[flag[2:].replace("-", "_")], help=text)
    parser.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="skip the comparison of attribution methods on the held-out participant (about 1 minute)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (data and training)")
    parser.add_argument("--nprocs", type=int, default=0, help="CPU threads (default: all)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def run_demo_command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.participants < 3:
        print(
            "deeplight-bids demo: error: --participants must be >= 3 (one trains, one validates, one is held out).",
            file=sys.stderr,
        )
        return 2
    setup_logging(args.verbose)
    same_name = (
        "epochs",
        "batch_size",
        "learning_rate",
        "mix_same_state",
        "signal",
        "region_radius",
        "seed",
        "nprocs",
        "compare",
    )
    report = run_demo(
        args.output_dir,
        n_participants=args.participants,
        n_volumes=args.volumes,
        **{name: getattr(args, name) for name in same_name},  # options named as run_demo's parameters
    )
    print(format_report(report))
    return 0

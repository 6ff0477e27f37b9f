"""``deeplight-bids weights {list,fetch,convert}``: manage published and converted weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from deeplight_bids.cli.options import action_parser
from deeplight_bids.models import weights as w

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser, actions = action_parser(
        "deeplight-bids weights",
        "Manage DeepLight weights. Published files are cached in $DEEPLIGHT_WEIGHTS_DIR "
        "(default: ~/.cache/deeplight-bids/weights).",
        {
            "list": "list the published weights and whether they are cached and verified",
            "fetch": "download published weights (needs internet) and verify their checksum",
            "convert": "convert the published 2D .npy into a .keras model with a model card",
        },
    )
    actions["fetch"].add_argument("names", nargs="*", help="registry names (default: all)")
    actions["fetch"].add_argument("--dest", type=Path, help="target folder (default: the weights cache)")
    actions["convert"].add_argument(
        "source", type=Path, help="the published model-2D_DeepLight_desc-pretrained_model.npy"
    )
    actions["convert"].add_argument("output", type=Path, help="output .keras path")
    return parser


def run_weights_command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "list":
        cache = w.weights_cache_dir()
        print(f"weights cache: {cache}")
        for name, entry in w.REGISTRY.items():
            path = cache / entry.filename
            status = "missing"
            if path.is_file():
                status = "verified" if w.verify_published(entry, path) else "CHECKSUM MISMATCH"
            print(f"{name:<16} {entry.architecture:<3} {status:<18} {entry.filename}  ({entry.url})")
        return 0
    if args.action == "fetch":
        for name in args.names or list(w.REGISTRY):
            if name not in w.REGISTRY:
                print(
                    f"deeplight-bids weights: error: unknown name {name!r}; choose from {', '.join(w.REGISTRY)}.",
                    file=sys.stderr,
                )
                return 2
            path = w.fetch_published(name, args.dest, progress=lambda m: print(m, file=sys.stderr))
            print(path)
        return 0
    if args.action == "convert":
        # deferred: loads TensorFlow/Keras
        from deeplight_bids.models.published_2d import convert_published_2d, load_published_2d, save_converted

        model = convert_published_2d(load_published_2d(args.source))
        print(save_converted(model, args.output, args.source))
        return 0
    return 2

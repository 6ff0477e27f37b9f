"""The "Fine-tuning options" group of the main parser (``group --finetune``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deeplight_bids.cli.options import add_labels, add_option, add_switch
from deeplight_bids.cli.types import non_negative_int, positive_float, positive_int, probability
from deeplight_bids.config import default

if TYPE_CHECKING:
    import argparse


def add_finetune_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the "Fine-tuning options" group to the main parser."""
    group = parser.add_argument_group(
        "Fine-tuning options",
        "group level with --finetune: fit DeepLight to this dataset's states, evaluated on held-out participants",
    )
    add_switch(group, "--finetune", "group level: fine-tune (transfer learning) instead of the group statistics")
    group.add_argument(
        "--init",
        choices=("pretrained", "scratch"),
        default=default("finetune_init"),
        dest="finetune_init",
        help="start from the published body of --architecture (or --weights) with a new output "
        "layer, or from random weights",
    )
    group.add_argument(
        "--states",
        nargs="+",
        metavar="STATE",
        dest="finetune_states",
        help="states to train on, in output order (default: every labelled state found, sorted)%(default).0s",
    )
    add_option(group, "--epochs", positive_int, None, "training epochs")
    group.add_argument(
        "--learning-rate",
        type=positive_float,
        metavar="LR",
        help="Adam learning rate (default: 1e-3 for 3D, 1e-4 for 2D)%(default).0s",
    )
    add_option(
        group,
        "--finetune-batch-size",
        positive_int,
        "N",
        "training batch size (default: %(default)s; --batch-size is for decoding)",
    )
    add_option(
        group,
        "--cv-folds",
        non_negative_int,
        "K",
        "participant-wise K-fold cross-validation (every participant is predicted by a model "
        "that never saw it); 0: one split (see --val-participants)",
    )
    add_labels(
        group,
        "--val-participants",
        prefix="sub-",
        text="participants held out for validation in the one-split mode "
        "(default: the last 20%% of participants, at least one)%(default).0s",
    )
    add_option(
        group,
        "--early-stopping-patience",
        non_negative_int,
        "N",
        "stop after N epochs without a lower validation loss and keep the best weights (0: train all epochs)",
    )
    add_option(
        group,
        "--seed",
        non_negative_int,
        None,
        "random seed (folds, weights, shuffling; also the quality measures' volume choice, random "
        "orders and randomised model, and the significance permutations)",
    )
    add_switch(group, "--freeze-body", "train the output layer only (the body's features are computed once)")
    add_option(
        group,
        "--mix-same-state",
        probability,
        "P",
        "augmentation: with probability P a training volume is replaced by the mean of itself and a volume "
        "of the same state from another training participant, drawn anew every epoch (keeps what the "
        "participants share, halves each one's own noise: a brief fit on few participants cannot memorise "
        "them; not with --freeze-body)",
    )
    group.add_argument(
        "--model-name",
        metavar="NAME",
        help="folder name under OUTPUT_DIR/models (default: finetune-<architecture>-<init>[-frozen])%(default).0s",
    )
    return group

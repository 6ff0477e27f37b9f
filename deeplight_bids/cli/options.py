"""Helpers that add options to the command-line parsers, each with its default from :mod:`deeplight_bids.config`.

Used by the main parser (:mod:`deeplight_bids.cli.parser`) and the option groups and sub-commands built
beside it (:mod:`~deeplight_bids.cli.finetune`, :mod:`~deeplight_bids.cli.weights`,
:mod:`~deeplight_bids.cli.templates`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from deeplight_bids.cli.types import label_without
from deeplight_bids.config import default

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["action_parser", "add_labels", "add_option", "add_switch"]


def _setting(flag):
    """The configuration setting an option sets: ``"--batch-size"`` -> ``"batch_size"``."""
    return flag.removeprefix("--").replace("-", "_")


def add_option(
    group: argparse._ArgumentGroup,
    flag: str,
    check: Callable[[str], Any],
    metavar: str | None,
    text: str | None,
) -> None:
    """Add an option that takes one value, checked by ``check``, and defaults to the configuration's.

    Parameters
    ----------
    group : argparse._ArgumentGroup
        Where the option is listed in ``--help``.
    flag : str
        ``"--batch-size"``; its setting (``dest``) and default are those of ``batch_size`` in
        :func:`deeplight_bids.config.default`, the one source of the defaults.
    check : callable
        The ``type=`` converter (see :mod:`deeplight_bids.cli.types`).
    metavar, text : str or None
        The value's name and the help text (``None`` metavar: argparse's, the setting in capitals).
    """
    group.add_argument(flag, type=check, default=default(_setting(flag)), metavar=metavar, help=text)


def add_switch(group: argparse._ArgumentGroup, flag: str, text: str) -> None:
    """Add an on/off option (``store_true``) whose default is the configuration's; its help shows no default."""
    group.add_argument(flag, action="store_true", default=default(_setting(flag)), help=text + "%(default).0s")


def add_labels(group: argparse._ArgumentGroup, *flags: str, prefix: str, text: str) -> None:
    """Add an option that takes one or more BIDS labels, each with or without ``prefix`` (``"sub-"``)."""
    group.add_argument(*flags, nargs="+", type=label_without(prefix), metavar="LABEL", help=text)


def action_parser(
    prog: str, description: str, actions: dict[str, str]
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser of a ``deeplight-bids <command> <action>`` sub-command (``weights``, ``templates``).

    Parameters
    ----------
    prog, description : str
        As for :class:`argparse.ArgumentParser`.
    actions : dict
        Action name -> its help, in ``--help`` order; the chosen one is ``args.action``.

    Returns
    -------
    parser : argparse.ArgumentParser
    subparsers : dict
        Action name -> its parser (to add the action's own arguments).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="action", required=True)
    return parser, {name: sub.add_parser(name, help=text) for name, text in actions.items()}

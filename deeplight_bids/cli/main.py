"""``deeplight-bids`` entry point: parse -> config -> participant / group -> exit code.

Sub-commands that do not follow the BIDS-Apps positionals are dispatched first:
``deeplight-bids demo OUTPUT_DIR`` and ``deeplight-bids weights {list,fetch,convert}``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

from deeplight_bids import backend
from deeplight_bids.cli.parser import parse_args
from deeplight_bids.config import Config
from deeplight_bids.exceptions import EXIT_USAGE
from deeplight_bids.runtime import run_guarded, setup_logging

if TYPE_CHECKING:
    from collections.abc import Sequence


def _guard(job, *args, verbose=0):
    """``job(*args)`` in the command lines' one error shell (:func:`deeplight_bids.runtime.run_guarded`)."""
    return run_guarded(
        lambda: job(*args),
        "deeplight-bids",
        "finished runs are kept, re-run to resume.",
        memory_hint="lower --batch-size.",
        verbose=verbose,
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command line; exits the process with the documented exit code."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code (no ``sys.exit``; for tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from deeplight_bids.cli.demo import run_demo_command  # deferred: loads nibabel, pandas and SciPy

        return _guard(run_demo_command, argv[1:])
    if argv and argv[0] == "weights":
        # deferred: keeps urllib/ssl (models.weights) out of --help
        from deeplight_bids.cli.weights import run_weights_command

        return _guard(run_weights_command, argv[1:])
    if argv and argv[0] == "templates":
        # deferred: keeps NumPy (group.templates) out of --help
        from deeplight_bids.cli.templates import run_templates_command

        return _guard(run_templates_command, argv[1:])

    args = parse_args(argv)
    setup_logging(args.verbose)

    try:  # before anything imports Keras
        backend.check_installed(backend.select_backend(args.backend))
    except (ValueError, ImportError) as err:
        print(f"deeplight-bids: error: --backend: {err}", file=sys.stderr)
        return EXIT_USAGE
    config = Config.from_args(args)

    def _run():
        from deeplight_bids.derivatives.writers import output_root  # deferred: keeps NumPy out of --help

        with output_root(config.inputs.output_dir):  # every writer of either level guards OUTPUT_DIR
            if config.analysis_level == "participant" and config.participant.verify:  # reads only
                from deeplight_bids.derivatives.integrity import run_verify  # deferred: loads pandas

                return run_verify(config)
            if config.analysis_level == "participant":
                # deferred: loads nibabel, pandas and SciPy
                from deeplight_bids.workflows.participant import run_participant_level

                _, code = run_participant_level(config)
                return code
            if config.finetune.enabled:  # group --finetune: the model is fitted, not the group level run
                from deeplight_bids.workflows.finetune import run_finetune  # deferred: loads nibabel and SciPy

                return run_finetune(config)
            from deeplight_bids.group.level import run_group_level  # deferred: loads nibabel, pandas and SciPy

            return run_group_level(config)

    return _guard(_run, verbose=config.verbose)

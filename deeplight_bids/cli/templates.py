"""``deeplight-bids templates {list,fetch}``: every TemplateFlow file the app reads, for offline nodes.

Both levels read TemplateFlow: the participant level the MNI152NLin2009cAsym ->
MNI152NLin6Asym transform (:data:`deeplight_bids.prepare.spaces.KNOWN_SPACES`; runs in
MNI152NLin2009cAsym), the group level the MNI152NLin6Asym res-2 T1w (the report's
background) and brain mask (the group mask; :mod:`deeplight_bids.group.templates`).
``fetch`` downloads what is missing into ``$TEMPLATEFLOW_HOME`` and verifies every file
(the transform by its published checksum, the images as NIfTI on the 2 mm grid); copy that
folder to an offline node (or into a container image) and set ``TEMPLATEFLOW_HOME`` there.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from deeplight_bids.cli.options import action_parser
from deeplight_bids.exceptions import InputDataError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser, _ = action_parser(
        "deeplight-bids templates",
        "TemplateFlow files the app reads: the MNI152NLin2009cAsym -> MNI152NLin6Asym transform (participant "
        "level, runs in MNI152NLin2009cAsym) and the MNI152NLin6Asym res-2 T1w and brain mask (group level: "
        "report figures, group mask). Stored in $TEMPLATEFLOW_HOME (default: ~/.cache/templateflow).",
        {
            "list": "list the files, whether each is present and verified (exit 3 if one is not)",
            "fetch": "download the missing files (needs internet) and verify all of them",
        },
    )
    return parser


def _template_items(download):
    """``(level, what, path, status)`` of the group level's two images; raises one line if unavailable."""
    # deferred: keeps NumPy out of --help
    from deeplight_bids.group.templates import FILE_NAMES, TemplatesUnavailable, fetch_template_files

    what = {
        "t1w": "MNI152NLin6Asym res-2 T1w (report figures)",
        "mask": "MNI152NLin6Asym res-2 brain mask (group mask)",
    }
    try:
        found = fetch_template_files(download=download)
    except TemplatesUnavailable as err:
        how = (
            "run 'deeplight-bids templates fetch' on a machine with internet and copy $TEMPLATEFLOW_HOME here"
            if not download or err.offline
            else "check the TemplateFlow installation"
        )
        raise InputDataError(
            f"TemplateFlow {', '.join(FILE_NAMES.values())}: not available ({err}); {how}; without them the "
            "group level uses nilearn's MNI152 instead."
        ) from None
    return [
        ("group", what[key], path, "fetched, verified" if fetched else "present, verified")
        for key, (path, fetched) in found.items()
    ]


def _transform_items(download):
    # deferred: loads nibabel and SciPy
    from deeplight_bids.prepare.spaces import KNOWN_SPACES, fetch_transform, templateflow_home

    items = []
    for space, known in KNOWN_SPACES.items():
        xfm = known.transform
        if xfm is None:
            continue
        local = templateflow_home() / f"tpl-{xfm.template}" / xfm.filename
        present = local.is_file() and local.stat().st_size > 0
        path = fetch_transform(xfm, download=download)  # raises a one-line error (exit 3)
        status = "present, verified" if present else "fetched, verified"
        items.append(("participant", f"{space} -> {xfm.template} transform", path, f"{status} (MD5)"))
    return items


def run_templates_command(argv: Sequence[str] | None) -> int:
    from deeplight_bids.prepare.spaces import templateflow_home  # deferred: loads nibabel and SciPy

    args = build_parser().parse_args(argv)
    download = args.action == "fetch"
    print(f"TEMPLATEFLOW_HOME: {templateflow_home()}")
    items = []
    errors = []
    for collect in (_transform_items, _template_items):
        try:
            items += collect(download)
        except InputDataError as err:  # report every missing file, then fail
            errors.append(err)
    for level, what, path, status in items:
        print(f"{level:<12} {what:<48} {status:<26} {path}")
    if errors:
        for error in errors[:-1]:  # the last one is printed by the command line as every error is
            print(f"deeplight-bids: error: {error}", file=sys.stderr)
        raise errors[-1]
    if download:
        print(
            f"{len(items)} files ready in {templateflow_home()}: copy that folder to an offline node or image and "
            "set TEMPLATEFLOW_HOME to it; both levels then read TemplateFlow's files without network."
        )
    return 0

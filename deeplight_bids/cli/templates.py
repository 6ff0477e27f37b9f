"""``deeplight-bids templates {list,fetch}``: the TemplateFlow files the app uses, for offline nodes.

``fetch`` downloads (into ``$TEMPLATEFLOW_HOME``) and verifies the inter-template transforms of
:data:`deeplight_bids.prepare.spaces.KNOWN_SPACES`; copy that folder to an offline node and
set ``TEMPLATEFLOW_HOME`` there.  The container image holds them already.
"""

import os
import sys

from deeplight_bids.cli.parser import action_parser


def build_parser():
    parser, _ = action_parser(
        "deeplight-bids templates",
        "TemplateFlow files used to bring MNI152NLin2009cAsym data onto the MNI152NLin6Asym grid. "
        "They are stored in $TEMPLATEFLOW_HOME (default: ~/.cache/templateflow).",
        {
            "list": "list the transform files and whether they are present and verified",
            "fetch": "download the transform files (needs internet) and verify their checksums",
        },
    )
    return parser


def run_templates_command(argv):
    from deeplight_bids.prepare.spaces import KNOWN_SPACES, fetch_transform

    args = build_parser().parse_args(argv)
    home = os.environ.get("TEMPLATEFLOW_HOME", "~/.cache/templateflow (TEMPLATEFLOW_HOME unset)")
    print(f"TEMPLATEFLOW_HOME: {home}")
    for space, known in KNOWN_SPACES.items():
        if known.transform is None:
            print(f"{space:<22} no transform needed")
            continue
        path = fetch_transform(known.transform, download=args.action == "fetch")  # raises a one-line error
        print(f"{space:<22} verified  {path}", file=sys.stdout)
    return 0

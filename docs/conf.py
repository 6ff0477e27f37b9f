"""Sphinx configuration of the deeplight-bids documentation.

Build (warnings are errors, as in CI)::

    cd docs && PYTHONPATH=$PWD/.. python -m sphinx -W --keep-going -b html . _build/html
"""

import importlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The package from this checkout (not an installed copy), and the local extensions.
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "_ext"))
# Importing the package pulls in TensorFlow: keep its start-up chatter out of the build log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


project = "deeplight-bids"
author = "deeplight-bids developers"
copyright = "deeplight-bids developers"
version = release = importlib.import_module("deeplight_bids").__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxarg.ext",
    "exit_codes",
    "lrp_composites",
]
# No sphinx.ext.intersphinx: the docs build offline (CI has no internet).

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

# Blocks without a language (e.g. the argparse usage) are not highlighted.
highlight_language = "none"
# Option names in help texts ("--weights") must not become typographic dashes.
smartquotes = False

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = []

html_theme = "furo"
html_title = f"deeplight-bids {release}"
html_static_path = []

"""Software versions recorded in provenance (model cards, summaries, the group report)."""

import platform
import sys
from importlib import metadata

from deeplight_bids import backend
from deeplight_bids._version import __version__

#: Distributions whose versions are recorded (those not installed are left out).
PACKAGES = (
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "jax",
    "numpy",
    "scipy",
    "pandas",
    "nibabel",
    "nilearn",
    "pybids",
    "templateflow",
    "matplotlib",
)


def software_versions() -> dict[str, str]:
    """Versions of this tool, Python and the installed scientific stack.

    Returns
    -------
    dict
        ``{"deeplight_bids": ..., "python": ..., "<distribution>": version, ...}``; once
        Keras is imported also ``"backend"`` (the Keras backend's name) and the backend
        package's version as it reports itself (:func:`deeplight_bids.backend.versions`).
    """
    out = {"deeplight_bids": __version__, "python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    if "keras" in sys.modules:  # never import Keras (and its backend) only to say which one it would be
        out.update(backend.versions())
    return out

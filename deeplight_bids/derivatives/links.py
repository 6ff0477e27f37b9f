"""Links from OUTPUT_DIR to its source datasets: ``DatasetLinks`` and BIDS URIs (BIDS 1.10).

A sidecar's ``Sources`` names each input file as a BIDS URI ``bids:<dataset-name>:<path>``,
where ``<path>`` is relative to that dataset's root and ``<dataset-name>`` is a key of the
``DatasetLinks`` object in OUTPUT_DIR's ``dataset_description.json``; ``bids::<path>``
(empty name) is a file of OUTPUT_DIR itself.  The raw dataset is named ``raw`` (as fMRIPrep
names it); each derivative dataset (the preprocessed BOLD, e.g. fMRIPrep's) by its folder name.

``DatasetLinks`` gives each location *relative to OUTPUT_DIR* (e.g. ``../bids``), so the
outputs do not depend on the absolute path of the machine that wrote them: OUTPUT_DIR moved
together with its inputs (or mounted elsewhere in a container) still resolves.  Only where no
relative path exists (another drive on Windows) is the location an absolute ``file://`` URI.
"""

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

#: ``DatasetLinks`` name of the raw dataset (BIDS_DIR).
RAW = "raw"
#: Characters a dataset name keeps (BIDS URI characters, without ``:`` and ``/``).
_NAME_CHARS = re.compile(r"[^0-9a-zA-Z_.-]+")
_URI = re.compile(r"^bids:([^:/]*):(.*)$")

PathLike = str | os.PathLike


def _dataset_type(root):
    try:
        return json.loads((Path(root) / "dataset_description.json").read_text()).get("DatasetType", "raw")
    except (OSError, json.JSONDecodeError, AttributeError):
        return "raw"


def dataset_roots(bids_dir: PathLike, derivatives: Sequence[PathLike] = ()) -> dict[str, Path]:
    """Name every source dataset: ``{name: absolute root}``, in a fixed order.

    Parameters
    ----------
    bids_dir : str or path
        BIDS_DIR: named ``raw``, unless its ``dataset_description.json`` says it is a
        derivative dataset (then it is named by its folder, like the other derivatives).
    derivatives : sequence of str or path
        The derivative datasets read (:func:`deeplight_bids.bids.discover.find_derivatives`);
        named by folder name (characters outside ``[0-9a-zA-Z_.-]`` become ``-``), made
        unique with ``-2``, ``-3`` ...; one equal to ``bids_dir`` is listed once.

    Returns
    -------
    dict
        Dataset name -> absolute path of its root.  The same inputs give the same names
        in every job (concurrent jobs write one ``dataset_description.json``).
    """
    roots = {}
    bids_dir = Path(bids_dir).absolute()
    seen = set()
    for i, folder in enumerate([bids_dir, *(Path(d).absolute() for d in derivatives)]):
        if folder in seen:
            continue
        seen.add(folder)
        if i == 0 and _dataset_type(folder) != "derivative":
            base = RAW
        else:
            base = _NAME_CHARS.sub("-", folder.name).strip("-") or "derivatives"
        name, n = base, 2
        while name in roots:
            name, n = f"{base}-{n}", n + 1
        roots[name] = folder
    return roots


def link_location(root: PathLike, output_dir: PathLike) -> str:
    """Where ``root`` lies seen from ``output_dir``: a relative path (``../bids``), URI-quoted.

    Falls back to an absolute ``file://`` URI only where no relative path exists.
    """
    root, output_dir = Path(root).resolve(), Path(output_dir).resolve()
    try:
        rel = os.path.relpath(root, output_dir)
    except ValueError:  # another drive (Windows)
        return root.as_uri()
    return quote(Path(rel).as_posix(), safe="/._-~")


def dataset_links(roots: Mapping[str, PathLike], output_dir: PathLike) -> dict[str, str]:
    """The ``DatasetLinks`` object of OUTPUT_DIR: ``{name: location relative to OUTPUT_DIR}``."""
    return {name: link_location(root, output_dir) for name, root in roots.items()}


def _relative_within(path, root):
    for p, r in ((path.absolute(), root.absolute()), (path.resolve(), root.resolve())):
        try:
            return p.relative_to(r)
        except ValueError:
            continue
    return None


def source_uri(path: PathLike, roots: Mapping[str, PathLike]) -> str:
    """The BIDS URI of an input file: ``bids:<name>:<path within the dataset>``.

    The deepest dataset root holding the file wins (fMRIPrep's outputs in
    ``BIDS_DIR/derivatives/fmriprep`` are named by that dataset, not by the raw one).

    Raises
    ------
    ValueError
        If the file lies in none of the datasets (a programming error: every input is
        found through these datasets).
    """
    path = Path(path)
    best = None
    for name, root in roots.items():
        rel = _relative_within(path, Path(root))
        if rel is not None and (best is None or len(rel.parts) < len(best[1].parts)):
            best = (name, rel)
    if best is None:
        raise ValueError(f"{path}: not inside any linked dataset ({', '.join(map(str, roots.values()))})")
    name, rel = best
    return f"bids:{name}:{rel.as_posix()}"


def resolve_uri(uri: str, dataset_root: PathLike) -> Path:
    """The file a BIDS URI written in the dataset at ``dataset_root`` points to.

    ``bids::<path>`` is a file of that dataset; ``bids:<name>:<path>`` is looked up in
    its ``dataset_description.json`` ``DatasetLinks`` (relative locations are relative to
    ``dataset_root``; ``file://`` URIs are absolute).

    Raises
    ------
    ValueError
        For a string that is no BIDS URI, an unknown dataset name, or a remote link
        (``https://``, ``doi:``...), which has no local file.
    """
    match = _URI.match(uri)
    if not match:
        raise ValueError(f"{uri!r}: not a BIDS URI (bids:<dataset-name>:<path>)")
    name, rel = match.groups()
    dataset_root = Path(dataset_root)
    if name == "":
        return dataset_root / rel
    description = dataset_root / "dataset_description.json"
    links = json.loads(description.read_text()).get("DatasetLinks", {})
    if name not in links:
        raise ValueError(f"{uri}: no dataset {name!r} in DatasetLinks of {description}")
    location = links[name]
    parsed = urlparse(location)
    if parsed.scheme == "file":
        base = Path(unquote(parsed.path))
    elif parsed.scheme:
        raise ValueError(f"{uri}: DatasetLinks[{name!r}] = {location!r} is not a local dataset")
    else:
        base = dataset_root / unquote(location)
    return base / rel

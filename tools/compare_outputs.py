"""Compare two output trees of the demo (or of any job): which files are byte-identical, and why the others differ.

Usage::

    python tools/compare_outputs.py OLD_DEMO_DIR NEW_DEMO_DIR

Made to check that a refactor changes no output (issue 17): run ``deeplight-bids demo`` with the
old and the new code (same ``--nprocs``: fits are bit-reproducible for a given thread count), then
compare.  Scratch (``work/``) and logs (their names carry the time and process id) are skipped.
Files that are not byte-identical are compared again with absolute paths, clocks and the
``.keras`` files' own SHA-256 set aside (Keras writes its save date and Python object ids into
the zip; the weights inside are compared array by array); JSON files that still differ are listed
with the keys that differ.  Exit status 0 when nothing differs beyond that.
"""

import filecmp
import hashlib
import io
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

#: JSON keys that hold a clock.
CLOCK_KEYS = {"created", "date", "time", "seconds", "started", "finished", "elapsed", "duration", "date_saved"}
TIME_PATTERN = re.compile(r"\d{4}-\d\d-\d\d[T ]?\d\d:\d\d:\d\d(\.\d+)?")


class Normaliser:
    """Sets aside the two roots' paths, clocks and the hashes of their ``.keras`` files."""

    def __init__(self, a, b):
        self.roots = [str(a), str(b), a.name, b.name]
        self.hashes = [
            hashlib.sha256(p.read_bytes()).hexdigest()
            for root in (a, b)
            for p in sorted(root.rglob("*.keras"))
            if "work" not in p.relative_to(root).parts
        ]

    def __call__(self, value):
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items() if k.lower() not in CLOCK_KEYS and not k.endswith("_seconds")}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, str):
            for root in self.roots:
                value = value.replace(root, "ROOT")
            for digest in self.hashes:
                value = value.replace(digest, "WEIGHTS_FILE_SHA256").replace(digest[:12], "WEIGHTS_FILE_SHA256")
            return TIME_PATTERN.sub("TIME", value)
        return value


def json_differences(x, y, path=""):
    """Key paths where two JSON values differ."""
    if isinstance(x, dict) and isinstance(y, dict):
        out = set()
        for k in set(x) | set(y):
            out |= {f"{path}/{k}"} if k not in x or k not in y else json_differences(x[k], y[k], f"{path}/{k}")
        return out
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return set().union(*(json_differences(u, v, path + "[]") for u, v in zip(x, y)))
    return set() if x == y else {path or "/"}


def same_keras_weights(p, q):
    """Same architecture (Python object ids aside) and bit-identical weights in two ``.keras`` files."""
    import h5py

    def arrays(zipped):
        out = {}
        with h5py.File(io.BytesIO(zipped.read("model.weights.h5")), "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out

    def config(zipped):
        return re.sub(r'"shared_object_id": \d+', "", zipped.read("config.json").decode())

    with zipfile.ZipFile(p) as za, zipfile.ZipFile(q) as zb:
        wa, wb = arrays(za), arrays(zb)
        return config(za) == config(zb) and wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def without_last_column(text):
    return [line.rsplit("\t", 1)[0] for line in text.splitlines()]


def compare(a, b, out=sys.stdout):
    """Compare two trees; returns the number of files that differ beyond paths, clocks and weight-file hashes."""
    norm = Normaliser(a, b)
    identical, equal, explained, differ, only = [], [], {}, [], []
    files = {p.relative_to(root) for root in (a, b) for p in root.rglob("*") if p.is_file()}
    for rel in sorted(files):
        if "work" in rel.parts or "logs" in rel.parts:
            continue
        p, q = a / rel, b / rel
        if not (p.is_file() and q.is_file()):
            only.append(str(rel))
        elif filecmp.cmp(p, q, shallow=False):
            identical.append(str(rel))
        elif rel.suffix == ".json":
            keys = json_differences(norm(json.loads(p.read_text())), norm(json.loads(q.read_text())))
            if keys:
                explained.setdefault(", ".join(sorted(keys)), []).append(str(rel))
            else:
                equal.append(str(rel))
        elif rel.suffix == ".keras":
            (equal if same_keras_weights(p, q) else differ).append(str(rel))
        elif rel.name.endswith("history.tsv"):  # its last column is the epoch's wall time
            (equal if without_last_column(p.read_text()) == without_last_column(q.read_text()) else differ).append(
                str(rel)
            )
        elif rel.suffix in (".html", ".tsv", ".txt", ".md"):
            (equal if norm(p.read_text()) == norm(q.read_text()) else differ).append(str(rel))
        else:
            differ.append(str(rel))
    print(
        f"{len(identical)} files byte-identical; {len(equal)} equal once paths, clocks and weight-file hashes are set "
        f"aside; {sum(map(len, explained.values()))} JSON files with other differences; {len(differ)} other files "
        f"differ; {len(only)} on one side only",
        file=out,
    )
    for rel in equal:
        print(f"  equal once set aside: {rel}", file=out)
    for keys, rels in explained.items():
        print(f"  JSON keys [{keys}] differ in {len(rels)} file(s), e.g. {rels[0]}", file=out)
    for rel in differ:
        print(f"  DIFFERS: {rel}", file=out)
    for rel in only:
        print(f"  ONE SIDE ONLY: {rel}", file=out)
    return len(differ) + len(only) + sum(map(len, explained.values()))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(1 if compare(Path(sys.argv[1]).absolute(), Path(sys.argv[2]).absolute()) else 0)

#!/usr/bin/env python3
"""Compare the participant-level outputs of two runs (host vs container).

Usage: ``compare_outputs.py OUT_A OUT_B [--rtol R] [--atol A]``.

Compares every ``*.tsv`` and ``*.nii.gz`` under ``sub-*/`` of both folders (the same set of
files must exist in both).  Files are first compared byte for byte, then (``.gz``) by their
uncompressed bytes -- the gzip header holds a time stamp and file name; where those differ
too, the TSVs are compared cell by cell (numbers within tolerance, text equal) and the
NIfTIs by header geometry and voxel data (within tolerance), printing the largest difference.
Exit 0 when everything matches (identically or within tolerance), 1 otherwise.
"""

import argparse
import filecmp
import gzip
import struct
import sys
from pathlib import Path


def outputs(root):
    root = Path(root)
    return {
        p.relative_to(root).as_posix()
        for pattern in ("sub-*/**/*.tsv", "sub-*/**/*.nii.gz")
        for p in root.glob(pattern)
    }


def gunzipped_equal(a, b, chunk=1 << 20):
    with gzip.open(a, "rb") as fa, gzip.open(b, "rb") as fb:
        while True:
            ba, bb = fa.read(chunk), fb.read(chunk)
            if ba != bb:
                return False
            if not ba:
                return True


def gzip_header(path):
    """mtime and stored file name of a gzip member, for the report."""
    with open(path, "rb") as fobj:
        head = fobj.read(512)
    mtime = struct.unpack("<I", head[4:8])[0]
    name = head[10 : head.index(b"\0", 10)].decode(errors="replace") if head[3] & 0x08 else ""
    return f"mtime {mtime}" + (f", name {name!r}" if name else "")


def compare_tsv(a, b, rtol, atol):
    import numpy as np
    import pandas as pd

    da, db = pd.read_csv(a, sep="\t"), pd.read_csv(b, sep="\t")
    if list(da.columns) != list(db.columns) or da.shape != db.shape:
        return False, f"columns/shape differ: {list(da.columns)} {da.shape} vs {list(db.columns)} {db.shape}"
    worst = 0.0
    for col in da.columns:
        x, y = da[col], db[col]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            x, y = x.to_numpy(float), y.to_numpy(float)
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                return False, f"column {col}: NaNs differ"
            ok = ~np.isnan(x)
            if ok.any():
                worst = max(worst, float(np.max(np.abs(x[ok] - y[ok]))))
                if not np.allclose(x[ok], y[ok], rtol=rtol, atol=atol):
                    return False, f"column {col}: max abs difference {worst:.3g}"
        elif not x.astype(str).equals(y.astype(str)):
            return False, f"column {col}: text differs"
    return True, f"max abs difference {worst:.3g}"


def compare_nifti(a, b, rtol, atol):
    import nibabel as nib
    import numpy as np

    ia, ib = nib.load(a), nib.load(b)
    if ia.shape != ib.shape or not np.allclose(ia.affine, ib.affine):
        return False, f"shape/affine differ: {ia.shape} vs {ib.shape}"
    xa, xb = np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)
    if np.array_equal(xa, xb):
        return True, "voxel data identical (headers or compression differ)"
    xa, xb = xa.astype(np.float64), xb.astype(np.float64)
    diff = float(np.max(np.abs(xa - xb)))
    scale = float(np.max(np.abs(xa))) or 1.0
    ok = np.allclose(xa, xb, rtol=rtol, atol=atol * scale)
    return ok, f"max abs difference {diff:.3g} (max |value| {scale:.3g})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_a")
    parser.add_argument("out_b")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument(
        "--atol", type=float, default=1e-6, help="absolute tolerance (for NIfTIs relative to the largest |value|)"
    )
    args = parser.parse_args(argv)
    a, b = outputs(args.out_a), outputs(args.out_b)
    if not a:
        print(f"no outputs under {args.out_a}")
        return 1
    if a != b:
        print(f"the runs wrote different files: only in A {sorted(a - b)}, only in B {sorted(b - a)}")
        return 1
    failed = 0
    identical = 0
    same_payload = 0
    for rel in sorted(a):
        pa, pb = Path(args.out_a, rel), Path(args.out_b, rel)
        if filecmp.cmp(pa, pb, shallow=False):
            identical += 1
            print(f"  byte-identical   {rel}")
            continue
        if rel.endswith(".gz") and gunzipped_equal(pa, pb):
            same_payload += 1
            print(
                f"  same content     {rel}: gzip payload byte-identical, gzip header differs ({gzip_header(pa)} vs "
                f"{gzip_header(pb)})"
            )
            continue
        ok, detail = (compare_tsv if rel.endswith(".tsv") else compare_nifti)(pa, pb, args.rtol, args.atol)
        failed += not ok
        print(f"  {'close' if ok else 'DIFFERENT':<16} {rel}: bytes differ; {detail}")
    print(
        f"{identical} of {len(a)} files byte-identical, {same_payload} with byte-identical content but another "
        f"gzip header, {len(a) - identical - same_payload - failed} within tolerance (rtol {args.rtol}, "
        f"atol {args.atol}), {failed} different"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

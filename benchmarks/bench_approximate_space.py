"""``--allow-approximate-space``: the old per-volume nilearn path and the precomputed-weights path, side by side.

Issue 29 target: preparing a 200-volume run on the 97 x 115 x 97 MNI152NLin2009cAsym res-2 grid
in world coordinates at least 5x faster than before, with maps equal to the old ones within
interpolation error.

* old: :func:`deeplight_bids.prepare.grid.to_reference_grid` (nilearn ``resample_img``,
  ``"continuous"`` = cubic B-spline, one volume at a time) on each chunk of volumes, and
  ``"nearest"`` on the mask (what ``approximate_resampler`` did before);
* new: :class:`deeplight_bids.prepare.spaces.ApproximateResampler` (sparse trilinear weights
  and a nearest index built once per grid, then one sparse product per chunk); its setup is
  counted in its total.

Both run in this one process on the same data, in chunks of 32 volumes as ``prepare_run``
reads them, alternating old and new per chunk so that both see the same machine load; the
maximum difference of their outputs is printed too (on this grid the reference voxel centres
are source voxel centres, so the two agree to float32 rounding; on other grids they differ by
the trilinear-vs-cubic interpolation error, see tests/prepare/test_spaces.py).

Usage: ``python benchmarks/bench_approximate_space.py [--volumes 200] [--write]`` (``--write``
updates the "Approximate space" section of benchmarks/RESULTS.md).  Run it on a quiet machine:
timings under load are not comparable.
"""

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(HERE))

from _results import machine_description, peak_rss_mib, update_section  # noqa: E402

SECTION = "## Approximate space"
SOURCE_SHAPE = (97, 115, 97)
SOURCE_AFFINE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -132.0], [0, 0, 2.0, -78.0], [0, 0, 0, 1]])
CHUNK = 32


def measure(n_volumes, chunk=CHUNK, seed=0):
    """Seconds of each path, and the largest difference of their outputs."""
    import nibabel as nib

    from deeplight_bids.prepare.grid import to_reference_grid
    from deeplight_bids.prepare.spaces import ApproximateResampler

    rng = np.random.default_rng(seed)
    base = np.asfortranarray(rng.normal(100, 10, size=(*SOURCE_SHAPE, chunk)).astype(np.float32))  # as read from a file
    mask = nib.Nifti1Image(np.asfortranarray((rng.random(SOURCE_SHAPE) > 0.3).astype(np.uint8)), SOURCE_AFFINE)
    times = {"old_mask": 0.0, "old_bold": 0.0, "new_setup": 0.0, "new_mask": 0.0, "new_bold": 0.0}
    resampler = ApproximateResampler()

    t0 = time.perf_counter()
    old_mask = np.asarray(to_reference_grid(mask, interpolation="nearest").dataobj)
    times["old_mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    resampler.linear_weights(SOURCE_AFFINE, SOURCE_SHAPE, order="F")  # once per grid and file layout
    resampler.nearest_index(SOURCE_AFFINE, SOURCE_SHAPE, order="F")
    times["new_setup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    new_mask = np.asarray(resampler(mask, interpolation="nearest").dataobj)
    times["new_mask"] = time.perf_counter() - t0
    max_diff = float(np.abs(new_mask.astype(float) - old_mask).max())

    done = 0
    while done < n_volumes:
        n = min(chunk, n_volumes - done)
        img = nib.Nifti1Image(np.asfortranarray(base[..., :n] + np.float32(done)), SOURCE_AFFINE)
        t0 = time.perf_counter()
        old = np.asarray(to_reference_grid(img, interpolation="continuous").dataobj)
        times["old_bold"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        new = np.asarray(resampler(img, interpolation="continuous").dataobj)
        times["new_bold"] += time.perf_counter() - t0
        max_diff = max(max_diff, float(np.abs(new - old).max()))
        done += n
        print(f"  {done}/{n_volumes} volumes: old {times['old_bold']:.1f} s, new {times['new_bold']:.1f} s", flush=True)
    return times, max_diff


def measure_prepare(n_volumes, threads, t_r=2.0, seed=1):
    """Seconds of ``prepare_run`` (mask, resample, smooth, detrend, high-pass, z-score) on each path.

    old: nilearn's per-volume resampling and the cleaning on one thread (the code before issue 29);
    new: the precomputed weights and the cleaning on ``threads`` threads (``--nprocs``).
    """
    import nibabel as nib

    from deeplight_bids.prepare.clean import prepare_run
    from deeplight_bids.prepare.grid import to_reference_grid
    from deeplight_bids.prepare.spaces import ApproximateResampler

    rng = np.random.default_rng(seed)
    # x fastest, as nibabel reads a NIfTI file: each chunk prepare_run reads is then laid out as from disk
    data = np.asfortranarray(rng.normal(100, 10, size=(*SOURCE_SHAPE, n_volumes)).astype(np.float32))
    bold = nib.Nifti1Image(data, SOURCE_AFFINE)
    inside = np.zeros(SOURCE_SHAPE, np.uint8)
    inside[10:-10, 12:-12, 10:-10] = 1
    mask = nib.Nifti1Image(inside, SOURCE_AFFINE)
    out = {}
    for name, to_grid, n_threads in (("old", to_reference_grid, 1), ("new", ApproximateResampler(), threads)):
        t0 = time.perf_counter()
        out[name] = prepare_run(bold, mask, t_r, to_grid=to_grid, source=f"{name} path", n_threads=n_threads)
        out[f"{name}_s"] = time.perf_counter() - t0
        print(f"  prepare_run, {name} path: {out[f'{name}_s']:.1f} s", flush=True)
    same_mask = bool(np.array_equal(out["old"].mask, out["new"].mask))
    diff = float(np.abs(out["old"].signals - out["new"].signals).max()) if same_mask else float("nan")
    return out["old_s"], out["new_s"], same_mask, diff


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="cleaning threads of the new path (--nprocs)"
    )
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    prep_old, prep_new, same_mask, prep_diff = measure_prepare(args.volumes, args.threads)
    times, max_diff = measure(args.volumes)
    old = times["old_mask"] + times["old_bold"]
    new = times["new_setup"] + times["new_mask"] + times["new_bold"]
    lines = [
        SECTION,
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {machine_description()}.",
        (
            f"Command: `python benchmarks/bench_approximate_space.py --volumes {args.volumes} --threads {args.threads}`. "
            f"`--allow-approximate-space` resampling of a {args.volumes}-volume run (random values) and its mask on the "
            f"97 x 115 x 97 MNI152NLin2009cAsym res-2 grid onto the reference grid, in chunks of {CHUNK} volumes (as "
            "`prepare_run` reads them), old and new in one process (`prepare_run`: old first, then new). `prepare_run` "
            f"old: the code before issue 29 (nilearn per volume, cleaning on 1 thread); new: precomputed weights and "
            f"the per-voxel cleaning on {args.threads} threads (`--nprocs {args.threads}`; bit-identical to 1 thread)."
        ),
        "",
        "| step | old: nilearn `resample_img` per volume, 1 thread, s | new: precomputed weights, threads, s |",
        "|---|---:|---:|",
        f"| **`prepare_run` of the run (resample, mask, smooth 3 mm, detrend, high-pass, z-score)** | "
        f"**{prep_old:.2f}** | **{prep_new:.2f}** |",
        "",
        "Resampling alone (old and new alternating per chunk):",
        "",
        "| step | old, s | new, s |",
        "|---|---:|---:|",
        f"| weights + nearest index (once per grid) | - | {times['new_setup']:.2f} |",
        f"| mask (nearest) | {times['old_mask']:.2f} | {times['new_mask']:.2f} |",
        f"| {args.volumes} volumes (old: cubic spline; new: trilinear) | {times['old_bold']:.2f} | {times['new_bold']:.2f} |",
        f"| **total** | **{old:.2f}** | **{new:.2f}** |",
        "",
        (
            f"`prepare_run` {prep_old / prep_new:.1f}x faster (target: at least 5x); resampling alone {old / new:.1f}x. "
            f"Largest difference of the prepared signals (z-scores): {prep_diff:.3g} (same brain mask: {same_mask}); of "
            f"the resampled volumes: {max_diff:.3g} (values ~100): on this grid every reference voxel centre is a "
            "source voxel centre, so neither path interpolates. "
            f"Peak RSS of the benchmark process: {peak_rss_mib():.0f} MiB."
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        update_section(HERE / "RESULTS.md", SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

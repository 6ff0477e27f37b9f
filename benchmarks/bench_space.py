"""Cost of the MNI152NLin2009cAsym -> MNI152NLin6Asym transform for one run vs that run's decode time.

Issue 12 target: transform setup + application for a 405-volume run on the 97 x 115 x 97
MNI152NLin2009cAsym res-2 grid takes at most 25 % of the run's decode time.

* setup: read a displacement-field transform with the size and layout of TemplateFlow's
  ``tpl-MNI152NLin6Asym_from-MNI152NLin2009cAsym_mode-image_xfm.h5`` (1 mm field, 193 x 229 x
  193 x 3 float64 in an ITK composite .h5, about 205 MB; synthetic values, since the real file
  cannot be downloaded here), evaluate it at the reference grid's voxels, build the run grid's
  trilinear weights and nearest-neighbour index (:class:`TemplateResampler`);
* application: 405 volumes in chunks of 32 (as ``prepare_run`` reads them) and one mask;
* decode: ``Decoder.logits`` of a random-weight 3D-DeepLight on 405 volumes, batches of 4
  (what the participant level calls with ``--no-lrp``); with LRP a run takes ~4x longer.

Usage: ``python benchmarks/bench_space.py [--volumes 405] [--write]`` (``--write`` updates
the "Space transform" section of benchmarks/RESULTS.md).
"""

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(HERE))

from _results import machine_description, peak_rss_mib, update_section  # noqa: E402

from tests.models.legacy_h5 import randomise_weights  # noqa: E402
from tests.prepare.synthetic_warp import forward, write_itk_displacement_h5  # noqa: E402

SECTION = "## Space transform"
SOURCE_SHAPE = (97, 115, 97)
SOURCE_AFFINE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -132.0], [0, 0, 2.0, -78.0], [0, 0, 0, 1]])
#: TemplateFlow's field grid: 1 mm, 193 x 229 x 193 (the MNI152NLin2009cAsym res-1 extent).
FIELD_EXTENT = ((-96, 96), (-132, 96), (-78, 114))
CHUNK = 32


def measure_transform(n_volumes, workdir):
    import nibabel as nib

    from deeplight_bids.prepare.spaces import TemplateResampler, load_transform

    path = write_itk_displacement_h5(Path(workdir) / "xfm.h5", forward, spacing=1.0, extent=FIELD_EXTENT)
    size_mb = path.stat().st_size / 1e6
    rng = np.random.default_rng(0)
    chunk = rng.normal(100, 10, size=(*SOURCE_SHAPE, CHUNK)).astype(np.float32)
    mask = nib.Nifti1Image((rng.random(SOURCE_SHAPE) > 0.5).astype(np.uint8), SOURCE_AFFINE)

    t0 = time.perf_counter()
    chain = load_transform(path)
    t_load = time.perf_counter() - t0
    resampler = TemplateResampler(chain, None)
    t0 = time.perf_counter()
    resampler.source_points()
    t_map = time.perf_counter() - t0
    t0 = time.perf_counter()
    resampler.linear_weights(SOURCE_AFFINE, SOURCE_SHAPE)
    resampler.nearest_index(SOURCE_AFFINE, SOURCE_SHAPE)
    t_weights = time.perf_counter() - t0
    t0 = time.perf_counter()
    resampler(mask, "nearest")
    done = 0
    while done < n_volumes:
        n = min(CHUNK, n_volumes - done)
        resampler(nib.Nifti1Image(chunk[..., :n], SOURCE_AFFINE), "continuous")
        done += n
    t_apply = time.perf_counter() - t0
    return {"file_mb": size_mb, "load": t_load, "map": t_map, "weights": t_weights, "apply": t_apply}


def measure_decode(n_volumes, batch=4):
    from deeplight_bids.models.decode import Decoder, network_batch_limit
    from deeplight_bids.models.three import INPUT_SHAPE_3D, build_3d_deeplight

    model = randomise_weights(build_3d_deeplight(n_states=16), seed=3)
    decoder = Decoder(model, max_batch=network_batch_limit())
    x = np.random.default_rng(1).normal(size=(batch, *INPUT_SHAPE_3D)).astype(np.float32)
    decoder.logits(x)  # warm-up (tracing)
    t0 = time.perf_counter()
    for start in range(0, n_volumes, batch):
        decoder.logits(x[: min(batch, n_volumes - start)])
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=405)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        tr = measure_transform(args.volumes, workdir)
    decode = measure_decode(args.volumes)
    total = tr["load"] + tr["map"] + tr["weights"] + tr["apply"]
    share = total / decode
    lines = [
        SECTION,
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {machine_description()}.",
        (
            f"Command: `python benchmarks/bench_space.py --volumes {args.volumes} --write`. A synthetic displacement field "
            f"with the size and layout of TemplateFlow's MNI152NLin2009cAsym -> MNI152NLin6Asym transform (ITK composite "
            f".h5, 1 mm field 193 x 229 x 193 x 3 float64, {tr['file_mb']:.0f} MB; the real file is 204.7 MB), a "
            f"{args.volumes}-volume run on the 97 x 115 x 97 MNI152NLin2009cAsym res-2 grid (in chunks of {CHUNK} volumes, "
            "as `prepare_run` reads them) and its mask; decode = `Decoder.logits` of a random-weight 3D-DeepLight, "
            "batches of 4, on the same number of volumes."
        ),
        "",
        "| step | seconds |",
        "|---|---:|",
        f"| read the transform (nitransforms) | {tr['load']:.1f} |",
        f"| evaluate it at the 902,629 reference voxels (once per job) | {tr['map']:.1f} |",
        f"| trilinear weights + nearest index for the run's grid (once per grid) | {tr['weights']:.1f} |",
        f"| apply to {args.volumes} volumes + the mask | {tr['apply']:.1f} |",
        f"| **transform total** | **{total:.1f}** |",
        f"| decode {args.volumes} volumes (3D, no LRP) | {decode:.1f} |",
        "",
        (
            f"Transform setup + application = {100 * share:.0f} % of the decode time (target: at most 25 %); with LRP "
            "(about 4x the decode time, see the 3D section) the share is about a quarter of that. Peak RSS of the "
            f"benchmark process: {peak_rss_mib():.0f} MiB."
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        update_section(HERE / "RESULTS.md", SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

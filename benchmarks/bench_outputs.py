"""Relevance outputs at study scale: file sizes, reading back, and wall time of participant runs, in one run.

Usage::

    python benchmarks/bench_outputs.py [--volumes 405] [--distinct 8] [--no-unmasked]
                                       [--wall-volumes N [--wall-repeats R] [--wall-only] [--wall-no-quality]]
                                       [--workdir DIR]

1. **Sizes**: a synthetic run (reference grid, TR 0.72 s) is prepared; a random-weight
   3D-DeepLight (the published 3D weights are not on this workplace) explains
   ``--distinct`` of its volumes with LRP (preset B-flat, as the participant level);
   those maps, cycled to ``--volumes`` volumes, are written unmasked as before this change
   (:class:`~deeplight_bids.derivatives.writers.StreamingNifti4D`, one gzip stream, level 1)
   and masked to the run's brain mask as the participant level writes them now
   (:class:`~deeplight_bids.derivatives.masking.RelevanceMasker` and
   :class:`~deeplight_bids.derivatives.volume_gzip.VolumeGzipNifti4D`: one gzip member per
   volume, level 1), with float32 kept whole (23 mantissa bits) and rounded to the
   default 16; and as ``--relevance-maps blocks`` writes them (one mean map per 12-volume
   block every 20 volumes).  Sizes in MiB and relative to the measured 1288 MiB of a
   405-volume run (RESULTS.md, 3D).
2. **Reading back**: :func:`deeplight_bids.load_relevance` of one state's volumes of the
   default masked file, in a child process: the call's time, the imports' time (numpy,
   pandas, nibabel), and the child's peak RSS.
3. With ``--wall-volumes N``: participant runs (LRP, batch 4, random-weight model) of one
   synthetic N-volume run with ``--relevance-maps means`` and ``volumes``, alternated
   ``--wall-repeats`` times (wall time, peak RSS, the writer thread's busy seconds from
   the log; ``--wall-no-quality``: with ``--no-quality``); then ``--relevance-maps blocks`` on the last ``volumes`` run's folders,
   which makes its outputs from the work folder's per-volume maps without the network.

The synthetic brain mask is an ellipsoid (demo/synth.py); its voxel count is printed
next to that of the MNI152NLin6Asym 2 mm brain mask (about 228 000 voxels).  The figures are
printed as JSON lines (RESULTS.md, section Outputs, is written from them by hand).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(HERE))

TODAY_MIB = 1288.0  # 405-volume 3D run's relevance_bold.nii.gz before masking (RESULTS.md, 3D)


def _mib(path):
    return Path(path).stat().st_size / 2**20


def make_relevance(workdir, n_distinct):
    """(maps (n_distinct, x, y, z) float32 unmasked, brain mask (x, y, z) bool, dataset)."""
    from deeplight_bids.demo.synth import make_synthetic_dataset
    from deeplight_bids.lrp.analyzer import LRPAnalyzer
    from deeplight_bids.models.three import build_3d_deeplight, to_model_order
    from deeplight_bids.prepare.clean import prepare_run
    from tests.models.legacy_h5 import randomise_weights

    dataset = make_synthetic_dataset(Path(workdir) / "bids", n_participants=1, n_volumes=40, t_r=0.72)
    run = dataset.runs[0]
    prepared = prepare_run(run.bold, run.mask, dataset.t_r)
    model = randomise_weights(build_3d_deeplight(n_states=16), seed=3)
    analyzer = LRPAnalyzer(model, composite="preset_b_flat", max_batch=4)
    maps = []
    for start in range(0, n_distinct, 4):
        x = to_model_order(prepared.volumes(start, min(start + 4, n_distinct)))
        _, relevance = analyzer.explain(x)
        maps.append(np.ascontiguousarray(relevance.transpose(0, 3, 2, 1)))
    return np.concatenate(maps), prepared.mask, dataset


def write_series(path, maps, n_volumes, t_r, mask=None, keepbits=None):
    """Unmasked through the old writer (``mask`` None), else masked through the participant level's writer."""
    from deeplight_bids.derivatives.masking import RelevanceMasker
    from deeplight_bids.derivatives.volume_gzip import RELEVANCE_GZIP_LEVEL
    from deeplight_bids.derivatives.volume_gzip import VolumeGzipNifti4D
    from deeplight_bids.derivatives.writers import StreamingNifti4D
    from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE

    shape = (*REFERENCE_SHAPE, n_volumes)
    masker = None
    start_time = time.perf_counter()
    if mask is None:
        stream = StreamingNifti4D(path, shape, REFERENCE_AFFINE, t_r)
    else:
        masker = RelevanceMasker(mask, keepbits=keepbits)
        stream = VolumeGzipNifti4D(
            path, shape, REFERENCE_AFFINE, t_r, level=RELEVANCE_GZIP_LEVEL, keepbits=masker.keepbits
        )
    for i in range(n_volumes):
        vol = maps[i % len(maps)][None]
        stream.write(i, masker.apply(vol) if masker is not None else vol)
    stream.close()
    return time.perf_counter() - start_time, masker


def sizes(args, workdir):
    """Write the series unmasked and masked (23 and 16 mantissa bits); returns (rows, OUTPUT_DIR of the default file)."""
    from deeplight_bids.derivatives import naming
    from deeplight_bids.derivatives.volume_gzip import RELEVANCE_KEEPBITS

    maps, mask, _ = make_relevance(workdir, args.distinct)
    out = Path(workdir) / "out"
    rows = []
    cases = [("unmasked (as before)", None, None)] if args.unmasked else []
    cases += [("masked, float32 whole", mask, 23), ("masked, default", mask, RELEVANCE_KEEPBITS)]
    for name, case_mask, keepbits in cases:
        path = Path(workdir) / f"rel_{len(rows)}.nii.gz"
        if keepbits == RELEVANCE_KEEPBITS:
            path = naming.run_outputs(out, {"subject": "01", "task": "motor"})["relevance"]
        seconds, masker = write_series(path, maps, args.volumes, 0.72, case_mask, keepbits)
        row = {
            "file": name,
            "keepbits": keepbits or 23,
            "mib": round(_mib(path), 1),
            "pct_of_1288": round(100 * _mib(path) / TODAY_MIB, 1),
            "write_s": round(seconds, 1),
        }
        if masker is not None:
            row["outside_fraction_median"] = round(masker.sidecar()["RelevanceOutsideMaskFraction"]["Median"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.append(blocks_size(Path(workdir) / "blocks.nii.gz", maps, mask, args.volumes))
    from deeplight_bids.derivatives.writers import gzip_module

    print(
        json.dumps({"mask_voxels": int(mask.sum()), "grid_voxels": int(mask.size), "gzip": gzip_module().__name__}),
        flush=True,
    )
    return rows, out


def blocks_size(path, maps, mask, n_volumes, cycle=20, block=12):
    """``--relevance-maps blocks``: one masked mean map per block of ``block`` volumes every ``cycle`` volumes."""
    from deeplight_bids.derivatives.blocks import BlockMeans
    from deeplight_bids.derivatives.masking import RelevanceMasker
    from deeplight_bids.derivatives.volume_gzip import RELEVANCE_GZIP_LEVEL, RELEVANCE_KEEPBITS, VolumeGzipNifti4D
    from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE

    index = np.arange(n_volumes)
    block_of_volume = np.where(index % cycle < block, index // cycle, -1)
    n_blocks = int(block_of_volume.max()) + 1
    masker = RelevanceMasker(mask)
    means = BlockMeans(
        block_of_volume,
        VolumeGzipNifti4D(
            path,
            (*REFERENCE_SHAPE, n_blocks),
            REFERENCE_AFFINE,
            0.72,
            level=RELEVANCE_GZIP_LEVEL,
            keepbits=RELEVANCE_KEEPBITS,
        ),
    )
    start_time = time.perf_counter()
    for i in range(n_volumes):
        means.add(i, masker.apply(maps[i % len(maps)][None]))
    means.close()
    row = {
        "blocks": n_blocks,
        "mib": round(_mib(path), 1),
        "pct_of_1288": round(100 * _mib(path) / TODAY_MIB, 2),
        "write_s": round(time.perf_counter() - start_time, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def write_predictions(out, n_volumes, n_states=5, block=20):
    """A predictions table whose lrp_target cycles through ``n_states`` states in blocks of ``block`` volumes."""
    import pandas as pd

    from deeplight_bids.derivatives import naming
    from deeplight_bids.derivatives.writers import write_tsv

    states = [f"STATE{i}" for i in range(n_states)]
    targets = [states[(i // block) % n_states] for i in range(n_volumes)]
    frame = pd.DataFrame(
        {
            "volume": np.arange(n_volumes),
            "onset": np.arange(n_volumes) * 0.72,
            "true_state": targets,
            "predicted_state": targets,
            "correct": 1,
            "lrp_target": targets,
        }
    )
    write_tsv(naming.run_outputs(out, {"subject": "01", "task": "motor"})["predictions"], frame)
    return states[0], targets.count(states[0])


CHILD = """
import json, os, sys, time
start = time.perf_counter()
from deeplight_bids import load_relevance
import deeplight_bids.readback  # its imports (numpy, pandas, nibabel) timed apart from the call
imported, cpu = time.perf_counter(), time.process_time()
img, rows = load_relevance(sys.argv[1], "01", "motor", state=sys.argv[2])
done, cpu = time.perf_counter(), time.process_time() - cpu  # CPU time: less dependent on other jobs' load
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
print(json.dumps({"volumes": int(img.shape[3]), "rows": len(rows), "call_s": round(done - imported, 2),
                  "call_cpu_s": round(cpu, 2), "load_average": round(os.getloadavg()[0], 1),
                  "imports_s": round(imported - start, 2), "seconds": round(done - start, 2),
                  "peak_rss_mib": round(rss)}))
"""


def readback(out, n_volumes):
    """load_relevance of one state's volumes in a fresh child (imports included in the time)."""
    import os
    import subprocess

    state, n_state = write_predictions(out, n_volumes)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), state], capture_output=True, text=True, env=env, check=True
    )
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["expected_volumes"] = n_state
    print(json.dumps({"load_relevance": row}), flush=True)
    return row


def _writer_busy(log):
    """Seconds the relevance writer thread spent compressing and writing (its log line), or None."""
    import re

    found = re.findall(r"relevance writer: ([0-9.]+) s", log)
    return float(found[-1]) if found else None


def run_child_hwm(args, log_path, env):
    """Run ``deeplight-bids ARGS``; returns ``(log text, wall s, peak RSS MiB)`` with the child's own VmHWM.

    The child's ``ru_maxrss`` would start from this process's RSS at fork time (Linux keeps the larger
    across fork and exec), so the peak is read from ``/proc/<pid>/status`` every 0.2 s instead (VmHWM only
    grows; a peak in the last 0.2 s before exit could be missed).
    """
    import shutil
    import subprocess

    exe = shutil.which("deeplight-bids") or str(Path(sys.executable).parent / "deeplight-bids")
    peak, start = 0, time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([exe, *map(str, args)], stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    peak = max(peak, next(int(line.split()[1]) for line in status if line.startswith("VmHWM")))
            except (OSError, StopIteration):
                pass
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    text = Path(log_path).read_text()
    if proc.returncode != 0:
        print(text[-3000:], file=sys.stderr)
        raise SystemExit(f"participant run failed (exit {proc.returncode})")
    return text, seconds, peak / 1024


def wall_times(workdir, n_volumes, repeats, quality=True):
    """Participant runs (LRP, batch 4) of one synthetic run with ``--relevance-maps means`` and ``volumes``, alternated.

    Then ``--relevance-maps blocks`` on the folders of the last ``volumes`` run (made from the work folder's
    per-volume maps, no network pass).  Returns the summary printed last.
    """
    import os

    from deeplight_bids.demo.synth import make_synthetic_dataset
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.weights import save_model
    from tests.models.legacy_h5 import randomise_weights

    workdir = Path(workdir)
    dataset = make_synthetic_dataset(workdir / "wall_bids", n_participants=1, n_volumes=n_volumes, t_r=0.72)
    states = sorted(set(dataset.state_map.values()))
    model_dir = workdir / "wall_model"
    save_model(
        randomise_weights(build_3d_deeplight(n_states=len(states)), seed=3),
        model_dir / "rand3d.keras",
        {"architecture": "3D", "states": states, "name": "rand3d"},
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    walls, rss, busy = {"means": [], "volumes": []}, {"means": 0, "volumes": 0}, {"means": [], "volumes": []}

    def participant(mode, out, work, log):
        return run_child_hwm(
            [
                dataset.bids_dir,
                out,
                "participant",
                "--skip-bids-validation",
                "--weights",
                model_dir,
                "--work-dir",
                work,
                "--batch-size",
                4,
                "--relevance-maps",
                mode,
                *([] if quality else ["--no-quality"]),
            ],
            log,
            env=env,
        )

    for i in range(repeats):
        for mode in ("means", "volumes"):
            out, work = workdir / f"wall_out_{mode}_{i}", workdir / f"wall_work_{mode}_{i}"
            text, seconds, peak = participant(mode, out, work, workdir / f"wall_{mode}_{i}.log")
            walls[mode].append(round(seconds, 1))
            rss[mode] = max(rss[mode], round(peak))
            busy[mode].append(_writer_busy(text))
            print(
                json.dumps(
                    {
                        "wall": mode,
                        "volumes": n_volumes,
                        "seconds": round(seconds, 1),
                        "peak_rss_mib": round(peak),
                        "writer_busy_s": busy[mode][-1],
                    }
                ),
                flush=True,
            )
    volumes_mib = round(_mib(next(out.rglob("*_desc-relevance_bold.nii.gz"))), 1)  # removed by the blocks run
    text, seconds, peak = participant("blocks", out, work, workdir / "wall_blocks_reuse.log")
    reuse = {
        "mode": "blocks",
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak),
        "network_pass": "no network pass" not in text,
        "volumes_file_mib": volumes_mib,
        "blocks_file_mib": round(_mib(next(out.rglob("*_desc-blocks_relevance.nii.gz"))), 1),
    }
    print(json.dumps({"reuse": reuse}), flush=True)
    summary = {
        "wall_means_s": walls["means"],
        "wall_volumes_s": walls["volumes"],
        "volumes_over_means": round(min(walls["volumes"]) / min(walls["means"]), 3),
        "peak_rss_mib": rss,
        "writer_busy_s": busy,
        "reuse_blocks": reuse,
    }
    print(json.dumps(summary), flush=True)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=405)
    parser.add_argument("--distinct", type=int, default=8)
    parser.add_argument(
        "--no-unmasked", dest="unmasked", action="store_false", help="skip the unmasked files (the slow part)"
    )
    parser.add_argument(
        "--wall-volumes",
        type=int,
        default=0,
        metavar="N",
        help="also time participant runs of N volumes with --relevance-maps means vs volumes",
    )
    parser.add_argument("--wall-repeats", type=int, default=1)
    parser.add_argument("--wall-only", action="store_true", help="only the wall-time comparison")
    parser.add_argument(
        "--wall-no-quality",
        dest="wall_quality",
        action="store_false",
        help="participant runs with --no-quality (the quality measures' fixed minutes left out, so "
        "the writer's share of the wall time is larger)",
    )
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        if not args.wall_only:
            _, out = sizes(args, workdir)
            readback(out, args.volumes)
        if args.wall_volumes:
            wall_times(workdir, args.wall_volumes, args.wall_repeats, args.wall_quality)


if __name__ == "__main__":
    main()

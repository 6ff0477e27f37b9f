"""2D-DeepLight throughput and memory on the full reference grid: decode, decode + LRP, a 405-volume run.

Usage::

    python benchmarks/bench_2d.py [--batch-sizes 1 4 8] [--repeats 5] [--lrp-repeats 3]
                                  [--weights PATH.npy] [--flow-volumes 405] [--no-flow]
                                  [--results benchmarks/RESULTS.md]

1. **Decode vs decode + LRP**, per batch size, each batch size in a fresh child
   process (so its peak resident memory is its own): best-of-``repeats`` time of the
   forward pass (volumes/s), best-of-``lrp-repeats`` time of ``LRPAnalyzer.explain``
   with the ``deeplight_2d`` composite (the forward pass plus the relevance, as the
   participant level runs it; volumes/s), their ratio, and the child's peak RSS after
   decoding and after LRP (``ru_maxrss``; the first call's tracing included).
2. **405-volume participant run** (an HCP-length run, TR 0.72 s): a synthetic dataset
   from :func:`deeplight_bids.demo.synth.make_synthetic_dataset` (1 participant,
   ``--flow-volumes`` volumes) processed by ``deeplight-bids BIDS OUT participant
   --architecture 2D`` (LRP on, default batch size) in a child process; its peak RSS
   comes from ``os.wait4`` (that child and nothing else) and must stay <= 3 GiB (issue 8).

Without ``--weights`` the published weights are used if found (``$DEEPLIGHT_WEIGHTS_DIR``
or ``../shared/weights``), else the model keeps random initial weights (the speed does
not depend on the values; the 405-volume run needs the published weights).  The figures
are printed and written to ``--results`` under the heading ``## 2D`` (other sections of
that file are left as they are).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import (  # benchmarks/_results.py (scripts run from this folder)
    RSS_LIMIT_MIB,
    machine_description,
    peak_rss_mib,
    run_cli_child,
    update_section,
)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))

WEIGHTS_2D = "model-2D_DeepLight_desc-pretrained_model.npy"
SECTION = "## 2D"


def find_weights(explicit=None):
    """The published 2D .npy: ``--weights``, ``$DEEPLIGHT_WEIGHTS_DIR``, or ``../shared/weights``; None if absent."""
    if explicit:
        return Path(explicit).resolve()
    for folder in (os.environ.get("DEEPLIGHT_WEIGHTS_DIR"), REPO_ROOT.parent / "shared" / "weights"):
        if folder and (Path(folder) / WEIGHTS_2D).is_file():
            return (Path(folder) / WEIGHTS_2D).resolve()
    return None


# -- 1. one batch size, in a child process ---------------------------------------------------


def worker(batch, repeats, lrp_repeats, weights):
    """Decode and decode + LRP at one batch size (Keras backend from $KERAS_BACKEND); prints one JSON line."""
    from keras import ops

    from deeplight_bids import backend
    from deeplight_bids.lrp.analyzer import LRPAnalyzer
    from deeplight_bids.models.two import INPUT_SHAPE_2D, build_2d_deeplight

    if weights:
        from deeplight_bids.models.published_2d import convert_published_2d, load_published_2d

        model = convert_published_2d(load_published_2d(weights))
    else:
        model = build_2d_deeplight()
    forward = backend.compile_function(lambda x: model(x, training=False))
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, *INPUT_SHAPE_2D)).astype(np.float32)
    x = ops.convert_to_tensor(x_np)

    start = time.perf_counter()
    ops.convert_to_numpy(forward(x))  # trace + first run
    decode_first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ops.convert_to_numpy(forward(x))
        times.append(time.perf_counter() - start)
    decode_best = min(times)
    rss_decode = peak_rss_mib()

    analyzer = LRPAnalyzer(model, composite="deeplight_2d")
    start = time.perf_counter()
    _, relevance = analyzer.explain(x_np)  # trace + first run
    lrp_first = time.perf_counter() - start
    finite = bool(np.isfinite(relevance).all())
    times = []
    for _ in range(lrp_repeats):
        start = time.perf_counter()
        analyzer.explain(x_np)
        times.append(time.perf_counter() - start)
    lrp_best = min(times)
    print(
        json.dumps(
            {
                "batch": batch,
                "decode_first_s": decode_first,
                "decode_best_s": decode_best,
                "decode_vol_s": batch / decode_best,
                "lrp_first_s": lrp_first,
                "lrp_best_s": lrp_best,
                "lrp_vol_s": batch / lrp_best,
                "ratio": lrp_best / decode_best,
                "rss_decode_mib": rss_decode,
                "rss_lrp_mib": peak_rss_mib(),
                "relevance_finite": finite,
            }
        ),
        flush=True,
    )


def run_workers(args, weights):
    rows = []
    for batch in args.batch_sizes:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(batch),
            "--repeats",
            str(args.repeats),
            "--lrp-repeats",
            str(args.lrp_repeats),
        ]
        if weights:
            cmd += ["--weights", str(weights)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"worker for batch {batch} failed (exit {proc.returncode})")
        row = json.loads(lines[-1])
        rows.append(row)
        print(
            f"{row['batch']:>5} {row['decode_vol_s']:>10.2f} {row['lrp_vol_s']:>12.2f} {row['ratio']:>6.1f}x "
            f"{row['decode_first_s']:>8.1f} {row['lrp_first_s']:>8.1f} {row['rss_decode_mib']:>10.0f} "
            f"{row['rss_lrp_mib']:>10.0f}",
            flush=True,
        )
    return rows


# -- 2. a 405-volume participant run -----------------------------------------------------------


def run_flow(n_volumes, weights, workdir, batch_size=None):
    """Make a 1-participant synthetic dataset and run the 2D participant level on it; peak RSS of the child."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    start = time.perf_counter()
    dataset = make_synthetic_dataset(workdir / "bids", n_participants=1, n_volumes=n_volumes, t_r=0.72)
    made = time.perf_counter() - start
    out = workdir / "out"
    args = [
        dataset.bids_dir,
        out,
        "participant",
        "--architecture",
        "2D",
        "--skip-bids-validation",
        "--work-dir",
        workdir / "work",
    ]
    if batch_size is not None:
        args += ["--batch-size", batch_size]
    env = {**os.environ, "DEEPLIGHT_WEIGHTS_DIR": str(Path(weights).parent)}
    _, elapsed, rss = run_cli_child(args, workdir / "flow.log", env=env)
    relevance = next(out.rglob("*desc-relevance_bold.nii.gz"))
    return {
        "n_volumes": n_volumes,
        "t_r": 0.72,
        "make_dataset_s": made,
        "run_s": elapsed,
        "peak_rss_mib": rss,
        "relevance_bytes": relevance.stat().st_size,
        "vol_s": n_volumes / elapsed,
    }


# -- results ---------------------------------------------------------------------------------


def write_results(path, machine, rows, flow, weights):
    """Replace (or append) the ``## 2D`` section of ``path``; other sections stay untouched."""
    today = datetime.date.today().isoformat()
    lines = [
        SECTION,
        "",
        f"Date: {today}. Machine: {machine}.",
        f"Weights: {'published ' + weights.name if weights else 'random (no published weights found)'}; "
        "input (91, 109, 91, 1) per volume, float32, CPU. "
        "Command: `python benchmarks/bench_2d.py`.",
        "",
        "Decode = forward pass; decode + LRP = `LRPAnalyzer.explain` with the `deeplight_2d` composite "
        "(forward pass and relevance). Best of several calls after the first (tracing) call; each batch size "
        "in a fresh process, peak RSS of that process.",
        "",
        "| batch | decode vol/s | decode + LRP vol/s | LRP / decode time | peak RSS decode MiB | "
        "peak RSS decode + LRP MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['decode_vol_s']:.2f} | {r['lrp_vol_s']:.2f} | {r['ratio']:.1f}x | "
            f"{r['rss_decode_mib']:.0f} | {r['rss_lrp_mib']:.0f} |"
        )
    if flow is not None:
        verdict = "within" if flow["peak_rss_mib"] <= RSS_LIMIT_MIB else "OVER"
        lines += [
            "",
            f"405-volume participant run (`deeplight-bids BIDS OUT participant --architecture 2D`, LRP on, "
            f"default batch size, synthetic dataset of 1 participant, {flow['n_volumes']} volumes, "
            f"TR {flow['t_r']} s): {flow['run_s']:.0f} s wall ({flow['vol_s']:.2f} vol/s end to end, "
            f"preparation included), peak RSS {flow['peak_rss_mib']:.0f} MiB "
            f"({flow['peak_rss_mib'] / 1024:.2f} GiB, {verdict} the 3 GiB target).",
        ]
    section = "\n".join(lines) + "\n"

    update_section(path, SECTION, section)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed decode calls per batch size")
    parser.add_argument("--lrp-repeats", type=int, default=3, help="timed decode + LRP calls per batch size")
    parser.add_argument("--weights", help="published 2D .npy (default: found as described above)")
    parser.add_argument("--flow-volumes", type=int, default=405)
    parser.add_argument("--no-flow", action="store_true", help="skip the 405-volume participant run")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to update ('' for none)")
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        default=None,
        help="Keras backend of the measurements (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backend:  # before Keras is imported (workers inherit it)
        os.environ["KERAS_BACKEND"] = args.backend

    if args.worker is not None:
        worker(args.worker, args.repeats, args.lrp_repeats, args.weights)
        return

    weights = find_weights(args.weights)
    machine = machine_description()
    print(f"2D-DeepLight on {machine}")
    print(f"weights: {weights or 'random (published weights not found)'}")
    print(
        f"{'batch':>5} {'decode v/s':>10} {'decode+LRP v/s':>12} {'ratio':>7} {'trace s':>8} {'LRP tr s':>8} "
        f"{'RSS dec MiB':>10} {'RSS LRP MiB':>10}"
    )
    rows = run_workers(args, weights)

    flow = None
    if not args.no_flow:
        if weights is None:
            raise SystemExit("the participant run needs the published 2D weights (--weights or DEEPLIGHT_WEIGHTS_DIR)")
        with tempfile.TemporaryDirectory(prefix="bench2d-") as tmp:
            flow = run_flow(args.flow_volumes, weights, Path(tmp))
        verdict = "ok" if flow["peak_rss_mib"] <= RSS_LIMIT_MIB else f"OVER {RSS_LIMIT_MIB} MiB"
        print(
            f"{flow['n_volumes']}-volume participant run (2D, LRP): dataset made in {flow['make_dataset_s']:.0f} s, "
            f"run {flow['run_s']:.0f} s ({flow['vol_s']:.2f} vol/s), peak RSS {flow['peak_rss_mib']:.0f} MiB "
            f"({verdict})"
        )
    if args.results:
        write_results(args.results, machine, rows, flow, weights)
        print(f"written to {args.results} ({SECTION})")
    if flow is not None and flow["peak_rss_mib"] > RSS_LIMIT_MIB:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

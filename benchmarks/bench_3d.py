"""3D-DeepLight throughput and memory on the full reference grid: decode, decode + LRP, preparation, a 405-volume run.

Usage::

    python benchmarks/bench_3d.py [--batch-sizes 1 4 8] [--repeats 3] [--flow-volumes 405]
                                  [--flow-batch-size 4] [--no-flow] [--results benchmarks/RESULTS.md]

1. **Decode vs bare Keras**, per batch size, each batch size in a fresh child process:
   the pipeline's decode (``to_model_order`` of NIfTI-order volumes, then
   :class:`deeplight_bids.models.decode.Decoder`) and a bare ``model.predict_on_batch``
   on the same (already model-order) arrays, called alternately ``repeats`` times
   after one warm-up call each; throughput from the best call of each, and their ratio
   (pipeline / bare throughput; >= 0.9 is the target).
2. **Decode + LRP vs decode**: ``LRPAnalyzer.explain`` (``preset_b_flat``; the forward
   pass and the relevance, as the participant level runs it) alternated with the
   decoder on the same arrays; ratio of the best times (<= 3x is the target).  Peak
   RSS of the child (``ru_maxrss``) after each phase.
3. **Preparation** of one 405-volume run (TR 0.72 s, a synthetic dataset from
   :func:`deeplight_bids.demo.synth.make_synthetic_dataset`): ``prepare_run``
   (resample, mask, smooth, detrend, high-pass, z-score) plus the labels, in a child.
4. **405-volume participant run**: ``deeplight-bids BIDS OUT participant`` with LRP and
   all outputs, a random-weight 3D-DeepLight saved as ``.keras`` (the published 3D
   weights are not on this workplace; the speed does not depend on the values), in a
   child whose peak RSS comes from ``os.wait4`` (that child only; <= 3 GiB is the
   target); wall time and output sizes.

The figures are printed and written to ``--results`` under ``## 3D`` (other sections of
that file are left as they are), with the host's CPU flags (AVX2 / AVX-512 / AMX decide
which oneDNN kernels run), its memory copy bandwidth and load average; a warning is
printed (and written) when (decode + LRP) / decode is more than 15 % above the arithmetic
floor (``lrp_flop_floor()``; issue 19).
"""

import argparse
import datetime
import json
import os
import re
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for the test helper
from tests.models.legacy_h5 import randomise_weights  # noqa: E402  (random weights + BN statistics)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(HERE))

SECTION = "## 3D"
N_STATES = 16


def build_random_model(n_states=N_STATES, seed=3):
    from deeplight_bids.models.three import build_3d_deeplight

    return randomise_weights(build_3d_deeplight(n_states=n_states), seed=seed)


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# -- 1 + 2. one batch size, in a child process ---------------------------------------------------


def worker(batch, repeats):
    from deeplight_bids.lrp.analyzer import LRPAnalyzer
    from deeplight_bids.models.decode import Decoder
    from deeplight_bids.models.three import INPUT_SHAPE_3D, to_model_order

    model = build_random_model()
    decoder = Decoder(model)
    rng = np.random.default_rng(0)
    z, y, x, _ = INPUT_SHAPE_3D
    xyz = rng.standard_normal((batch, x, y, z)).astype(np.float32)  # NIfTI order, as prepare_run hands them
    x_model = to_model_order(xyz)

    pipeline = lambda: decoder.logits(to_model_order(xyz))  # noqa: E731
    bare = lambda: model.predict_on_batch(x_model)  # noqa: E731
    start = time.perf_counter()
    pipeline()
    decode_first = time.perf_counter() - start
    bare()
    np.testing.assert_allclose(decoder.logits(x_model), model.predict_on_batch(x_model), rtol=1e-4, atol=1e-4)
    t_pipe, t_bare = [], []
    for _ in range(repeats):  # alternate, so both see the same machine load
        t_pipe.append(_best(pipeline, 1))
        t_bare.append(_best(bare, 1))
    rss_decode = peak_rss_mib()

    analyzer = LRPAnalyzer(model, composite="preset_b_flat")
    start = time.perf_counter()
    _, relevance = analyzer.explain(x_model)
    lrp_first = time.perf_counter() - start
    finite = bool(np.isfinite(relevance).all())
    t_lrp, t_dec = [], []
    for _ in range(repeats):
        t_lrp.append(_best(lambda: analyzer.explain(x_model), 1))
        t_dec.append(_best(lambda: decoder.logits(x_model), 1))
    row = {
        "batch": batch,
        "repeats": repeats,
        "decode_first_s": decode_first,
        "lrp_first_s": lrp_first,
        "decode_best_s": min(t_pipe),
        "bare_best_s": min(t_bare),
        "decode_vol_s": batch / min(t_pipe),
        "bare_vol_s": batch / min(t_bare),
        "decode_over_bare": min(t_bare) / min(t_pipe),
        "lrp_best_s": min(t_lrp),
        "decode2_best_s": min(t_dec),
        "lrp_vol_s": batch / min(t_lrp),
        "lrp_ratio": min(t_lrp) / min(t_dec),
        "rss_decode_mib": rss_decode,
        "rss_lrp_mib": peak_rss_mib(),
        "relevance_finite": finite,
    }
    print(json.dumps(row), flush=True)


def run_child(extra):
    cmd = [sys.executable, str(Path(__file__).resolve()), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"child {extra} failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def run_workers(args):
    rows = []
    print(
        f"{'batch':>5} {'reps':>4} {'decode v/s':>10} {'bare v/s':>9} {'dec/bare':>8} {'LRP v/s':>8} "
        f"{'LRP/dec':>7} {'trace s':>7} {'LRP tr s':>8} {'RSS dec':>7} {'RSS LRP':>7}"
    )
    for batch in args.batch_sizes:
        row = run_child(["--worker", str(batch), "--repeats", str(args.repeats)])
        rows.append(row)
        print(
            f"{row['batch']:>5} {row['repeats']:>4} {row['decode_vol_s']:>10.2f} {row['bare_vol_s']:>9.2f} "
            f"{row['decode_over_bare']:>8.2f} {row['lrp_vol_s']:>8.2f} {row['lrp_ratio']:>6.2f}x "
            f"{row['decode_first_s']:>7.1f} {row['lrp_first_s']:>8.1f} {row['rss_decode_mib']:>7.0f} "
            f"{row['rss_lrp_mib']:>7.0f}",
            flush=True,
        )
    return rows


# -- 3. preparation of one run ------------------------------------------------------------------


def make_dataset(workdir, n_volumes):
    from deeplight_bids.demo.synth import make_synthetic_dataset

    start = time.perf_counter()
    dataset = make_synthetic_dataset(Path(workdir) / "bids", n_participants=1, n_volumes=n_volumes, t_r=0.72)
    return dataset, time.perf_counter() - start


def prep_worker(bids_dir):
    from deeplight_bids.prepare.clean import prepare_run
    from deeplight_bids.prepare.labels import read_events, resolve_state_map, volume_labels

    bids_dir = Path(bids_dir)
    bold = next(bids_dir.rglob("*desc-preproc_bold.nii.gz"))
    mask = next(bids_dir.rglob("*desc-brain_mask.nii.gz"))
    events = next(bids_dir.rglob("*_events.tsv"))
    task = re.search(r"task-([a-zA-Z0-9]+)", events.name).group(1)
    start = time.perf_counter()
    prepared = prepare_run(bold, mask, 0.72)
    labels = volume_labels(read_events(events), prepared.n_volumes, 0.72, resolve_state_map(task, None))
    prep_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, prepared.n_volumes, 4):
        prepared.volumes(i, min(i + 4, prepared.n_volumes))
    read_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "n_volumes": prepared.n_volumes,
                "prep_s": prep_s,
                "read_batches_s": read_s,
                "labelled": int(sum(s is not None for s in labels)),
                "rss_mib": peak_rss_mib(),
            }
        ),
        flush=True,
    )


# -- 4. a 405-volume participant run ------------------------------------------------------------


def run_flow(dataset, workdir, batch_size):
    from deeplight_bids.models.weights import save_model

    states = sorted(set(dataset.state_map.values()))
    model_dir = workdir / "model"
    save_model(
        build_random_model(len(states)),
        model_dir / "rand3d.keras",
        {"architecture": "3D", "states": states, "name": "rand3d"},
    )
    out = workdir / "out"
    log_text, elapsed, rss = run_cli_child(
        [
            dataset.bids_dir,
            out,
            "participant",
            "--skip-bids-validation",
            "--weights",
            model_dir,
            "--work-dir",
            workdir / "work",
            "--batch-size",
            batch_size,
            "-vv",
        ],
        workdir / "flow.log",
    )  # -vv: the per-batch lines
    sizes = {
        p.name.split("_desc-")[-1] if "_desc-" in p.name else p.name: p.stat().st_size
        for p in out.rglob("sub-*/**/*")
        if p.is_file()
    }
    batch_times = [float(m) for m in re.findall(r"\(([\d.]+) s/batch\)", log_text)]
    return {
        "n_volumes": dataset.n_volumes,
        "t_r": 0.72,
        "batch_size": batch_size,
        "run_s": elapsed,
        "peak_rss_mib": rss,
        "vol_s": dataset.n_volumes / elapsed,
        "sizes": sizes,
        "total_bytes": sum(sizes.values()),
        "batch_s_median": float(np.median(batch_times)) if batch_times else None,
    }


# -- the host ---------------------------------------------------------------------------------

#: CPU flags that decide which oneDNN kernels run (and so the cost of LRP relative to decode).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")

#: Warn when (decode + LRP) / decode is more than this much above the arithmetic floor (issue 19).
FLOOR_MARGIN = 0.15


def cpu_flags():
    """Which of :data:`CPU_FLAGS` the CPU has (from ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


def memory_bandwidth_gbs(mib=256, repeats=5):
    """Copy bandwidth in GB/s (read + write bytes per second) of a ``mib``-MiB float32 ``np.copyto``, best of ``repeats``."""
    src = np.ones(mib * 2**18, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the pages first
    best = min(_time_once(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * src.nbytes / best / 1e9


def _time_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def host_line():
    """CPU flags, memory bandwidth and load average, as one line for the output and RESULTS.md."""
    flags = "/".join(cpu_flags()) or "unknown"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return f"CPU flags {flags}; memory copy bandwidth {memory_bandwidth_gbs():.1f} GB/s (numpy copy, 256 MiB); load average {load}"


def ratio_warning(ratio, floor):
    """A warning line when ``ratio`` is more than :data:`FLOOR_MARGIN` above ``floor``, else ``None``."""
    if ratio <= floor * (1 + FLOOR_MARGIN):
        return None
    return (
        f"WARNING: (decode + LRP) / decode = {ratio:.2f}x is {ratio / floor - 1:.0%} above the arithmetic floor "
        f"{floor:.2f}x (more than {FLOOR_MARGIN:.0%}); see benchmarks/README.md, 'Why LRP cost and memory depend "
        "on the host'"
    )


# -- results ----------------------------------------------------------------------------------


def lrp_flop_floor():
    """Lowest possible (decode + LRP) / decode time if convolutions dominated, from 3D-DeepLight's layers.

    The forward pass costs one convolution per layer.  The alpha-beta rule (every conv but
    the first) needs three more of the same size: ``|W| |x|`` forward and two input
    gradients (of ``W x`` and of ``|W| |x|``); the flat rule of the first conv needs a
    one-channel box sum (negligible).  Returns ``(forward GMAC per volume, floor ratio, share of
    the largest layer in the forward pass)``.
    """
    from deeplight_bids.models.three import CONV_BLOCKS_3D, INPUT_SHAPE_3D

    shape, c_in, macs = INPUT_SHAPE_3D[:3], 1, []
    for filters, stride in CONV_BLOCKS_3D:
        shape = tuple(-(-s // stride) for s in shape)
        macs.append(int(np.prod(shape)) * 27 * c_in * filters)
        c_in = filters
    macs.append(int(np.prod(shape)) * c_in * N_STATES)  # the 1x1x1 output convolution
    forward = float(sum(macs))
    return forward / 1e9, (forward + 3 * (forward - macs[0])) / forward, max(macs) / forward


def write_results(path, machine, rows, prep, flow, host=None):
    today = datetime.date.today().isoformat()
    lines = [
        SECTION,
        "",
        f"Date: {today}. Machine: {machine}." + (f" {host}." if host else ""),
        "Weights: random (fan-in scaled kernels, non-trivial BN statistics; the published 3D weights are not on "
        "this workplace, and the speed does not depend on the values); input (91, 109, 91, 1) per volume, "
        "float32, CPU. Command: `python benchmarks/bench_3d.py`.",
        "",
        "Decode = `to_model_order` + `Decoder.logits` (what the participant level calls); bare = "
        "`model.predict_on_batch` on the same model-order arrays; decode + LRP = `LRPAnalyzer.explain` with "
        "`preset_b_flat`. Calls alternate (decode, bare, ... and LRP, decode, ...) so both see the same load; "
        f"best of {rows[0]['repeats'] if rows else '?'} calls after a warm-up call; each batch size in a fresh "
        "process.",
        "",
        "| batch | decode vol/s | bare predict vol/s | decode / bare | decode + LRP vol/s | (decode + LRP) / "
        "decode time | peak RSS decode MiB | peak RSS + LRP MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['decode_vol_s']:.2f} | {r['bare_vol_s']:.2f} | {r['decode_over_bare']:.2f} "
            f"| {r['lrp_vol_s']:.2f} | {r['lrp_ratio']:.2f}x | {r['rss_decode_mib']:.0f} | "
            f"{r['rss_lrp_mib']:.0f} |"
        )
    gmac, floor, largest = lrp_flop_floor()
    lines += [
        "",
        f"Arithmetic floor of (decode + LRP) / decode: the forward pass is {gmac:.2f} GMAC per volume "
        f"({largest:.0%} of it in the second, full-resolution 8-channel convolution); the alpha-beta rule needs three "
        "more convolutions of each layer's size (|W| |x| and two input gradients), the flat rule of the "
        f"first layer almost nothing, so exact preset-B-flat LRP costs at least {floor:.2f}x the decode "
        "time when convolutions dominate (`lrp_flop_floor()` in this script).",
    ]
    warnings = [w for w in (ratio_warning(r["lrp_ratio"], floor) for r in rows) if w]
    lines += [f"\n{w}" for w in warnings]
    if prep is not None:
        lines += [
            "",
            f"Preparation of one {prep['n_volumes']}-volume run (synthetic, reference grid, TR 0.72 s; "
            f"`prepare_run` + labels): {prep['prep_s']:.1f} s ({prep['n_volumes'] / prep['prep_s']:.0f} "
            f"vol/s); reading it back in batches of 4: {prep['read_batches_s']:.1f} s; peak RSS "
            f"{prep['rss_mib']:.0f} MiB.",
        ]
    if flow is not None:
        verdict = "within" if flow["peak_rss_mib"] <= RSS_LIMIT_MIB else "OVER"
        sizes = ", ".join(
            f"{k} {v / 2**20:.1f} MiB" if v > 2**20 else f"{k} {v / 1024:.1f} KiB"
            for k, v in sorted(flow["sizes"].items(), key=lambda kv: -kv[1])[:4]
        )
        lines += [
            "",
            f"{flow['n_volumes']}-volume participant run (`deeplight-bids BIDS OUT participant`, LRP on, "
            f"batch size {flow['batch_size']}, all outputs): {flow['run_s']:.0f} s wall "
            f"({flow['vol_s']:.2f} vol/s end to end, model load and preparation included; median "
            f"{flow['batch_s_median']:.2f} s per batch), peak RSS {flow['peak_rss_mib']:.0f} MiB "
            f"({flow['peak_rss_mib'] / 1024:.2f} GiB, {verdict} the 3 GiB target). Outputs "
            f"{flow['total_bytes'] / 2**20:.1f} MiB in all; largest: {sizes}.",
        ]
    section = "\n".join(lines) + "\n"
    update_section(path, SECTION, section)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each kind per batch size")
    parser.add_argument("--flow-volumes", type=int, default=405)
    parser.add_argument("--flow-batch-size", type=int, default=4)
    parser.add_argument("--no-flow", action="store_true", help="skip preparation and the participant run")
    parser.add_argument("--no-workers", action="store_true", help="skip the decode / LRP measurements")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to update ('' for none)")
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        default=None,
        help="Keras backend of the measurements (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prep-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backend:  # before Keras is imported (workers inherit it)
        os.environ["KERAS_BACKEND"] = args.backend

    if args.worker is not None:
        worker(args.worker, args.repeats)
        return
    if args.prep_worker is not None:
        prep_worker(args.prep_worker)
        return

    machine = machine_description()
    host = host_line()
    print(f"3D-DeepLight on {machine}")
    print(host)
    gmac, floor, _ = lrp_flop_floor()
    print(f"forward {gmac:.2f} GMAC per volume; arithmetic floor of (decode + LRP) / decode: {floor:.2f}x")
    print(f"repetitions: {args.repeats} timed calls of each kind per batch size (after one warm-up call)")
    rows = [] if args.no_workers else run_workers(args)
    for row in rows:
        warning = ratio_warning(row["lrp_ratio"], floor)
        if warning:
            print(f"batch {row['batch']}: {warning}", file=sys.stderr)
    prep = flow = None
    if not args.no_flow:
        with tempfile.TemporaryDirectory(prefix="bench3d-") as tmp:
            tmp = Path(tmp)
            dataset, made = make_dataset(tmp, args.flow_volumes)
            print(f"synthetic dataset ({args.flow_volumes} volumes) made in {made:.0f} s")
            prep = run_child(["--prep-worker", str(dataset.bids_dir)])
            print(
                f"preparation of {prep['n_volumes']} volumes: {prep['prep_s']:.1f} s, reading back in batches: "
                f"{prep['read_batches_s']:.1f} s, peak RSS {prep['rss_mib']:.0f} MiB"
            )
            flow = run_flow(dataset, tmp, args.flow_batch_size)
        verdict = "ok" if flow["peak_rss_mib"] <= RSS_LIMIT_MIB else f"OVER {RSS_LIMIT_MIB} MiB"
        print(
            f"{flow['n_volumes']}-volume participant run (3D, LRP, batch {flow['batch_size']}): "
            f"{flow['run_s']:.0f} s ({flow['vol_s']:.2f} vol/s, median {flow['batch_s_median']:.2f} s/batch), "
            f"peak RSS {flow['peak_rss_mib']:.0f} MiB ({verdict}), outputs {flow['total_bytes'] / 2**20:.1f} MiB: "
            f"{json.dumps(flow['sizes'])}"
        )
    if args.results and rows:
        write_results(args.results, machine, rows, prep, flow, host)
        print(f"written to {args.results} ({SECTION})")


if __name__ == "__main__":
    main()

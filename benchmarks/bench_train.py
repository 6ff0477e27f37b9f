"""Training throughput (volumes/s) of 3D- and 2D-DeepLight on the full reference grid.

Usage::

    python benchmarks/bench_train.py [--batch-size 8] [--steps 3] [--results benchmarks/RESULTS.md]

Each case runs in a fresh child process (so memory and thread pools do not carry over):

* ``3D full``: every layer trained (the fine-tuning set-up: Adam, cross-entropy on logits,
  3 states), ``train_on_batch`` on random full-grid volumes; one warm-up step (tracing),
  then the best of ``--steps`` timed steps;
* ``2D full``: the same for 2D-DeepLight (dropout on, as in training);
* ``2D frozen body``: what ``--freeze-body`` costs per volume: the body's forward pass
  (features, once per volume) -- the head's training on features is negligible and timed too;
* ``cache read``: rebuilding full volumes from the float16 in-mask cache
  (:class:`deeplight_bids.prepare.cache.VolumeReader`), i.e. the input pipeline's own speed.

The figures are printed and written to ``--results`` under ``## Training`` (other
sections of that file are left as they are).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _results import update_section  # benchmarks/_results.py (scripts run from this folder)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(HERE))

SECTION = "## Training"
N_STATES = 3


def child(case, batch_size, steps):
    import numpy as np
    from _results import peak_rss_mib

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    result = {"case": case, "batch": batch_size}
    if case == "cache read":
        from deeplight_bids.prepare import cache

        mask = np.zeros((91, 109, 91), bool)
        mask[10:80, 10:100, 10:80] = True

        class Entry:
            def mask(self):
                return mask

            def signals(self):
                return signals

        signals = rng.standard_normal((64, int(mask.sum()))).astype(np.float16)
        reader = cache.VolumeReader([Entry()])
        reader.volume(0, 0)
        t0 = time.perf_counter()
        for v in range(64):
            reader.volume(0, v)
        result["vol_s"] = 64 / (time.perf_counter() - t0)
    else:
        from deeplight_bids.models.surgery import TRAIN_3D, split_body_head
        from deeplight_bids.models.three import build_3d_deeplight
        from deeplight_bids.models.two import build_2d_deeplight

        arch = case.split()[0]
        model = build_3d_deeplight(N_STATES, **TRAIN_3D) if arch == "3D" else build_2d_deeplight(N_STATES)
        x = rng.standard_normal((batch_size, 91, 109, 91, 1)).astype(np.float32)
        y = rng.integers(0, N_STATES, batch_size)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if "frozen" in case:
            body, head = split_body_head(model, arch)
            head.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
            body(x, training=False)
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                feats = np.asarray(body(x, training=False))
                times.append(time.perf_counter() - t0)
            result["vol_s"] = batch_size / min(times)
            head.train_on_batch(feats, y)
            t0 = time.perf_counter()
            for _ in range(20):
                head.train_on_batch(feats, y)
            result["head_vol_s"] = 20 * batch_size / (time.perf_counter() - t0)
        else:
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
            model.train_on_batch(x, y)
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                model.train_on_batch(x, y)
                times.append(time.perf_counter() - t0)
            result["vol_s"] = batch_size / min(times)
    result["rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


def write_results(path, machine, rows, batch_size, steps, load=None):
    today = datetime.date.today().isoformat()
    if load is not None:
        machine += f"; 1-min load average {load[0]:.1f} at the start and {load[1]:.1f} at the end of the run"
    lines = [
        SECTION,
        "",
        f"Date: {today}. Machine: {machine}.",
        f"Command: `python benchmarks/bench_train.py --batch-size {batch_size} --steps {steps}`. Full reference "
        "grid (91, 109, 91, 1) float32 volumes, 3 output states, Adam, cross-entropy on logits, CPU; each case "
        "in a fresh process; best timed step after a warm-up step. The machine is shared (other jobs ran), so "
        "treat the figures as lower bounds.",
        "",
        "| case | batch | training vol/s | peak RSS MiB | note |",
        "|---|---:|---:|---:|---|",
    ]
    notes = {
        "3D full": "every layer trained (fine-tuning from scratch or pretrained)",
        "2D full": "every layer trained, dropout on",
        "2D frozen body": "`--freeze-body`: body forward pass once per volume (features); then the head trains "
        "at {head:.0f} vol/s on features",
        "3D frozen body": "`--freeze-body`: body forward pass once per volume; head then at {head:.0f} vol/s",
        "cache read": "float16 in-mask cache -> full model-order volume (input pipeline alone)",
    }
    for r in rows:
        note = notes.get(r["case"], "").format(head=r.get("head_vol_s", 0.0))
        lines.append(f"| {r['case']} | {r['batch']} | {r['vol_s']:.2f} | {r['rss_mib']:.0f} | {note} |")
    section = "\n".join(lines) + "\n"
    update_section(path, SECTION, section)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per case")
    parser.add_argument(
        "--cases", nargs="+", default=["3D full", "2D full", "2D frozen body", "3D frozen body", "cache read"]
    )
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.batch_size, args.steps)
        return 0
    rows = []
    load_start = os.getloadavg()[0]
    for case in args.cases:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                case,
                "--batch-size",
                str(args.batch_size),
                "--steps",
                str(args.steps),
            ],
            capture_output=True,
            text=True,
        )
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not found:
            print(f"{case}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(found[-1][7:])
        rows.append(row)
        print(
            f"{case:16s} batch {row['batch']}: {row['vol_s']:.2f} vol/s, peak RSS {row['rss_mib']:.0f} MiB"
            + (f" (head on features: {row['head_vol_s']:.0f} vol/s)" if "head_vol_s" in row else ""),
            flush=True,
        )
    if not args.no_write and rows:
        from _results import machine_description

        write_results(
            args.results,
            machine_description(),
            rows,
            args.batch_size,
            args.steps,
            load=(load_start, os.getloadavg()[0]),
        )
        print(f"written to {args.results} ({SECTION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The three Keras backends side by side on CPU, and TensorFlow against older code, in one run.

Usage::

    python benchmarks/bench_backends.py [--old ../wt-old] [--batch 4] [--rounds 2]
                                        [--backends tensorflow torch jax] [--results benchmarks/RESULTS.md]

Full grid, one batch size.  Each measurement is one child process of the existing
benchmarks' workers, unchanged: ``bench_3d.py --backend B --worker BATCH`` (3D,
``preset_b_flat``, random weights) and ``bench_2d.py --backend B --worker BATCH``
(2D, ``deeplight_2d``, the published weights when found).  Each prints one JSON line
with decode and decode + LRP volumes/s (best of ``--repeats`` calls after a warm-up).

With ``--old PATH`` (a git worktree of an older commit, e.g. the TensorFlow-only code
before the ``keras.ops`` port), TensorFlow is measured ``--rounds`` times alternately
with the old and the current code, so both see the same machine load; the new/old
throughput ratios come from the best round of each.  Then every other backend once
(JAX on CPU is slow on the full 3D grid: XLA's CPU 3D convolutions; it gets
``--slow-repeats``).  The table goes to ``--results`` under ``## Keras backends on CPU``.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _results import machine_description, update_section  # benchmarks/_results.py

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
SECTION = "## Keras backends on CPU"
sys.path.insert(0, str(HERE))


def weights_2d():
    from bench_2d import find_weights

    return find_weights()


def measure(repo, model, backend, batch, repeats):
    """One worker child of ``repo``'s ``bench_{model}.py``; its JSON row plus wall time and load."""
    script = Path(repo) / "benchmarks" / f"bench_{model}.py"
    cmd = [sys.executable, str(script), "--worker", str(batch), "--repeats", str(repeats)]
    if model == "2d":
        cmd += ["--lrp-repeats", str(repeats)]
        if weights_2d():
            cmd += ["--weights", str(weights_2d())]
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(repo)}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{script} --worker {batch} under {backend} failed (exit {proc.returncode})")
    row = json.loads(lines[-1])
    row.update(
        model=model, backend=backend, wall_s=time.perf_counter() - start, load=(load_before + os.getloadavg()[0]) / 2
    )
    row["lrp_over_decode"] = row.get("lrp_ratio", row.get("ratio"))
    return row


def best(rows, model, backend, code, key):
    values = [r[key] for r in rows if (r["model"], r["backend"], r["code"]) == (model, backend, code)]
    return max(values) if values else None


def write_results(path, machine, rows, args, old_commit):
    today = datetime.date.today().isoformat()
    loads = [r["load"] for r in rows]
    lines = [
        SECTION,
        "",
        (
            f"Date: {today}. Machine: {machine}. Load average during the run: {min(loads):.1f}-{max(loads):.1f} "
            "(2 cores shared with other jobs; absolute figures vary with it, ratios of alternating runs less)."
        ),
        f"Command: `python benchmarks/bench_backends.py --batch {args.batch} --rounds {args.rounds}"
        + (" --old <worktree of " + old_commit + ">`" if old_commit else "`")
        + f". Batch {args.batch}, full grid (91, 109, 91, 1), float32; each cell one child process of "
        "`bench_3d.py --backend B --worker N` (3D, `preset_b_flat`, random weights) or `bench_2d.py --backend "
        "B --worker N` (2D, `deeplight_2d`, published weights); best call after a warm-up call "
        f"({args.repeats} timed calls; {args.slow_repeats} for JAX).",
        "",
        "| model | backend | code | decode vol/s | decode + LRP vol/s | (decode + LRP) / decode time |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model'].upper()} | {r['backend']} | {r['code']} | {r['decode_vol_s']:.2f} | "
            f"{r['lrp_vol_s']:.3f} | {r['lrp_over_decode']:.2f}x |"
        )
    if old_commit:
        lines += [""]
        for model in ("3d", "2d"):
            ratios = []
            for key, label in (("decode_vol_s", "decode"), ("lrp_vol_s", "decode + LRP")):
                new, old = best(rows, model, "tensorflow", "new", key), best(rows, model, "tensorflow", "old", key)
                if new and old:
                    ratios.append(f"{label} {new / old:.2f}")
            lines.append(f"TensorFlow {model.upper()}, new / old throughput (best round of each): {', '.join(ratios)}.")
    update_section(path, SECTION, "\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="worktree of an older commit: TensorFlow measured with it too, alternately")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="alternating old / new TensorFlow rounds")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each kind per measurement")
    parser.add_argument("--slow-repeats", type=int, default=1, help="timed calls under JAX (slow on CPU)")
    parser.add_argument(
        "--backends", nargs="+", default=["tensorflow", "torch", "jax"], choices=("tensorflow", "jax", "torch")
    )
    parser.add_argument("--models", nargs="+", default=["3d", "2d"], choices=("3d", "2d"))
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to update ('' for none)")
    parser.add_argument("--json", help="also write every measurement (the workers' rows) to this file")
    args = parser.parse_args(argv)

    old_commit = None
    if args.old:
        old_commit = subprocess.run(
            ["git", "-C", args.old, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    machine = machine_description()
    print(f"{machine}; old code: {old_commit or '-'}", flush=True)
    plan = []
    if "tensorflow" in args.backends:
        for _ in range(args.rounds if args.old else 1):
            for code in ("old", "new") if args.old else ("new",):
                plan += [(code, model, "tensorflow") for model in args.models]
    plan += [("new", model, b) for b in args.backends if b != "tensorflow" for model in args.models]
    rows = []
    for code, model, backend in plan:
        repo = args.old if code == "old" else REPO_ROOT
        repeats = args.slow_repeats if backend == "jax" else args.repeats
        row = {**measure(repo, model, backend, args.batch, repeats), "code": code}
        rows.append(row)
        print(
            f"{model} {backend:10s} {code}: decode {row['decode_vol_s']:.2f} vol/s, decode + LRP "
            f"{row['lrp_vol_s']:.3f} vol/s ({row['lrp_over_decode']:.2f}x), {row['wall_s']:.0f} s, "
            f"load {row['load']:.1f}",
            flush=True,
        )
    if args.results:
        write_results(args.results, machine, rows, args, old_commit)
        print(f"written to {args.results} ({SECTION})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Robustness of the demo's first fit: does it pass its bar for 10 data/model seeds?

Usage::

    python benchmarks/bench_demo_seeds.py [--seeds 0-9] [--results benchmarks/RESULTS.md] [--threads 2]

For each seed, in a fresh temporary folder: the demo's synthetic dataset
(:func:`deeplight_bids.workflows.demo.dataset_settings`, the demo's defaults and that seed), then
the demo's first fit (:func:`deeplight_bids.workflows.demo.fit_demo_model`, the function the demo
calls, with the demo's defaults: that seed for the model, the same participants for
training and validation).  Reported per seed: the accuracy on the validation participant,
whether it reaches the demo's bar (:data:`deeplight_bids.workflows.demo.MIN_VALIDATION_ACCURACY`,
below which the demo refits), and the wall and CPU seconds of the dataset and of the fit
(CPU = user + system time of this process and its workers, which depends little on how busy
the shared machine is).  Only the fit is run, not the participant and group levels of the demo.
Written under ``## Demo fit`` in ``--results``.
"""

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

from _results import machine_description, update_section  # benchmarks/_results.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository


def _seeds(text):
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(v) for v in text.split(",")]


def _cpu_seconds():
    """The demo's own measure: this process and its finished workers."""
    from deeplight_bids.workflows import demo

    return demo._cpu_seconds()


def measure(seed, threads, folder):
    """One seed: ``(validation accuracy, dataset wall s, dataset CPU s, fit wall s, fit CPU s)``."""
    from deeplight_bids.workflows.demo import (
        dataset_settings,
        demo_fit_config,
        fit_demo_model,
        split_participants,
    )
    from deeplight_bids.demo.synth import make_synthetic_dataset

    wall, cpu = time.monotonic(), _cpu_seconds()
    bids = Path(folder) / "bids"
    make_synthetic_dataset(bids, **dataset_settings(seed=seed))
    data_wall, data_cpu = time.monotonic() - wall, _cpu_seconds() - cpu
    training, validation, _ = split_participants(bids)
    wall, cpu = time.monotonic(), _cpu_seconds()
    # the demo's defaults (demo_fit_config's), as the demo fits
    accuracy = fit_demo_model(demo_fit_config(bids, folder, training, validation, seed=seed, threads=threads))
    return accuracy, data_wall, data_cpu, time.monotonic() - wall, _cpu_seconds() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_seeds, default=list(range(10)), help="e.g. 0-9 or 0,3,5")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    from deeplight_bids.workflows.demo import DEFAULTS, MIN_VALIDATION_ACCURACY
    from deeplight_bids.cli.main import setup_logging
    from deeplight_bids.runtime import configure_threads as _configure_threads

    setup_logging(0)
    _configure_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            acc, d_wall, d_cpu, f_wall, f_cpu = measure(seed, args.threads, tmp)
        rows.append((seed, acc, acc >= MIN_VALIDATION_ACCURACY, d_wall, d_cpu, f_wall, f_cpu))
        print(
            f"seed {seed}: validation accuracy {acc:.3f} ({'pass' if rows[-1][2] else 'FAIL'}), dataset "
            f"{d_wall:.0f} s ({d_cpu:.0f} s CPU), fit {f_wall:.0f} s ({f_cpu:.0f} s CPU)",
            flush=True,
        )
        # after every seed: an interrupted run still leaves the seeds done
        text = _table(args, rows, load_before, DEFAULTS, MIN_VALIDATION_ACCURACY)
        if not args.no_write:
            update_section(args.results, "## Demo fit", text)
    print(text)
    passed = sum(r[2] for r in rows)
    return 0 if passed >= 0.9 * len(rows) else 1


def _table(args, rows, load_before, defaults, bar):
    """The ``## Demo fit`` section for the seeds measured so far."""
    load_now = os.getloadavg()
    passed = sum(r[2] for r in rows)
    planned = len(args.seeds)
    lines = [
        "## Demo fit",
        "",
        (
            f"Date: {datetime.date.today()}. Machine: {machine_description()}. Command: `python "
            f"benchmarks/bench_demo_seeds.py --seeds {args.seeds[0]}-{args.seeds[-1]} --threads {args.threads}`. "
            f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; at the last seed: "
            f"{', '.join(f'{v:.1f}' for v in load_now)}."
        ),
        "",
        (
            f"The demo's first fit (`fit_demo_model`, defaults: {defaults['participants']} participants x "
            f"{defaults['volumes']} volumes, signal {defaults['signal']} %, {defaults['epochs']} epochs, batch "
            f"{defaults['batch_size']}, learning rate {defaults['learning_rate']:g}, same-state mixing "
            f"{defaults['mix_same_state']:g}, batch-norm statistics recomputed after the fit), one seed for data and "
            "model; the "
            f"bar is validation accuracy >= {bar} (chance 1/3). CPU = user + system seconds of the process and "
            "of the volume preparation's worker processes:"
        ),
        "",
        "| seed | validation accuracy | bar | dataset wall s | dataset CPU s | fit wall s | fit CPU s |",
        "|---:|---:|---|---:|---:|---:|---:|",
        *(
            f"| {s} | {a:.3f} | {'pass' if ok else 'FAIL'} | {dw:.0f} | {dc:.0f} | {fw:.0f} | {fc:.0f} |"
            for s, a, ok, dw, dc, fw, fc in rows
        ),
        "",
        (
            f"Passed: {passed} of {len(rows)} measured"
            + (f" ({planned - len(rows)} of the {planned} planned seeds not run yet)" if len(rows) < planned else "")
            + f" (target: at least 9 of 10). Median fit: {sorted(r[5] for r in rows)[len(rows) // 2]:.0f} s wall, "
            f"{sorted(r[6] for r in rows)[len(rows) // 2]:.0f} s CPU."
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

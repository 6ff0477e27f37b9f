"""The fine-tuning fit loop beside plain ``train_on_batch``: same model, batch size and data, 1 and 2 threads.

Usage::

    python benchmarks/bench_fit.py [--epochs 2] [--threads 2 1] [--data DIR] [--results benchmarks/RESULTS.md]

The demo's dataset (:func:`deeplight_bids.workflows.demo.dataset_settings`, seed 0: 5 participants of
60 volumes, full reference grid) is made in ``--data`` (default: a temporary folder; an existing
one is reused) and its runs are prepared into the work-folder cache once.  Then each case runs
in a fresh child process with ``--nprocs`` threads (``deeplight_bids.runtime.configure_threads``),
on the demo's first fit: 3D-DeepLight from scratch, training participants 01-03 (144
class-balanced volumes per epoch, 18 batches of 8), seed 0, TensorFlow op determinism on:

``train_on_batch``
    the reference: the model that :func:`~deeplight_bids.models.surgery.build_finetune_model`
    builds, compiled as :func:`~deeplight_bids.models.train.fit_resumable` compiles it, trained
    with ``model.train_on_batch`` on the first epoch's batches, read into memory beforehand (no
    input pipeline, no callbacks), once per epoch;
``fit loop``
    :func:`~deeplight_bids.models.train.fit_resumable` on the same training batches through the
    project's input pipeline (:func:`~deeplight_bids.models.input_pipeline.make_volume_dataset`, the demo's
    ``--mix-same-state 0.5``), with its callbacks (progress, a checkpoint every epoch), no validation;
``fit loop, autotune on``
    the same with tf.data's autotuning on (:data:`deeplight_bids.models.input_pipeline.TF_DATA_AUTOTUNE`),
    as before issue 27 (2 threads only);
``demo fit``
    the fit as the demo runs it: also the validation participant's 48 volumes evaluated after
    every epoch and the batch-norm statistics recomputed at the end (precise BN; 2 threads only);
``demo fit, autotune on``
    the same with tf.data's autotuning on, as before issue 27 (2 threads only): where the stalls
    of up to 30 s were seen in profiles (at the end of the fit and of precise BN, when their
    iterators were deleted; not in every fit).

Each row: training volumes/s from the end of the first batch (tracing excluded) to the end
of the fit (so whatever the loop does between the steps counts); CPU time / wall time over the
same window ("cores used"); the share of that window spent outside training steps; "cores
wanted": (time on a CPU + time runnable but waiting for one, summed over the process's threads,
from ``/proc/self/task/*/schedstat``) / wall time, which on a busy machine still shows whether
the loop keeps both threads busy (on an idle machine it equals cores used; spinning thread-pool
threads count as busy).  The ratio fit loop / ``train_on_batch`` and the speed-up from 1 to 2
threads are printed.  Timings on a shared machine are indicative: compare rows of one run only.
Written under ``## Fit loop`` in ``--results``.
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

from _results import machine_description, update_section  # benchmarks/_results.py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository

SECTION = "## Fit loop"
CASES = ("train_on_batch", "fit loop", "fit loop, autotune on", "demo fit", "demo fit, autotune on")
#: Cases run at 1 thread too (the scaling on record).
SCALING_CASES = ("train_on_batch", "fit loop")


def scheduler_seconds():
    """``(on CPU, waiting in the run queue)`` seconds summed over this process's threads (``schedstat``)."""
    run = wait = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        except OSError:  # a thread that ended meanwhile
            continue
        run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


class Clock:
    """Wall, CPU and scheduler times from a start mark; training-step intervals."""

    def __init__(self):
        self.mark = None
        self.steps = []  # (begin, end) monotonic times of the training steps after the mark
        self.n_steps = 0

    def start(self):
        self.mark = (time.monotonic(), time.process_time(), *scheduler_seconds())

    def stop(self, volumes):
        wall, cpu, run, wait = (
            time.monotonic() - self.mark[0],
            time.process_time() - self.mark[1],
            *(a - b for a, b in zip(scheduler_seconds(), self.mark[2:])),
        )
        in_steps = sum(end - begin for begin, end in self.steps)
        return {
            "vol_s": volumes / wall,
            "wall_s": wall,
            "cpu_s": cpu,
            "cores": cpu / wall,
            "cores_wanted": (run + wait) / wall,
            "outside_steps": 1 - in_steps / wall,
            "volumes": volumes,
        }


def child(case, threads, data, epochs):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    from deeplight_bids.runtime import configure_threads, setup_logging

    setup_logging(0)
    logging.getLogger("deeplight_bids").setLevel(logging.WARNING)
    configure_threads(threads)
    import keras
    import numpy as np

    from deeplight_bids.workflows.demo import demo_fit_config, split_participants
    from deeplight_bids.models import train
    from deeplight_bids.models.surgery import build_finetune_model
    from deeplight_bids.models import input_pipeline
    from deeplight_bids.workflows.finetune import FinetuneJob

    data = Path(data)
    training, validation, _ = split_participants(data / "bids")
    # the demo's fit settings (workflows.demo.demo_fit_config); work folder data/work, as prepared by the parent
    config = demo_fit_config(
        data / "bids", data, training, validation, epochs=epochs, threads=threads, model_name="bench-fit"
    )
    job = FinetuneJob(config)
    job.load_data()
    samples = job.data.samples
    tr = np.isin(samples.subject, training)
    va = np.isin(samples.subject, validation)
    input_pipeline.TF_DATA_AUTOTUNE = case.endswith("autotune on")
    make_train, val_ds, stats_ds = job._datasets(0, tr, va, None)
    n_states = len(job.states)
    clock = Clock()

    def build():
        return build_finetune_model("3D", n_states, "scratch", None, 0)[0]

    with train.deterministic_ops(0):
        if case == "train_on_batch":
            batches = list(make_train(0).as_numpy_iterator())  # the first epoch's batches, in memory
            model = build()
            model.compile(
                optimizer=keras.optimizers.Adam(job.lr),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            volumes = 0
            for _ in range(epochs):
                for x, y in batches:
                    begin = time.monotonic()
                    model.train_on_batch(x, y)
                    if clock.mark is None:
                        clock.start()  # after the first step (tracing)
                    else:
                        clock.steps.append((begin, time.monotonic()))
                        volumes += len(y)
        else:

            class Steps(keras.callbacks.Callback):
                def on_train_batch_begin(self, batch, logs=None):
                    self.begin = time.monotonic()

                def on_train_batch_end(self, batch, logs=None):
                    if clock.mark is None:
                        clock.start()
                    else:
                        clock.steps.append((self.begin, time.monotonic()))
                        clock.n_steps += 1

            demo = case.startswith("demo fit")
            with tempfile.TemporaryDirectory() as folder:
                train.fit_resumable(
                    build,
                    None,
                    folder,
                    "bench",
                    epochs,
                    job.lr,
                    val_data=val_ds if demo else None,
                    callbacks=[Steps()],
                    make_train_data=make_train,
                    statistics_data=stats_ds if demo else None,
                )
            volumes = clock.n_steps * job.batch_size
    result = {"case": case, "threads": threads, "epochs": epochs, **clock.stop(volumes)}
    print("RESULT " + json.dumps(result), flush=True)


def prepare(data):
    """The demo's dataset (seed 0) in ``data/bids`` and its runs in the cache ``data/work`` (made once)."""
    from deeplight_bids.workflows.demo import dataset_settings
    from deeplight_bids.demo.synth import make_synthetic_dataset

    data = Path(data)
    if not (data / "bids" / "dataset_description.json").is_file():
        print(f"writing the demo's dataset to {data / 'bids'}", flush=True)
        make_synthetic_dataset(data / "bids", **dataset_settings(seed=0))
    # prepare the cache once (in a child: the children must not find TensorFlow's threads forked)
    subprocess.run([sys.executable, __file__, "--prepare-only", "--data", str(data)], check=True)


def prepare_child(data):
    from deeplight_bids.workflows.demo import split_participants
    from deeplight_bids.config import Config
    from deeplight_bids.models.datasets import load_training_data

    data = Path(data)
    training, validation, _ = split_participants(data / "bids")
    inputs = {
        "bids_dir": data / "bids",
        "output_dir": data / "out",
        "work_dir": data / "work",
        "architecture": "3D",
        "participant_label": (*training, validation),
    }
    load_training_data(Config(inputs, analysis_level="group", nprocs=2))


def write_results(path, rows, epochs, load, data_note):
    lines = [
        SECTION,
        "",
        f"Date: {datetime.date.today()}. Machine: {machine_description()}; 1-min load average {load[0]:.1f} at the "
        f"start, {load[1]:.1f} at the end.",
        f"Command: `python benchmarks/bench_fit.py --epochs {epochs}`. {data_note} Each case in a fresh process; "
        "volumes/s, cores and the time outside training steps from the end of the first batch to the end of the fit. "
        "Timings are comparable within this table only (same machine, same run).",
        "",
        "| case | threads | training vol/s | vs train_on_batch | cores used (CPU / wall) | cores wanted | "
        "outside training steps | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["threads"]: r["vol_s"] for r in rows if r["case"] == "train_on_batch"}
    for r in rows:
        ratio = r["vol_s"] / base[r["threads"]] if r["threads"] in base else float("nan")
        lines.append(
            f"| {r['case']} | {r['threads']} | {r['vol_s']:.2f} | {ratio:.2f} | {r['cores']:.2f} | "
            f"{r['cores_wanted']:.2f} | {r['outside_steps']:.0%} | {r['wall_s']:.0f} |"
        )
    lines += ["", *scaling_lines(rows)]
    update_section(path, SECTION, "\n".join(lines) + "\n")


def scaling_lines(rows):
    out = []
    for case in SCALING_CASES:
        by = {r["threads"]: r["vol_s"] for r in rows if r["case"] == case}
        if 1 in by and 2 in by:
            out.append(
                f"Scaling of {case}: {by[2] / by[1]:.2f}x from 1 to 2 threads ({by[1]:.2f} -> {by[2]:.2f} vol/s)."
            )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--data", type=Path, help="folder for the demo's dataset and cache (kept; default: temporary)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="'' writes nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_only:
        prepare_child(args.data)
        return 0
    if args.child:
        child(args.child, args.child_threads, args.data, args.epochs)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        prepare(data)
        load_start = os.getloadavg()[0]
        plan = [
            (case, threads)
            for threads in args.threads
            for case in args.cases
            if threads == max(args.threads) or case in SCALING_CASES
        ]
        rows = []
        for case, threads in plan:
            command = [sys.executable, __file__, "--child", case, "--child-threads", str(threads)]
            command += ["--data", str(data), "--epochs", str(args.epochs)]
            proc = subprocess.run(command, capture_output=True, text=True)
            found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not found:
                print(f"{case} ({threads} threads): failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            row = json.loads(found[-1][7:])
            rows.append(row)
            print(
                f"{case:22s} {threads} thread(s): {row['vol_s']:.2f} vol/s, cores used {row['cores']:.2f}, wanted "
                f"{row['cores_wanted']:.2f}, outside training steps {row['outside_steps']:.0%}, "
                f"{row['wall_s']:.0f} s (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        for line in scaling_lines(rows):
            print(line)
        base = {r["threads"]: r["vol_s"] for r in rows if r["case"] == "train_on_batch"}
        for r in rows:
            if r["case"] != "train_on_batch" and r["threads"] in base:
                print(
                    f"{r['case']} / train_on_batch at {r['threads']} thread(s): {r['vol_s'] / base[r['threads']]:.2f}"
                )
        if args.results and rows:
            note = (
                "Data: the demo's dataset (seed 0), its first fit (3D-DeepLight from scratch, participants 01-03, "
                f"144 class-balanced volumes per epoch, batch 8, --mix-same-state 0.5, {args.epochs} epochs, seed 0, "
                "op determinism on)."
            )
            write_results(Path(args.results), rows, args.epochs, (load_start, os.getloadavg()[0]), note)
            print(f"written to {args.results} ({SECTION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

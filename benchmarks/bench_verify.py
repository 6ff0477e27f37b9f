"""Cost of finding damaged files: the re-run's check and ``participant --verify`` beside the run's compute (issue 30).

Usage::

    python benchmarks/bench_verify.py [--volumes 405] [--nprocs 2] [--repeat 5] [--keep DIR]
                                      [--results benchmarks/RESULTS.md]

1. A synthetic run of ``--volumes`` volumes (TR 0.72 s, the HCP length by default) on the
   reference grid is processed by ``deeplight-bids BIDS OUT participant`` in a child process with
   the default settings (LRP, quality, GLM; random-weight 3D-DeepLight saved as ``.keras``: the
   speed does not depend on the values).  Compute = that child's wall time.
2. **Re-run check**: what a re-run reads before it skips the finished run, timed here in-process
   (median of ``--repeat``): the run's completion marker and its record (sizes, SHA-256 of every file
   but the per-volume maps, whose gzip member trailers are read instead), the GLM's and the
   participant summaries' records (:func:`deeplight_bids.derivatives.integrity.verify`, quick).
3. **--verify**: :func:`deeplight_bids.derivatives.integrity.verify_output_dir` on the finished
   OUTPUT_DIR (every gzip member decompressed, every other file read through).
4. The re-run itself in a child (start-up, model loading and the check; the run is skipped), for scale.

The files were just written, so they are read from the page cache: on a cold network file system
the reads (the per-volume maps are ~0.7 MB per volume) cost more.  Goal: re-run check <= 5 % of the
run's compute.  Timings on a shared machine are not comparable: run it on a quiet one.
"""

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import machine_description, run_cli_child, update_section  # benchmarks/_results.py

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))
from tests.models.legacy_h5 import randomise_weights  # noqa: E402  (random weights + BN statistics)

SECTION = "## Damaged files: verification cost"
TARGET = 0.05
STATES = ("MOTOR_lh", "MOTOR_rh", "MOTOR_t")


def random_model(folder):
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.weights import save_model

    save_model(
        randomise_weights(build_3d_deeplight(n_states=len(STATES)), seed=3),
        Path(folder) / "rand3d.keras",
        {"architecture": "3D", "states": list(STATES), "name": "rand3d"},
    )
    return Path(folder)


def rerun_check(out):
    """What a re-run checks before skipping the finished run: every marker's record, quick (sizes, checksums)."""
    from deeplight_bids.derivatives import integrity

    markers = [
        *out.glob("sub-*/func/*_desc-predictions_timeseries.json"),
        *out.glob("sub-*/func/*_desc-glm_timeseries.json"),
        *out.glob("sub-*/func/*_desc-accuracy_summary.json"),
        *out.glob("sub-*/func/*_desc-glmagreement_summary.json"),
    ]
    damaged = []
    for marker in markers:
        record, _ = integrity.read_marker(marker)
        damaged += integrity.verify(record[integrity.FILES_KEY], out, out / ".work")
    return len(markers), damaged


def timed(func, repeat):
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=405)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temporary folder)")
    parser.add_argument("--results", type=Path, default=None, help="write the table into this markdown file")
    args = parser.parse_args(argv)

    from deeplight_bids.demo.synth import make_synthetic_dataset
    from deeplight_bids.derivatives import integrity

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        dataset = make_synthetic_dataset(work / "bids", n_participants=1, n_volumes=args.volumes, t_r=0.72, seed=0)
        model = random_model(work / "model")
        out = work / "out"
        command = [dataset.bids_dir, out, "participant", "--weights", model, "--skip-bids-validation"]
        command += ["--nprocs", str(args.nprocs)]
        print(f"participant run of {args.volumes} volumes (LRP, quality, GLM) ...", flush=True)
        _, compute_s, _ = run_cli_child(command, work / "run.log")
        n_markers, damaged = rerun_check(out)
        assert not damaged, damaged
        check_s, _ = timed(lambda: rerun_check(out), args.repeat)
        verify_s, (checked, damaged) = timed(lambda: integrity.verify_output_dir(out, out / ".work"), args.repeat)
        assert not damaged, damaged
        text, rerun_s, _ = run_cli_child(command, work / "rerun.log")
        assert "skipped" in text, text[-2000:]
        relevance = next(out.glob("sub-*/func/*_desc-relevance_bold.nii.gz"))
        size_mb = relevance.stat().st_size / 1e6

    rows = [
        ("run's compute (participant job, child wall time)", compute_s, None),
        (
            f"re-run check ({n_markers} markers' records: sizes, checksums, member trailers)",
            check_s,
            check_s / compute_s,
        ),
        (f"--verify ({checked} files: every gzip member decompressed)", verify_s, verify_s / compute_s),
        ("re-run job (child: start-up, model, check; run skipped)", rerun_s, rerun_s / compute_s),
    ]
    lines = [
        SECTION,
        "",
        f"{datetime.date.today()}: `python benchmarks/bench_verify.py --volumes {args.volumes} --nprocs {args.nprocs}` "
        f"on {machine_description()}; per-volume relevance file {size_mb:.0f} MB; files in the page cache.",
        "",
        "| step | seconds | share of compute |",
        "|---|---:|---:|",
    ]
    for name, seconds, share in rows:
        lines.append(f"| {name} | {seconds:.3f} | {'' if share is None else f'{100 * share:.2f} %'} |")
    verdict = "met" if check_s / compute_s <= TARGET else "NOT met"
    lines += ["", f"Goal: re-run check <= {100 * TARGET:.0f} % of the run's compute: {verdict}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.results is not None:
        update_section(args.results, SECTION, text)


if __name__ == "__main__":
    main()

"""Cost of the quality measures: one participant run with and without ``--no-quality``, side by side.

Usage::

    python benchmarks/bench_quality.py [--volumes 405] [--quality-volumes N] [--results benchmarks/RESULTS.md]

A synthetic dataset (1 participant, ``--volumes`` volumes, TR 0.72 s, reference grid) and a
random-weight 3D-DeepLight (the speed does not depend on the weights) are made in a
temporary folder; then ``deeplight-bids BIDS OUT participant`` runs twice in child processes,
first with ``--no-quality``, then with the quality measures (default), each into its own
output folder.  Reported: both wall times and CPU times (user + system of the child), the
overhead (with / without - 1; the CPU-time overhead does not depend on how busy a shared machine
is), the quality step's own time (from its log line) against the decode + LRP time of the same
run (the sum of its batch times, logged with ``-vv``; issue 27's target: the quality step <= 15 %
of a 405-volume run's decode + LRP), and the machine's load average before and after (a busy
machine slows both runs).
``--quality-volumes`` defaults to the participant level's default.  Written under ``## Quality`` in ``--results``.
"""

import argparse
import datetime
import os
import re
import resource
import sys
import tempfile
from pathlib import Path

from _results import (  # benchmarks/_results.py
    machine_description,
    run_cli_child,
    update_section,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for the test helper
from tests.models.legacy_h5 import randomise_weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=405, help="volumes of the run (HCP WM: 405, MOTOR: 284)")
    parser.add_argument("--quality-volumes", type=int, default=None, help="default: the participant level's")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)

    from deeplight_bids.quality.faithfulness import FRACTIONS
    from deeplight_bids.quality.run_quality import DEFAULT_VOLUMES

    if args.quality_volumes is None:
        args.quality_volumes = DEFAULT_VOLUMES

    def children_cpu():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    from deeplight_bids.demo.synth import make_synthetic_dataset
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.weights import save_model

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = make_synthetic_dataset(tmp / "bids", n_participants=1, n_volumes=args.volumes, t_r=0.72)
        states = sorted(set(dataset.state_map.values()))
        save_model(
            randomise_weights(build_3d_deeplight(n_states=len(states)), seed=3),
            tmp / "model" / "rand3d.keras",
            {"architecture": "3D", "states": states, "name": "rand3d"},
        )
        common = ["participant", "--skip-bids-validation", "--weights", tmp / "model", "--batch-size", 4]
        cpu = children_cpu()
        _, without_s, without_rss = run_cli_child(
            [dataset.bids_dir, tmp / "plain", *common, "--no-quality", "--work-dir", tmp / "work-plain"],
            tmp / "plain.log",
        )
        without_cpu, cpu = children_cpu() - cpu, children_cpu()
        log, with_s, with_rss = run_cli_child(
            [
                dataset.bids_dir,
                tmp / "quality",
                *common,
                "-vv",  # the batch loop's per-batch times (DEBUG lines): decode + LRP
                "--quality-volumes",
                args.quality_volumes,
                "--work-dir",
                tmp / "work-quality",
            ],
            tmp / "quality.log",
        )
        with_cpu = children_cpu() - cpu
    step = re.search(r"quality: area between deletion curves .*\(([0-9.]+) s\)", log)
    step_s = float(step.group(1)) if step else float("nan")
    decode_lrp_s = sum(float(t) for t in re.findall(r"volumes \d+-\d+ of \d+ \(([0-9.]+) s/batch\)", log))
    share = step_s / decode_lrp_s if decode_lrp_s else float("nan")
    load_after = os.getloadavg()
    overhead = with_s / without_s - 1
    overhead_cpu = with_cpu / without_cpu - 1
    machine = machine_description()
    lines = [
        "## Quality",
        "",
        (
            f"Date: {datetime.date.today()}. Machine: {machine}. Command: `python benchmarks/bench_quality.py "
            f"--volumes {args.volumes} --quality-volumes {args.quality_volumes}`. Load average (1, 5, 15 min) before: "
            f"{', '.join(f'{v:.1f}' for v in load_before)}; after: {', '.join(f'{v:.1f}' for v in load_after)}."
        ),
        "",
        (
            f"One {args.volumes}-volume participant run (3D, random weights, LRP on, batch size 4, synthetic data, TR "
            "0.72 s), each in a fresh child process:"
        ),
        "",
        "| run | wall s | CPU s | peak RSS MiB |",
        "|---|---:|---:|---:|",
        f"| `--no-quality` | {without_s:.0f} | {without_cpu:.0f} | {without_rss:.0f} |",
        f"| quality measures ({args.quality_volumes} volumes) | {with_s:.0f} | {with_cpu:.0f} | {with_rss:.0f} |",
        "",
        (
            f"Overhead: {overhead:+.0%} in wall time, {overhead_cpu:+.0%} in CPU time; the quality step itself "
            f"took {step_s:.0f} s wall (deletion curves: {args.quality_volumes} x {2 * (len(FRACTIONS) - 1)} forward "
            f"passes, the unperturbed logits come from the decoding pass; the maps of {args.quality_volumes} randomised "
            f"copies, one per volume; Spearman and SSIM): **{share:.1%} of the run's decode + LRP** ({decode_lrp_s:.0f} s, "
            f"the sum of its batch times; {'within' if share <= 0.15 else 'OVER'} the 15 % target)."
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    update_section(args.results, "## Quality", text)


if __name__ == "__main__":
    main()

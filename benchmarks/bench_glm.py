"""Cost of the evidence beside the maps: the GLM of a run beside its decode + LRP, the linear baseline beside
DeepLight's fit (issue 26).

Usage::

    python benchmarks/bench_glm.py [--volumes 405] [--ft-participants 4] [--ft-volumes 60] [--epochs 2]
                                   [--cv-folds 2] [--nprocs 2] [--skip-glm] [--skip-linear] [--keep DIR]
                                   [--results benchmarks/RESULTS.md]

1. **GLM vs decode + LRP of one run**: a synthetic run of ``--volumes`` volumes (TR 0.72 s, the
   HCP length by default) on the reference grid, processed by ``deeplight-bids BIDS OUT
   participant`` in a child process (``--nprocs``, random-weight 3D-DeepLight saved as ``.keras``:
   the speed does not depend on the values; ``--no-quality``, ``--relevance-maps means``, ``-vv``).
   Decode + LRP = the sum of the per-batch times the run logs (the network pass and the
   relevance, nothing else); the run's own time (preparation, decode, LRP, writing) is shown too.
   GLM = the GLM stage's total for the run (reading and smoothing the BOLD, the fit, writing the
   maps), logged by the same child, once with ``--glm-noise-model ols`` (the default) and once
   with ``ar1`` (a second child: the decoded run is reused, only the GLM is refitted).  Target:
   GLM <= 25 % of decode + LRP.
2. **Linear baseline vs DeepLight's fit**: ``group --finetune --init scratch`` of 3D-DeepLight on a
   synthetic dataset (``--ft-participants`` x ``--ft-volumes``, ``--epochs``, ``--cv-folds``) in a
   child; both fit times per fold from ``models/<name>/<name>_desc-linear_summary.json``.  Target:
   linear <= 10 % of DeepLight's fit.

Both parts print side-by-side tables and are written to ``--results`` under ``## GLM and linear
baseline``.  Timings on a shared machine are not comparable: run it on a quiet one.
"""

import argparse
import datetime
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from _results import machine_description, run_cli_child, update_section  # benchmarks/_results.py

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))
from tests.models.legacy_h5 import randomise_weights  # noqa: E402  (random weights + BN statistics)

SECTION = "## GLM and linear baseline"
GLM_TARGET = 0.25
LINEAR_TARGET = 0.10


def random_model(folder, states):
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.weights import save_model

    save_model(
        randomise_weights(build_3d_deeplight(n_states=len(states)), seed=3),
        Path(folder) / "rand3d.keras",
        {"architecture": "3D", "states": list(states), "name": "rand3d"},
    )
    return Path(folder)


def glm_part(workdir, n_volumes, nprocs):
    """Decode + LRP and the GLM (ols, then ar1) of one run; returns a dict of seconds."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    dataset = make_synthetic_dataset(workdir / "bids", n_participants=1, n_volumes=n_volumes, t_r=0.72, seed=0)
    model = random_model(workdir / "model", sorted(set(dataset.state_map.values())))
    out = workdir / "out"
    common = [dataset.bids_dir, out, "participant", "--skip-bids-validation", "--weights", model]
    common += ["--work-dir", workdir / "work", "--nprocs", nprocs, "--no-quality", "--relevance-maps", "means", "-vv"]
    result = {"n_volumes": n_volumes}
    for noise in ("ols", "ar1"):
        text, elapsed, rss = run_cli_child([*common, "--glm-noise-model", noise], workdir / f"glm-{noise}.log")
        glm = re.search(r"GLM: .*?read ([\d.]+) s, fit ([\d.]+) s, total ([\d.]+) s", text)
        if glm is None:
            raise SystemExit(f"no GLM line in {workdir / f'glm-{noise}.log'}")
        result[f"glm_{noise}"] = {"read_s": float(glm[1]), "fit_s": float(glm[2]), "total_s": float(glm[3])}
        if noise == "ols":  # the first child decodes and explains; the second reuses the run
            batches = [float(m) for m in re.findall(r"\(([\d.]+) s/batch\)", text)]
            done = re.search(r": done \(\d+ volumes.*?, ([\d.]+) s\)", text)
            result["decode_lrp_s"] = float(np.sum(batches))
            result["run_s"] = float(done[1]) if done else None
            result["child_s"], result["peak_rss_mib"] = elapsed, rss
    for noise in ("ols", "ar1"):
        result[f"glm_{noise}"]["share"] = result[f"glm_{noise}"]["total_s"] / result["decode_lrp_s"]
    return result


def linear_part(workdir, n_participants, n_volumes, epochs, cv_folds, nprocs):
    """DeepLight's fit and the linear baseline's per fold; returns the linear summary's numbers."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    dataset = make_synthetic_dataset(
        workdir / "ft-bids", n_participants=n_participants, n_volumes=n_volumes, seed=3, signal=4.0, region_radius=16.0
    )
    out = workdir / "ft-out"
    args = [dataset.bids_dir, out, "group", "--finetune", "--init", "scratch", "--architecture", "3D"]
    args += ["--epochs", epochs, "--work-dir", workdir / "ft-work", "--nprocs", nprocs, "--skip-bids-validation"]
    args += ["--model-name", "bench"] + (["--cv-folds", cv_folds] if cv_folds else [])
    _, elapsed, _ = run_cli_child(args, workdir / "finetune.log")
    summary = json.loads((out / "models" / "bench" / "bench_desc-linear_summary.json").read_text())
    return {
        "child_s": elapsed,
        "folds": [
            {k: f[k] for k in ("fold", "seconds_deeplight", "seconds_linear", "accuracy_deeplight", "accuracy_linear")}
            for f in summary["folds"]
        ],
        "seconds_deeplight_fit": summary["seconds_deeplight_fit"],
        "seconds_linear": summary["seconds_linear"],
        "share": summary["cost_ratio"],
        "n_volumes": summary["n_volumes"],
    }


def _verdict(share, target):
    return f"{100 * share:.1f} % ({'within' if share <= target else 'OVER'} the {100 * target:.0f} % target)"


def format_results(glm, linear, machine, command):
    lines = [SECTION, "", f"{datetime.datetime.now():%Y-%m-%d %H:%M} on {machine}.", f"Command: `{command}`.", ""]
    if glm:
        lines += [
            f"GLM beside decode + LRP, one {glm['n_volumes']}-volume run (TR 0.72 s, random-weight 3D-DeepLight, "
            "batch 4): decode + LRP = the run's per-batch times summed; GLM = reading and smoothing the BOLD, the "
            "fit and writing its maps.",
            "",
            "| step | seconds | share of decode + LRP |",
            "|---|---:|---:|",
            f"| decode + LRP (network) | {glm['decode_lrp_s']:.1f} | 100 % |",
            f"| the run (preparation, decode, LRP, writing) | {glm['run_s']:.1f} | "
            f"{100 * glm['run_s'] / glm['decode_lrp_s']:.0f} % |",
        ]
        for noise in ("ols", "ar1"):
            g = glm[f"glm_{noise}"]
            lines.append(
                f"| GLM, {noise} (read {g['read_s']:.1f} + fit {g['fit_s']:.1f} + write) | {g['total_s']:.1f} | "
                f"{_verdict(g['share'], GLM_TARGET)} |"
            )
        lines.append("")
    if linear:
        lines += [
            f"Linear baseline beside DeepLight's fit (`group --finetune --init scratch`, 3D, {linear['n_volumes']} "
            "held-out volumes in all):",
            "",
            "| fold | DeepLight fit (s) | linear (s) | accuracy DeepLight | accuracy linear |",
            "|---|---:|---:|---:|---:|",
        ]
        for f in linear["folds"]:
            lines.append(
                f"| {f['fold']} | {f['seconds_deeplight']:.1f} | {f['seconds_linear']:.1f} | "
                f"{f['accuracy_deeplight']:.3f} | {f['accuracy_linear']:.3f} |"
            )
        lines += [
            f"| all | {linear['seconds_deeplight_fit']:.1f} | {linear['seconds_linear']:.1f} | | |",
            "",
            f"Linear baseline: {_verdict(linear['share'], LINEAR_TARGET)} of DeepLight's fit.",
            "",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=405, help="volumes of the run of part 1")
    parser.add_argument("--ft-participants", type=int, default=4)
    parser.add_argument("--ft-volumes", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cv-folds", type=int, default=2)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--skip-glm", action="store_true")
    parser.add_argument("--skip-linear", action="store_true")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--results", type=Path, help="also write the section into this markdown file")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_glm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="bench_glm_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        glm = None if args.skip_glm else glm_part(workdir, args.volumes, args.nprocs)
        linear = (
            None
            if args.skip_linear
            else linear_part(workdir, args.ft_participants, args.ft_volumes, args.epochs, args.cv_folds, args.nprocs)
        )
    text = format_results(glm, linear, machine_description(), command.strip())
    print(text)
    if args.results:
        update_section(args.results, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU check: parity with a CPU reference, decode / LRP throughput under JAX and PyTorch, one participant run.

Meant for a machine with one NVIDIA GPU, JAX and/or PyTorch with CUDA, and neither
TensorFlow nor internet (``benchmarks/gpu_check.sh`` installs the carried wheels first).
Every stage runs in its own child process (Keras fixes its backend per process), inside
try/except: a failing stage writes its error into the results and the next one runs.
The results (``gpu_check.json`` and ``gpu_check.md``) are rewritten after every stage.

Stages, per backend (jax, torch) that imports:

1. ``parity``: ``benchmarks/parity_cases.py --grid small`` under the backend, compared
   with ``tests/data/parity_reference_small.npz`` (made with TensorFlow on CPU by
   ``python benchmarks/gpu_check.py --make-reference``): logits (relative) and relevance
   (of max |R|) for 3D preset B-flat and 2D ``deeplight_2d`` / ``deeplight_2d_signed``;
2. ``throughput``: full-grid 3D and 2D decode and decode + LRP volumes/s at batch 1, 8,
   32, 128 (best of ``--repeats`` after a warm-up call) and the peak GPU memory;
3. ``participant``: a 405-volume synthetic run (``deeplight_bids.demo.synth``)
   end to end with ``--backend jax`` (random 3D weights), wall time and its parts.

``--dry-run``: tiny grid, batches 1 and 2, a 30-volume run without LRP: for checking the
script on CPU (JAX's CPU 3D convolutions are far slower than TensorFlow's; use TensorFlow on CPU).
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REFERENCE = REPO / "tests" / "data" / "parity_reference_small.npz"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

FULL_3D = (91, 109, 91, 1)
FULL_2D = (91, 109, 91, 1)
TINY = {"3d": (8, 10, 8, 1), "2d": (4, 16, 12, 1)}
PARITY_LIMITS = {"logits_rel": 1e-5, "relevance_of_max": {"3d": 2e-3, "2d": 1e-4, "2d_signed": 1e-4}}


# -- children -------------------------------------------------------------------------------


def _peak_gpu_bytes():
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        return int(stats.get("peak_bytes_in_use", 0)) if stats else None
    return None


def _reset_peak():
    import keras

    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def throughput_child(arch, batches, repeats, dry_run):
    """One JSON line per batch size: decode and decode + LRP volumes/s, peak GPU memory."""
    from deeplight_bids import backend
    from deeplight_bids.lrp.analyzer import LRPAnalyzer
    from deeplight_bids.models.decode import Decoder
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.two import build_2d_deeplight
    from parity_cases import randomise

    shape = TINY[arch] if dry_run else (FULL_3D if arch == "3d" else FULL_2D)
    if arch == "3d":
        model, composite = randomise(build_3d_deeplight(n_states=16, input_shape=shape), seed=3), "preset_b_flat"
    else:
        model, composite = randomise(build_2d_deeplight(n_states=16, input_shape=shape), seed=4), "deeplight_2d"
    decoder = Decoder(model)  # no max_batch: the whole batch per call, as on a GPU
    analyzer = LRPAnalyzer(model, composite=composite)
    rng = np.random.default_rng(0)
    for batch in batches:
        row = {"arch": arch, "batch": batch, "backend": backend.name(), "gpu": backend.has_gpu()}
        try:
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            _reset_peak()
            start = time.perf_counter()
            decoder.logits(x)
            row["decode_first_s"] = time.perf_counter() - start
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                decoder.logits(x)
                times.append(time.perf_counter() - start)
            row["decode_vol_s"] = batch / min(times)
            start = time.perf_counter()
            _, relevance = analyzer.explain(x)
            row["lrp_first_s"] = time.perf_counter() - start
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                analyzer.explain(x)
                times.append(time.perf_counter() - start)
            row["lrp_vol_s"] = batch / min(times)
            row["relevance_finite"] = bool(np.isfinite(relevance).all())
            peak = _peak_gpu_bytes()
            row["peak_gpu_mib"] = None if peak is None else peak / 2**20
        except Exception as err:  # noqa: BLE001 (e.g. out of GPU memory at batch 128: record it, go on)
            row["error"] = f"{type(err).__name__}: {str(err)[:500]}"
        print(json.dumps(row), flush=True)


# -- stages (parent) ------------------------------------------------------------------------


def run_child(args, backend, timeout):
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return rows, proc


def stage_parity(backend, out_dir, dry_run):
    from parity_cases import compare

    if not REFERENCE.is_file():
        raise FileNotFoundError(
            f"{REFERENCE} missing; make it with TensorFlow: python benchmarks/gpu_check.py --make-reference"
        )
    target = Path(out_dir) / f"parity_{backend}.npz"
    run_child([HERE / "parity_cases.py", "--grid", "small", "--out", target], backend, 900)
    numbers = compare(np.load(REFERENCE), np.load(target))
    ok = all(
        v["logits_rel"] < PARITY_LIMITS["logits_rel"]
        and v["relevance_of_max"] < PARITY_LIMITS["relevance_of_max"][case]
        for case, v in numbers.items()
    )
    return {"ok": ok, "limits": PARITY_LIMITS, "cases": numbers}


def stage_throughput(backend, arch, batches, repeats, dry_run):
    extra = ["--dry-run"] if dry_run else []
    rows, _ = run_child(
        [Path(__file__), "--child-throughput", arch, "--batches", *batches, "--repeats", repeats, *extra],
        backend,
        600 if not dry_run else 300,
    )
    return rows


def stage_participant(out_dir, n_volumes, batch_size, dry_run):
    """Synthetic dataset + random 3D model (made here), then the CLI with --backend jax; times."""
    from deeplight_bids.demo.synth import make_synthetic_dataset

    work = Path(tempfile.mkdtemp(prefix="gpucheck-", dir=out_dir))
    start = time.perf_counter()
    dataset = make_synthetic_dataset(work / "bids", n_participants=1, n_volumes=n_volumes, t_r=0.72)
    made_s = time.perf_counter() - start
    states = sorted(set(dataset.state_map.values()))
    model_dir = work / "model"
    maker = (
        "import sys; from parity_cases import randomise; from deeplight_bids.models.three import build_3d_deeplight; "
        "from deeplight_bids.models.weights import save_model; "
        f"save_model(randomise(build_3d_deeplight(n_states={len(states)}), seed=3), sys.argv[1], "
        f"{{'architecture': '3D', 'states': {states!r}, 'name': 'rand3d'}})"
    )
    run_child(["-c", maker, model_dir / "rand3d.keras"], "jax", 600)
    args = [
        "-m",
        "deeplight_bids",
        dataset.bids_dir,
        work / "out",
        "participant",
        "--backend",
        "jax",
        "--skip-bids-validation",
        "--weights",
        model_dir,
        "--work-dir",
        work / "work",
        "--batch-size",
        batch_size,
        "-vv",
    ]  # -vv: the per-batch "(x s/batch)" lines are debug lines
    if dry_run:  # XLA's CPU 3D convolutions take ~50 s per volume for LRP on the full grid: decode only
        args.append("--no-lrp")
    start = time.perf_counter()
    _, proc = run_child(args, "jax", 900)
    run_s = time.perf_counter() - start
    log = proc.stderr
    batch_times = [float(m) for m in re.findall(r"\(([\d.]+) s/batch\)", log)]
    prep = re.search(r"done \((\d+) volumes.*?, ([\d.]+) s\)", log)
    sidecar = next((work / "out").rglob("*desc-predictions_timeseries.json"), None)
    backend_recorded = json.loads(sidecar.read_text()).get("ComputeBackend") if sidecar else None
    return {
        "n_volumes": n_volumes,
        "batch_size": batch_size,
        "dataset_made_s": made_s,
        "run_s": run_s,
        "network_s": float(np.sum(batch_times)) if batch_times else None,
        "run_detail_s": float(prep.group(2)) if prep else None,
        "preparation_and_io_share": (1 - float(np.sum(batch_times)) / run_s) if batch_times else None,
        "sidecar_backend": backend_recorded,
        "log_tail": log[-1500:],
    }


def environment():
    info = {"python": platform.python_version(), "machine": platform.machine(), "packages": {}}
    for name in ("jax", "jaxlib", "torch", "keras", "numpy", "tensorflow"):
        try:
            module = __import__(name)
            info["packages"][name] = getattr(module, "__version__", "?")
        except Exception as err:  # noqa: BLE001 (any import failure is a finding)
            info["packages"][name] = f"not importable ({type(err).__name__})"
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except Exception as err:  # noqa: BLE001
        info["nvidia_smi"] = f"unavailable ({type(err).__name__})"
    return info


def markdown(results):
    lines = [
        f"# GPU check ({results['started']}{', DRY RUN' if results['dry_run'] else ''})",
        "",
        f"Environment: `{json.dumps(results.get('environment', {}))}`",
        "",
    ]
    for key, value in results["stages"].items():
        if key.startswith("parity") and "cases" in value:
            lines.append(f"## {key}: {'ok' if value['ok'] else 'OUTSIDE LIMITS'}")
            lines += ["| case | logits rel | relevance / max | Pearson r |", "|---|---:|---:|---:|"]
            lines += [
                f"| {c} | {v['logits_rel']:.2e} | {v['relevance_of_max']:.2e} | {v['pearson_r']:.7f} |"
                for c, v in value["cases"].items()
            ]
        elif key.startswith("throughput") and isinstance(value, list):
            lines.append(f"## {key}")
            lines += [
                "| batch | decode vol/s | decode + LRP vol/s | peak GPU MiB | error |",
                "|---:|---:|---:|---:|---|",
            ]
            for r in value:
                peak = r.get("peak_gpu_mib")
                lines.append(
                    f"| {r['batch']} | {r.get('decode_vol_s', float('nan')):.1f} | "
                    f"{r.get('lrp_vol_s', float('nan')):.1f} | {'' if peak is None else f'{peak:.0f}'} | "
                    f"{r.get('error', '')} |"
                )
        elif key.startswith("participant") and "run_s" in value:
            lines.append(f"## {key}")
            lines.append(
                f"{value['n_volumes']} volumes, batch {value['batch_size']}: {value['run_s']:.1f} s end to end "
                f"(network {value['network_s'] or float('nan'):.1f} s; preparation, I/O and start-up share "
                f"{value['preparation_and_io_share'] or float('nan'):.0%}); sidecar backend "
                f"{value['sidecar_backend']}"
            )
        else:
            lines.append(f"## {key}: ERROR")
            lines.append(f"```\n{value.get('error', value) if isinstance(value, dict) else value}\n```")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="results folder ($OUT)")
    parser.add_argument("--backends", nargs="+", default=["jax", "torch"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--volumes", type=int, default=405, help="volumes of the participant run")
    parser.add_argument("--run-batch-size", type=int, default=32)
    parser.add_argument("--dry-run", action="store_true", help="tiny grid and batches (checks the script on CPU)")
    parser.add_argument(
        "--make-reference",
        action="store_true",
        help=f"write {REFERENCE.relative_to(REPO)} with TensorFlow (CPU) and exit",
    )
    parser.add_argument("--child-throughput", choices=("3d", "2d"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_throughput:
        throughput_child(args.child_throughput, args.batches, args.repeats, args.dry_run)
        return 0
    if args.make_reference:
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        run_child([HERE / "parity_cases.py", "--grid", "small", "--out", REFERENCE], "tensorflow", 900)
        print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size / 1024:.0f} KiB)")
        return 0

    if args.dry_run:
        args.batches, args.repeats, args.volumes, args.run_batch_size = [1, 2], 1, 30, 4
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run, "stages": {}}

    def flush():
        (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
        (out_dir / "gpu_check.md").write_text(markdown(results))

    def stage(key, fn, *fn_args):
        start = time.perf_counter()
        try:
            results["stages"][key] = fn(*fn_args)
        except Exception as err:  # noqa: BLE001 (one failing stage must not lose the others)
            results["stages"][key] = {
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-3000:],
            }
        print(f"{key}: {time.perf_counter() - start:.1f} s", flush=True)
        flush()

    results["environment"] = environment()
    flush()
    backends = [
        b
        for b in args.backends
        if not str(results["environment"]["packages"].get({"jax": "jax", "torch": "torch"}[b], "")).startswith(
            "not importable"
        )
    ]
    for backend in backends:
        stage(f"parity_{backend}", stage_parity, backend, out_dir, args.dry_run)
    for backend in backends:
        for arch in ("3d", "2d"):
            stage(
                f"throughput_{backend}_{arch}",
                stage_throughput,
                backend,
                arch,
                args.batches,
                args.repeats,
                args.dry_run,
            )
    if "jax" in backends:
        stage("participant_jax", stage_participant, out_dir, args.volumes, args.run_batch_size, args.dry_run)
    print((out_dir / "gpu_check.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

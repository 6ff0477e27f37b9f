"""Cost of every attribution method beside decoding, and of ``--compare-attributions`` on one run's volumes.

Usage::

    python benchmarks/bench_attributions.py [--batch 4] [--rounds 3] [--ig-steps 32] [--smoothgrad-samples 16]
                                            [--comparison-volumes 8] [--results benchmarks/RESULTS.md]

One process, 3D-DeepLight on the full reference grid (random weights with non-trivial batch
normalisation; the speed does not depend on the weights), ``--batch`` seeded volumes.  Every
method's explainer and the decoder are built and warmed up once (their functions traced),
then timed in ``--rounds`` rounds, the methods in turn within a round so that all see the same
machine load; the best round of each counts.  Reported per method: seconds per volume, the
ratio to decoding, and the targets of issue 25: gradient and gradient x input <= 3.5 x
decoding; integrated gradients and SmoothGrad within 15 % of (steps or samples) x the
gradient's cost; the LRP composites within 15 % of the published preset B-flat.  Then, unless
``--comparison-volumes 0``, :class:`~deeplight_bids.quality.compare.AttributionComparison` of
the standard set on that many volumes (one run's comparison at the defaults), its wall time.
Written under ``## Attribution methods`` in ``--results``.
"""

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import machine_description, update_section  # benchmarks/_results.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECTION = "## Attribution methods"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="volumes per call (the participant level's batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--smoothgrad-samples", type=int, default=16)
    parser.add_argument("--comparison-volumes", type=int, default=8, help="0: skip the comparison")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (default: all cores)")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from bench_3d import build_random_model

    from deeplight_bids.attribution.methods import METHODS, STANDARD_SET, get_method, resolve
    from deeplight_bids.models.decode import Decoder

    model = build_random_model(n_states=3)
    x = np.random.default_rng(0).standard_normal((args.batch, 91, 109, 91, 1)).astype(np.float32)
    parameters = {"steps": args.ig_steps, "samples": args.smoothgrad_samples, "noise": 0.2, "seed": 0}
    names = [n for n, m in METHODS.items() if "3D" in m.architectures]
    explainers = {n: get_method(n).explainer(model, **parameters) for n in names}
    decoder = Decoder(model, max_batch=4)
    calls = {"decode": lambda: decoder.logits(x), **{n: (lambda e=e: e.explain(x)) for n, e in explainers.items()}}
    # The gradient over as many network passes as one volume of integrated gradients or SmoothGrad makes (8
    # volumes per input volume, in calls of --batch): their floor is steps (samples) x the gradient's cost
    # *sustained* over many passes, which one call of --batch volumes (a fraction of a second) underestimates.
    repeats = 8
    x_long = np.concatenate([x] * repeats)
    calls["gradient, sustained"] = lambda: explainers["gradient"].explain(x_long)
    volumes_of = {"gradient, sustained": len(x_long)}
    for name, call in calls.items():  # warm-up: trace every function once
        t0 = time.perf_counter()
        call()
        print(f"warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    best = {name: float("inf") for name in calls}
    for r in range(args.rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t0)
        print(
            f"round {r + 1}: " + ", ".join(f"{n} {best[n] / volumes_of.get(n, args.batch):.3f}" for n in calls),
            flush=True,
        )
    per_volume = {name: seconds / volumes_of.get(name, args.batch) for name, seconds in best.items()}
    decode, gradient, published = per_volume["decode"], per_volume["gradient"], per_volume["preset_b_flat"]
    sustained = per_volume["gradient, sustained"]
    targets = {
        "gradient": ("<= 3.5 x decoding", per_volume["gradient"] / decode <= 3.5),
        "gradient_x_input": ("<= 3.5 x decoding", per_volume["gradient_x_input"] / decode <= 3.5),
        "integrated_gradients": (
            f"<= 1.15 x {args.ig_steps} x gradient, sustained ({per_volume['integrated_gradients'] / (args.ig_steps * sustained):.2f})",
            per_volume["integrated_gradients"] <= 1.15 * args.ig_steps * sustained,
        ),
        "smoothgrad": (
            f"<= 1.15 x {args.smoothgrad_samples} x gradient, sustained "
            f"({per_volume['smoothgrad'] / (args.smoothgrad_samples * sustained):.2f})",
            per_volume["smoothgrad"] <= 1.15 * args.smoothgrad_samples * sustained,
        ),
        **{
            n: ("<= 1.15 x preset_b_flat", per_volume[n] <= 1.15 * published)
            for n in ("epsilon", "epsilon_plus", "alpha2_beta1")
        },
    }
    lines = [
        "| method | s / volume | x decoding | x gradient | x preset_b_flat | target | met |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, seconds in per_volume.items():
        target, met = targets.get(name, ("", None))
        lines.append(
            f"| {name} | {seconds:.3f} | {seconds / decode:.2f} | {seconds / gradient:.2f} | "
            f"{seconds / published:.2f} | {target} | {'' if met is None else ('yes' if met else 'NO')} |"
        )
    comparison = ""
    if args.comparison_volumes:
        from deeplight_bids.derivatives import naming
        from deeplight_bids.quality.compare import AttributionComparison

        n = max(args.comparison_volumes, 2)
        volumes = np.random.default_rng(1).standard_normal((n, 91, 109, 91, 1)).astype(np.float32)
        mask = np.zeros((91, 109, 91), bool)
        mask[10:80, 10:100, 10:80] = True
        volumes[:, ~mask] = 0
        methods = [resolve(m, "3D") for m in STANDARD_SET]
        with tempfile.TemporaryDirectory() as tmp:
            comp = AttributionComparison(
                model, methods, "preset_b_flat", decoder, n_volumes=n, seed=0, parameters=parameters
            )
            logits = decoder.logits(volumes)
            t0 = time.perf_counter()
            comp.evaluate(
                naming.run_outputs(tmp, {"subject": "01", "task": "x"}),
                lambda a, b: volumes[a:b],
                np.flatnonzero(mask.ravel()),
                logits,
                logits.argmax(axis=1),
                ("a", "b", "c"),
                [0, 1, 2],
                root=tmp,
            )
            seconds = time.perf_counter() - t0
        comparison = (
            f"\n`--compare-attributions` (standard set, {n} volumes, --ig-steps {args.ig_steps}, "
            f"--smoothgrad-samples {args.smoothgrad_samples}, 3 states): **{seconds:.0f} s** "
            f"({seconds / 60:.1f} min; target: under 10 min on 2 cores).\n"
        )
    load = os.getloadavg()
    text = (
        f"{SECTION}\n\nDate: {datetime.datetime.now():%Y-%m-%d %H:%M}. {machine_description()}. "
        f"Command: `python benchmarks/bench_attributions.py --batch {args.batch} --rounds {args.rounds}` "
        f"(best of {args.rounds} rounds, methods in turn; load average after: {load[0]:.2f}).\n\n"
        + "\n".join(lines)
        + "\n\n"
        + f"`gradient, sustained`: the gradient of {len(x_long)} volumes in {len(x_long) // args.batch} calls of "
        f"{args.batch}, the floor that integrated gradients and SmoothGrad are held to (each volume of theirs is "
        f"{args.ig_steps} or {args.smoothgrad_samples} gradient passes); `gradient` is one call of {args.batch}.\n"
        + comparison
    )
    print(text)
    if args.results:
        update_section(args.results, SECTION, text)


if __name__ == "__main__":
    main()

"""Precision of the per-run quality figures against their cost: how many volumes and fractions they need.

Usage::

    python benchmarks/bench_quality_precision.py DEMO_OUTPUT [--extra-volumes 96] [--seeds 0 1 2]
                                                 [--work DIR] [--results benchmarks/RESULTS.md]

``DEMO_OUTPUT`` is a finished ``deeplight-bids demo`` folder (its dataset and trained model
``models/demo-3D``).  Measured runs: the demo's held-out participant (60 volumes) and, with
``--extra-volumes N``, one more participant of N volumes written with the demo's planted regions
and another seed (``--extra-seed``), both decoded and explained by the demo's model.  For every
volume of each run, in one process, with the participant level's own functions:

* the deletion curves (:func:`deeplight_bids.quality.faithfulness.deletion_curves`) on a fine grid of
  removed fractions (:data:`FINE`, a superset of the default's), so that any subset of fractions can be
  evaluated from the same forward passes;
* the randomised model's maps for each ``--seeds`` (:func:`deeplight_bids.quality.sanity.randomized_copy`,
  explained by the same method) and :func:`~deeplight_bids.quality.sanity.compare_maps` with the
  trained model's maps.

Then, per run, the standard error of each reported figure for ``n`` volumes chosen as the
participant level chooses them (stratified by predicted state, :func:`.faithfulness.select_volumes`),
by a bootstrap with replacement within each predicted state (``--bootstrap`` draws; so the figures
hold for long runs, not only for the short one measured): the area between the deletion curves for
several fraction sets (with the discretisation error of each set against the fine grid, on all
volumes), and the median Spearman and SSIM against the randomised model (plus their spread over
randomisation seeds, which more volumes do not reduce).  Costs: the measured seconds per volume of
a perturbed forward pass, of the randomised model's maps and of the map comparison, and the decode +
LRP time per volume of the same run, so the quality pass of ``n`` volumes can be set against a
405-volume run's decode + LRP (measured side by side in this process; on a busy machine only the
ratios mean anything).  The per-volume tables are kept in ``--work`` (re-analysed without
recomputing with ``--analyse-only``).  Written under ``## Quality precision`` in ``--results``.
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _results import machine_description, update_section  # benchmarks/_results.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECTION = "## Quality precision"
#: Removed fractions measured (a superset of every set evaluated below).
FINE = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.10, 0.15, 0.20, 0.275, 0.35, 0.425, 0.50)
#: Fraction sets evaluated (subsets of FINE), by name.
FRACTION_SETS = {
    "fine (14)": FINE,
    "default before (8)": (0.0, 0.01, 0.02, 0.05, 0.10, 0.20, 0.35, 0.50),
    "6": (0.0, 0.02, 0.05, 0.10, 0.20, 0.50),
    "5": (0.0, 0.02, 0.05, 0.20, 0.50),
    "4": (0.0, 0.05, 0.20, 0.50),
    "default now (4)": (0.0, 0.02, 0.10, 0.50),
}
VOLUME_COUNTS = (4, 6, 8, 12, 16, 24, 32)
#: Runs used to compare the cost: a 405-volume run (HCP MOTOR has 284, WM 405).
REFERENCE_RUN_VOLUMES = 405


def _run_paths(bids, subject):
    func = Path(bids) / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
    bold = next(func.glob("*desc-preproc_bold.nii.gz"))
    mask = next(func.glob("*desc-brain_mask.nii.gz"))
    t_r = json.loads(bold.with_name(bold.name.replace(".nii.gz", ".json")).read_text())["RepetitionTime"]
    return bold, mask, float(t_r)


def measure_run(name, bids, subject, model_dir, seeds, work, log):
    """Every volume's deletion curves (fine grid) and sanity measures per seed; timings. Written to ``work``."""
    from deeplight_bids.attribution.methods import resolve
    from deeplight_bids.models.batches import ModelOrderBatches
    from deeplight_bids.models.decode import Decoder, network_batch_limit
    from deeplight_bids.models.weights import load_deeplight
    from deeplight_bids.prepare.clean import prepare_run
    from deeplight_bids.quality import faithfulness, sanity

    dl = load_deeplight(model_dir, "3D")
    max_batch = network_batch_limit()
    decoder = Decoder(dl.model, max_batch=max_batch)
    analyzer = resolve("published", "3D").explainer(dl.model, max_batch=max_batch)
    bold, mask, t_r = _run_paths(bids, subject)
    prepared = prepare_run(bold, mask, t_r)
    batches = ModelOrderBatches(prepared)
    n = prepared.n_volumes
    times = {}
    # decode + LRP of every volume, as the participant level's batch loop does (batch 4); the first batch traces
    x0 = batches.get(0, 4)
    analyzer.explain(x0)
    t0 = time.perf_counter()
    logits, maps = [], []
    for start in range(0, n, 4):
        x = batches.get(start, min(start + 4, n))
        batch_logits, relevance = analyzer.explain(x)
        logits.append(batch_logits)
        maps.append(relevance.astype(np.float32))
    times["decode_lrp_per_volume"] = (time.perf_counter() - t0) / n
    logits, maps = np.concatenate(logits), np.concatenate(maps)
    targets = logits.argmax(axis=1)
    log(f"{name}: {n} volumes decoded and explained ({times['decode_lrp_per_volume']:.2f} s per volume)")

    volumes = np.arange(n)
    work.mkdir(parents=True, exist_ok=True)
    curves_path, sanity_path, info_path = (
        work / f"{name}_{kind}" for kind in ("curves.tsv", "sanity.tsv", "info.json")
    )
    if curves_path.is_file() and info_path.is_file():  # measured before: only the seeds not yet measured
        curves = pd.read_csv(curves_path, sep="\t")
        times["forward_per_pass"] = json.loads(info_path.read_text())["times"]["forward_per_pass"]
    else:
        t0 = time.perf_counter()
        curves = faithfulness.deletion_curves(
            decoder.logits,
            volumes,
            lambda v: batches.get(int(v), int(v) + 1)[0],
            lambda v: maps[int(v)],
            targets,
            batches.index,
            seed=0,
            fractions=FINE,
            known_logits=logits,
        )
        times["forward_per_pass"] = (time.perf_counter() - t0) / (n * 2 * (len(FINE) - 1))
        log(f"{name}: deletion curves ({times['forward_per_pass']:.3f} s per perturbed forward pass)")
    earlier = pd.read_csv(sanity_path, sep="\t") if sanity_path.is_file() else None
    if earlier is not None:
        seeds = [s for s in seeds if s not in set(earlier["seed"])]
    mask_model = np.zeros(maps.shape[1:], bool)
    mask_model.reshape(-1)[batches.index] = True
    rows = []
    times["random_model_s"], times["random_maps_per_volume"], times["compare_per_volume"] = [], [], []
    for seed in seeds:
        explain_s = compare_s = 0.0
        t0 = time.perf_counter()
        random_analyzer = analyzer.for_model(sanity.randomized_copy(dl.model, seed))
        for start in range(0, n, 4):
            part = np.arange(start, min(start + 4, n))
            t1 = time.perf_counter()
            _, random_maps = random_analyzer.explain(
                batches.get(start, part[-1] + 1), target=targets[part].astype(np.int32)
            )
            if start == 0:  # building the copy and tracing its function, with the first maps
                times["random_model_s"].append(time.perf_counter() - t0)
            else:
                explain_s += time.perf_counter() - t1
            t1 = time.perf_counter()
            for j, v in enumerate(part):
                rows.append(
                    {"seed": seed, "volume": int(v), **sanity.compare_maps(maps[v], random_maps[j], mask_model)}
                )
            compare_s += time.perf_counter() - t1
        times["random_maps_per_volume"].append(explain_s / (n - 4))
        times["compare_per_volume"].append(compare_s / n)
        log(
            f"{name}: randomised model, seed {seed}: {explain_s / (n - 4):.2f} s maps + {compare_s / n:.2f} s "
            "comparison per volume"
        )
    curves.to_csv(curves_path, sep="\t", index=False)
    frame = pd.DataFrame(rows)
    if earlier is not None:
        frame = pd.concat([earlier, frame], ignore_index=True)
    frame.to_csv(sanity_path, sep="\t", index=False)
    if info_path.is_file():  # keep the earlier timings of the randomised model, add these
        before = json.loads(info_path.read_text())["times"]
        for key in ("random_model_s", "random_maps_per_volume", "compare_per_volume"):
            times[key] = before[key] + times[key]
    info = {"name": name, "n_volumes": n, "predicted": targets.tolist(), "times": times}
    info_path.write_text(json.dumps(info, indent=1))


def per_volume_area(curves, fractions):
    """Area between the curves of each volume for ``fractions`` (the run's figure is their mean)."""
    sub = curves[curves["fraction"].round(6).isin([round(f, 6) for f in fractions])]
    wide = sub.pivot_table(index=["volume", "fraction"], columns="order", values="logit").reset_index()
    out = {}
    for volume, part in wide.groupby("volume"):
        part = part.sort_values("fraction")
        fr = part["fraction"].to_numpy()
        gap = (part["random"] - part["relevance"]).to_numpy()
        out[int(volume)] = float(np.trapezoid(gap, fr) / (fr[-1] - fr[0]))
    return pd.Series(out).sort_index()


def stratified_draws(predicted, n, draws, rng):
    """``draws`` x ``n`` volume indices: states take turns (as select_volumes), each drawing with replacement."""
    predicted = np.asarray(predicted)
    pools = [np.flatnonzero(predicted == s) for s in np.unique(predicted)]
    per_state = [len(range(k, n, len(pools))) for k in range(len(pools))]
    return np.concatenate([rng.choice(pool, (draws, m), replace=True) for pool, m in zip(pools, per_state)], axis=1)


def analyse(work, names, draws, seed=0):
    """Tables of standard errors per run: area (per fraction set), median Spearman and SSIM, per volume count."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        info = json.loads((work / f"{name}_info.json").read_text())
        curves = pd.read_csv(work / f"{name}_curves.tsv", sep="\t")
        sanity = pd.read_csv(work / f"{name}_sanity.tsv", sep="\t")
        predicted = np.asarray(info["predicted"])
        areas = {label: per_volume_area(curves, fr).to_numpy() for label, fr in FRACTION_SETS.items()}
        first_seed = sanity[sanity["seed"] == sanity["seed"].min()].sort_values("volume")
        medians_by_seed = sanity.groupby("seed")[["spearman", "ssim"]].median()
        result = {
            "n_volumes": info["n_volumes"],
            "times": info["times"],
            "full": {
                "area": {label: float(a.mean()) for label, a in areas.items()},
                "area_sd": {label: float(a.std(ddof=1)) for label, a in areas.items()},
                "spearman": float(first_seed["spearman"].median()),
                "ssim": float(first_seed["ssim"].median()),
                "seed_sd_spearman": float(medians_by_seed["spearman"].std(ddof=1))
                if len(medians_by_seed) > 1
                else None,
                "seed_sd_ssim": float(medians_by_seed["ssim"].std(ddof=1)) if len(medians_by_seed) > 1 else None,
                "seeds": len(medians_by_seed),
                "seed_list": sorted(int(v) for v in medians_by_seed.index),
            },
            "se": {},
        }
        table = {
            m: sanity.pivot(index="seed", columns="volume", values=m).sort_index(axis=1).to_numpy()
            for m in ("spearman", "ssim")
        }
        n_seeds = len(medians_by_seed)
        for n in VOLUME_COUNTS:
            idx = stratified_draws(predicted, n, draws, rng)
            row = {f"area {label}": float(a[idx].mean(axis=1).std(ddof=1)) for label, a in areas.items()}
            one_seed = rng.integers(0, n_seeds, draws)[:, None].repeat(n, axis=1)  # one copy for the n volumes
            own_seed = rng.integers(0, n_seeds, (draws, n))  # every volume its own copy
            for measure in ("spearman", "ssim"):
                values = first_seed[measure].to_numpy()
                row[f"{measure} fixed copy"] = float(np.nanmedian(values[idx], axis=1).std(ddof=1))
                row[f"{measure} one copy"] = float(np.nanmedian(table[measure][one_seed, idx], axis=1).std(ddof=1))
                row[f"{measure} copy per volume"] = float(
                    np.nanmedian(table[measure][own_seed, idx], axis=1).std(ddof=1)
                )
            result["se"][n] = row
        out[name] = result
    return out


def cost_per_run(times, n_volumes, n_fractions):
    """Seconds of a quality pass of ``n_volumes`` with ``n_fractions`` fractions (0 included), from per-volume costs."""
    random_maps = float(np.mean(times["random_maps_per_volume"]))
    compare = float(np.mean(times["compare_per_volume"]))
    fixed = float(np.mean(times["random_model_s"])) - 4 * random_maps  # building and tracing the randomised copy
    deletion = 2 * (n_fractions - 1) * times["forward_per_pass"]
    return max(fixed, 0.0) + n_volumes * (deletion + random_maps + compare)


def report(results, args):
    lines = [
        SECTION,
        "",
        f"Date: {datetime.date.today()}. Machine: {machine_description()}; 1-min load average "
        f"{os.getloadavg()[0]:.1f} at the end (the standard errors do not depend on it; the seconds do).",
        f"Command: `python benchmarks/bench_quality_precision.py DEMO_OUTPUT --extra-volumes {args.extra_volumes} "
        f"--seeds {' '.join(map(str, next(iter(results.values()))['full']['seed_list']))} --bootstrap {args.bootstrap}`. Runs: the demo's held-out participant "
        "and an extra participant with the demo's planted regions, both explained by the demo's fitted 3D model "
        "(preset B-flat). Standard errors by a stratified bootstrap over the run's volumes (with replacement: they hold "
        "for long runs); each figure as the run's sidecar reports it.",
        "",
    ]
    for name, r in results.items():
        full = r["full"]
        lines += [
            f"**{name}** ({r['n_volumes']} volumes): area between the deletion curves on all volumes "
            + ", ".join(f"{label} {v:.3f}" for label, v in full["area"].items())
            + f" (logit); median Spearman {full['spearman']:.3f}, median SSIM {full['ssim']:.3f}"
            + (
                f"; spread (SD) of the all-volume medians over {full['seeds']} randomisation seeds: Spearman "
                f"{full['seed_sd_spearman']:.3f}, SSIM {full['seed_sd_ssim']:.3f}"
                if full["seed_sd_spearman"] is not None
                else ""
            )
            + ".",
            "",
            "| volumes | "
            + " | ".join(f"SE area, {label}" for label in FRACTION_SETS)
            + " | SE median Spearman: fixed copy / one random copy / a copy per volume | SE median SSIM: the same |",
            "|---:|" + "---:|" * (len(FRACTION_SETS) + 2),
        ]
        for n, row in r["se"].items():
            lines.append(
                f"| {n} | "
                + " | ".join(f"{row[f'area {label}']:.3f}" for label in FRACTION_SETS)
                + " | "
                + " | ".join(
                    " / ".join(
                        f"{row[f'{m} {scheme}']:.3f}" for scheme in ("fixed copy", "one copy", "copy per volume")
                    )
                    for m in ("spearman", "ssim")
                )
                + " |"
            )
        t = r["times"]
        decode_lrp_405 = REFERENCE_RUN_VOLUMES * t["decode_lrp_per_volume"]
        lines += [
            "",
            f"Costs measured on this run: decode + LRP {t['decode_lrp_per_volume']:.2f} s per volume "
            f"({decode_lrp_405:.0f} s for {REFERENCE_RUN_VOLUMES} volumes); a perturbed forward pass "
            f"{t['forward_per_pass']:.3f} s; the randomised model's map {np.mean(t['random_maps_per_volume']):.2f} s and "
            f"its comparison {np.mean(t['compare_per_volume']):.2f} s per volume; building and tracing the randomised "
            f"model {np.mean(t['random_model_s']):.1f} s (with its first 4 maps).",
            "",
            "| volumes | fractions | quality pass s (model) | / 405-volume decode + LRP |",
            "|---:|---:|---:|---:|",
        ]
        for n in (8, 12, 16):
            for label in ("default before (8)", "6", "default now (4)"):
                k = len(FRACTION_SETS[label])
                seconds = cost_per_run(t, n, k)
                lines.append(f"| {n} | {k} | {seconds:.1f} | {seconds / decode_lrp_405:.1%} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:
        update_section(Path(args.results), SECTION, text)
        print(f"written to {args.results} ({SECTION})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a finished 'deeplight-bids demo' output folder")
    parser.add_argument("--extra-volumes", type=int, default=96, help="volumes of the extra run (0: none)")
    parser.add_argument("--extra-seed", type=int, default=7)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="randomisation seeds")
    parser.add_argument("--bootstrap", type=int, default=4000)
    parser.add_argument("--work", type=Path, default=Path("quality-precision-work"))
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="'' writes nothing")
    args = parser.parse_args(argv)

    def log(text):
        print(time.strftime("%H:%M:%S"), text, flush=True)

    names = ["demo held-out"] + ([f"extra {args.extra_volumes} volumes"] if args.extra_volumes else [])
    if not args.analyse_only:
        from deeplight_bids.workflows.demo import DEFAULTS, STRIPE_DUTY, STRIPE_LOW, split_participants
        from deeplight_bids.demo.synth import make_synthetic_dataset

        model_dir = args.demo / "models" / "demo-3D"
        _, _, held_out = split_participants(args.demo / "bids")
        measure_run(names[0], args.demo / "bids", held_out, model_dir, args.seeds, args.work, log)
        if args.extra_volumes:
            extra = args.work / f"extra-bids-{args.extra_volumes}-{args.extra_seed}"
            if not (extra / "dataset_description.json").is_file():
                make_synthetic_dataset(
                    extra,
                    n_participants=1,
                    n_volumes=args.extra_volumes,
                    seed=args.extra_seed,
                    signal=DEFAULTS["signal"],
                    region_radius=DEFAULTS["region_radius"],
                    stripes=True,
                    stripe_low=STRIPE_LOW,
                    stripe_duty=STRIPE_DUTY,
                )
            measure_run(names[1], extra, "01", model_dir, args.seeds, args.work, log)
    report(analyse(args.work, names, args.bootstrap), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

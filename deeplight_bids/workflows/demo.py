"""The demo workflow behind ``deeplight-bids demo OUTPUT_DIR`` (command line: :mod:`deeplight_bids.cli.demo`).

1. write a small synthetic BIDS dataset with fMRIPrep-style derivatives on the
   reference grid (``OUTPUT_DIR/bids``; each state activates a known region);
2. fit 3D-DeepLight briefly from scratch on all participants but the last two, with the
   fine-tuning machinery of ``group --finetune`` (``OUTPUT_DIR/models/demo-3D/demo-3D.keras``
   + model card, validation predictions and learning curve); the last-but-one participant
   validates the fit (a fit that did not generalise restarts from another random start);
3. run the participant level on the held-out participant (``OUTPUT_DIR/deeplight``), with
   the quality measures (deletion curves, randomised-model check);
4. run the group level on it with the planted regions as ``--reference-map``
   (``OUTPUT_DIR/reference``): significance of decoding, plausibility, the report;
5. print held-out accuracy, the share of relevance inside the planted regions and the
   quality numbers; then the evidence beside the maps (docs/glm.rst): per state the GLM's top 1 %
   voxels in the planted region and the relevance-vs-GLM agreement of the held-out participant, and
   the fit's linear baseline decoder on the held-out participant beside DeepLight.

Everything is offline.  Re-running reuses the dataset and model already written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.config import Config, default_work_dir
from deeplight_bids.demo.synth import make_synthetic_dataset, planted_truth
from deeplight_bids.derivatives import naming
from deeplight_bids.glm.agreement import region_share_top
from deeplight_bids.prepare.grid import REFERENCE_AFFINE
from deeplight_bids.quality.plausibility import relevance_in_region
from deeplight_bids.runtime import configure_threads as _configure_threads
from deeplight_bids.utils.tsv import read_tsv

if TYPE_CHECKING:
    from deeplight_bids.demo.synth import SyntheticDataset

LOGGER = logging.getLogger("deeplight_bids")

#: Weak-stripe response of the demo's planted regions (see make_synthetic_dataset): the whole region
#: activates, alternately at full and at quarter strength.  Measured alternatives (2026-11-30,
#: benchmarks/RESULTS.md "Demo fit"): stripes of opposite signs (-0.5) leave no mean shift after the
#: per-voxel z-scoring, and the fit decoded "t" as "neither lh nor rh" (its relevance outside its
#: region: rank accuracy 0.01); stripes of signal and none (0) kept plausible maps but failed the
#: validation bar on 2 of 3 seeds.
STRIPE_LOW = 0.25
#: Share of each stripe period at full strength.
STRIPE_DUTY = 0.5
#: A fit below this accuracy on the validation participant did not generalise: refit.
MIN_VALIDATION_ACCURACY = 0.7
#: Fits (random starts) at most.
MAX_FITS = 3
#: The demo's defaults (command line and :func:`run_demo`); ``benchmarks/bench_demo_seeds.py`` fits with them.
DEFAULTS: dict[str, Any] = {
    "participants": 5,
    "volumes": 60,
    "signal": 6.0,
    "region_radius": 16.0,
    "epochs": 3,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "mix_same_state": 0.5,
}


#: The settings of the demo's fit that its command line can change (:func:`demo_fit_config`).
FIT_SETTINGS = ("epochs", "batch_size", "learning_rate", "mix_same_state")


#: The demo's ``--compare-attributions`` (the standard set): 2 volumes, integrated gradients with 8 steps and
#: SmoothGrad with 4 samples (the participant level's defaults: 8, 32, 16), so that it adds ~1 minute, not ~7.
#: Measured on the demo's held-out participant: the same methods pass as with 4 volumes, 16 steps and 8 samples
#: (benchmarks/RESULTS.md, "Whole demo").
COMPARISON: dict[str, Any] = {"compare_attributions": (), "compare_volumes": 2, "ig_steps": 8, "smoothgrad_samples": 4}


def run_demo(
    output_dir: str | os.PathLike,
    n_participants: int = DEFAULTS["participants"],
    n_volumes: int = DEFAULTS["volumes"],
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    learning_rate: float = DEFAULTS["learning_rate"],
    mix_same_state: float = DEFAULTS["mix_same_state"],
    seed: int = 0,
    nprocs: int = 0,
    lrp: bool = True,
    signal: float = DEFAULTS["signal"],
    region_radius: float = DEFAULTS["region_radius"],
    stripe_low: float = STRIPE_LOW,
    stripe_duty: float = STRIPE_DUTY,
    compare: bool = True,
) -> dict[str, Any]:
    """Run the demo; returns a dict with accuracy, relevance shares and paths."""
    # deferred: keeps `demo --help` fast (the whole participant pipeline)
    from deeplight_bids.workflows.participant import run_participant_level

    t_start, cpu_start = time.monotonic(), _cpu_seconds()
    output_dir = Path(output_dir).absolute()
    bids_dir = output_dir / "bids"
    model_dir = output_dir / "models" / "demo-3D"
    out_dir = output_dir / "deeplight"
    settings = dataset_settings(
        seed,
        n_participants=n_participants,
        n_volumes=n_volumes,
        signal=signal,
        region_radius=region_radius,
        stripe_low=stripe_low,
        stripe_duty=stripe_duty,
    )
    stamp = output_dir / "bids_settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != settings:
        # a dataset made with other settings: remake it, and refit
        shutil.rmtree(bids_dir, ignore_errors=True)
        shutil.rmtree(model_dir, ignore_errors=True)
    if not (bids_dir / "dataset_description.json").is_file():
        shutil.rmtree(bids_dir, ignore_errors=True)
        LOGGER.info("demo: writing a synthetic dataset to %s", bids_dir)
        make_synthetic_dataset(bids_dir, **settings)
        output_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(settings))
    info = _dataset_truth(n_volumes, seed, region_radius)
    training, validation, held_out = split_participants(bids_dir)
    states = tuple(info.state_map[s] for s in info.states)
    threads = nprocs or os.cpu_count() or 1
    _configure_threads(threads)

    model_path = model_dir / "demo-3D.keras"
    fits, validation_accuracy, attempts = 0, None, []
    t_fit, cpu_fit = time.monotonic(), _cpu_seconds()
    if not model_path.is_file():
        # The fine-tuning machinery of 'group --finetune' (issue 5) with a random start: the
        # prepared volumes are cached in OUTPUT_DIR/work, batches are class-balanced, every
        # epoch is checkpointed (an interrupted demo resumes its fit), and the model card
        # records the training and validation participants.  A brief fit from scratch
        # sometimes stalls in a solution that does not generalise; the validation participant
        # (never the held-out one) detects that, and the fit restarts from another random start.
        for fits in range(1, MAX_FITS + 1):
            fit_seed = seed + 1000 * (fits - 1)
            validation_accuracy = fit_demo_model(
                demo_fit_config(
                    bids_dir,
                    output_dir,
                    training,
                    validation,
                    seed=fit_seed,
                    threads=threads,
                    overwrite=fits > 1,
                    epochs=epochs,
                    batch_size=batch_size,
                    learning_rate=learning_rate,
                    mix_same_state=mix_same_state,
                )
            )
            if validation_accuracy >= MIN_VALIDATION_ACCURACY:
                break
            LOGGER.warning(
                "demo: accuracy %.3f on validation participant %s is below %.2f: the fit did not generalise%s",
                validation_accuracy,
                validation,
                MIN_VALIDATION_ACCURACY,
                "; refitting from another random start" if fits < MAX_FITS else "",
            )
            aside = output_dir / "work" / f"demo-fit-{fits}"
            shutil.rmtree(aside, ignore_errors=True)
            shutil.move(str(model_dir), str(aside))
            attempts.append((validation_accuracy, fits, aside))
        else:
            # no fit reached the bar: keep the one that did best on the validation participant
            validation_accuracy, best, aside = max(attempts)
            shutil.move(str(aside), str(model_dir))
            LOGGER.warning(
                "demo: keeping fit %d (validation accuracy %.3f), the best of %d", best, validation_accuracy, MAX_FITS
            )
    else:
        LOGGER.info("demo: reusing the model at %s", model_path)
    t_fit, cpu_fit = time.monotonic() - t_fit, _cpu_seconds() - cpu_fit

    reference_dir = write_reference_maps(output_dir / "reference", info)
    config = Config(
        bids_dir=bids_dir,
        output_dir=out_dir,
        work_dir=default_work_dir(out_dir),
        participant_label=(held_out,),
        weights=str(model_dir),
        lrp=lrp,
        batch_size=4,
        nprocs=threads,
        # the attribution methods side by side on the held-out participant (the standard set), with the planted
        # regions as reference; fewer volumes, steps and samples than the defaults keep the demo short
        **(COMPARISON if lrp and compare else {}),
        reference_map=reference_dir,
        reference_top_percent=round(_region_top_percent(info), 3),
    )
    results, code = run_participant_level(config)
    report = _evaluate(out_dir, held_out, info, states, lrp)
    report["glm"] = _glm_evidence(out_dir, held_out, info)  # the dataset's own GLM beside the maps
    report["linear"] = _linear_evidence(model_dir, config, held_out)  # a linear decoder beside DeepLight
    if lrp:
        report["quality"] = _group_quality(bids_dir, out_dir, output_dir / "reference", held_out, info, seed)
    report.update(
        {
            "bids_dir": str(bids_dir),
            "model": str(model_path),
            "outputs": str(out_dir),
            "held_out": held_out,
            "training": training,
            "validation": validation,
            "validation_accuracy": validation_accuracy,
            "fits": fits,
            "exit_code": code,
            "seconds": time.monotonic() - t_start,
            "cpu_seconds": _cpu_seconds() - cpu_start,
            "fit_seconds": t_fit,
            "fit_cpu_seconds": cpu_fit,
            "rerun": f"deeplight-bids {bids_dir} {out_dir} participant --participant-label {held_out} "
            f"--weights {model_dir} --overwrite",
            "model_card": json.loads(model_path.with_suffix(".json").read_text()),
        }
    )
    return report


def _cpu_seconds():
    """User + system CPU seconds of this process and its finished children (the volume preparation)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def dataset_settings(seed: int = 0, **dataset: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`deeplight_bids.demo.synth.make_synthetic_dataset` for the demo's dataset.

    ``dataset``: any of ``n_participants``, ``n_volumes``, ``signal``, ``region_radius``, ``stripe_low`` and
    ``stripe_duty``; the demo's defaults (:data:`DEFAULTS`, :data:`STRIPE_LOW`, :data:`STRIPE_DUTY`) otherwise.
    """
    defaults = {
        "n_participants": DEFAULTS["participants"],
        "n_volumes": DEFAULTS["volumes"],
        "signal": DEFAULTS["signal"],
        "region_radius": DEFAULTS["region_radius"],
        "stripe_low": STRIPE_LOW,
        "stripe_duty": STRIPE_DUTY,
    }
    unknown = sorted(set(dataset) - set(defaults))
    if unknown:
        raise TypeError(f"dataset_settings: unknown settings {unknown}; known: {list(defaults)}")
    return {**defaults, **dataset, "seed": seed, "stripes": True}


def split_participants(bids_dir: str | os.PathLike) -> tuple[list[str], str, str]:
    """``(training labels, validation label, held-out label)``: the last participant is held out, the one before
    validates the fit, the others train."""
    participants = sorted(p.name[4:] for p in Path(bids_dir).glob("sub-*") if p.is_dir())
    return participants[:-2], participants[-2], participants[-1]


def fit_demo_model(config: Config) -> float:
    """One fit of the demo's model (a random start); returns its accuracy on the validation participant.

    The fine-tuning machinery of ``group --finetune`` from scratch with the settings of
    :func:`demo_fit_config`: trains on its training participants, validates on its validation
    participant and writes ``OUTPUT_DIR/models/<model name>``.  The demo and
    ``benchmarks/bench_demo_seeds.py`` both call this, so the benchmark measures the demo's fit.

    Returns
    -------
    float
        Accuracy on the validation participant's labelled volumes (chance 1 / states).
    """
    # deferred: keeps `demo --help` fast (the fine-tuning pipeline)
    from deeplight_bids.workflows.finetune import FinetuneJob

    validation = config.finetune.val_participants or ()  # both set by demo_fit_config
    participants = config.inputs.participant_label or ()
    LOGGER.info(
        "demo: fitting 3D-DeepLight from scratch on participants %s, validating on %s (%d epochs, seed %d)",
        ", ".join(p for p in participants if p not in validation),
        ", ".join(validation),
        config.finetune.epochs,
        config.seed,
    )
    return float(FinetuneJob(config).run()["heldout_accuracy_pooled"])


def demo_fit_config(
    bids_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    training: Sequence[str],
    validation: str,
    seed: int = 0,
    threads: int = 0,
    overwrite: bool = False,
    model_name: str = "demo-3D",
    **fit: Any,
) -> Config:
    """The settings of the demo's fit: ``group --finetune --init scratch`` on the training and validation participants.

    Also what ``benchmarks/bench_fit.py`` fits with (under another ``model_name``); the work folder is
    ``OUTPUT_DIR/work``.  ``fit``: any of :data:`FIT_SETTINGS` (``epochs``, ``batch_size``,
    ``learning_rate``, ``mix_same_state``), each :data:`DEFAULTS`' value unless given.
    """
    unknown = sorted(set(fit) - set(FIT_SETTINGS))
    if unknown:
        raise TypeError(f"demo_fit_config: unknown fit settings {unknown}; known: {list(FIT_SETTINGS)}")

    inputs = {
        "bids_dir": bids_dir,
        "output_dir": output_dir,
        "work_dir": Path(output_dir) / "work",
        "architecture": "3D",
        "participant_label": (*training, validation),
    }
    finetune = {
        "enabled": True,
        "init": "scratch",
        "model_name": model_name,
        "val_participants": (validation,),
        **{name: fit.get(name, DEFAULTS[name]) for name in FIT_SETTINGS},
    }
    return Config(inputs, finetune=finetune, analysis_level="group", seed=seed, overwrite=overwrite, nprocs=threads)


def _dataset_truth(n_volumes, seed, region_radius):
    """Planted regions, brain and states of the demo dataset (they depend on neither the seed nor the data)."""
    return planted_truth(n_volumes=n_volumes, region_radius=region_radius)


def _evaluate(out_dir, subject, info, states, lrp):
    import nibabel as nib

    summary = read_tsv(naming.summary_output(out_dir, subject), allow_empty=False)
    overall = summary[summary["run"] == "all"]
    accuracy = float(overall["n_correct"].sum() / overall["n_labelled"].sum())
    report = {
        "accuracy": accuracy,
        "chance": 1.0 / len(states),
        "n_labelled": int(overall["n_labelled"].sum()),
        "shares": {},
    }
    if not lrp:
        return report
    regions = info.regions_by_state
    volume_voxels = {s: int(m.sum()) for s, m in regions.items()}
    for state in states:
        path = naming.state_map_output(out_dir, subject, info.task, state)
        if path.is_file():
            rel = np.asarray(nib.load(path).dataobj, dtype=np.float32)
            report["shares"][state] = relevance_in_region(rel, regions[state], info.brain_mask)
    report["region_fraction_of_brain"] = {s: volume_voxels[s] / int(info.brain_mask.sum()) for s in volume_voxels}
    report["region_voxels"] = volume_voxels
    return report


def _glm_evidence(out_dir, subject, info):
    """Per state: the held-out participant's relevance-vs-GLM agreement and the GLM's top 1 % in the planted region."""
    import nibabel as nib

    from deeplight_bids.group.glm import read_agreement_tables  # deferred: keeps `demo --help` fast (the group level)

    rows, missing = read_agreement_tables(out_dir, [subject])
    evidence = {}
    for row in rows[rows["level"] == "participant"].itertuples():
        t_map = np.asarray(nib.load(out_dir / row.glm_map).dataobj, np.float32)
        fitted = np.asarray(nib.load(out_dir / row.glm_map.replace("_stat-t_", "_stat-variance_")).dataobj) > 0
        evidence[row.state] = {
            "pearson_r": row.pearson_r,
            "dice": {k: getattr(row, f"dice_top{k}") for k in (1, 5, 10)},
            "glm_top1_in_region": region_share_top(t_map, info.regions_by_state[row.state], fitted, 1),
        }
    return evidence


def _linear_evidence(model_dir, config, subject):
    """The fit's linear baseline: on its own held-out (validation) participant, and applied to ``subject``."""
    # deferred: keeps `demo --help` fast (the data pipeline)
    from deeplight_bids.models.linear_baseline import evaluate_participant

    name = Path(model_dir).name
    summary_path = naming.finetune_heldout_outputs(model_dir, name)["summary_json"]
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    model = naming.linear_baseline_outputs(model_dir, name, ())["model"]
    if "linear_baseline" not in summary or not model.is_file():
        return {"note": f"no linear baseline in {model_dir} (fitted before it existed): remove the folder to refit"}
    fit = summary["linear_baseline"]
    return {
        "fit": fit,
        "validation_participants": [f["heldout_participants"] for f in fit["folds"]],
        "held_out": evaluate_participant(model, config, subject),
    }


def write_reference_maps(folder: str | os.PathLike, info: SyntheticDataset) -> Path:
    """The planted regions as reference maps, one ``label-<state>_mask.nii.gz`` (0/1) per state."""
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for state, region in info.regions_by_state.items():
        path = folder / f"label-{naming.label_value(state)}_mask.nii.gz"
        nib.Nifti1Image(region.astype(np.float32), REFERENCE_AFFINE).to_filename(path)
    return folder


def _region_top_percent(info):
    """The planted regions are ~1 % of the brain: their own size is the fair top share (percent)."""
    return 100.0 * max(int(r.sum()) for r in info.regions_by_state.values()) / int(info.brain_mask.sum())


def _group_quality(bids_dir, out_dir, reference_dir, subject, info, seed):
    """Group level on the held-out participant with the planted regions as reference; the quality numbers."""

    # deferred: keeps `demo --help` fast (the group level, scipy.stats)
    from deeplight_bids.group.level import GROUP_FOLDER, run_group_level

    top = _region_top_percent(info)
    config = Config(
        bids_dir=bids_dir,
        output_dir=out_dir,
        work_dir=default_work_dir(out_dir),
        analysis_level="group",
        reference_map=reference_dir,
        reference_top_percent=round(top, 3),
        seed=seed,
        download_templates=False,  # offline by design: TemplateFlow's files if cached, else nilearn's MNI152
    )
    run_group_level(config)
    group = out_dir / GROUP_FOLDER
    task = info.task

    def table(desc):
        path = group / f"task-{task}_desc-{desc}_summary.tsv"
        return read_tsv(path, allow_empty=False) if path.is_file() else None

    predictions = naming.run_outputs(out_dir, {"subject": subject, "task": task})
    sidecar = json.loads(predictions["predictions_json"].read_text())
    return {
        "run": sidecar.get("Quality"),
        "significance": table("significance"),
        "plausibility": table("plausibility"),
        "attributions": table("attributions"),
        "faithfulness_tsv": str(predictions["faithfulness"]),
        "sanity_tsv": str(predictions["sanity"]),
        "report": str(out_dir / "deeplight_report.html"),
    }


def format_quality(quality: Mapping[str, Any]) -> list[str]:
    """Lines of the demo's printout for the quality numbers."""
    lines = []
    run = quality.get("run") or {}
    faith, checks = run.get("Faithfulness"), run.get("Sanity")
    if faith:
        lines.append(
            f"  faithfulness ({faith['n_volumes']} volumes): removing the most relevant voxels lowers the "
            f"explained logit by {faith['aopc_relevance']:.3g} on average, random voxels by "
            f"{faith['aopc_random']:.3g} (area between the curves {faith['area_between_curves']:.3g}); "
            f"table {quality['faithfulness_tsv']}"
        )
    if checks:
        lines.append(
            f"  sanity (maps of a randomised model): median Spearman {checks['median_spearman']:.2f}, median "
            f"SSIM {checks['median_ssim']:.2f}"
            + (" - HIGH: the maps do not depend on the learning" if checks["high_similarity"] else " (low: good)")
        )
    for key, lines_of in (
        ("significance", _significance_lines),
        ("plausibility", _plausibility_lines),
        ("attributions", _attribution_lines),
    ):
        table = quality.get(key)
        if table is not None and len(table):
            lines += lines_of(table)
    if quality.get("report"):
        lines.append(f"  report: {quality['report']}")
    return lines


def _significance_lines(table):
    row = table.iloc[0]
    return [
        f"  significance: accuracy {row['accuracy']:.3f} vs chance {row['chance_level']:.3f}; block "
        f"permutation p = {row['p_permutation']:.3g} ({int(row['n_permutations'])} permutations of "
        f"{int(row['n_blocks'])} blocks), binomial p = {row['p_binomial']:.3g}"
    ]


def _plausibility_lines(table):
    return [
        f"  plausibility of {row['state']} vs its planted region: mass accuracy "
        f"{row['mass_accuracy']:.2f}, rank accuracy {row['rank_accuracy']:.2f}, Pearson r "
        f"{row['pearson_r']:.2f} (region = {row['region_share']:.1%} of the brain)"
        for _, row in table[table["participant_id"] != "group"].iterrows()
    ]


def _attribution_lines(table):
    passing = table[table["passes"] == 1]["method"].tolist()
    lines = [
        "  attribution methods compared (deletion area / published rule's, Spearman with the randomised model's "
        "maps, with the other states' maps, rank accuracy in the planted region, cost / decoding):"
    ]
    for _, row in table.iterrows():
        lines.append(
            f"    {row['method']:<22} {row['deletion_area_ratio']:5.2f} {row['randomisation_spearman']:6.2f} "
            f"{row['class_sensitivity_spearman']:6.2f} {row['plausibility_rank_accuracy']:5.2f} "
            f"{row['cost_vs_decoding']:6.1f}x  {'passes' if row['passes'] else 'fails'}"
        )
    lines.append(f"  methods passing faithfulness, randomisation and class sensitivity: {', '.join(passing) or 'none'}")
    return lines


def format_evidence(report: Mapping[str, Any]) -> list[str]:
    """Lines of the demo's printout for the GLM and the linear baseline (docs/glm.rst)."""
    lines = []
    for state, glm in (report.get("glm") or {}).items():
        r = glm["pearson_r"]
        lines.append(
            f"  GLM of {state} (vs the other states): {glm['glm_top1_in_region']:.0%} of its top 1 % voxels in the "
            f"planted region; relevance vs GLM: r {'n/a' if r is None or r != r else f'{r:.2f}'}, Dice top 1/5/10 % "
            + "/".join(f"{v:.2f}" for v in glm["dice"].values())
        )
    linear = report.get("linear") or {}
    if linear.get("held_out"):
        held, fit = linear["held_out"], linear["fit"]
        lines.append(
            f"  linear baseline (same training volumes and participants): held-out participant "
            f"{report['held_out']}: accuracy {held['accuracy']:.3f} over {held['n_volumes']} volumes beside "
            f"DeepLight's {report['accuracy']:.3f}; validation participant(s) "
            f"{', '.join(' '.join(v) for v in linear['validation_participants'])}: {fit['heldout_accuracy_pooled']:.3f}"
            f" beside DeepLight's {fit['deeplight_heldout_accuracy_pooled']:.3f}"
        )
    elif linear.get("note"):
        lines.append(f"  linear baseline: {linear['note']}")
    return lines


def format_report(report: Mapping[str, Any]) -> str:
    lines = [
        "",
        "deeplight-bids demo",
        f"  dataset:  {report['bids_dir']}",
        f"  model:    {report['model']} (trained on participants {', '.join(report['training'])}"
        + (
            f"; validation participant {report['validation']}: accuracy {report['validation_accuracy']:.3f}, "
            f"{report['fits']} fit(s) of at most {MAX_FITS})"
            if report.get("validation_accuracy") is not None
            else f"; validated on participant {report['validation']})"
        ),
        f"  outputs:  {report['outputs']}",
        f"  held-out participant {report['held_out']}: accuracy {report['accuracy']:.3f} over "
        f"{report['n_labelled']} labelled volumes (chance {report['chance']:.3f})",
    ]
    for state, (rank, mass) in report.get("shares", {}).items():
        frac = report["region_fraction_of_brain"].get(state)
        lines.append(
            f"  relevance of {state}: {rank:.0%} of its {report['region_voxels'][state]} most relevant voxels lie in "
            f"its planted region; {mass:.0%} of its positive relevance does (the region is {frac:.1%} of "
            "the brain)"
        )
    if report.get("quality"):
        lines += format_quality(report["quality"])
    lines += format_evidence(report)
    lines.append(
        f"  total time: {report['seconds']:.0f} s ({report['cpu_seconds']:.0f} s CPU); the fit: "
        f"{report['fit_seconds']:.0f} s ({report['fit_cpu_seconds']:.0f} s CPU)"
    )
    lines.append(f"  rerun the participant level by hand:\n    {report['rerun']}")
    return "\n".join(lines)

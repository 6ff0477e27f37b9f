"""The self-contained HTML report ``OUTPUT_DIR/deeplight_report.html``.

In the spirit of fMRIPrep/MRIQC reports: one HTML file whose figures are embedded as
base64 PNG (``data:`` URIs), with inline CSS and no scripts, fonts or images fetched
from elsewhere, so it renders offline and can be mailed around.  Links to the
participants' files are relative to OUTPUT_DIR (the report sits there).

Sections: summary, processed and skipped participants (partial outputs listed),
per model (never mixed): model card, per task accuracy tables, confusion heatmaps,
accuracy by time in block, group relevance maps per state (nilearn plots on the
template), then per-participant sections, software versions and methods text.

The functions here compute each section's numbers, tables and figures; the markup is in the jinja2
templates of ``deeplight_bids/group/report_templates/`` (:func:`deeplight_bids.group.html.render`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from markupsafe import Markup

from deeplight_bids._version import __version__
from deeplight_bids.derivatives.writers import code_url, write_text
from deeplight_bids.group.glm_section import glm_html
from deeplight_bids.group.html import png_data_uri, read_table, render
from deeplight_bids.group.integrity import describe_fitting_participants, fitting_participants
from deeplight_bids.group.quality_section import quality_html
from deeplight_bids.group.stats import MIN_T_PARTICIPANTS
from deeplight_bids.models.heldout import heldout_summaries
from deeplight_bids.models.linear_baseline import linear_columns
from deeplight_bids.preflight import plural
from deeplight_bids.utils.tsv import read_tsv
from deeplight_bids.versions import software_versions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from deeplight_bids.config import Config
    from deeplight_bids.group.stats import Inventory
    from deeplight_bids.group.templates import Templates

REPORT_NAME = "deeplight_report.html"

CITATIONS = [
    "Thomas, A. W., Heekeren, H. R., Müller, K.-R., & Samek, W. (2019). Analyzing neuroimaging data through "
    "recurrent deep learning models. Frontiers in Neuroscience, 13, 1321. doi:10.3389/fnins.2019.01321",
    "Thomas, A. W., Lindenberger, U., Samek, W., & Müller, K.-R. (2021). Evaluating deep transfer learning for "
    "whole-brain cognitive decoding. arXiv:2111.01562",
    "Bach, S., Binder, A., Montavon, G., Klauschen, F., Müller, K.-R., & Samek, W. (2015). On pixel-wise "
    "explanations for non-linear classifier decisions by layer-wise relevance propagation. PLoS ONE, 10(7), "
    "e0130140. doi:10.1371/journal.pone.0130140",
    "Ciric, R., et al. (2022). TemplateFlow: FAIR-sharing of multi-scale, multi-species brain models. Nature "
    "Methods, 19, 1568-1571. doi:10.1038/s41592-022-01681-2",
    "Abraham, A., et al. (2014). Machine learning for neuroimaging with scikit-learn (nilearn). Frontiers in "
    "Neuroinformatics, 8, 14. doi:10.3389/fninf.2014.00014",
]


# -------------------------------------------------------------------------------------------- figures
def confusion_figure(counts: pd.DataFrame, props: pd.DataFrame, title: str) -> Figure:
    from matplotlib.figure import Figure

    rows = list(props["true_state"])
    cols = list(props.columns[1:])
    values = props[cols].to_numpy(dtype=float)
    raw = counts[cols].to_numpy()
    fig = Figure(figsize=(1.6 + 0.75 * len(cols), 1.4 + 0.55 * len(rows)))
    ax = fig.add_subplot(111)
    im = ax.imshow(np.nan_to_num(values), vmin=0, vmax=1, cmap="Blues", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = values[i, j]
            ax.text(
                j,
                i,
                f"{raw[i, j]}\n{v:.2f}" if np.isfinite(v) else "–",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if np.isfinite(v) and v > 0.6 else "black",
            )
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("predicted state")
    ax.set_ylabel("true state")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05, label="row proportion")
    fig.tight_layout()
    return fig


def blocktime_figure(frame: pd.DataFrame, chance: float | None, title: str) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3))
    ax = fig.add_subplot(111)
    x = frame["volumes_since_onset"].to_numpy(dtype=float)
    ax.plot(x, frame["accuracy_pooled"], "o-", label="pooled", color="#2c3e50")
    if frame["ci95_low"].notna().any():
        ax.fill_between(
            x,
            frame["ci95_low"].astype(float),
            frame["ci95_high"].astype(float),
            color="#3498db",
            alpha=0.25,
            label="95% interval (participants)",
        )
    if chance is not None and np.isfinite(chance):
        ax.axhline(chance, ls="--", color="#b02a37", label="chance")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("volumes since block onset")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _threshold(data, mask, percentile=90):
    inside = np.abs(data[mask > 0])
    inside = inside[inside > 0]
    return float(np.percentile(inside, percentile)) if inside.size else None


def map_figures(
    path: str | os.PathLike[str], templates: Templates, title: str, glass_only: bool = False
) -> tuple[str, str | None, float | None]:
    """(glass brain URI, slices URI or None, threshold) of a map drawn at the 90th percentile of its |values|.

    For maps without a statistical threshold (effect maps); ``glass_only``: no slices.
    """
    import nibabel as nib

    img: Any = nib.load(path)  # a NIfTI image (nibabel types load() as any format)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(templates.mask.dataobj)
    thr = _threshold(data, mask)
    vmax = _threshold(data, mask, 99.5) or 1.0  # robust colour range: a few extreme voxels do not wash it out
    if thr is not None and thr >= vmax:
        thr = None
    glass, slices = _draw(img, templates, title, thr, vmax, glass_only)
    return glass, slices, thr


def thresholded_figures(
    path: str | os.PathLike[str], templates: Templates, title: str, threshold: float | None
) -> tuple[str, str | None]:
    """(glass brain URI, slices URI) of a z-map showing only the voxels with z >= ``threshold`` (one-sided).

    ``threshold`` None or infinite: the whole map, unthresholded.
    """
    import nibabel as nib

    img: Any = nib.load(path)  # a NIfTI image (nibabel types load() as any format)
    data = np.asarray(img.dataobj, dtype=np.float32)
    inside = np.asarray(templates.mask.dataobj) > 0
    if threshold is not None and np.isfinite(threshold):
        kept = np.where(data >= threshold, data, 0.0).astype(np.float32)
        vmax = float(max(kept.max(), threshold + 1e-3))
        img = nib.Nifti1Image(kept, img.affine)
        # a hair below the threshold: every kept voxel is drawn, the zeros are not
        return _draw(img, templates, title, threshold - 1e-6 * max(abs(threshold), 1.0), vmax)
    vmax = _threshold(data, inside.astype(np.uint8), 99.5) or 1.0
    return _draw(img, templates, title, None, vmax)


def _draw(img, templates, title, thr, vmax, glass_only=False):
    import matplotlib

    matplotlib.use("Agg")
    from nilearn import plotting

    glass = plotting.plot_glass_brain(
        img,
        threshold=thr,
        colorbar=True,
        plot_abs=False,
        cmap="cold_hot",
        vmax=vmax,
        vmin=-vmax,
        title=title,
        display_mode="lyrz",
    )
    uri_glass = png_data_uri(glass)
    glass.close()
    if glass_only:
        return uri_glass, None
    slices = plotting.plot_stat_map(
        img,
        bg_img=templates.t1w,
        threshold=thr,
        display_mode="z",
        cut_coords=(-30, -10, 10, 30, 50, 70),
        colorbar=True,
        cmap="cold_hot",
        vmax=vmax,
        title=title,
        black_bg=False,
        draw_cross=False,
    )
    uri_slices = png_data_uri(slices)
    slices.close()
    return uri_glass, uri_slices


# -------------------------------------------------------------------------------------------- sections
def _summary_section(manifest, inventory, templates, config):
    n_exp = len(inventory.expected)
    parts = inventory.participants
    tasks = sorted({r.task for r in inventory.runs})
    rows = [
        ("OUTPUT_DIR", str(inventory.output_dir)),
        ("BIDS_DIR", str(config.inputs.bids_dir) if config is not None else "n/a"),
        ("participants with outputs", f"{len(parts)}" + (f" of {n_exp} in BIDS_DIR" if n_exp else "")),
        ("finished runs", str(len(inventory.runs))),
        ("tasks", ", ".join(tasks)),
        ("models", str(len(manifest.get("ModelGroups", [])))),
        (
            "relevance maps restricted to correct volumes (--correct-only)",
            "yes" if manifest.get("CorrectOnly") else "no",
        ),
        ("template", templates.description),
        ("group outputs created", manifest.get("Created", "n/a")),
    ]
    return render(
        "summary.html",
        rows=rows,
        fallback_template=templates.source != "templateflow",
        several_models=len(manifest.get("ModelGroups", [])) > 1,
    )


def participant_run_log(output_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Latest status of every run from the participant jobs' ``logs/runs-*.tsv`` (skips and failures with reasons)."""
    frames = []
    for path in sorted(Path(output_dir, "logs").glob("runs-*.tsv")):
        try:
            frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
            if not {"run", "status", "detail"} <= set(frame.columns):
                raise ValueError("no run, status and detail columns")
        except (OSError, ValueError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
            logging.getLogger("deeplight_bids").warning(
                "group: %s: damaged (%s); left out of the report's run table (a record of an earlier job: "
                "not made again)",
                path,
                " ".join(str(err).split())[:160],
            )
            continue
        frame["log"] = path.name
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", "status", "detail", "log"])
    # file names start with the job's time stamp: the last entry of a run is its latest status
    return pd.concat(frames).drop_duplicates("run", keep="last").reset_index(drop=True)


def _processing_section(inventory, output_dir=None):
    fitted = fitting_participants(inventory)
    rows = []
    for sub in sorted(set(inventory.participants) | set(inventory.expected)):
        runs = [r for r in inventory.runs if r.subject == sub]
        issues = [p for p in inventory.problems if p["participant"] == sub]
        status = "processed" if runs and not issues else "partial" if runs else "skipped"
        if sub in fitted:
            status = "training participant (not decoded)"
        rows.append(
            {
                "subject": sub,
                "status": status,
                "css": {"processed": "ok", "partial": "bad", "skipped": "bad"}.get(status, ""),
                "runs": len(runs),
                "tasks": ", ".join(sorted({r.task for r in runs})),
            }
        )
    bad_runs = None
    if output_dir is not None:
        runs = participant_run_log(output_dir)
        bad = runs[runs["status"].isin(["skipped", "failed"]) & ~runs["detail"].str.startswith("outputs exist")]
        bad_runs = bad if len(bad) else None
    return render(
        "processing.html",
        rows=rows,
        fitted=describe_fitting_participants(fitted).capitalize() if fitted else "",
        problems=pd.DataFrame(inventory.problems) if inventory.problems else None,
        bad_runs=bad_runs,
    )


def finetune_section(output_dir: str | os.PathLike[str]) -> Markup:
    """Fine-tuned models (``group --finetune``) and the scratch-vs-pretrained comparisons; "" if none.

    Reads ``OUTPUT_DIR/models/*/*_desc-heldout_summary.json`` (one row per fine-tuning) and
    ``OUTPUT_DIR/group/finetune-comparison_arch-*.tsv`` (the paper's central comparison).
    """
    output_dir = Path(output_dir)
    rows = []
    for _, s in heldout_summaries(output_dir):
        rows.append(
            {
                "model": s.get("name"),
                "architecture": s.get("architecture"),
                "init": s.get("init"),
                "frozen body": "yes" if s.get("freeze_body") else "no",
                "folds": s.get("cv_folds") or "single split",
                "epochs": s.get("epochs"),
                "held-out volumes": s.get("n_volumes"),
                "held-out accuracy": s.get("heldout_accuracy_pooled"),
                "balanced accuracy": s.get("heldout_balanced_accuracy_pooled"),
                "chance": s.get("chance"),
                **linear_columns(s),  # the linear baseline beside DeepLight (models/linear_baseline.py)
            }
        )
    comparisons = sorted((output_dir / "group").glob("finetune-comparison_arch-*.tsv"))
    if not rows and not comparisons:
        return Markup("")
    return render(
        "finetune.html",
        models=pd.DataFrame(rows),
        comparisons=[
            (path.stem.replace("finetune-comparison_", ""), path.relative_to(output_dir), read_tsv(path))
            for path in comparisons
        ],
    )


#: Cluster-table rows shown in the report per contrast (the TSV has them all).
REPORT_CLUSTER_ROWS = 8


def _test_html(output_dir, entry, templates, task):
    """Figures of one group test (a contrast, or a state's mean map) with its correction in the caption."""
    import nibabel as nib

    info = entry["inference"]
    files = entry["files"]
    n = entry["n_participants"]
    name = f"{entry['state']} (mean relevance)" if entry["kind"] == "mean" else entry["label"]
    view = {
        "name": name,
        "which": "correctly decoded volumes only" if entry.get("correct_only") else "all explained volumes",
        "n": n,
        "missing": None,
        "description": entry["description"],
        "left_out": ", ".join(entry["left_out"]) if entry.get("left_out") else "",
        "note": entry.get("note") or "",
        "no_survivor": False,
        "threshold_text": entry.get("threshold_text", ""),
        "zero": None,
        "figures": [],
        "clusters": None,
    }
    if "z" not in files:  # no test: the effect (mean or difference), drawn for orientation
        path = Path(output_dir) / files["effect"]
        if not path.is_file():
            return render("group_test.html", **{**view, "missing": files["effect"]})
        if not np.any(np.asarray(nib.load(path).dataobj)):
            return render("group_test.html", **{**view, "zero": files["effect"]})
        glass, slices, thr = map_figures(path, templates, f"{task} {name} (effect, n={n})", glass_only=True)
        thr_text = f"|value| ≥ {thr:.3g} (90th percentile of non-zero |values| in the brain mask)" if thr else "none"
        cap = f"{files['effect']}: effect, not a statistic; drawn at {thr_text}, no test"
        view["figures"] = [_figure(glass, "glass brain: " + cap, f"glass brain {task} {name}")]
        return render("group_test.html", **view)
    path = Path(output_dir) / files["z"]
    if not path.is_file():
        return render("group_test.html", **{**view, "missing": files["z"]})
    thr = info.get("Threshold")
    corrected = info.get("Correction") in ("fdr", "fwe-permutation")
    if corrected and not info.get("VoxelsSurviving"):
        view["no_survivor"] = True  # the z-map drawn unthresholded, for orientation
        thr = None
    elif not corrected:
        thr = None
    title = f"{task} {name} (z, df={info['DegreesOfFreedom']}, n={n})"
    glass, slices = thresholded_figures(path, templates, title, thr)
    drawn = "voxels above the corrected threshold" if thr is not None else "unthresholded"
    cap = f"{files['z']}; one-sided z (H1: effect > 0), {drawn}; {entry['threshold_text']}"
    view["figures"] = [
        _figure(glass, "glass brain: " + cap, f"glass brain {title}"),
        _figure(slices, "axial slices on the template: " + cap, f"slices {title}"),
    ]
    clusters = files.get("clusters")
    table = read_table(output_dir, clusters) if clusters else None
    if table is not None:
        shown = table.head(REPORT_CLUSTER_ROWS) if len(table) else None
        more = f" (first {len(shown)} of {len(table)} rows)" if shown is not None and len(table) > len(shown) else ""
        view["clusters"] = {"path": clusters, "shown": shown, "more": more}
    return render("group_test.html", **view)


def _figure(uri, caption, alt):
    """A figure of a template's ``figures`` list (``figure(uri, caption, alt)`` there)."""
    return {"uri": uri, "caption": caption, "alt": alt}


def _tests_html(output_dir, task_entry, templates, task):
    """The group relevance maps of a task made with contrasts (manifests from this version on)."""
    attribution = task_entry.get("attribution") or {}
    if not task_entry.get("maps") and not task_entry.get("contrasts") and not attribution.get("Skipped"):
        return render("group_tests.html", empty=task_entry.get("maps_note", "no group relevance maps"))
    tests = task_entry.get("contrasts", [])
    table = read_table(output_dir, task_entry["contrast_table"]) if task_entry.get("contrast_table") else None
    return render(
        "group_tests.html",
        empty=None,
        attribution_note=attribution.get("Note"),
        skipped=[
            {
                "label": skip["label"],
                "which": " (correctly decoded volumes only)" if skip.get("correct_only") else "",
                "left_out": "; ".join(skip["left_out"]),
            }
            for skip in attribution.get("Skipped", [])
        ],
        no_contrast=not tests and not attribution.get("Skipped"),
        contrast_table=task_entry.get("contrast_table"),
        contrast_frame=table,
        contrast_columns=[c for c in table.columns if c != "note"] if task_entry.get("contrast_table") else None,
        contrasts=[_test_html(output_dir, e, templates, task) for e in tests],
        maps=[_test_html(output_dir, e, templates, task) for e in task_entry.get("maps", [])],
    )


def _maps_html(output_dir, task_entry, templates, task):
    import nibabel as nib

    if "contrasts" in task_entry:
        return _tests_html(output_dir, task_entry, templates, task)
    # group outputs made before contrasts: each state's mean and one-sample t-map
    maps = []
    for entry in task_entry.get("maps", []):
        stat_rel = entry.get("t") or entry["mean"]
        stat = "t" if entry.get("t") else "mean"
        n = entry["n_participants"]
        view = {
            "state": entry["state"],
            "which": "correctly decoded volumes only" if entry.get("correct_only") else "all explained volumes",
            "n": n,
            "no_t": not entry.get("t"),
            "missing": None,
            "zero": None,
            "figures": [],
        }
        maps.append(view)
        path = Path(output_dir) / stat_rel
        if not path.is_file():
            view["missing"] = stat_rel
            continue
        if not np.any(np.asarray(nib.load(path).dataobj)):
            view["zero"] = stat_rel
            continue
        title = (
            f"{task} {entry['state']} ({stat}, df={n - 1}, n={n})"
            if stat == "t"
            else f"{task} {entry['state']} (mean, n={n})"
        )
        glass, slices, thr = map_figures(path, templates, title)
        thr_text = f"|value| ≥ {thr:.3g} (90th percentile of non-zero |values| in the brain mask)" if thr else "none"
        cap = f"{stat_rel}; threshold {thr_text}"
        if stat == "t":
            cap = f"one-sample t, {n - 1} degrees of freedom ({n} participants); " + cap
        view["figures"] = [
            _figure(glass, "glass brain: " + cap, f"glass brain {title}"),
            _figure(slices, "axial slices on the template: " + cap, f"slices {title}"),
        ]
    return render(
        "group_maps_legacy.html",
        maps=maps,
        min_t=MIN_T_PARTICIPANTS,
        empty=task_entry.get("maps_note", "no group relevance maps"),
    )


def _volumes(count):
    """``"1 volume"``, ``"12 volumes"``, ``"? volumes"``."""
    return plural(count, "volume") if isinstance(count, int) else "? volumes"


def _not_computed_html(table, task):
    """What could not be computed for a task with no labelled volumes, and why (empty string otherwise)."""
    if table is None or "n_labelled" not in table or len(table) == 0 or table["n_labelled"].fillna(0).sum() > 0:
        return Markup("")
    return render("not_computed.html", task=task)


def _model_section(i, group, output_dir, templates):
    model = group["Model"]
    title = f"{model.get('Architecture', '?')} '{model.get('Name', '?')}' (weights sha256 {str(model.get('WeightsSHA256', '?'))[:12]}…)"
    tasks = []
    for task, entry in group["Tasks"].items():
        summary = read_table(output_dir, entry["accuracy_group"])
        table = read_table(output_dir, entry["accuracy"])
        view = {
            "name": task,
            "summary": summary,
            "one_participant": summary is not None and int(summary["n_participants"].max()) < 2,
            "accuracy": table,
            "not_computed": _not_computed_html(table, task),
            "confusion": None,
            "blocktime": None,
        }
        counts = read_table(output_dir, entry["confusion_counts"])
        props = read_table(output_dir, entry["confusion_proportions"])
        if counts is not None and len(counts):
            fig = confusion_figure(counts, props, f"task {task}: confusion (counts and row proportions)")
            view["confusion"] = png_data_uri(fig)
        block = read_table(output_dir, entry["blocktime"])
        if block is not None and len(block):
            chance = None
            if summary is not None:
                row = summary[summary["metric"] == "chance_level"]
                chance = float(row["mean"].iloc[0]) if len(row) else None
            fig = blocktime_figure(block, chance, f"task {task}: accuracy by time in block")
            view["blocktime"] = png_data_uri(fig)
        view["quality"] = quality_html(output_dir, entry, task)
        view["maps"] = _maps_html(output_dir, entry, templates, task)
        view["glm"] = glm_html(output_dir, entry, task, templates)  # relevance beside the GLM (glm/)
        tasks.append(view)
    return render(
        "model.html",
        index=i,
        title=title,
        card=[(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in model.items()],
        folder=group["Folder"] if group["Folder"] != "." else "group",
        tasks=tasks,
    )


def _participant_section(inventory):
    root = inventory.output_dir
    participants = []
    for sub in inventory.participants:
        runs = []
        for rec in sorted((r for r in inventory.runs if r.subject == sub), key=lambda r: r.label):
            acc = rec.metadata.get("Accuracy")
            links = [(rec.predictions.relative_to(root).as_posix(), "predictions")]
            if rec.relevance is not None:
                links.append((rec.relevance.relative_to(root).as_posix(), "relevance (4D)"))
            runs.append(
                {
                    "label": rec.label,
                    "accuracy": f"accuracy {acc:.3f}" if isinstance(acc, (int, float)) else "accuracy n/a",
                    "model": rec.model.get("Name", "?"),
                    "links": links,
                }
            )
        maps = [
            {
                "task": m.task,
                "state": m.state,
                "volumes": _volumes(m.metadata.get("NumberOfVolumes")),
                "href": m.path.relative_to(root).as_posix(),
            }
            for m in sorted((m for m in inventory.maps if m.subject == sub), key=lambda m: (m.task, m.label))
        ]
        problems = [p for p in inventory.problems if p["participant"] == sub]
        participants.append({"subject": sub, "runs": runs, "maps": maps, "problems": problems})
    return render("participants.html", participants=participants)


def _task_entries(manifest):
    return [entry for g in manifest.get("ModelGroups", []) for entry in g.get("Tasks", {}).values()]


def group_maps_methods(manifest: Mapping[str, Any], templates: Templates) -> str:
    """The methods sentences of the group relevance maps, from what the manifest says was computed."""
    mask = f"{'TemplateFlow MNI152NLin6Asym' if templates.source == 'templateflow' else 'nilearn MNI152'} brain mask"
    entries = _task_entries(manifest)
    if not any("contrasts" in e for e in entries):  # group outputs made before contrasts
        return (
            "Group relevance maps are the voxel-wise mean of the participant mean maps of each state and a one-sample "
            "t statistic (intercept-only second-level model, nilearn; Abraham et al., 2014) within the "
            f"{mask} (Ciric et al., 2022)."
        )
    tests = [t for e in entries for t in e.get("contrasts", []) + e.get("maps", [])]
    infos = [t["inference"] for t in tests]
    kinds = {t["kind"] for t in tests}
    tested_zero = any(t["kind"] == "mean" and "z" in t["files"] for t in tests)
    methods = sorted(
        {
            (e.get("attribution") or {}).get("Attribution", {}).get("Method", "?")
            if isinstance((e.get("attribution") or {}).get("Attribution", {}).get("Method"), str)
            else "mixed"
            for e in entries
        }
    )
    signed = {bool((e.get("attribution") or {}).get("Signed")) for e in entries}
    text = (
        "For each state, the participant mean relevance maps were averaged voxel-wise within the "
        f"{mask} (Ciric et al., 2022). "
    )
    if "others" in kinds or "pair" in kinds:
        text += (
            "States were compared within participants: for each state, the difference between its mean relevance "
            "map and the mean of the maps of the task's other states (the other state, with two states) was "
            "computed per participant"
            + (", and likewise for each ordered pair of states" if "pair" in kinds and "others" in kinds else "")
            + (
                " after dividing each participant's map of each state by its mean absolute relevance in the mask "
                "(LRP conserves the explained logit, so states explained with larger logits carry more relevance "
                "everywhere; the scaling compares where relevance lies)"
                if any(t.get("scaling") == "brain-mean" for t in tests)
                else ""
            )
            + ", and tested across participants with a one-sample (paired) t-test: a second-level model "
            "(nilearn SecondLevelModel, ordinary least squares, intercept-only design, no additional smoothing; "
            "Abraham et al., 2014), one-sided (H1: the state exceeds the others), in the voxels of the mask whose "
            "values differed between participants. "
        )
    if tested_zero:
        text += "Each state's mean map was also tested against 0 in the same way, the attribution being signed. "
    elif False in signed:
        text += (
            f"The mean maps were not tested against 0: the attribution ({', '.join(methods)}) is not signed, so "
            "relevance is non-negative almost everywhere and such a test would find the whole brain. "
        )
    corrections = {i["Correction"] for i in infos} - {"not tested", "not applied"}
    alphas = sorted({i["Alpha"] for i in infos})
    alpha = "/".join(f"{a:g}" for a in alphas)
    if "fdr" in corrections:
        text += (
            f"Maps were thresholded at a false discovery rate of q = {alpha} (Benjamini-Hochberg on the voxel-wise "
            "z-map, nilearn threshold_stats_img). "
        )
    if "fwe-permutation" in corrections:
        perms = sorted({i["NumberOfPermutations"] for i in infos if i["NumberOfPermutations"]})
        text += (
            f"Maps were thresholded at a family-wise error rate of {alpha} (voxel-level maximum t over "
            f"{'/'.join(map(str, perms))} random sign flips, nilearn non_parametric_inference). "
        )
    if "none" in corrections:
        text += "Maps were not thresholded (no correction for multiple comparisons). "
    impossible = sorted(
        {
            i["NumberOfParticipants"]
            for i in infos
            if i["CorrectionRequested"] == "fwe-permutation" and i["Correction"] == "not applied"
        }
    )
    if impossible:
        text += (
            "FWE correction by sign flipping was requested but not possible with "
            f"{'/'.join(map(str, impossible))} participants (too few sign patterns to reach the alpha); those maps "
            "were not thresholded. "
        )
    if corrections - {"none"}:
        text += (
            "Clusters of surviving voxels, with peaks at least 8 mm apart, were listed with nilearn "
            "get_clusters_table. "
        )
    few = sorted({i["NumberOfParticipants"] for i in infos if i["NumberOfParticipants"] < MIN_T_PARTICIPANTS})
    if few:
        text += (
            f"With {'/'.join(map(str, few))} participant(s) only the effect maps were computed (a t-test needs "
            "at least 3). "
        )
    return text.strip()


def methods_text(manifest: Mapping[str, Any], inventory: Inventory, templates: Templates) -> str:
    models = [g["Model"] for g in manifest.get("ModelGroups", [])]
    arch = ", ".join(sorted({m.get("Architecture", "?") for m in models}))
    n = len(inventory.participants)
    tasks = ", ".join(sorted({r.task for r in inventory.runs}))
    correct = (
        " Group maps restricted to correctly decoded volumes were computed in the same way from participant "
        "means over those volumes."
        if manifest.get("CorrectOnly")
        else ""
    )
    return (
        f"Cognitive states were decoded from every volume of the preprocessed task-fMRI runs ({tasks}) of {n} "
        f"participant(s) with {arch} (DeepLight; Thomas et al., 2019; Thomas et al., 2021) using deeplight-bids "
        f"{__version__}{f' ({code_url()})' if code_url() else ''}. Runs were resampled to the MNI152NLin6Asym 2 mm grid, masked, smoothed "
        "(3 mm FWHM unless stated otherwise in the output sidecars), linearly detrended, high-pass filtered and "
        "z-scored per voxel. Volumes were labelled from the events with a haemodynamic shift. Each decoding "
        "decision was explained with layer-wise relevance propagation (LRP; Bach et al., 2015). Decoding "
        "accuracy, balanced accuracy and the chance level (1 / number of states) were computed per participant; "
        "across participants we report the mean, SD and a t-based 95% interval. "
        f"{group_maps_methods(manifest, templates)}{correct}"
    )


def write_report(
    output_dir: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    inventory: Inventory,
    templates: Templates,
    config: Config | None = None,
) -> Path:
    """Build and write ``OUTPUT_DIR/deeplight_report.html``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    output_dir = Path(output_dir)
    groups = manifest.get("ModelGroups", [])
    # the nav lists the fine-tuning after the models, the page shows it after the participants
    nav = [("summary", "Summary"), ("processing", "Processed")]
    nav += [(f"model-{i}", f"Model {i + 1}") for i in range(len(groups))]
    sections = [
        _summary_section(manifest, inventory, templates, config),
        _processing_section(inventory, output_dir),
    ]
    sections += [_model_section(i, g, output_dir, templates) for i, g in enumerate(groups)]
    sections.append(_participant_section(inventory))
    finetune = finetune_section(output_dir)
    if finetune:
        nav.append(("finetune", "Fine-tuning"))
        sections.append(finetune)
    nav += [("participants", "Participants"), ("software", "Software"), ("methods", "Methods")]
    sections.append(
        render(
            "software.html",
            versions=list(software_versions().items()),
            provenance=json.dumps(templates.provenance()),
        )
    )
    sections.append(render("methods.html", text=methods_text(manifest, inventory, templates), citations=CITATIONS))
    doc = render(
        "report.html",
        version=__version__,
        stamp=time.strftime("%Y-%m-%d %H:%M:%S"),
        nav=nav,
        sections=sections,
    )
    return write_text(output_dir / REPORT_NAME, str(doc) + "\n", root=output_dir)

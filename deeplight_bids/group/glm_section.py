"""The report's GLM part of one task: each state's relevance map beside the GLM's, and their agreement."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup

from deeplight_bids.group.glm import MEASURES, mean_t_map
from deeplight_bids.group.html import png_data_uri, read_table, render
from deeplight_bids.prepare.grid import REFERENCE_AFFINE

if TYPE_CHECKING:
    from deeplight_bids.group.templates import Templates


def _glass(img_or_data, title, templates, vmax=None):
    """A small glass-brain PNG (data URI) of a reference-grid map."""
    import matplotlib

    matplotlib.use("Agg")
    import nibabel as nib
    from nilearn import plotting

    img = img_or_data if hasattr(img_or_data, "affine") else nib.Nifti1Image(img_or_data, REFERENCE_AFFINE)
    data = np.asarray(img.dataobj, np.float32)
    inside = np.abs(data[np.asarray(templates.mask.dataobj) > 0])
    inside = inside[inside > 0]
    threshold = float(np.percentile(inside, 95)) if inside.size else None
    top = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    display = plotting.plot_glass_brain(
        img,
        threshold=threshold if threshold is not None and threshold < top else None,
        colorbar=True,
        plot_abs=False,
        cmap="cold_hot",
        vmax=vmax or top,
        vmin=-(vmax or top),
        title=title,
        display_mode="lzr",
    )
    uri = png_data_uri(display)
    display.close()
    return uri


def glm_html(output_dir: str | os.PathLike[str], entry: Mapping[str, Any], task: str, templates: Templates) -> Markup:
    """HTML of the relevance-vs-GLM part of one task entry of the group manifest (a note when there is none)."""
    if not entry.get("glm_agreement"):
        note = entry.get("glm_note")
        return render("glm.html", note=note) if note else Markup("")
    rows = read_table(output_dir, entry["glm_agreement"])
    if rows is None or not len(rows):
        return render("glm.html", note=None, summary=None)
    missing = entry.get("glm_missing") or []
    part = rows[rows["level"] == "participant"]
    summary = []
    for (state, method), group in part.groupby(["state", "attribution_method"], sort=True):
        row = {"state": state, "attribution": method, "participants": int(group["participant_id"].nunique())}
        for measure in MEASURES:
            values = group[measure].astype(float)
            row[f"{measure} mean"] = float(values.mean()) if values.notna().any() else None
            row[f"{measure} sd"] = float(values.std(ddof=1)) if values.notna().sum() > 1 else None
        summary.append(row)
    import pandas as pd

    states = []
    for state in sorted(set(part["state"])):
        rel_rel, kind = relevance_map_for(entry, state)
        group_glm: Any = next((c for c in entry.get("glm_contrasts", []) if c["state"] == state), None)
        glm_mean: Any  # a NIfTI image (group z-map) or an array (mean of the t-maps)
        glm_path = (group_glm or {}).get("files", {}).get("z") if group_glm else None
        if glm_path and (Path(output_dir) / glm_path).is_file():
            import nibabel as nib

            glm_mean, n = nib.load(Path(output_dir) / glm_path), group_glm["n_participants"]
        else:
            glm_mean, n = mean_t_map(output_dir, rows, state)
        if not rel_rel or glm_mean is None or not (Path(output_dir) / rel_rel).is_file():
            continue
        import nibabel as nib

        rel_img: Any = nib.load(Path(output_dir) / rel_rel)  # a NIfTI image
        if not np.any(np.asarray(rel_img.dataobj)):
            continue
        left = _glass(rel_img, f"{task} {state}: relevance ({kind})", templates)
        stats = part[part["state"] == state]
        if glm_path and group_glm:
            right = _glass(glm_mean, f"{task} {state}: GLM z vs others ({n} participants)", templates)
            about_right = (
                f"right: the group GLM contrast's z-map ({glm_path}; the same second-level statistics as the "
                f"relevance contrasts: {group_glm['threshold_text']})"
            )
        else:
            right = _glass(glm_mean, f"{task} {state}: GLM t vs others (mean of {n})", templates)
            about_right = (
                f"right: mean of the {n} participants' GLM t-maps (display only: the mean of t-maps is no group test)"
            )
        caption = (
            f"left: group relevance map ({kind} across participants, {rel_rel}); {about_right}; both drawn at the 95th "
            f"percentile of |value| in the brain. Agreement (participant level, mean): r "
            f"{_fmt(stats['pearson_r'].astype(float).mean())}, Dice top 1 % {_fmt(stats['dice_top1'].astype(float).mean())}, "
            f"top 5 % {_fmt(stats['dice_top5'].astype(float).mean())}, top 10 % {_fmt(stats['dice_top10'].astype(float).mean())}."
        )
        states.append({"state": state, "left": left, "right": right, "caption": caption})
    return render(
        "glm.html",
        note=None,
        summary=pd.DataFrame(summary),
        agreement=entry["glm_agreement"],
        missing=missing,
        missing_text=", ".join("sub-" + s for s in missing),
        states=states,
    )


def relevance_map_for(entry: Mapping[str, Any], state: str) -> tuple[str, str] | tuple[None, None]:
    """``(path relative to OUTPUT_DIR, kind)`` of the group relevance map to show beside a state's GLM map.

    The state-vs-others contrast of the relevance maps (its z-map, else t, else effect) is what the GLM's
    state-vs-others t-map is compared with; without it, the state's mean map; ``(None, None)`` if neither.
    Manifests written before the group contrasts hold ``t`` / ``mean`` paths per map instead of ``files``.
    """
    for contrast in entry.get("contrasts", []):
        if contrast.get("state") == state and contrast.get("kind") == "others" and not contrast.get("correct_only"):
            files = contrast.get("files") or {}
            for stat in ("z", "t", "effect"):
                if files.get(stat):
                    return files[stat], f"{stat} of {contrast.get('label', state)}"
    for entry_map in entry.get("maps", []):
        if entry_map.get("state") == state and not entry_map.get("correct_only"):
            files = entry_map.get("files") or {"t": entry_map.get("t"), "effect": entry_map.get("mean")}
            for stat, kind in (("t", "t"), ("effect", "mean")):
                if files.get(stat):
                    return files[stat], kind
    return None, None


def _fmt(value):
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.2f}"

"""The report's quality part of one task: significance, faithfulness, sanity, plausibility."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.quality import compare, sanity

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


def faithfulness_figure(curves: pd.DataFrame, title: str) -> Figure:
    """Mean deletion curves (logit drop vs removed fraction) per state, both orders, 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    states = list(dict.fromkeys(curves["state"]))
    fig, axes = plt.subplots(1, len(states), figsize=(3.2 * len(states) + 0.5, 3.0), squeeze=False, sharey=True)
    for ax, state in zip(axes[0], states):
        for order, colour in (("relevance", "tab:red"), ("random", "tab:grey")):
            sel = curves[(curves["state"] == state) & (curves["order"] == order)].sort_values("fraction")
            x = 100 * sel["fraction"].to_numpy(dtype=float)
            ax.plot(x, sel["logit_drop_mean"], marker="o", ms=3, color=colour, label=f"{order} order")
            low, high = sel["ci95_low"].to_numpy(dtype=float), sel["ci95_high"].to_numpy(dtype=float)
            if np.isfinite(low).any():
                ax.fill_between(x, low, high, color=colour, alpha=0.2, lw=0)
        ax.set_title(str(state), fontsize=9)
        ax.set_xlabel("in-mask voxels removed (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("drop of the explained logit")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def quality_html(output_dir: str | os.PathLike[str], entry: Mapping[str, Any], task: str) -> str:
    """HTML of the quality tables of one task entry of the group manifest ('' when there are none)."""
    from deeplight_bids.group.html import esc, figure_html, png_data_uri, read_table, table_html

    parts = []
    group = read_table(output_dir, entry["significance_group"]) if entry.get("significance_group") else None
    table = read_table(output_dir, entry["significance"]) if entry.get("significance") else None
    if table is not None:
        parts.append(
            "<h4>Is decoding above chance?</h4><p>Per participant: permutation test of the block labels "
            "within runs (temporal structure kept) and binomial test (treats volumes as independent, so "
            "optimistic); group: one-sample t test of accuracy minus chance.</p>"
        )
        parts.append(table_html(group) + table_html(table))
    curves = read_table(output_dir, entry["faithfulness"]) if entry.get("faithfulness") else None
    if curves is not None and len(curves):
        fig = faithfulness_figure(curves, f"task {task}: deletion curves (mean over participants, 95% interval)")
        parts.append(
            "<h4>Faithfulness of the relevance maps</h4>"
            + figure_html(
                png_data_uri(fig),
                "drop of the explained logit as the most relevant (red) or randomly chosen (grey) "
                "in-mask voxels are set to 0; a faithful map drops the logit faster than random",
                f"deletion curves {task}",
            )
        )
    quality = read_table(output_dir, entry["quality_participants"]) if entry.get("quality_participants") else None
    if quality is not None and len(quality):
        parts.append("<h4>Faithfulness and sanity per participant</h4>" + table_html(quality))
        flagged = quality[quality["high_similarity"] == 1]["participant_id"].tolist()
        if flagged:
            parts.append(
                f"<p class='warn'>Sanity check failed for {esc(', '.join(flagged))}: the relevance maps "
                f"resemble those of a randomised model (median Spearman or SSIM above "
                f"{sanity.HIGH_SIMILARITY}); they may not show what the model learned.</p>"
            )
        else:
            parts.append(
                "<p>Sanity check (Adebayo et al. 2018): no participant's maps resemble a randomised model's.</p>"
            )
    pooled = read_table(output_dir, entry["attributions"]) if entry.get("attributions") else None
    if pooled is not None and len(pooled):
        parts.append(comparison_html(pooled, task, table_html, figure_html, png_data_uri, esc))
    plaus = read_table(output_dir, entry["plausibility"]) if entry.get("plausibility") else None
    if plaus is not None and len(plaus):
        parts.append(
            "<h4>Plausibility against the reference maps</h4><p>Relevance mass and rank accuracy inside "
            "each reference region (Arras et al. 2022; compare with region_share, the value of a map that "
            "ignores the region) and Pearson r.</p>" + table_html(plaus)
        )
    return "".join(parts)


def comparison_figure(pooled: pd.DataFrame, title: str) -> Figure:
    """The methods ranked: deletion area ratio, Spearman with the randomised model and with other states' maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = pooled.sort_values(["passes", "deletion_area_ratio"], ascending=[False, False])
    names = order["method"].tolist()
    colours = ["tab:green" if p else "tab:grey" for p in order["passes"]]
    panels = (
        ("deletion_area_ratio", "deletion area / published rule's", compare.FAITHFUL_SHARE, "min"),
        ("randomisation_spearman", "Spearman with randomised model", compare.RANDOM_SPEARMAN_MAX, "max"),
        ("class_sensitivity_spearman", "Spearman with other states' maps", compare.CLASS_SPEARMAN_MAX, "max"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(11, 0.35 * len(names) + 1.6), sharey=True)
    for ax, (column, label, bar, kind) in zip(axes, panels):
        ax.barh(names, order[column].to_numpy(dtype=float), color=colours)
        ax.axvline(bar, color="tab:red", ls="--", lw=1)
        ax.set_xlabel(f"{label} ({'>=' if kind == 'min' else '<='} {bar})", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def comparison_html(
    pooled: pd.DataFrame,
    task: str,
    table_html: Callable[..., str],
    figure_html: Callable[[str, str, str], str],
    png_data_uri: Callable[..., str],
    esc: Callable[[object], str],
) -> str:
    """The report's section on ``--compare-attributions``: ranked figure, table, one sentence per method."""
    fig = comparison_figure(pooled, f"task {task}: attribution methods (median over runs; green: passes all three)")
    sentences = "".join(f"<li>{esc(compare.verdict(row))}</li>" for _, row in pooled.iterrows())
    passing = pooled[pooled["passes"] == 1]["method"].tolist()
    return (
        "<h4>Attribution methods compared</h4><p>Every method explained the same volumes of each run and went "
        "through the same checks (docs/quality.rst): faithfulness (deletion curves, relative to the published "
        f"rule), model randomisation (Adebayo et al. 2018, cascade; the fully randomised stage must give a "
        f"Spearman <= {compare.RANDOM_SPEARMAN_MAX}) and class sensitivity (Sixt et al. 2020; the maps of other "
        f"states must differ, Spearman <= {compare.CLASS_SPEARMAN_MAX}). Passing all three: "
        f"<b>{esc(', '.join(passing) or 'none')}</b>.</p>"
        + figure_html(png_data_uri(fig), "methods ranked; dashed: the bar of each check", f"attribution methods {task}")
        + table_html(pooled)
        + f"<ul>{sentences}</ul>"
        + "<p class='note'>Caveat (Binder et al., CVPR 2023): a randomisation test alone cannot rank methods, and "
        "Thomas, R&eacute; &amp; Poldrack (2023) found that the more faithful methods align less with GLM and "
        "meta-analysis maps, and vice versa: choose by the question (where the model looks, or why it chose "
        "this state).</p>"
    )

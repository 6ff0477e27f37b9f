"""The report's quality part of one task: significance, faithfulness, sanity, plausibility."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplight_bids.group.html import png_data_uri, read_table, render
from deeplight_bids.quality import compare, sanity

if TYPE_CHECKING:
    import pandas as pd
    from markupsafe import Markup
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


def quality_html(output_dir: str | os.PathLike[str], entry: Mapping[str, Any], task: str) -> Markup:
    """HTML of the quality tables of one task entry of the group manifest ('' when there are none)."""

    def table(key):
        return read_table(output_dir, entry[key]) if entry.get(key) else None

    def rows(frame):  # an empty table shows nothing, not "no rows"
        return frame if frame is not None and len(frame) else None

    curves = rows(table("faithfulness"))
    faithfulness = None
    if curves is not None:
        fig = faithfulness_figure(curves, f"task {task}: deletion curves (mean over participants, 95% interval)")
        faithfulness = png_data_uri(fig)
    participants = rows(table("quality_participants"))
    flagged = [] if participants is None else participants[participants["high_similarity"] == 1]["participant_id"]
    pooled = rows(table("attributions"))
    return render(
        "quality.html",
        task=task,
        significance_group=table("significance_group"),
        significance=table("significance"),
        faithfulness=faithfulness,
        participants=participants,
        flagged=", ".join(flagged),
        high_similarity=sanity.HIGH_SIMILARITY,
        comparison=None if pooled is None else comparison_html(pooled, task),
        plausibility=rows(table("plausibility")),
    )


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


def comparison_html(pooled: pd.DataFrame, task: str) -> Markup:
    """The report's section on ``--compare-attributions``: ranked figure, table, one sentence per method."""
    fig = comparison_figure(pooled, f"task {task}: attribution methods (median over runs; green: passes all three)")
    return render(
        "comparison.html",
        task=task,
        uri=png_data_uri(fig),
        pooled=pooled,
        verdicts=[compare.verdict(row) for _, row in pooled.iterrows()],
        passing=", ".join(pooled[pooled["passes"] == 1]["method"].tolist()) or "none",
        random_max=compare.RANDOM_SPEARMAN_MAX,
        class_max=compare.CLASS_SPEARMAN_MAX,
    )

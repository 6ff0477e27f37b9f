"""HTML pieces of the group report: escaping, tables, embedded figures, reading a TSV of OUTPUT_DIR.

The report (:mod:`deeplight_bids.group.report`) and its sections (:mod:`~deeplight_bids.group.quality_section`,
:mod:`~deeplight_bids.group.glm_section`) build their HTML from these.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deeplight_bids.utils.tsv import read_tsv

__all__ = ["esc", "figure_html", "png_data_uri", "read_table", "table_html"]


def esc(value: object) -> str:
    """``value`` as text, escaped for HTML."""
    return html.escape(str(value))


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return esc(value)


def table_html(frame: pd.DataFrame | None, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """An HTML table of ``frame`` (numbers right-aligned with ``digits`` decimals, NaN as n/a)."""
    if frame is None or len(frame) == 0:
        return "<p><em>no rows</em></p>"
    columns = columns or list(frame.columns)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            v = row[c]
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            if isinstance(v, float) and pd.isna(v):
                v = None
            cells.append(f"<td class='num'>{_fmt(v, digits)}</td>" if num else f"<td>{_fmt(v, digits)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def png_data_uri(fig_or_display: Any, dpi: int = 80) -> str:
    """Render a matplotlib Figure or a nilearn display into a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig = fig_or_display.frame_axes.figure if hasattr(fig_or_display, "frame_axes") else fig_or_display
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(uri: str, caption: str, alt: str) -> str:
    """A figure (``data:`` URI) with its caption and alternative text."""
    return f"<div class='fig'><img src='{uri}' alt='{esc(alt)}'><div class='cap'>{esc(caption)}</div></div>"


def read_table(output_dir: str | os.PathLike[str], rel: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The TSV at ``OUTPUT_DIR/rel`` as a DataFrame, or None when there is none."""
    path = Path(output_dir) / rel
    return read_tsv(path) if path.is_file() else None

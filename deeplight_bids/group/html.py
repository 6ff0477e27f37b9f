"""HTML pieces of the group report: the jinja2 templates, escaping, tables, embedded figures, reading a TSV.

The report (:mod:`deeplight_bids.group.report`) and its sections (:mod:`~deeplight_bids.group.quality_section`,
:mod:`~deeplight_bids.group.glm_section`) compute their numbers, tables and figures in Python and hand them to
the templates of ``deeplight_bids/group/report_templates/`` (:func:`render`), which hold the markup.

Two rules of those templates (both keep the report as it was written before the templates, byte for byte):

* a line break and the indentation after it are dropped (:class:`JoinLines`): write the markup indented,
  and keep a sentence, or a tag, on one line where a space must stay;
* ``{{ value }}`` is escaped with :func:`html.escape` (:func:`esc`), not with MarkupSafe's escape (which
  writes quotes as ``&#34;`` / ``&#39;``); :class:`markupsafe.Markup` (what :func:`render`, :func:`table_html`
  and :func:`figure_html` return) goes in as it is.  Filters that escape by themselves (``join``, ``tojson``,
  ``xmlattr``) would escape the other way: join lists in Python.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import numpy as np
import pandas as pd
from markupsafe import Markup

from deeplight_bids.utils.tsv import read_tsv

__all__ = ["JoinLines", "environment", "esc", "figure_html", "png_data_uri", "read_table", "render", "table_html"]


def esc(value: object) -> str:
    """``value`` as text, escaped for HTML."""
    return html.escape(str(value))


def _escaped(value: object) -> object:
    """The environment's ``finalize``: every ``{{ value }}`` escaped as :func:`esc` does, Markup left alone."""
    return value if hasattr(value, "__html__") else Markup(esc(value))


class JoinLines(jinja2.ext.Extension):
    """Drop each line break of an ``.html`` template with the indentation after it.

    The report is one long line per section; this lets the templates be indented for reading and still
    write it so.  Other templates (the style sheet) are left as they are.
    """

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        """The template's source without its line breaks and indentation (``.html`` templates only)."""
        return re.sub(r"\n\s*", "", source) if name and name.endswith(".html") else source


@functools.cache
def environment() -> jinja2.Environment:
    """The report's jinja2 environment (built once): the package's templates, escaped, strict about names."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("deeplight_bids.group", "report_templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        finalize=_escaped,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails instead of leaving a hole in the report
        keep_trailing_newline=True,  # the style sheet ends with one
        extensions=[JoinLines],
    )
    env.filters["e"] = env.filters["escape"] = _escaped  # ``|e`` escapes as ``{{ }}`` does
    env.globals.update(table=table_html, figure=figure_html)
    return env


def render(template: str, /, **context: Any) -> Markup:
    """The template ``template`` of ``deeplight_bids/group/report_templates/`` rendered with ``context``.

    ``template`` is positional-only: ``name`` and the like stay free for the context.
    """
    return Markup(environment().get_template(template).render(**context))


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return value


def table_html(frame: pd.DataFrame | None, columns: Sequence[str] | None = None, digits: int = 3) -> Markup:
    """An HTML table of ``frame`` (numbers right-aligned with ``digits`` decimals, NaN as n/a)."""
    if frame is None or len(frame) == 0:
        return render("table.html", columns=None, rows=[])
    columns = columns or list(frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            v = row[c]
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            if isinstance(v, float) and pd.isna(v):
                v = None
            cells.append((num, _fmt(v, digits)))
        rows.append(cells)
    return render("table.html", columns=columns, rows=rows)


def png_data_uri(fig_or_display: Any, dpi: int = 80) -> str:
    """Render a matplotlib Figure or a nilearn display into a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig = fig_or_display.frame_axes.figure if hasattr(fig_or_display, "frame_axes") else fig_or_display
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(uri: str, caption: str, alt: str) -> Markup:
    """A figure (``data:`` URI) with its caption and alternative text."""
    return render("figure.html", uri=uri, caption=caption, alt=alt)


def read_table(output_dir: str | os.PathLike[str], rel: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The TSV at ``OUTPUT_DIR/rel`` as a DataFrame, or None when there is none."""
    path = Path(output_dir) / rel
    return read_tsv(path) if path.is_file() else None

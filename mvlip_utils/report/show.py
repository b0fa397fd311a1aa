"""How the notebooks show results: values glued into the prose, formatted tables, and captioned figures."""

from __future__ import annotations

import math
import re
from html import escape
from numbers import Integral, Real
from typing import Any, Mapping, Sequence

import numpy as np

from ..settings.profiles import ENCODER_LABELS


def glue(**values: Any) -> None:
    """Glue each value under its name for the markdown (MyST-NB's ``{glue:text}`name```), shown nowhere else."""
    from myst_nb import glue as myst_glue

    for name, value in values.items():
        myst_glue(name, value.item() if isinstance(value, np.generic) else value, display=False)


def figure_caption(what: str, profile: str, encoder: str | Sequence[str] | None, hardware: str) -> str:
    """'<what>. Profile `smoke`, encoder CLIP(Swin), hardware CPU (...).' (encoder "all" for None)"""
    names = ", ".join(ENCODER_LABELS.get(e, e) for e in ([encoder] if isinstance(encoder, str) else encoder or []))
    return f"{what.rstrip('.')}. Profile `{profile}`, encoder {names or 'all'}, hardware {hardware}."


def show_figure(fig, caption: str) -> None:
    """A matplotlib figure followed by its caption; the figure is closed."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    display(fig)
    display(Markdown(f"*Figure: {caption}*"))
    plt.close(fig)


def cell_text(value: Any, pattern: str) -> str:
    """A table cell: integers whole, other numbers in ``pattern``, booleans yes/no, missing as '–', text as is."""
    if isinstance(value, (bool, np.bool_)):  # numpy's booleans too (a bool column's cells)
        return "yes" if value else "no"
    if value is None or (isinstance(value, Real) and not math.isfinite(float(value))):  # float32 NaN too
        return "–"
    if isinstance(value, Integral):
        return f"{int(value):,}"
    if isinstance(value, Real):
        if float(value).is_integer() and pattern == "auto":
            return f"{int(value):,}"
        return (pattern if pattern != "auto" else "{:.4g}").format(float(value))
    return str(value)


def show_table(frame, table_id: str, caption: str, formats: Mapping[str, str] | None = None,
               default: str = "{:.4f}", wide: bool = False) -> None:
    """A caption, then ``frame`` as an HTML table ``table_id``; numbers per column in ``formats`` (else ``default``;
    "auto": 4 significant digits), integers whole. ``wide``: text cells that wrap at spaces."""
    import pandas as pd
    from IPython.display import HTML, Markdown, display

    shown = frame.copy()
    for column in shown.columns:
        shown[column] = [cell_text(v, (formats or {}).get(column, default)) for v in shown[column]]
    classes = "mvlip-table mvlip-wide" if wide else "mvlip-table"
    display(Markdown(f"**{caption}**"))
    plain_index = isinstance(shown.index, pd.RangeIndex)  # 0, 1, 2, ... says nothing: left out
    html = shown.to_html(table_id=table_id, escape=True, border=0, classes=classes, index=not plain_index,
                         index_names=False)
    if not plain_index:  # the index's names in the header row, not in a row of their own
        names = iter(shown.index.names)
        head, rest = html.split("</tr>", 1)
        html = re.sub(r"<th></th>", lambda _: f"<th>{escape(str(next(names, '') or ''))}</th>", head) + "</tr>" + rest
    display(HTML(html))

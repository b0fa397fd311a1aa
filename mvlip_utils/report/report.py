"""How the notebooks show what they computed: prose (``show_markdown``), admonitions built from data
(``show_admonition``, ``edition_warning``), figures with captions that name profile, encoder and hardware
(``figure_caption``, ``show_figure``) and tables that fit the page (``show_table``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..settings.profiles import ENCODER_LABELS, PROFILE_MEANING


def show_markdown(text: str) -> None:
    """Display computed prose (values come from the executed code)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def figure_caption(what: str, profile: str, encoder: str | Sequence[str] | None, hardware: str) -> str:
    """'<what> Profile `smoke`, encoder CLIP(Swin), hardware CPU (...).' for every figure."""
    if encoder is None or isinstance(encoder, str):
        names = ENCODER_LABELS.get(encoder, encoder) if encoder else "all"
    else:
        names = ", ".join(ENCODER_LABELS.get(e, e) for e in encoder)
    return f"{what.rstrip('.')}. Profile `{profile}`, encoder {names}, hardware {hardware}."


def show_figure(fig, caption: str) -> None:
    """Show a matplotlib figure followed by its caption, then close it."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    display(fig)
    display(Markdown(f"*Figure: {caption}*"))
    plt.close(fig)


def show_table(frame, table_id: str, caption: str, formats: Mapping[str, str] | None = None,
               default: str = "{:.4f}", wide: bool = False) -> None:
    """A caption line, then ``frame`` as an HTML table with id ``table_id``; numbers formatted per column
    (``formats``: column -> format string), missing values as an en dash. ``wide``: a table of long text
    cells, laid out to the width of the page with wrapping cells (book/_static/mvlip.css)."""
    import pandas as pd
    from IPython.display import HTML, Markdown, display

    formats = dict(formats or {})

    def fmt(column):
        pattern = formats.get(column, default)
        return lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (
            pattern.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))

    shown = frame.copy()
    for column in shown.columns:
        shown[column] = shown[column].map(fmt(column))
    classes = "mvlip-table mvlip-wide" if wide else "mvlip-table"
    display(Markdown(f"**{caption}**"))
    plain_index = isinstance(shown.index, pd.RangeIndex)  # 0, 1, 2, ... says nothing: left out
    display(HTML(shown.to_html(table_id=table_id, escape=True, border=0, classes=classes, index=not plain_index)))


def show_admonition(kind: str, title: str, text: str) -> None:
    """A Jupyter Book admonition (``warning``, ``note``, ...) built from data: the book renders it as a
    box (MyST Markdown output), JupyterLab shows the same text."""
    from IPython.display import Markdown, display

    display(Markdown(f":::{{admonition}} {title}\n:class: {kind}\n{text}\n:::"))


def edition_warning(config: Mapping[str, Any] | Any, what: str = "this chapter") -> None:
    """The box every chapter of a random-weight run opens with: what its numbers can and cannot mean,
    naming profile, towers and hardware (``config``: a StudyConfig or a run's config.json)."""
    get = config.get if isinstance(config, Mapping) else (lambda k, d=None: getattr(config, k, d))
    profile = get("profile")
    hardware = get("device_name")
    if not hardware:
        from ..settings.profiles import resolve_device
        from ..train.results import device_description

        hardware = device_description(resolve_device(get("device")))
    if get("pretrained") and get("model_size") == "paper":
        show_admonition("note", f"Profile `{profile}`", f"{PROFILE_MEANING.get(profile, '')} Hardware of "
                        f"{what}: {hardware}.")
        return
    show_admonition("warning", f"Profile `{profile}`: random weights",
                    f"{PROFILE_MEANING.get(profile, 'Random weights: accuracy and loss mean nothing here.')} "
                    f"Towers: {get('model_size')} size; data: `{get('data')}`; hardware of {what}: {hardware}.")

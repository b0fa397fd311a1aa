"""Helpers the notebooks call to turn their parameters into a run and to show what it produced.

Parameters -> StudyConfig (``config_from_parameters``), whether a finished run can be loaded instead of
trained (``reusable_run``) and how it was got (``describe_training``), and presentation: computed prose
(``show_markdown``), figures with captions that name profile, encoder and hardware (``figure_caption``,
``show_figure``) and tables (``show_table``).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping, Sequence

# What the book calls each image tower (the paper's names)
ENCODER_LABELS = {"mambavision": "MVLIP", "swin": "CLIP(Swin)", "vit": "CLIP(ViT)"}


def config_from_parameters(namespace: Mapping[str, Any], **fixed: Any):
    """The StudyConfig of a notebook's parameters: ``namespace`` holds ``profile`` and any StudyConfig
    field (None = the profile's value); ``fixed`` overrides (e.g. encoder=...)."""
    from .profiles import StudyConfig, get_config

    if "profile" not in namespace:
        raise ValueError("the notebook's parameters must define 'profile'")
    values = {f.name: namespace[f.name] for f in fields(StudyConfig) if f.name != "profile" and f.name in namespace}
    values.update(fixed)
    return get_config(namespace["profile"], **values)


def parameter_names() -> list[str]:
    """Every StudyConfig field: each notebook's parameters cell defines all of them."""
    from .profiles import StudyConfig

    return [f.name for f in fields(StudyConfig)]


def reusable_run(config) -> bool:
    """True when the run folder of ``config`` holds its finished run (the same parameters, ``epochs``
    included, profiles.RUN_IRRELEVANT aside; the same tower architecture; files that agree): the train
    notebook then loads it instead of training. False when the folder holds no finished run. A finished
    run of other parameters raises train.RunMismatchError (naming the folder, the run, the parameters
    and the ways on), as train_run would: it is never retrained, extended or relabelled silently."""
    from .train import finished_run_history

    return finished_run_history(config) is not None


def describe_training(run, epochs: int, trained_now: int, seconds: float, loaded: bool = False) -> str:
    """How a train notebook got its run, for "We ...": loaded, trained from scratch, resumed, or completed
    (the checkpoint held every epoch, only the final evaluation was missing)."""
    if loaded:
        return f"loaded the finished run in `{run}` (nothing retrained)"
    if trained_now == epochs:
        return f"trained the run in `{run}` from scratch in {seconds:.1f} s"
    if trained_now:
        return (f"resumed the run in `{run}` after epoch {epochs - trained_now} and trained {trained_now} "
                f"more epoch(s) in {seconds:.1f} s")
    return (f"completed the run in `{run}`: its checkpoint held all {epochs} epoch(s), the final evaluation "
            f"was written in {seconds:.1f} s")


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
               default: str = "{:.4f}") -> None:
    """A caption line, then ``frame`` as an HTML table with id ``table_id``; numbers formatted per column
    (``formats``: column -> format string), missing values as an en dash."""
    from IPython.display import HTML, Markdown, display

    formats = dict(formats or {})

    def fmt(column):
        pattern = formats.get(column, default)
        return lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (
            pattern.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))

    shown = frame.copy()
    for column in shown.columns:
        shown[column] = shown[column].map(fmt(column))
    display(Markdown(f"**{caption}**"))
    display(HTML(shown.to_html(table_id=table_id, escape=True, border=0, classes="mvlip-table")))

"""The book's figures, one per function, returned (seaborn on matplotlib). Legends sit outside the data; with
seeds, the line is their mean and the band one standard deviation."""

from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..settings.profiles import ENCODER_LABELS
from .tables import PROFILE_PHASES, model_label

COLOURS = {"mambavision": "tab:green", "swin": "tab:blue", "vit": "tab:orange"}
PALETTE = {ENCODER_LABELS[e]: c for e, c in COLOURS.items()}
EXTRA_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def palette(labels) -> dict[str, str]:
    """PALETTE for the paper's towers; other labels in turn from EXTRA_COLOURS."""
    extras = sorted(label for label in set(labels) if label not in PALETTE)
    return {**PALETTE, **{label: EXTRA_COLOURS[i % len(EXTRA_COLOURS)] for i, label in enumerate(extras)}}


def _done(fig, legend_beside=None):
    """The figure laid out, with ``legend_beside``'s legend outside its data."""
    if legend_beside is not None:
        legend_beside.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _loss_axes(axes, titles) -> None:
    for ax, title in zip(axes, titles):
        ax.set(title=title, xlabel="epoch", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def seed_histories(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Every run's history in one long frame with ``tower`` and ``seed`` columns."""
    frames = [r["history"].assign(tower=model_label(e), seed=r["seed"])
              for e, entry in runs.items() for r in entry["runs"]]
    return pd.concat(frames, ignore_index=True)


def loss_curves(entry: Mapping[str, Any], label: str):
    """One encoder's training loss (the paper's Figure 2) and validation loss (Figure 3): each seed thin, the mean
    bold."""
    data = seed_histories({entry["encoder"]: entry})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, column in zip(axes, ("train_loss", "val_zeroshot_loss")):
        sns.lineplot(data=data, x="epoch", y=column, units="seed", estimator=None, lw=0.7, alpha=0.5,
                     color="grey", ax=ax)
        sns.lineplot(data=data, x="epoch", y=column, errorbar="sd", marker="o", color="tab:green", ax=ax,
                     label=f"mean of {data.seed.nunique()} seed(s)")
    _loss_axes(axes, (f"Training loss (contrastive): {label}", f"Validation loss (zero-shot CE): {label}"))
    return _done(fig)


def loss_curves_beside_the_authors(runs: Mapping[str, Mapping[str, Any]], authors_logs: pd.DataFrame, edition: str):
    """The authors' curves (their logs) on top, ours below, on axes of their own (not comparable in scale)."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    logs = authors_logs.assign(tower=authors_logs.encoder.map(ENCODER_LABELS.get))
    ours = seed_histories(runs)
    colours = palette(set(ours.tower) | set(logs.tower))
    for col, column in enumerate(("train_loss", "val_zeroshot_loss")):
        sns.lineplot(data=logs, x="epoch", y=column, hue="tower", palette=colours, marker=".", ax=axes[0, col])
        sns.lineplot(data=ours, x="epoch", y=column, hue="tower", palette=colours, errorbar="sd", marker="o",
                     ax=axes[1, col])
    _loss_axes(axes.flat, ("The authors: training loss (Figure 2)", "The authors: validation loss (Figure 3)",
                           f"Ours, {edition}: training loss", f"Ours, {edition}: validation loss"))
    return _done(fig)


def throughput_by_condition(frame: pd.DataFrame, title: str = "Throughput of the image towers"):
    """Log-scaled bars of images/s per tower and condition (``findings.throughput_overview``), spread in black."""
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(frame) + 1.5))
    conditions = list(dict.fromkeys(frame["condition"]))
    towers = list(dict.fromkeys(frame["tower"]))
    sns.barplot(data=frame, y="condition", x="images/s", hue="tower", order=conditions, hue_order=towers,
                palette=palette(frame.tower), ax=ax, errorbar=None)
    for container, tower in zip(ax.containers, towers):
        spread = frame[frame.tower == tower].set_index("condition").reindex(conditions)
        for bar, low, high in zip(container, spread["low"], spread["high"]):
            if pd.notna(low) and pd.notna(high):
                ax.plot([low, high], [bar.get_y() + bar.get_height() / 2] * 2, color="black", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="images per second (log scale)", ylabel="", title=title)
    ax.grid(alpha=0.3, axis="x", which="both")
    return _done(fig, ax)


def resolution_sweep(sweeps: pd.DataFrame, labels: Mapping[str, str]):
    """Log-log against pixels per image, one line per tower: measured time, counted FLOPs and memory per image
    where measured; grey guides of slope 1 and 2 through each panel's first point."""
    data = sweeps[sweeps["images_per_s"].notna()].assign(
        tower=lambda f: f.encoder.map(labels), ms=lambda f: f.seconds_per_image * 1e3,
        gflops=lambda f: f.get("flops_per_image", np.nan) / 1e9,
        mib=lambda f: f.get("marginal_memory_per_image_bytes", np.nan) / 2**20)
    panels = [(c, l) for c, l in (("ms", "ms per image (measured)"), ("gflops", "GFLOPs per image (counted)"),
                                  ("mib", "memory per image (MiB)")) if data[c].notna().sum() >= 2]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.6, 4), squeeze=False)
    colours = {labels[e]: COLOURS.get(e) or palette([labels[e]])[labels[e]] for e in data.encoder.unique()}
    for i, (ax, (column, label)) in enumerate(zip(axes[0], panels)):
        sns.lineplot(data=data, x="pixels", y=column, hue="tower", palette=colours, marker="o", ax=ax,
                     legend=i == len(panels) - 1)
        first = data.dropna(subset=[column]).sort_values("pixels").iloc[0]
        x = np.sort(data.pixels.unique()).astype(float)
        for power, style in ((1, "--"), (2, ":")):
            ax.plot(x, first[column] * (x / x[0]) ** power, style, color="grey", lw=0.8,
                    label=f"slope {power}" if i == len(panels) - 1 else None)
        ax.set(xscale="log", yscale="log", xlabel="pixels per image", ylabel=label)
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.grid(alpha=0.3, which="both")
    return _done(fig, axes[0][-1])


def stacked_minutes(frame: pd.DataFrame, title: str, xlabel: str = "minutes"):
    """Stacked horizontal bars (``frame``: one row per bar, one column per part), the legend beside them."""
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(frame) + 1.6))
    frame.plot.barh(stacked=True, ax=ax, colormap="tab20c")
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, ylabel="", title=title)
    ax.grid(alpha=0.3, axis="x")
    return _done(fig, ax)


def step_time_breakdown(table: pd.DataFrame, title: str):
    """A training step's ms per tower and step (``tables.step_profile_table``) by phase, stacked."""
    on_gpu = table["kernels ms"].notna().all()
    parts = {f"{phase} {'kernels' if on_gpu else '(host)'}": table[f"{phase} ms"] for phase in PROFILE_PHASES}
    parts["the rest of the step" if on_gpu else "waiting for data"] = (
        (table["step ms"] - table["kernels ms"]).clip(lower=0) if on_gpu else table["data wait ms"])
    frame = pd.DataFrame(parts).set_axis([f"{t}, {s}" for t, s in zip(table.tower, table.step)])
    return stacked_minutes(frame, title, xlabel="milliseconds per training step")


def confusion(images: pd.DataFrame, classnames: Sequence[str], classes: Sequence[int]):
    """Confusion among ``classes`` (per-image results), each true class's row a share of all its images."""
    sub = images[images.label.isin(classes)]
    counts = pd.crosstab(sub.label, sub.prediction).reindex(index=classes, columns=classes, fill_value=0)
    rates = counts.div(images.groupby("label").size().reindex(classes), axis=0)
    names = [textwrap.shorten(classnames[c], 22, placeholder="…") for c in classes]
    rates.index, rates.columns = names, names
    fig, ax = plt.subplots(figsize=(0.55 * len(classes) + 4, 0.45 * len(classes) + 2.5))
    sns.heatmap(rates, ax=ax, cmap="viridis", vmin=0, vmax=1, square=True, annot=len(classes) <= 12, fmt=".2f",
                cbar_kws={"label": "fraction of the true class"})
    ax.set(xlabel="predicted class", ylabel="true class")
    return _done(fig)


def image_grid(images: Sequence[Any], titles: Sequence[str], colours: Sequence[str] | None = None,
               per_row: int = 4):
    """Images in rows of ``per_row`` with titles wrapped to fit above each (sample data, example predictions)."""
    rows = -(-len(images) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(3.0 * per_row, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image, title) in enumerate(zip(axes.flat, images, titles)):
        ax.imshow(image)
        wrapped = "\n".join(textwrap.fill(line, 26) for line in title.split("\n"))
        ax.set_title(wrapped, fontsize=8, color=(colours[i] if colours else "black"))
    return _done(fig)


def class_counts(counts: pd.DataFrame):
    """Images per class in each split: bars for a few classes, histograms for many."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    if len(counts) <= 40:
        counts.set_index("class")[["train images", "val images"]].plot.bar(ax=ax, width=0.8)
        ax.set_xlabel("")
    else:
        top = int(max(counts["train images"].max(), counts["val images"].max()))
        bins = np.arange(0, top + 2) - 0.5
        ax.hist(counts["train images"], bins=bins, label="train")
        ax.hist(counts["val images"], bins=bins, label="val", alpha=0.7)
        ax.set_xlabel("images per class")
    ax.set_ylabel("classes" if len(counts) > 40 else "images")
    return _done(fig, ax)

"""The book's figures: each function draws one figure from run files and returns it (seaborn on matplotlib).

The notebooks call these and ``report.show_figure`` puts the figure in the book with a caption that names
the profile, the encoders and the hardware of the runs it was drawn from.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..settings.encoders import marked
from ..settings.profiles import ENCODER_LABELS

COLOURS = {"mambavision": "tab:green", "swin": "tab:blue", "vit": "tab:orange"}
PALETTE = {ENCODER_LABELS[e]: c for e, c in COLOURS.items()}
EXTRA_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def palette(labels) -> dict[str, str]:
    """PALETTE for the paper's towers; the other labels (extra encoders) in turn from EXTRA_COLOURS."""
    extras = sorted(label for label in set(labels) if label not in PALETTE)
    return {**PALETTE, **{label: EXTRA_COLOURS[i % len(EXTRA_COLOURS)] for i, label in enumerate(extras)}}


def loss_curves(history: pd.DataFrame, label: str):
    """Training loss (the paper's Figure 2) and validation losses (its Figure 3) of one run per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(history.epoch, history.train_loss, marker="o", label="train (contrastive)")
    right.plot(history.epoch, history.val_zeroshot_loss, marker="o", label="validation, zero-shot CE (paper's)")
    right.plot(history.epoch, history.val_loss, marker="s", linestyle=":", label="validation, contrastive")
    for ax, title in ((left, "Training loss"), (right, "Validation loss")):
        ax.set(title=f"{title}: {label}", xlabel="epoch", ylabel="loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def loss_curves_beside_the_authors(runs: Mapping[str, Mapping[str, Any]], authors_logs: pd.DataFrame,
                                   edition: str):
    """Two rows of panels: the authors' curves (their logs: 1,000 ImageNet-mini classes, pretrained towers)
    and ours (``edition``), each on its own axes, since the two are not comparable in scale."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=False)
    for encoder in ("mambavision", "swin"):
        h = authors_logs[authors_logs.encoder == encoder]
        axes[0, 0].plot(h.epoch, h.train_loss, marker=".", color=COLOURS[encoder], label=ENCODER_LABELS[encoder])
        axes[0, 1].plot(h.epoch, h.val_zeroshot_loss, marker=".", color=COLOURS[encoder],
                        label=ENCODER_LABELS[encoder])
    labels = {encoder: marked(ENCODER_LABELS[encoder], encoder) for encoder in runs}
    colours = palette(labels.values())
    for encoder, run in runs.items():
        h, label = run["history"], labels[encoder]
        axes[1, 0].plot(h.epoch, h.train_loss, marker="o", color=colours[label], label=label)
        axes[1, 1].plot(h.epoch, h.val_zeroshot_loss, marker="o", color=colours[label], label=label)
    titles = (("The authors: training loss (Figure 2)", "The authors: validation loss (Figure 3)"),
              (f"Ours, {edition}: training loss", f"Ours, {edition}: validation loss (zero-shot CE)"))
    for row in range(2):
        for col in range(2):
            axes[row, col].set(title=titles[row][col], xlabel="epoch", ylabel="loss")
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend(fontsize=8)
    fig.tight_layout()
    return fig


def throughput_by_condition(frame: pd.DataFrame, title: str = "Throughput of the image towers"):
    """Horizontal bars of images/s per tower and condition (``frame``: columns tower, condition, images/s,
    and optionally low/high for a spread drawn as error bars), log-scaled."""
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(frame) + 1.5))
    conditions = list(dict.fromkeys(frame["condition"]))
    sns.barplot(data=frame, y="condition", x="images/s", hue="tower", order=conditions, palette=palette(frame.tower), ax=ax,
                errorbar=None)
    if {"low", "high"} <= set(frame.columns):
        for bar, (_, row) in zip(_bars_in_order(ax, frame, conditions), frame.iterrows()):
            if bar is not None and pd.notna(row["low"]) and pd.notna(row["high"]):
                y = bar.get_y() + bar.get_height() / 2
                ax.plot([row["low"], row["high"]], [y, y], color="black", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="images per second (log scale)", ylabel="", title=title)
    ax.grid(alpha=0.3, axis="x", which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _bars_in_order(ax, frame: pd.DataFrame, conditions: Sequence[str]):
    """The bar patch of each row of ``frame`` (seaborn draws one container per hue level)."""
    hues = list(dict.fromkeys(frame["tower"]))
    by_hue = {h: c for h, c in zip(hues, ax.containers)}
    for _, row in frame.iterrows():
        container = by_hue.get(row["tower"])
        index = conditions.index(row["condition"])
        yield container[index] if container is not None and index < len(container) else None


def resolution_sweep(sweeps: pd.DataFrame, highlight: str | None = None):
    """Time and memory per image against pixels, log-log, one line per tower (``sweeps``: resolution-sweep
    records with an ``encoder`` column), with slope-1 and slope-2 guides through ``highlight``'s first point
    (default: the first tower)."""
    data = sweeps[sweeps["images_per_s"].notna()].assign(
        tower=lambda f: f.encoder.map(lambda e: marked(ENCODER_LABELS[e], e)), ms_per_image=lambda f: f.seconds_per_image * 1e3,
        memory_per_image_mib=lambda f: f.get("marginal_memory_per_image_bytes", np.nan) / 2**20)
    columns = [("ms_per_image", "ms per image")]
    if data["memory_per_image_mib"].notna().sum() >= 2:
        columns.append(("memory_per_image_mib", "memory per image (MiB)"))
    fig, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns), 4), squeeze=False)
    highlight = highlight or data["encoder"].iloc[0]
    for ax, (column, label) in zip(axes[0], columns):
        sns.lineplot(data=data, x="pixels", y=column, hue="tower", palette=palette(data.tower), marker="o", ax=ax)
        base = data[data.encoder == highlight].sort_values("pixels")
        if len(base) and pd.notna(base[column].iloc[0]):
            x = base.pixels.to_numpy(dtype=float)
            for power, style in ((1, "--"), (2, ":")):
                ax.plot(x, base[column].iloc[0] * (x / x[0]) ** power, style, color="grey", label=f"pixels^{power}")
        ax.set(xscale="log", yscale="log", xlabel="pixels per image", ylabel=label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def epoch_time_breakdown(frame: pd.DataFrame, title: str):
    """Stacked bars of where a projected study's minutes go per tower (``frame``: tower index, one column
    per stage in minutes)."""
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(frame) + 1.6))
    frame.plot.barh(stacked=True, ax=ax, colormap="tab20c")
    ax.set(xlabel="minutes", ylabel="", title=title)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def step_time_breakdown(table: pd.DataFrame, title: str):
    """Stacked bars of one training step's milliseconds per tower and step (``discussion.step_profile_table``):
    on a GPU its kernel time by the phase that launched it, then the rest of the step's unprofiled time in
    the check (the GPU waiting); on a CPU the host's phases and its wait for data."""
    on_gpu = table["GPU kernels ms"].notna().all()
    if on_gpu:
        parts = {"forward kernels": table["GPU forward ms"], "backward kernels": table["GPU backward ms"],
                 "optimizer kernels": table["GPU optimizer ms"], "other kernels": table["GPU other ms"],
                 "rest of the step in the check": (table["step ms"] - table["GPU kernels ms"]).clip(lower=0)}
    else:
        parts = {"host forward": table["host forward ms"], "host backward": table["host backward ms"],
                 "host optimizer": table["host optimizer ms"], "waiting for data": table["data wait ms"]}
    frame = pd.DataFrame(parts)
    frame.index = [f"{t}, {s}" for t, s in zip(table.tower, table.step)]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(frame) + 1.8))
    frame.plot.barh(stacked=True, ax=ax, color=["tab:blue", "tab:orange", "tab:red", "tab:purple", "lightgrey"][:len(parts)])
    ax.invert_yaxis()
    ax.set(xlabel="milliseconds per training step", ylabel="", title=title)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def confusion(rates: pd.DataFrame):
    """A row-normalised confusion matrix as a heatmap (annotated up to 12 classes)."""
    fig, ax = plt.subplots(figsize=(0.45 * len(rates) + 3, 0.4 * len(rates) + 2))
    sns.heatmap(rates, ax=ax, cmap="viridis", vmin=0, vmax=1, square=True, annot=len(rates) <= 12, fmt=".2f",
                cbar_kws={"label": "fraction of the true class"})
    ax.set(xlabel="predicted class", ylabel="true class")
    fig.tight_layout()
    return fig


def image_grid(images: Sequence[Any], titles: Sequence[str], colours: Sequence[str] | None = None):
    """A row of images with small titles (sample data, example predictions)."""
    fig, axes = plt.subplots(1, len(images), figsize=(2.1 * len(images), 2.7), squeeze=False)
    for i, (ax, image, title) in enumerate(zip(axes[0], images, titles)):
        ax.imshow(image)
        ax.set_title(title, fontsize=8, wrap=True, color=(colours[i] if colours else "black"))
        ax.axis("off")
    fig.tight_layout()
    return fig


def class_counts(counts: pd.DataFrame):
    """Images per class in each split: bars for a few classes, histograms for many."""
    fig, ax = plt.subplots(figsize=(8, 3))
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
    ax.legend()
    fig.tight_layout()
    return fig

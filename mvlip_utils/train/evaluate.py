"""Zero-shot classification on the validation split, its metrics and each image's result.

Metrics are scikit-learn's: weighted precision, recall and F1 (Table 1), macro averages, top-5 (NaN with five
classes or fewer) and the mean per-class recall; the zero-shot loss is the cross-entropy of the scaled
zero-shot logits against the labels.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, precision_recall_fscore_support,
                             top_k_accuracy_score)
from tqdm.auto import tqdm

from ..settings.precision import autocast_region, precision_context


def progress_iter(loader, desc: str, enabled: bool = True, bar_out: list | None = None):
    """Iterate ``loader`` under a progress bar that only counts (a tqdm.auto bar given the loader would start a
    second iterator, consuming its seeded generator). ``bar_out``, if given, receives the bar."""
    with tqdm(total=len(loader), desc=desc, disable=not enabled, leave=False) as bar:
        if bar_out is not None:
            bar_out.append(bar)
        for item in loader:
            yield item
            bar.update(1)


def to_model_input(images: torch.Tensor, device: str) -> torch.Tensor:
    """A batch on ``device`` for the image tower: uint8 batches (the cache) normalised there, float ones moved."""
    if images.dtype == torch.uint8:
        from ..data.cache import normalize_on_device

        return normalize_on_device(images, device)
    return images.to(device, non_blocking=True)


def synchronize(device) -> None:
    """Wait for the work queued on a CUDA ``device`` (nothing on the CPU), before reading a clock."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def classification_metrics(labels: np.ndarray, logits: np.ndarray, n_classes: int | None = None) -> dict[str, Any]:
    """Accuracy, top-5 (NaN with <= 5 classes), weighted/macro P/R/F1 and mean per-class recall from logits."""
    labels, logits = np.asarray(labels), np.asarray(logits, dtype=np.float64)
    n_classes = n_classes or logits.shape[1]
    classes = np.arange(n_classes)
    predictions = logits.argmax(axis=1)
    out: dict[str, Any] = {"accuracy": float(accuracy_score(labels, predictions))}
    out["top5"] = (float(top_k_accuracy_score(labels, logits, k=5, labels=classes)) if n_classes > 5
                   else math.nan)
    for average in ("weighted", "macro"):
        p, r, f, _ = precision_recall_fscore_support(labels, predictions, average=average, zero_division=0)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    out["mean_per_class_recall"] = float(balanced_accuracy_score(labels, predictions))
    return out


@torch.no_grad()
def zero_shot_evaluate(model, loader, classifier: torch.Tensor, classnames: Sequence[str], device: str,
                       precision: str = "fp32", progress: bool = True,
                       on_features: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, Any]:
    """The metrics, ``zeroshot_loss``, ``n_val``, ``wall_time_s``, ``images_per_s`` and ``per_image`` results of
    one pass; ``on_features(features, labels)`` gets each batch's image features."""
    model.eval()
    labels, logits = [], []
    scale = model.logit_scale.exp().float()
    classifier = classifier.to(device).float()
    start = time.perf_counter()
    with precision_context(precision, device, autocast=False):
        for images, target in progress_iter(loader, "zero-shot", progress):
            images = to_model_input(images, device)
            with autocast_region(precision, device):
                features = model.encode_image(images, normalize=True)
            if on_features is not None:
                on_features(features, target)
            logits.append((scale * features.float() @ classifier).cpu())
            labels.append(target)
    synchronize(device)
    wall = time.perf_counter() - start
    labels, logits = torch.cat(labels).numpy(), torch.cat(logits).numpy()
    metrics = classification_metrics(labels, logits, n_classes=len(classnames))
    predictions = logits.argmax(axis=1)
    losses = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="none").numpy()
    top5 = ((np.argsort(-logits, axis=1)[:, :5] == labels[:, None]).any(axis=1) if len(classnames) > 5
            else np.full(len(labels), np.nan))
    metrics.update({
        "zeroshot_loss": float(losses.mean()),
        "n_val": int(len(labels)),
        "n_classes": len(classnames),
        "wall_time_s": wall,
        "images_per_s": len(labels) / wall if wall > 0 else float("nan"),
        "per_image": {"label": labels, "prediction": predictions, "correct": predictions == labels,
                      "top5_correct": top5, "loss": losses},
    })
    return metrics

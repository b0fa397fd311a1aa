"""Zero-shot classification on the validation split, and its metrics.

Metrics are scikit-learn's: the paper's Table 1 uses the *weighted* precision, recall and F1;
macro averages, top-5 (NaN with five classes or fewer), per-class accuracy and the confusion matrix come
alongside. The zero-shot loss is the cross-entropy of the zero-shot logits (scaled by the model's logit
scale) against the labels.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score
from tqdm.auto import tqdm

from ..settings.precision import autocast_region, precision_context


def progress_iter(loader, desc: str, enabled: bool = True, bar_out: list | None = None):
    """Iterate ``loader`` under a progress bar without letting the bar iterate it.

    ``tqdm.auto``'s bar (tqdm.asyncio) calls ``iter()`` on its iterable when constructed: for a DataLoader
    that starts a second, unused iterator (its workers start and prefetch, and a shuffling loader's seeded
    generator is consumed, so the batch order is not the sampler's first permutation). Here the bar only
    counts. ``bar_out``, if given, receives the bar (for ``set_postfix``)."""
    with tqdm(total=len(loader), desc=desc, disable=not enabled, leave=False) as bar:
        if bar_out is not None:
            bar_out.append(bar)
        for item in loader:
            yield item
            bar.update(1)


def to_model_input(images: torch.Tensor, device: str) -> torch.Tensor:
    """A batch on ``device`` ready for the image tower: uint8 batches from the preprocessed cache are
    normalised there (CLIP mean/std), float batches from the transform are moved as they are."""
    if images.dtype == torch.uint8:
        from ..data.cache import normalize_on_device

        return normalize_on_device(images, device)
    return images.to(device, non_blocking=True)


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (a CUDA device: the current one when it names no index), so
    that a host clock read next times it (nothing to do on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def classification_metrics(labels: np.ndarray, logits: np.ndarray, n_classes: int | None = None) -> dict[str, Any]:
    """Top-1/top-5 accuracy and weighted/macro precision, recall, F1 (scikit-learn) from logits.

    ``top5`` is NaN with five classes or fewer: top-5 accuracy is then 1 by definition and a top-k of
    a smaller k would be another metric under the same name (metrics.json holds it as null).
    """
    labels = np.asarray(labels)
    logits = np.asarray(logits, dtype=np.float64)
    n_classes = n_classes or logits.shape[1]
    classes = np.arange(n_classes)
    predictions = logits.argmax(axis=1)
    out: dict[str, Any] = {"accuracy": float(accuracy_score(labels, predictions))}
    out["top5"] = (float(top_k_accuracy_score(labels, logits, k=5, labels=classes)) if n_classes > 5
                   else math.nan)
    for average in ("weighted", "macro"):
        # scikit-learn's default label set (classes in labels or predictions), as the authors' call used
        p, r, f, _ = precision_recall_fscore_support(labels, predictions, average=average, zero_division=0)
        out[f"precision_{average}"], out[f"recall_{average}"], out[f"f1_{average}"] = float(p), float(r), float(f)
    return out


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, classnames: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for index, name in enumerate(classnames):
        mask = labels == index
        rows.append({"class_index": index, "class_name": name, "n": int(mask.sum()),
                     "accuracy": float((predictions[mask] == index).mean()) if mask.any() else float("nan")})
    return rows


@torch.no_grad()
def zero_shot_logits(model, loader, classifier: torch.Tensor, device: str, precision: str = "fp32",
                     progress: bool = True, desc: str = "zero-shot",
                     on_features: Callable[[torch.Tensor, torch.Tensor], None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, logits, wall seconds) of the whole loop, data loading included. ``on_features(features,
    labels)``, if given, gets each batch's normalised image features (so that another quantity of the same
    forward pass, the validation contrastive loss, needs no second pass)."""
    model.eval()
    labels, logits = [], []
    scale = model.logit_scale.exp().float()
    classifier = classifier.to(device).float()
    start = time.perf_counter()
    with precision_context(precision, device, autocast=False):
        for images, target in progress_iter(loader, desc, progress):
            images = to_model_input(images, device)
            with autocast_region(precision, device):
                features = model.encode_image(images, normalize=True)
            if on_features is not None:
                on_features(features, target)
            logits.append((scale * features.float() @ classifier).cpu())
            labels.append(target)
    synchronize(device)
    wall = time.perf_counter() - start
    return torch.cat(labels).numpy(), torch.cat(logits).numpy(), wall


def zero_shot_evaluate(model, loader, classifier: torch.Tensor, classnames: Sequence[str], device: str,
                       precision: str = "fp32", progress: bool = True,
                       on_features: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, Any]:
    """Everything Table 1 and the evaluate notebook need, for one pass over ``loader`` (``on_features``:
    see ``zero_shot_logits``)."""
    labels, logits, wall = zero_shot_logits(model, loader, classifier, device, precision, progress,
                                            on_features=on_features)
    metrics = classification_metrics(labels, logits, n_classes=len(classnames))
    predictions = logits.argmax(axis=1)
    metrics["zeroshot_loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item())
    metrics.update({
        "n_val": int(len(labels)),
        "n_classes": len(classnames),
        "wall_time_s": wall,
        "images_per_s": len(labels) / wall if wall > 0 else float("nan"),
        "per_class": per_class_accuracy(labels, predictions, classnames),
        "confusion": confusion_matrix(labels, predictions, labels=np.arange(len(classnames))),
        "labels": labels,
        "predictions": predictions,
        "logits": logits,
    })
    return metrics

"""The paper's whole study projected from a GPU edition's measured epochs, for one seed and for several.

The last measured epoch's per-image times (``timings.csv``) are scaled to the paper's counts (``protocol``), plus
the checkpoint wait per epoch and, once per run, the set-up and the first epoch's extra time (warm-up). A further
seed costs the set-up and warm-up of the second seed measured, else the first's. The floor: the counted FLOPs at
the GPU's datasheet fp32 peak.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ..data.files import jsonable, write_json
from ..measure.benchmark import benchmark_record
from ..measure.flops import peak_flops, utilisation_fields


def study_size(ref: Mapping[str, Any]) -> dict[str, int]:
    """The paper's study in numbers: epochs, training images per epoch (whole batches), validation images."""
    p = ref["protocol"]
    return {"epochs": int(p["epochs"]), "train_images": int(p["n_train"]) // int(p["batch_size"]) * int(p["batch_size"]),
            "val_images": int(p["n_val"]), "batch_size": int(p["batch_size"])}


def first_epoch_extra_seconds(timings) -> float:
    """Seconds the first epoch's training took beyond its images at the last epoch's rate (warm-up, once per run);
    0 without epoch 1 and a later one, never below 0."""
    if timings is None or len(timings) < 2 or int(timings["epoch"].iloc[0]) != 1:
        return 0.0
    first, last = timings.iloc[0], timings.iloc[-1]
    return max(0.0, float(first["train_seconds"] - first["train_images"] * last["train_seconds"] / last["train_images"]))


def encoder_projection(entry: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, Any] | None:
    """The paper's study for one encoder (``entry``: ``load_edition``'s) from its first run's last epoch; a further
    seed's cost from its second run where it has one. None without timings."""
    runs = [r for r in entry["runs"] if r.get("timings") is not None and len(r["timings"])]
    if not runs:
        return None
    size, timings, config = study_size(ref), runs[0]["timings"], entry["config"]
    last = timings.iloc[-1]
    train_rate = last["train_images"] / last["train_seconds"]
    val_per_image = last["validation_seconds"] / last["val_images"]
    epoch = size["train_images"] / train_rate + size["val_images"] * val_per_image + last["checkpoint_seconds"]
    once = [float(r["timings"]["setup_seconds"].iloc[0]) + first_epoch_extra_seconds(r["timings"]) for r in runs[:2]]
    setup, warmup = float(timings["setup_seconds"].iloc[0]), first_epoch_extra_seconds(timings)
    out = {"encoder": entry["encoder"], "device_name": config.get("device_name"), "precision": config.get("precision"),
           "train_step": config.get("train_step"), "measured_epoch": int(last["epoch"]),
           "train_images_per_s": float(train_rate), "validation_images_per_s": float(1 / val_per_image),
           "setup_seconds": setup, "first_epoch_extra_seconds": warmup,
           "train_minutes": size["epochs"] * size["train_images"] / train_rate / 60,
           "validation_minutes": size["epochs"] * size["val_images"] * val_per_image / 60,
           "checkpoint_minutes": size["epochs"] * float(last["checkpoint_seconds"]) / 60,
           "warmup_minutes": warmup / 60, "setup_minutes": setup / 60,
           "minutes": (size["epochs"] * epoch + once[0]) / 60,
           "further_seed_minutes": (size["epochs"] * epoch + once[-1]) / 60,
           "further_seed_measured": len(once) > 1}
    train, forward = (benchmark_record(entry, kind="flops", mode=m) for m in ("train", "inference"))
    peak = peak_flops(out["device_name"], "fp32")
    if train and forward and peak:
        flops = size["epochs"] * (size["train_images"] * train["flops_per_image"]
                                  + size["val_images"] * forward["flops_per_image"])
        out.update(fp32_floor_minutes=flops / peak / 60, utilisation=flops / (out["minutes"] * 60) / peak)
    return out


def study_projection(runs: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any], seeds: int = 3) -> dict[str, Any]:
    """Minutes of the whole study on one GPU (the sum) and with one GPU per encoder (the slowest), for one seed
    and for ``seeds``, with the runs' provenance."""
    per = [p for p in (encoder_projection(entry, ref) for entry in runs.values()) if p is not None]
    for p in per:
        p["seeds_minutes"] = p["minutes"] + (seeds - 1) * p["further_seed_minutes"]

    def total(key: str, how=sum) -> float | None:
        values = [p.get(key) for p in per]
        return float(how(values)) if per and all(isinstance(v, (int, float)) for v in values) else None

    provenance = {e: {k: (entry.get("benchmark_provenance") or {}).get(k) for k in
                      ("date_utc", "git_commit", "git_dirty", "command", "driver", "versions")}
                  for e, entry in runs.items()}
    return {"study": study_size(ref), "seeds": seeds, "encoders": [p["encoder"] for p in per], "per_encoder": per,
            "one_gpu_minutes": total("minutes"), "one_gpu_per_encoder_minutes": total("minutes", max),
            "one_gpu_seeds_minutes": total("seeds_minutes"),
            "one_gpu_per_encoder_seeds_minutes": total("seeds_minutes", max),
            "fp32_floor_minutes": total("fp32_floor_minutes"), "provenance": provenance}


def projection_table(projection: Mapping[str, Any], labels: Mapping[str, str]) -> pd.DataFrame:
    """Minutes of the paper's study per encoder by stage, one seed, and with every seed."""
    rows = {labels[p["encoder"]]: {"training": p["train_minutes"], "validation": p["validation_minutes"],
                                   "checkpoint waits": p["checkpoint_minutes"],
                                   "first-epoch warm-up": p["warmup_minutes"], "set-up": p["setup_minutes"],
                                   "one seed": p["minutes"], f"{projection['seeds']} seeds": p["seeds_minutes"]}
            for p in projection["per_encoder"]}
    return pd.DataFrame(rows).T


def training_utilisation(train_images_per_s: float, flops: Mapping[str, float], device_name: str,
                         precision: str) -> dict[str, Any]:
    """Achieved training FLOP/s and its share of the device's ``precision`` peak (None where unknown)."""
    return utilisation_fields(flops["train"], train_images_per_s, device_name, precision)


def save_projection(path: str | Path, projection: Mapping[str, Any]) -> bool:
    """Write ``projection`` to ``path`` unless the file holds the same values (floats to 1e-9 relative, so a
    recorded edition's file survives last-bit differences on another machine). Returns whether it wrote."""
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) or isinstance(b, float):
            return (isinstance(a, (int, float)) and isinstance(b, (int, float))
                    and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    path = Path(path)
    new = json.loads(json.dumps(jsonable(projection), allow_nan=False))
    if path.is_file() and same(json.loads(path.read_text()), new):
        return False
    write_json(path, projection)
    return True

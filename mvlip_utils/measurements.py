"""Reading back the GPU measurements committed under ``results/h200/`` (with their provenance).

The device machine keeps nothing, so what was measured there lives in the repository as JSON:
``scan/scan_ratios.json`` (the selective scan against the scan-free model), ``benchmark/*.json`` (model-only
throughput, resolution sweep, the paper's eval-loop method) and ``epoch/*.json`` (paper-size epochs, the
projected study time, DDP). These functions turn them into the tables and figures the book shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .benchmark import fit_growth_exponent

ENCODER_LABELS = {"mambavision": "MVLIP (MambaVision-B-21K)", "swin": "CLIP(Swin-B)", "vit": "CLIP(ViT-B/32)"}
SCAN_MODES = {"inf_fp32": "inference, fp32, batch 32", "inf_bf16": "inference, bf16, batch 256",
              "train_fp32": "training step, fp32, batch 32"}


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"measurement file {str(path)!r} is missing (was results/h200 copied along?)")
    return json.loads(path.read_text())


def _records(path: Path) -> pd.DataFrame:
    return pd.DataFrame(_read(path)["records"])


def provenance(h200_dir: str | Path) -> dict[str, Any]:
    """GPU, software versions, date and command of the benchmark run."""
    prov = _read(Path(h200_dir) / "benchmark" / "benchmark_summary.json")["provenance"]
    return {"gpu": prov.get("gpu_name"), "date": prov.get("date_utc"), "command": prov.get("command"),
            **prov.get("versions", {})}


def scan_ratios(h200_dir: str | Path) -> pd.DataFrame:
    """MambaVision-B image tower with this project's Triton scan vs the same model with the scan removed."""
    blob = _read(Path(h200_dir) / "scan" / "scan_ratios.json")
    rows = []
    for mode, values in blob["model"]["modes"].items():
        rows.append({"setting": SCAN_MODES.get(mode, mode), "with scan (img/s)": values["images_per_s"]["triton"],
                     "scan removed (img/s)": values["images_per_s"]["no_scan"], "ratio": values["ratio"],
                     "target": blob["targets"][mode], "met": values["ratio"] >= blob["targets"][mode]})
    return pd.DataFrame(rows)


def model_throughput(h200_dir: str | Path) -> pd.DataFrame:
    """Model-only images/s per encoder: the paper's conditions (fp32, batch 32) and the best settings."""
    frame = _records(Path(h200_dir) / "benchmark" / "benchmark_model.json")
    frame["peak_memory_gib"] = frame["peak_memory_bytes"] / 2**30
    columns = ["encoder", "part", "mode", "precision", "batch_size", "channels_last", "compile", "images_per_s",
               "peak_memory_gib"]
    frame["part"] = pd.Categorical(frame["part"], ["paper", "best", "compile"], ordered=True)
    return frame[columns].sort_values(["part", "mode", "encoder"]).reset_index(drop=True)


def resolution_sweep(h200_dir: str | Path) -> pd.DataFrame:
    frame = _records(Path(h200_dir) / "benchmark" / "benchmark_resolution.json")
    frame["memory_per_image_mib"] = frame["marginal_memory_per_image_bytes"] / 2**20
    return frame


def growth_exponents(sweep: pd.DataFrame) -> pd.DataFrame:
    """Slope of log(cost) against log(pixel count) per encoder: about 1 is linear in pixels, 2 quadratic."""
    rows = []
    for encoder, group in sweep[~sweep["oom"].astype(bool)].groupby("encoder", sort=False):
        rows.append({"encoder": encoder,
                     "time exponent": fit_growth_exponent(group["pixels"], group["seconds_per_image"]),
                     "memory exponent": fit_growth_exponent(group["pixels"], group["marginal_memory_per_image_bytes"]),
                     "largest resolution": int(group["resolution"].max())})
    return pd.DataFrame(rows)


def eval_loop(h200_dir: str | Path) -> pd.DataFrame:
    """The paper's Table 2 method (images / wall time of the whole zero-shot loop) against model-only."""
    frame = _records(Path(h200_dir) / "benchmark" / "benchmark_eval_loop.json")
    return frame[["encoder", "source", "num_workers", "images_per_s", "model_only_images_per_s",
                  "ratio_to_model_only"]]


def epoch_projections(h200_dir: str | Path) -> pd.DataFrame:
    """Measured paper-size epochs and the projected 20-epoch study, per setting and encoder."""
    folder = Path(h200_dir) / "epoch"
    settings = [("one_gpu.json", "fp32, JPEG decoding (12 workers), 1st epoch"),
                ("epoch_cache_fp32.json", "fp32, uint8 cache, 2nd epoch"),
                ("epoch_cache_tf32.json", "TF32, uint8 cache, 2nd epoch")]
    rows = []
    for name, label in settings:
        if not (folder / name).is_file():
            continue
        for run in _read(folder / name)["runs"]:
            rows.append({"setting": label, "encoder": run["encoder"], "epoch_seconds": run["epoch_seconds"],
                         "train_images_per_s": run["train_images_per_s"],
                         "eval_images_per_s": run["eval_images_per_s"],
                         "peak_gpu_memory_gib": run["peak_gpu_memory_gib"],
                         "projected_study_minutes": run["projected_study_seconds"] / 60})
    return pd.DataFrame(rows)


def ddp_speedup(h200_dir: str | Path) -> pd.DataFrame:
    blob = _read(Path(h200_dir) / "epoch" / "speedup.json")
    return pd.DataFrame(blob["rows"])[["encoder", "world_size", "train_images_per_s_1gpu", "train_images_per_s_ddp",
                                       "train_speedup", "epoch_speedup"]]


def minimum_training_minutes(model: pd.DataFrame, images: int = 20 * 34745) -> float:
    """Lower bound on the paper study's training time on this GPU: every training image at the model-only
    fp32 batch-32 training-step rate, the three encoders one after another, no evaluation."""
    paper_train = model[(model["part"] == "paper") & (model["mode"] == "train")]
    return float(np.sum(images / paper_train["images_per_s"]) / 60)

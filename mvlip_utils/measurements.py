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


# ------------------------------------------------------------------------------- for the book's chapters
PAPER_TABLE2_CLAIMS = {"vit": 33.0, "swin": 41.0}  # the paper: MVLIP's throughput this much (%) above each


def resolve_h200_dir(h200_dir: str | Path | None = None) -> Path:
    """The folder of the committed H200 measurements. ``None``: ``results/h200`` under the working
    directory (the repository root when papermill runs the study), else the one of the repository this
    package lives in. An explicit folder must exist (the error names it)."""
    if h200_dir is not None:
        path = Path(h200_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"h200_dir={str(h200_dir)!r}: no such folder (the repository's results/h200)")
        return path
    candidates = [Path.cwd() / "results" / "h200", Path(__file__).resolve().parents[1] / "results" / "h200"]
    for path in candidates:
        if (path / "benchmark").is_dir():
            return path
    raise FileNotFoundError(f"h200_dir=None: no results/h200 folder in {[str(p) for p in candidates]}; "
                            "pass h200_dir=/path/to/results/h200")


def hardware_note(h200_dir: str | Path) -> str:
    """'NVIDIA H200, torch 2.11.0+cu130, measured 2026-11-28, paper-size towers, random weights'."""
    prov = provenance(h200_dir)
    return (f"{prov['gpu']}, torch {prov.get('torch', '?')}, measured {str(prov['date'])[:10]}, "
            "paper-size towers, random weights")


def encoder_first(frame: pd.DataFrame, encoder: str | None, column: str = "encoder") -> pd.DataFrame:
    """``frame`` with ``encoder``'s rows first (a stable reorder; the rest keep their order)."""
    if encoder is None:
        return frame.reset_index(drop=True)
    key = (frame[column] != encoder).astype(int)
    return frame.assign(_key=key).sort_values("_key", kind="stable").drop(columns="_key").reset_index(drop=True)


def paper_conditions(h200_dir: str | Path) -> pd.DataFrame:
    """Per encoder: model-only fp32 batch-32 inference, the paper's eval-loop method with JPEG decoding
    (4 and 16 DataLoader workers) and from the uint8 cache, all in images/s, and each relative to
    CLIP(ViT) in percent (the paper's Table 2 compares against CLIP(ViT))."""
    model = model_throughput(h200_dir)
    inference = model[(model["part"] == "paper") & (model["mode"] == "inference")].set_index("encoder")
    loop = eval_loop(h200_dir)
    out = pd.DataFrame({"model only, fp32 batch 32": inference["images_per_s"].astype(float)})
    for (source, workers), label in {("jpeg", 4): "paper's way, JPEG, 4 workers",
                                     ("jpeg", 16): "paper's way, JPEG, 16 workers",
                                     ("uint8_cache", 0): "paper's way, uint8 cache"}.items():
        rows = loop[(loop["source"] == source) & (loop["num_workers"] == workers)].set_index("encoder")
        out[label] = rows["images_per_s"].astype(float)
    out.index.name = "encoder"
    return out


def relative_to(frame: pd.DataFrame, base: str = "vit") -> pd.DataFrame:
    """Each column of an encoder-indexed frame as percent above (+) or below (-) row ``base``."""
    return (frame / frame.loc[base] - 1.0) * 100.0


def throughput_verdicts(h200_dir: str | Path) -> pd.DataFrame:
    """The paper's throughput claims (MVLIP +33.5% over CLIP(ViT), +41% over CLIP(Swin), Table 2) against
    the H200: model-only fp32 batch 32 (the model's own speed) and the paper's eval-loop method with JPEG
    decoding in 4 workers. MVLIP's throughput as a share of the other tower's, and a verdict."""
    table = paper_conditions(h200_dir)
    rows = []
    for other, claimed in PAPER_TABLE2_CLAIMS.items():
        for column, level in (("model only, fp32 batch 32", "at the model level"),
                              ("paper's way, JPEG, 4 workers", "in the paper's eval loop (JPEG, 4 workers)")):
            share = table.loc["mambavision", column] / table.loc[other, column]
            change = (share - 1) * 100
            if change >= claimed:
                verdict = f"supported {level}"
            elif change > 0:
                verdict = f"partly {level}: faster, but by less than claimed"
            else:
                verdict = f"refuted {level}: MVLIP is slower"
            rows.append({"claim": f"MVLIP's throughput is >= {claimed:.0f}% above {ENCODER_LABELS[other]}'s",
                         "measured": column, "MVLIP images/s": table.loc["mambavision", column],
                         "other images/s": table.loc[other, column], "MVLIP / other": share,
                         "MVLIP vs other (%)": change, "verdict": verdict})
    return pd.DataFrame(rows)


def study_minutes(epochs: pd.DataFrame) -> pd.DataFrame:
    """Projected 20-epoch study minutes: one row per setting, one column per encoder, and their total
    (the three encoders one after another on one GPU)."""
    table = epochs.pivot_table(index="setting", columns="encoder", values="projected_study_minutes", sort=False)
    table = table[[e for e in ENCODER_LABELS if e in table.columns]]
    table["total"] = table.sum(axis=1)
    table["total (h)"] = table["total"] / 60
    table.columns.name = None
    return table

"""Paper scale: how long the paper's whole study takes, projected from measured epochs, and its floors.

The paper's study is three encoders x 20 epochs over ImageNet-mini (34,745 training images in steps of 32
with drop_last, 3,923 validation images evaluated every epoch); the numbers come from ``paper_tables.json``.
A run's ``timings.csv`` (written by ``train.train_run``, one row per epoch trained) gives the measured
seconds of each stage; the projection scales the per-image times of the last epoch measured (steady state)
to the paper's counts, adds the wait for the checkpoint per epoch, and once per encoder the first epoch's
extra time over that rate (compilation and warm-up) and the measured set-up. Two floors sit beside it:
- the FLOP floor: the counted FLOPs of every training step and validation forward pass over the GPU's
  datasheet fp32 peak (``flops.peak_flops``), the time no implementation at this precision can beat;
- the model-only floor: every image at the model-only rates of the run's benchmark (training step with
  fused AdamW and inference at the paper's conditions), the time without data loading, evaluation
  bookkeeping or launch gaps between steps.
A third figure comes from the training chapters' profiled step checks (``kernel_bound_projection``): the
study with training at the GPU kernel time of the fastest exact step, the GPU never waiting. On how many
GPUs an edition ran, and how its two study figures follow from that, says ``gpus_sentence``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from ..measure.records import PAPER, PAPER_FUSED, benchmark_record
from ..measure.flops import peak_flops, utilisation_fields
from ..settings.profiles import ENCODER_LABELS, PROFILES
from ..train.results import jsonable, write_json

ASSUMPTIONS = (
    "per-image times of the last epoch measured, with the run's own training step, scaled to the paper's "
    "counts; the first epoch's extra time over that rate (compilation and warm-up) and the measured set-up "
    "once per encoder; one validation pass (validation loss and zero-shot metrics from the same forward pass) "
    "per epoch; the measured wait for the checkpoint every epoch; one GPU runs the encoders one after another "
    "(the sum of their projections); with one GPU per encoder the study takes the slowest encoder's "
    "projection (no interference between the GPUs assumed)")

# The targets the project set itself for the paper's study on H200s at the paper's numerics (issue 20)
TARGET_MINUTES = {"one_gpu": 66.0, "one_gpu_per_encoder": 33.0}


def study_size(ref: Mapping[str, Any]) -> dict[str, int]:
    """The paper's study in numbers: epochs, training images per epoch (whole batches), validation images."""
    p = ref["protocol"]
    return {"epochs": int(p["epochs"]), "train_images": int(p["n_train"]) // int(p["batch_size"]) * int(p["batch_size"]),
            "val_images": int(p["n_val"]), "batch_size": int(p["batch_size"])}


def first_epoch_extra_seconds(timings) -> float:
    """Seconds the first epoch's training took beyond its images at the last epoch's rate: the compilation
    and warm-up a run pays once. 0 unless ``timings`` has epoch 1 and at least two epochs, and never below 0
    (a first epoch no slower than the last carries nothing extra)."""
    if timings is None or len(timings) < 2 or int(timings["epoch"].iloc[0]) != 1:
        return 0.0
    first, last = timings.iloc[0], timings.iloc[-1]
    rate = last["train_images"] / last["train_seconds"]
    return max(0.0, float(first["train_seconds"] - first["train_images"] / rate))


def encoder_projection(run: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, Any] | None:
    """The paper's study for one encoder, projected from the run's last measured epoch (and its first
    epoch's warm-up), with its floors (None when the run has no timings)."""
    timings = run.get("timings")
    if timings is None or timings.empty:
        return None
    size = study_size(ref)
    last = timings.iloc[-1]
    train_rate = last["train_images"] / last["train_seconds"]
    val_per_image = last["validation_seconds"] / last["val_images"]
    epoch = size["train_images"] / train_rate + size["val_images"] * val_per_image + last["checkpoint_seconds"]
    setup = float(timings["setup_seconds"].iloc[0])
    warmup = first_epoch_extra_seconds(timings)
    out = {"encoder": run["config"]["encoder"], "device_name": run["config"].get("device_name"),
           "precision": run["config"].get("precision"), "train_step": run["config"].get("train_step"),
           "measured_epoch": int(last["epoch"]), "train_images_per_s": float(train_rate),
           "validation_images_per_s": float(1 / val_per_image), "checkpoint_seconds": float(last["checkpoint_seconds"]),
           "setup_seconds": setup, "first_epoch_extra_seconds": warmup,
           "train_minutes": size["epochs"] * size["train_images"] / train_rate / 60,
           "validation_minutes": size["epochs"] * size["val_images"] * val_per_image / 60,
           "checkpoint_minutes": size["epochs"] * float(last["checkpoint_seconds"]) / 60,
           "warmup_minutes": warmup / 60, "setup_minutes": setup / 60,
           "projected_minutes": (size["epochs"] * epoch + warmup + setup) / 60}
    train_flops = benchmark_record(run, kind="flops", mode="train")
    forward_flops = benchmark_record(run, kind="flops", mode="inference")
    peak = peak_flops(out["device_name"], "fp32")
    if train_flops and forward_flops and peak:
        flops = size["epochs"] * (size["train_images"] * train_flops["flops_per_image"]
                                  + size["val_images"] * forward_flops["flops_per_image"])
        out.update(study_flops=flops, fp32_floor_minutes=flops / peak / 60,
                   fp32_peak_tflops_per_s=peak / 1e12,
                   utilisation=flops / (out["projected_minutes"] * 60) / peak)
    trains = benchmark_record(run, kind="model_only", setting=PAPER_FUSED, mode="train")
    infers = benchmark_record(run, kind="model_only", setting=PAPER, mode="inference")
    if trains and infers and trains.get("images_per_s") and infers.get("images_per_s"):
        out["model_only_minutes"] = size["epochs"] * (size["train_images"] / trains["images_per_s"]
                                                      + size["val_images"] / infers["images_per_s"]) / 60
    return out


def study_projection(runs: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any],
                     absent: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The whole study on one GPU and with one GPU per encoder, projected from ``runs`` (one edition), with
    the FLOP and model-only floors and the provenance of the runs behind them, and the study bound by the
    fastest exact steps' kernel time (``kernel_bound_projection``) where the runs' own step checks were
    profiled. ``absent``: {encoder: how its run is not finished} (``results.unfinished_runs``), kept as
    ``missing``: the projection then covers the other encoders only, and its sentence says so."""
    per = [p for p in (encoder_projection(run, ref) for run in runs.values()) if p is not None]

    def total(key: str, how=sum) -> float | None:
        values = [p.get(key) for p in per]
        return float(how(values)) if per and all(isinstance(v, (int, float)) for v in values) else None

    provenance = {}
    for encoder, run in runs.items():
        prov = run.get("benchmark_provenance") or {}
        provenance[encoder] = {"run_dir": str(run["run_dir"]), "device_name": run["config"].get("device_name"),
                               "benchmark_date_utc": prov.get("date_utc"), "git_commit": prov.get("git_commit"),
                               "git_dirty": prov.get("git_dirty"), "command": prov.get("command"),
                               "driver": prov.get("driver"), "versions": prov.get("versions")}
    return {"study": study_size(ref), "encoders": [p["encoder"] for p in per],
            "one_gpu_minutes": total("projected_minutes"),
            "one_gpu_per_encoder_minutes": total("projected_minutes", max),
            "warmup_minutes": total("warmup_minutes"),
            "fp32_floor_minutes": total("fp32_floor_minutes"),
            "fp32_floor_minutes_one_gpu_per_encoder": total("fp32_floor_minutes", max),
            "model_only_minutes": total("model_only_minutes"),
            "model_only_minutes_one_gpu_per_encoder": total("model_only_minutes", max),
            "assumptions": ASSUMPTIONS, "per_encoder": per, "provenance": provenance, "missing": dict(absent or {}),
            "kernel_bound": kernel_bound_projection(per, profiled_checks(runs), ref)}


def profiled_checks(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each encoder's step check (the training chapter's, ``step_check.json`` of its run folder) where its
    run has one; ``kernel_bound`` takes from it the steps profiled (``profile.gpu_busy_ms``)."""
    return {encoder: dict(run["step_check"]) for encoder, run in runs.items() if run.get("step_check")}


def kernel_bound(check: Mapping[str, Any]) -> dict[str, Any] | None:
    """From a profiled step check: the step that kept the eager losses with the least GPU kernel time per
    step, the images/s that kernel time alone allows (the GPU never waiting), and the share of its measured
    step its kernels take; beside it the step that trained fastest in the check and its speed-up over eager.
    None without a GPU profile; the speed-up None where eager has no images/s."""
    exact = [v for v in check["variants"] if v.get("within_tolerance") and v.get("images_per_s")]
    profiled = [v for v in exact if (v.get("profile") or {}).get("gpu_busy_ms")]
    if not profiled:
        return None
    batch = check["batch_size"]
    least = min(profiled, key=lambda v: v["profile"]["gpu_busy_ms"])
    fastest = max(exact, key=lambda v: v["images_per_s"])
    eager = next((v for v in check["variants"] if v["train_step"] == "eager" and v.get("images_per_s")), None)
    kernel_ms = least["profile"]["gpu_busy_ms"]
    return {"train_step": least["train_step"], "kernel_ms_per_step": kernel_ms, "batch_size": batch,
            "images_per_s": batch / kernel_ms * 1e3, "measured_images_per_s": least["images_per_s"],
            "kernel_share_of_step": kernel_ms / (batch / least["images_per_s"] * 1e3),
            "fastest_step": fastest["train_step"], "fastest_images_per_s": fastest["images_per_s"],
            "fastest_speedup_over_eager": fastest["images_per_s"] / eager["images_per_s"] if eager else None}


def kernel_bound_projection(per: list[Mapping[str, Any]], checks: Mapping[str, Mapping[str, Any]],
                            ref: Mapping[str, Any]) -> dict[str, Any] | None:
    """The study with each encoder's training at its kernel-bound rate (``kernel_bound`` of its check in
    ``checks``, ``profiled_checks``) and its validation, checkpoint waits, first-epoch warm-up and set-up as
    the edition measured them (``per``: ``encoder_projection``s): what the study would take if the GPU never
    waited during training. None unless every encoder of ``per`` has a profiled check."""
    size = study_size(ref)
    rows = {}
    for p in per:
        bound = kernel_bound(checks[p["encoder"]]) if p["encoder"] in checks else None
        if bound is None:
            return None
        train = size["epochs"] * size["train_images"] / bound["images_per_s"] / 60
        rows[p["encoder"]] = {**bound, "train_minutes": train,
                              "minutes": p["projected_minutes"] - p["train_minutes"] + train}
    if not rows:
        return None
    provenance = {e: {k: (checks[e].get("provenance") or {}).get(k) for k in
                      ("date_utc", "command", "git_commit", "git_dirty", "gpu_name", "driver", "versions")}
                  for e in rows}
    return {"one_gpu_minutes": sum(r["minutes"] for r in rows.values()),
            "one_gpu_per_encoder_minutes": max(r["minutes"] for r in rows.values()),
            "per_encoder": rows, "provenance": provenance}


def kernel_bound_sentence(projection: Mapping[str, Any]) -> str | None:
    """What the training chapters' profiled step checks (``kernel_bound_projection``'s) say of the targets
    (None without them)."""
    bound = projection.get("kernel_bound")
    if not bound:
        return None
    rows = bound["per_encoder"]
    commits: dict[str, list[str]] = {}
    for encoder, prov in bound["provenance"].items():
        commits.setdefault(str(prov.get("git_commit"))[:7], []).append(encoder)
    dates = sorted(str(p.get("date_utc"))[:16] for p in bound["provenance"].values())
    gpus = sorted({str(p.get("gpu_name")) for p in bound["provenance"].values()})
    fastest = ", ".join(f"{r['fastest_step']} for {e}" + (f" (x{r['fastest_speedup_over_eager']:.2f} over eager)"
                                                          if r["fastest_speedup_over_eager"] else "")
                        for e, r in rows.items())
    kernels = ", ".join(f"{r['kernel_ms_per_step']:.1f} ms ({e}, {r['train_step']}; "
                        f"{r['kernel_share_of_step']:.0%} of its measured step)" for e, r in rows.items())
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    text = (f"The training chapters' profiled step checks ({', '.join(gpus)}, {when} UTC, commit "
            + ", ".join(f"{c} ({', '.join(e)})" for c, e in commits.items())
            + f") found the fastest steps with the eager losses to be {fastest}. Profiled, the least GPU kernel time "
            f"per step of {next(iter(rows.values()))['batch_size']} images is {kernels}.")
    parts = []
    for name, key, target, how in (("one GPU", "one_gpu_minutes", TARGET_MINUTES["one_gpu"], sum),
                                   ("one GPU per encoder", "one_gpu_per_encoder_minutes",
                                    TARGET_MINUTES["one_gpu_per_encoder"], max)):
        minutes = bound[key]
        slowest = max(rows, key=lambda e: rows[e]["minutes"]) if how is max else None
        train = (rows[slowest]["train_minutes"] if slowest else sum(r["train_minutes"] for r in rows.values()))
        part = (f"{minutes:.1f} minutes on {name}" + (f" ({slowest} bounds it)" if slowest else "")
                + f", {train:.1f} of them training, against the target of {target:.0f}: ")
        if minutes <= target:
            part += "met only if the GPU never waited during training"
        elif train <= target:
            part += (f"missed even then, unless validation, checkpoint waits, warm-up and set-up ({minutes - train:.2f} "
                     f"minutes here) also shrank below {target - train:.2f}")
        else:
            part += "missed even then, by the kernels' own time"
        parts.append(part)
    return (text + " If the GPU never waited, training at those kernel times with validation, checkpoint waits, "
            "first-epoch warm-up and set-up as this edition measured them would take " + "; and ".join(parts) + ".")


def training_utilisation(projection: Mapping[str, Any] | None, flops: Mapping[str, float], device_name: str,
                         precision: str) -> dict[str, Any]:
    """Achieved FLOP/s of a run's measured training epoch (the training step's counted FLOPs times the
    training images/s) and its fraction of the device's peak for ``precision`` (None where unknown), as
    ``flops.utilisation_fields`` gives them."""
    if not projection:
        return {"tflops_per_s": None, "utilisation": None}
    return utilisation_fields(flops["train"], projection["train_images_per_s"], device_name, precision)


def projection_sentence(projection: Mapping[str, Any]) -> str:
    """The projected study against the project's targets and the floors, in one paragraph."""
    one, per = projection["one_gpu_minutes"], projection["one_gpu_per_encoder_minutes"]
    slowest = max(projection["per_encoder"], key=lambda p: p["projected_minutes"])
    missing = projection.get("missing") or {}
    lead = "projected from the measured epochs"
    text = ("Without " + " and ".join(f"{ENCODER_LABELS[e]} (its run {phrase})" for e, phrase in missing.items())
            + f", {lead}" if missing else lead[0].upper() + lead[1:])
    text += (f", the paper's "
             f"{'study of the encoders with a finished run' if missing else 'whole study'} takes **{one:.0f} minutes** on one GPU "
             f"(the encoders one after another) and **{per:.0f} minutes** with one GPU per encoder (the slowest, "
             f"{slowest['encoder']}, bounds it), against the targets of {TARGET_MINUTES['one_gpu']:.0f} and "
             f"{TARGET_MINUTES['one_gpu_per_encoder']:.0f} minutes: the first is "
             f"{'met' if one <= TARGET_MINUTES['one_gpu'] else 'missed'}, the second "
             f"{'met' if per <= TARGET_MINUTES['one_gpu_per_encoder'] else 'missed'}.")
    steps = sorted({str(p["train_step"]) for p in projection["per_encoder"]})
    paper_step = PROFILES["paper"]["train_step"]
    text += (f" The runs trained with the {' and '.join(steps)} step" + ("s" if len(steps) > 1 else "")
             + (" (the paper profile's)." if steps == [paper_step] else f" (the paper profile trains with {paper_step})."))
    warm = [p for p in projection["per_encoder"] if p.get("first_epoch_extra_seconds")]
    if warm:
        text += (" Their first epochs took longer than their last epochs' rate gives (compilation and warm-up), "
                 "counted once per encoder: " + ", ".join(f"{p['first_epoch_extra_seconds']:.0f} s ({p['encoder']})"
                                                          for p in warm) + ".")
    floors = []
    if projection.get("model_only_minutes"):
        floors.append(f"the towers alone (every image at the model-only rates) would need "
                      f"{projection['model_only_minutes']:.0f} minutes on one GPU and "
                      f"{projection['model_only_minutes_one_gpu_per_encoder']:.0f} with one per encoder")
    if projection.get("fp32_floor_minutes"):
        reached = ", ".join(f"{p['utilisation']:.0%} ({p['encoder']})" for p in projection["per_encoder"]
                            if p.get("utilisation"))
        floors.append(f"the counted FLOPs at the GPU's fp32 peak {projection['fp32_floor_minutes']:.0f} and "
                      f"{projection['fp32_floor_minutes_one_gpu_per_encoder']:.0f} minutes (the runs reach {reached} "
                      "of that peak over the whole study)")
    if floors:
        text += " For comparison, " + "; ".join(floors) + "."
    return text + f" Assumed: {ASSUMPTIONS}."


# ------------------------------------------------------------------------------ one GPU and several
def count_word(n: int) -> str:
    """one .. nine in words, larger counts in digits."""
    return ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")[n - 1] if 0 < n < 10 else str(n)


def gpus_sentence(edition: Mapping[str, Any] | None, projection: Mapping[str, Any]) -> str:
    """On how many GPUs of what kind the edition ran and how its chains ran (``edition``: the recorded
    edition's record, book/recorded/<profile>/edition.json; None where the edition is not recorded), and how
    the study's two figures follow from that: one GPU, the sum of the encoders' projections; one GPU per
    encoder, the slowest encoder's projection (``projection``: ``study_projection``'s)."""
    per = projection.get("per_encoder") or []
    one, each = projection.get("one_gpu_minutes"), projection.get("one_gpu_per_encoder_minutes")
    slowest = max(per, key=lambda p: p["projected_minutes"])["encoder"] if per else None
    sum_part = f"the sum of the encoders' projections ({one:.0f} minutes)" if one is not None else \
        "the sum of the encoders' projections"
    max_part = (f"the slowest encoder's projection ({each:.0f} minutes, {slowest})" if each is not None else
                "the slowest encoder's projection")
    if not edition:
        devices = sorted({str(p.get("device_name")) for p in per}) or ["no timed run"]
        return (f"This edition is not recorded, so no record says how its chains ran; its runs ran on "
                f"{', '.join(devices)}. The study's two figures follow one rule: on one GPU the encoders run one "
                f"after another, so the study takes {sum_part}; with one GPU per encoder it takes {max_part}, "
                "assuming GPUs that do not slow each other down.")
    prov = edition.get("provenance") or {}
    names = list(prov.get("gpus") or ([prov["gpu_name"]] if prov.get("gpu_name") else []))
    kinds = " and ".join(f"{count_word(n)} {name}" + ("s" if n > 1 else "") for name, n in Counter(names).items())
    encoders = list(edition.get("encoders") or [p["encoder"] for p in per])
    chains = edition.get("chain_gpus")
    where = f"The edition was recorded on {str(prov.get('date_utc'))[:10]} on a machine with {kinds or 'unnamed GPUs'}"
    if not chains:
        return (f"{where}; its encoders' chains ran in turn on one GPU, so each encoder was measured alone on it. "
                f"On one GPU the study takes {sum_part}, the encoders one after another as they ran here. With "
                f"one GPU per encoder it takes {max_part}: assumed from the encoders measured alone, not measured "
                "with the encoders in parallel, and assuming GPUs that do not slow each other down.")
    by_gpu: dict[str, list[str]] = {}
    for encoder, gpu in zip(encoders, chains):
        by_gpu.setdefault(str(gpu), []).append(encoder)
    placed = "; ".join(f"GPU {gpu}: {', '.join(names_)}" for gpu, names_ in by_gpu.items())
    if all(len(e) == 1 for e in by_gpu.values()):
        return (f"{where}; its {count_word(len(encoders))} encoders' chains ran in parallel, one per GPU ({placed}), "
                f"so {count_word(len(by_gpu))} GPUs ran at once. With one GPU per encoder the study takes {max_part}, as the chains "
                f"ran here. On one GPU it takes {sum_part}: the encoders measured side by side on their own GPUs, "
                "added as if they ran one after another on one.")
    return (f"{where}; its {count_word(len(encoders))} encoders' chains ran in parallel on {count_word(len(by_gpu))} GPU"
            + ("s" if len(by_gpu) > 1 else "") + f", sharing ({placed}): the training epochs of the encoders on a "
            f"shared GPU overlapped, so their measured times carry each other's load. On one GPU the study takes "
            f"{sum_part}, with one GPU per encoder {max_part}; for the encoders that shared a GPU both are upper "
            "bounds of what each would take alone.")


def save_projection(path: str | Path, projection: Mapping[str, Any]) -> bool:
    """Write ``projection`` to ``path`` (study_projection.json) unless the file already holds the same
    values, floats equal to 1e-9 relative: run files read back on another machine may differ in a float's
    last bit, and building the book there must leave a recorded edition's file as it was recorded. Returns
    whether it wrote."""
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

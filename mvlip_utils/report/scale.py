"""Paper scale: how long the paper's whole study takes, projected from measured epochs, and its floors.

The paper's study is three encoders x 20 epochs over ImageNet-mini (34,745 training images in steps of 32
with drop_last, 3,923 validation images evaluated every epoch); the numbers come from ``paper_tables.json``.
A run's ``timings.csv`` (written by ``train.train_run``, one row per epoch trained) gives the measured
seconds of each stage; the projection scales the per-image times of the last epoch measured (steady state:
the first epoch carries warm-up and compilation) to the paper's counts, adds the checkpoint write per epoch
and the measured set-up. Two floors sit beside it:
- the FLOP floor: the counted FLOPs of every training step and validation forward pass over the GPU's
  datasheet fp32 peak (``flops.peak_flops``), the time no implementation at this precision can beat;
- the model-only floor: every image at the model-only rates of the run's benchmark (training step with
  fused AdamW and inference at the paper's conditions), the time without data loading, evaluation
  bookkeeping or launch gaps between steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..measure.records import PAPER, PAPER_FUSED, benchmark_record
from ..measure.flops import peak_flops, utilisation_fields
from ..train.results import load_config, read_json
from ..settings.profiles import ENCODER_LABELS

ASSUMPTIONS = (
    "per-image times of the last epoch measured, scaled to the paper's counts; one validation pass "
    "(validation loss and zero-shot metrics from the same forward pass) per epoch; the checkpoint written "
    "every epoch; the measured set-up once per encoder; one GPU runs the encoders one after another; with one "
    "GPU per encoder the study takes the slowest encoder's time (three GPUs used, no interference assumed)")


def study_size(ref: Mapping[str, Any]) -> dict[str, int]:
    """The paper's study in numbers: epochs, training images per epoch (whole batches), validation images."""
    p = ref["protocol"]
    return {"epochs": int(p["epochs"]), "train_images": int(p["n_train"]) // int(p["batch_size"]) * int(p["batch_size"]),
            "val_images": int(p["n_val"]), "batch_size": int(p["batch_size"])}


def encoder_projection(run: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, Any] | None:
    """The paper's study for one encoder, projected from the run's last measured epoch, with its floors
    (None when the run has no timings)."""
    timings = run.get("timings")
    if timings is None or timings.empty:
        return None
    size = study_size(ref)
    last = timings.iloc[-1]
    train_rate = last["train_images"] / last["train_seconds"]
    val_per_image = last["validation_seconds"] / last["val_images"]
    epoch = size["train_images"] / train_rate + size["val_images"] * val_per_image + last["checkpoint_seconds"]
    setup = float(timings["setup_seconds"].iloc[0])
    out = {"encoder": run["config"]["encoder"], "device_name": run["config"].get("device_name"),
           "precision": run["config"].get("precision"), "train_step": run["config"].get("train_step"),
           "measured_epoch": int(last["epoch"]), "train_images_per_s": float(train_rate),
           "validation_images_per_s": float(1 / val_per_image), "checkpoint_seconds": float(last["checkpoint_seconds"]),
           "setup_seconds": setup,
           "train_minutes": size["epochs"] * size["train_images"] / train_rate / 60,
           "validation_minutes": size["epochs"] * size["val_images"] * val_per_image / 60,
           "checkpoint_minutes": size["epochs"] * float(last["checkpoint_seconds"]) / 60,
           "setup_minutes": setup / 60, "projected_minutes": (size["epochs"] * epoch + setup) / 60}
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
                     probe_checks: Mapping[str, Mapping[str, Any]] | None = None,
                     absent: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The whole study on one GPU and with one GPU per encoder, projected from ``runs`` (one edition), with
    the FLOP and model-only floors and the provenance of the runs behind them, and the study bound by the
    fastest exact steps' kernel time (``kernel_bound_projection``) where the step checks were profiled:
    ``probe_checks`` (``read_probe_step_checks``: measured apart from the edition) where given, else the
    runs' own. ``absent``: {encoder: how its run is not finished} (``results.unfinished_runs``), kept as
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
    best = {p["encoder"]: best_step(runs[p["encoder"]], p) for p in per}
    best_minutes = [b["projected_minutes"] for b in best.values() if b]
    return {"study": study_size(ref), "encoders": [p["encoder"] for p in per],
            "one_gpu_minutes": total("projected_minutes"), "four_gpu_minutes": total("projected_minutes", max),
            "best_step": best,
            "one_gpu_minutes_best_step": sum(best_minutes) if per and len(best_minutes) == len(per) else None,
            "four_gpu_minutes_best_step": max(best_minutes) if per and len(best_minutes) == len(per) else None,
            "fp32_floor_minutes": total("fp32_floor_minutes"),
            "fp32_floor_minutes_one_gpu_per_encoder": total("fp32_floor_minutes", max),
            "model_only_minutes": total("model_only_minutes"),
            "model_only_minutes_one_gpu_per_encoder": total("model_only_minutes", max),
            "assumptions": ASSUMPTIONS, "per_encoder": per, "provenance": provenance, "missing": dict(absent or {}),
            "kernel_bound": kernel_bound_projection(per, profiled_checks(runs, probe_checks or {}), ref)}



def best_step(run: Mapping[str, Any], projection: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fastest training step of the run's step check that kept the eager losses (within tolerance), and
    the encoder's projected minutes with it: the training minutes divided by its speed-up over the step the
    run trained with, both measured in the same check. None without a step check."""
    check = run.get("step_check")
    if not check:
        return None
    variants = {v["train_step"]: v for v in check["variants"] if v.get("images_per_s")}
    used = variants.get(projection.get("train_step"))
    ok = [v for v in variants.values() if v.get("within_tolerance")]
    if used is None or not ok:
        return None
    fastest = max(ok, key=lambda v: v["images_per_s"])
    gain = fastest["images_per_s"] / used["images_per_s"]
    train = projection["train_minutes"] / gain
    return {"train_step": fastest["train_step"], "speedup_over_run_step": gain, "train_minutes": train,
            "projected_minutes": projection["projected_minutes"] - projection["train_minutes"] + train}


# ------------------------------------------------------------- step checks measured apart from an edition
PROBE_STEP_CHECK = "step-check"  # <profile>-probe/step-check/<encoder>/step_check.json


def read_probe_step_checks(probe_root: str | Path) -> dict[str, dict[str, Any]]:
    """The step checks measured apart from an edition (``python -m mvlip_utils.measure.benchmark_suite``), per
    encoder, from ``probe_root``/step-check/<encoder>/step_check.json (e.g. results/speed-probe)."""
    root = Path(probe_root) / PROBE_STEP_CHECK
    return {f.parent.name: read_json(f) for f in sorted(root.glob("*/step_check.json"))}


def profiled_checks(runs: Mapping[str, Mapping[str, Any]],
                    probe_checks: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each encoder's step check for the kernel bound, with where it comes from (``source``): the one
    measured apart from the edition where there is one (newer than the edition's), else the run's own."""
    out = {}
    for encoder, run in runs.items():
        if encoder in probe_checks:
            out[encoder] = {**probe_checks[encoder], "source": "apart"}
        elif run.get("step_check"):
            out[encoder] = {**run["step_check"], "source": "edition"}
    return out


def kernel_bound(check: Mapping[str, Any]) -> dict[str, Any] | None:
    """From a profiled step check: the step that kept the eager losses with the least GPU kernel time per
    step, the images/s that kernel time alone allows (the GPU never waiting), and the share of its measured
    step its kernels take; beside it the step that trained fastest in the check and its speed-up over eager.
    None without a GPU profile."""
    exact = [v for v in check["variants"] if v.get("within_tolerance") and v.get("images_per_s")]
    profiled = [v for v in exact if (v.get("profile") or {}).get("gpu_busy_ms")]
    if not profiled:
        return None
    batch = check["batch_size"]
    least = min(profiled, key=lambda v: v["profile"]["gpu_busy_ms"])
    fastest = max(exact, key=lambda v: v["images_per_s"])
    eager = next(v for v in check["variants"] if v["train_step"] == "eager")
    kernel_ms = least["profile"]["gpu_busy_ms"]
    return {"train_step": least["train_step"], "kernel_ms_per_step": kernel_ms, "batch_size": batch,
            "images_per_s": batch / kernel_ms * 1e3, "measured_images_per_s": least["images_per_s"],
            "kernel_share_of_step": kernel_ms / (batch / least["images_per_s"] * 1e3),
            "fastest_step": fastest["train_step"], "fastest_images_per_s": fastest["images_per_s"],
            "fastest_speedup_over_eager": fastest["images_per_s"] / eager["images_per_s"]}


def kernel_bound_projection(per: list[Mapping[str, Any]], checks: Mapping[str, Mapping[str, Any]],
                            ref: Mapping[str, Any]) -> dict[str, Any] | None:
    """The study with each encoder's training at its kernel-bound rate (``kernel_bound`` of its check in
    ``checks``, ``profiled_checks``) and its validation, checkpoints and set-up as the edition measured
    them (``per``: ``encoder_projection``s): what the study would take if the GPU never waited during
    training. None unless every encoder of ``per`` has a profiled check."""
    size = study_size(ref)
    rows = {}
    for p in per:
        bound = kernel_bound(checks[p["encoder"]]) if p["encoder"] in checks else None
        if bound is None:
            return None
        train = size["epochs"] * size["train_images"] / bound["images_per_s"] / 60
        rows[p["encoder"]] = {**bound, "source": checks[p["encoder"]].get("source"), "train_minutes": train,
                              "minutes": p["projected_minutes"] - p["train_minutes"] + train}
    if not rows:
        return None
    provenance = {e: {k: (checks[e].get("provenance") or {}).get(k) for k in
                      ("date_utc", "command", "git_commit", "git_dirty", "gpu_name", "driver", "versions")}
                  for e in rows}
    return {"one_gpu_minutes": sum(r["minutes"] for r in rows.values()),
            "four_gpu_minutes": max(r["minutes"] for r in rows.values()),
            "per_encoder": rows, "provenance": provenance}


def kernel_bound_sentence(projection: Mapping[str, Any], probe_root: str | Path) -> str | None:
    """What the profiled step checks (``kernel_bound_projection``'s: the training chapters' or those measured
    apart from the edition, under ``probe_root``) say of the targets (None without them)."""
    bound = projection.get("kernel_bound")
    if not bound:
        return None
    rows = bound["per_encoder"]
    commits: dict[str, list[str]] = {}
    for encoder, prov in bound["provenance"].items():
        commits.setdefault(str(prov.get("git_commit"))[:7], []).append(encoder)
    dates = sorted(str(p.get("date_utc"))[:16] for p in bound["provenance"].values())
    gpus = sorted({str(p.get("gpu_name")) for p in bound["provenance"].values()})
    fastest = ", ".join(f"{r['fastest_step']} for {e} (x{r['fastest_speedup_over_eager']:.2f} over eager)"
                        for e, r in rows.items())
    kernels = ", ".join(f"{r['kernel_ms_per_step']:.1f} ms ({e}, {r['train_step']}; "
                        f"{r['kernel_share_of_step']:.0%} of its measured step)" for e, r in rows.items())
    where = {"apart": f"measured apart from this edition, {probe_root}/{PROBE_STEP_CHECK}",
             "edition": "the training chapters'"}
    sources: dict[str, list[str]] = {}
    for encoder, row in rows.items():
        sources.setdefault(where[row["source"]], []).append(encoder)
    text = ("Profiled step checks (" + "; ".join(f"{w}, for {', '.join(e)}" for w, e in sources.items())
            + f": {', '.join(gpus)}, {dates[0]} to {dates[-1]} UTC, commit "
            + ", ".join(f"{c} ({', '.join(e)})" for c, e in commits.items())
            + f") found the fastest steps with the eager losses to be {fastest}. Profiled, the least GPU kernel time "
            f"per step of {next(iter(rows.values()))['batch_size']} images is {kernels}.")
    parts = []
    for name, key, target, how in (("one GPU", "one_gpu_minutes", TARGET_MINUTES["one_gpu"], sum),
                                   ("one GPU per encoder", "four_gpu_minutes", TARGET_MINUTES["one_gpu_per_encoder"], max)):
        minutes = bound[key]
        slowest = max(rows, key=lambda e: rows[e]["minutes"]) if how is max else None
        train = (rows[slowest]["train_minutes"] if slowest else sum(r["train_minutes"] for r in rows.values()))
        part = (f"{minutes:.0f} minutes on {name}" + (f" ({slowest} bounds it)" if slowest else "")
                + f", {train:.0f} of them training, against the target of {target:.0f}: ")
        if minutes <= target:
            part += "met only if the GPU never waited during training"
        elif train <= target:
            part += (f"missed even then, unless validation, checkpoints and set-up ({minutes - train:.1f} minutes "
                     f"here) also shrank below {target - train:.1f}")
        else:
            part += "missed even then, by the kernels' own time"
        parts.append(part)
    return (text + " If the GPU never waited, training at those kernel times with validation, checkpoints and "
            "set-up as this edition measured them would take " + "; and ".join(parts) + ".")


READ_EVERY_STEP = "step-check-read-every-step"  # the same check with the loop reading each step's loss


def loss_read_sentence(probe_root: str | Path) -> str | None:
    """The training loop's block reads of its losses (``train.READ_LOSS_EVERY``) against reading every
    step's loss: the same encoder's step check run both ways (``probe_root``/step-check-read-every-step and
    ``probe_root``/step-check), images/s per step. None without both."""
    root = Path(probe_root)
    parts, diffs = [], []
    for every_step in sorted((root / READ_EVERY_STEP).glob("*/step_check.json")):
        block = root / PROBE_STEP_CHECK / every_step.parent.name / "step_check.json"
        if not block.is_file():
            continue
        a, b = read_json(every_step), read_json(block)
        rates = {v["train_step"]: v["images_per_s"] for v in b["variants"] if v.get("images_per_s")}
        for v in a["variants"]:
            if v.get("images_per_s") and v["train_step"] in rates:
                diff = rates[v["train_step"]] / v["images_per_s"] - 1
                diffs.append(diff)
                parts.append(f"{every_step.parent.name} {v['train_step']} {v['images_per_s']:.1f} vs "
                             f"{rates[v['train_step']]:.1f} images/s ({diff * 100:+.1f}%)")
        every = b.get("read_loss_every")
    if not parts:
        return None
    consistent = all(d > 0.02 for d in diffs) or all(d < -0.02 for d in diffs)
    return (f"Reading the loss back every step, as the loop once did, against every {every} steps, in two "
            f"checks on the same GPU: " + ", ".join(parts) + ". "
            + ("A consistent difference." if consistent else
               "No consistent difference: the block reads gain nothing measurable here; the loop keeps them "
               "because they change no loss and spare the host a wait per step."))


def probe_sentences(projection: Mapping[str, Any], probe_root: str | Path,
                    runs: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """``probe_sentence`` for every run folder under ``probe_root`` (e.g. results/speed-probe)."""
    root = Path(probe_root)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [text for text in (probe_sentence(projection, f, runs) for f in folders) if text]


def probe_sentence(projection: Mapping[str, Any], probe_dir: str | Path,
                   runs: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
    """A separately measured run of one encoder with another training step (``probe_dir``: its run folder,
    e.g. results/speed-probe/swin-compiled): its last epoch's training images/s against the edition's run
    of that encoder, against what the step check's speed-up predicted where that step is the check's
    fastest, and (with ``runs``, the edition's) its per-epoch training losses against the edition's."""
    probe_dir = Path(probe_dir)
    if not (probe_dir / "timings.csv").is_file():
        return None
    import pandas as pd

    config = load_config(probe_dir)
    last = pd.read_csv(probe_dir / "timings.csv").iloc[-1]
    measured = last["train_images"] / last["train_seconds"]
    run = next((p for p in projection["per_encoder"] if p["encoder"] == config["encoder"]), None)
    if run is None:
        return None
    text = (f"A separate two-epoch run of {config['encoder']} with the {config['train_step']} step ({probe_dir}) trained "
            f"its second epoch at {measured:.1f} images/s, against {run['train_images_per_s']:.1f} for this "
            f"edition's {run['train_step']} run ({(measured / run['train_images_per_s'] - 1) * 100:+.1f}%)")
    best = (projection.get("best_step") or {}).get(config["encoder"])
    if best and best["train_step"] == config["train_step"]:
        predicted = run["train_images_per_s"] * best["speedup_over_run_step"]
        text += (f"; the step check's speed-up predicted {predicted:.1f} ({(measured / predicted - 1) * 100:+.1f}% "
                 f"measured against predicted)")
    edition = (runs or {}).get(config["encoder"], {}).get("history")
    if edition is not None and (probe_dir / "history.csv").is_file():
        ours = pd.read_csv(probe_dir / "history.csv")
        both = ours.merge(edition, on="epoch", suffixes=("", "_edition"))
        if len(both):
            diff = float(((both.train_loss - both.train_loss_edition).abs() / both.train_loss_edition.abs()).max())
            text += (f"; its per-epoch training losses differ from the edition's by at most {diff:.1e} (relative)")
    return text + "."


# The targets the project set itself for the paper's study on H200s (issue "Fast at paper scale")
TARGET_MINUTES = {"one_gpu": 60.0, "one_gpu_per_encoder": 35.0}


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
    one, per = projection["one_gpu_minutes"], projection["four_gpu_minutes"]
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
    if projection.get("one_gpu_minutes_best_step"):
        steps = ", ".join(f"{e} {b['train_step']} (x{b['speedup_over_run_step']:.2f})"
                          for e, b in projection["best_step"].items())
        text += (f" With each encoder's fastest step that kept the eager losses ({steps}, from the training "
                 f"chapters' step checks) the study would take {projection['one_gpu_minutes_best_step']:.0f} minutes "
                 f"on one GPU and {projection['four_gpu_minutes_best_step']:.0f} with one GPU per encoder.")
    return text + f" Assumed: {ASSUMPTIONS}."


LEGACY_DDP = Path(__file__).resolve().parents[2] / "results" / "h200-ddp" / "speedup.json"


def read_ddp_speedup(path: str | Path = LEGACY_DDP) -> dict[str, Any] | None:
    """The committed two-GPU DDP measurement (results/h200-ddp, made with the former scripts/h200_ddp.sh
    before the study ran on GPUs through its notebooks), None if absent."""
    path = Path(path)
    return read_json(path) if path.is_file() else None


def ddp_sentence(blob: Mapping[str, Any] | None) -> str:
    """What DDP over several GPUs gave at the paper's global batch, and what it keeps equal, from the
    committed measurement."""
    if not blob:
        return "No multi-GPU measurement is committed."
    rows, prov = blob["rows"], blob["ddp"]
    speed = ", ".join(f"x{r['train_speedup']:.2f} ({r['encoder']})" for r in rows)
    losses = "; ".join(f"{r['encoder']} {r['train_loss_1gpu']:.4f} on one GPU, {r['train_loss_ddp']:.4f} under DDP"
                       for r in rows)
    world = rows[0]["world_size"]
    return (f"Training through torchrun (DDP) on {world} {prov.get('gpu_name')}s at the paper's global batch of 32 "
            f"({32 // world} images per GPU) ran at {speed} the training speed of one GPU (one epoch, measured "
            f"{str(prov.get('date_utc'))[:10]} with the former `scripts/h200_ddp.sh`; results/h200-ddp/). DDP keeps "
            "the data order and the global batches (each rank takes its slice of the one-process batches), the "
            "contrastive loss over the gathered global batch and the BatchNorm statistics (SyncBatchNorm) equal to "
            "one process. It does not keep the stochastic-depth and dropout masks: each rank draws them from its "
            "own random stream, so towers with drop path (the paper-size MambaVision-B 0.3 and Swin-B 0.1; ViT-B/32 "
            f"has none) train on other masks than one process does. The first epoch's mean training losses were "
            f"{losses}. The CPU test (tests/test_distributed.py) checks equality for towers without drop path. The "
            "study's natural scale-out is one encoder per GPU (`--gpus`), which leaves every run exactly the "
            "one-GPU run.")

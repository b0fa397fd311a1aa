"""One full training epoch of each image tower at paper size on one H200, and the study time it implies.

The paper's protocol through ``mvlip_utils.train.train_run`` itself: paper-size towers with random weights
(pretrained=False: nothing can be downloaded on the device), fp32 (TF32 off), global batch 32, AdamW, the
frozen text tower and prompt cache, validation loss and zero-shot evaluation after the epoch, a checkpoint
write. The data is an ImageNet-mini-shaped folder generated here: the 1000 ImageNet wnid folders (timm's
ImageNetInfo), real JPEG files of 300-500 px per side (smooth colour fields plus noise), --train-per-class
and --val-per-class of them, decoded and CLIP-preprocessed by the DataLoader workers as in the study.

Per encoder: epoch wall time (train + val loss + zero-shot eval + checkpoint), train images/s, eval
images/s, peak GPU memory, and the projection to the paper's study: 20 epochs over 34,745 train images
(1,085 steps of 32) and 3,923 val images (two passes per epoch: validation loss and zero-shot evaluation),
plus the measured set-up time. The first epoch includes warm-up (cuDNN, Triton kernel compilation), so the
projection is on the slow side.

  H200:   python scripts/h200_epoch.py --out $OUT                           (about 3-5 minutes)
  2 GPUs: torchrun --nproc_per_node=2 scripts/h200_epoch.py --data DIR ... (see scripts/h200_ddp.sh)
  CPU:    python scripts/h200_epoch.py --smoke --out /tmp/epoch           (tiny towers, < 1 minute)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ENCODERS = ("mambavision", "swin", "vit")
STUDY = dict(epochs=20, n_train=34745, n_val=3923, batch_size=32)  # the paper's ImageNet-mini study (FACTS.md)

SETTINGS = {
    "h200": dict(model_size="paper", image_size=224, classes=1000, train_per_class=4, val_per_class=1,
                 jpeg_min=300, jpeg_max=500, batch_size=32, num_workers=12, device="cuda"),
    "smoke": dict(model_size="smoke", image_size=64, classes=10, train_per_class=4, val_per_class=1,
                  jpeg_min=80, jpeg_max=120, batch_size=8, num_workers=2, device="cpu"),
}


# ------------------------------------------------------------------------------------------- data
def make_imagenet_mini_like(root: Path, classes: int, train_per_class: int, val_per_class: int,
                            lo: int, hi: int, workers: int | None = None) -> dict:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG for the first ``classes`` ImageNet wnids.
    Reuses a complete folder written with the same parameters (manifest.json)."""
    from timm.data import ImageNetInfo

    params = dict(classes=classes, train_per_class=train_per_class, val_per_class=val_per_class, lo=lo, hi=hi)
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("params") == params:
        return json.loads(manifest.read_text())
    info = ImageNetInfo()
    wnids = [info.index_to_label_name(i) for i in range(info.num_classes())][:classes]
    jobs = []
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                jobs.append((str(folder / f"{wnid}_{split}_{i:03d}.JPEG"), (0 if split == "train" else 10**7) + c * 1000 + i, lo, hi))
    t = time.perf_counter()
    workers = workers or max(1, min(32, os.cpu_count() or 1))
    from mvlip_utils.data import write_random_jpegs

    sizes = write_random_jpegs(jobs, workers, chunksize=16)
    out = dict(params=params, n_train=classes * train_per_class, n_val=classes * val_per_class,
               mean_file_kb=round(float(np.mean(sizes)) / 1024, 1), seconds=round(time.perf_counter() - t, 1))
    manifest.write_text(json.dumps(out, indent=2))
    return out


# ------------------------------------------------------------------------------------- measuring
def provenance(device: str, world_size: int) -> dict:
    from mvlip_utils.benchmark import collect_provenance
    from mvlip_utils.towers import SSM_BACKEND

    return collect_provenance(device, launcher="torchrun" if world_size > 1 else "python",
                              world_size=world_size, ssm_backend=SSM_BACKEND)


def run_encoder(encoder: str, s: dict, data: Path, results_dir: Path, device: str) -> dict:
    from mvlip_utils import distributed as dist_mod
    from mvlip_utils import train
    from mvlip_utils.profiles import get_config

    config = get_config("paper", encoder=encoder, model_size=s["model_size"], pretrained=False, data=str(data),
                        image_size=s["image_size"], epochs=s["epochs"], batch_size=s["batch_size"],
                        eval_batch_size=s["batch_size"], num_workers=s["num_workers"], precision=s["precision"],
                        data_cache=s["data_cache"], data_dir=str(results_dir.parent / "data_dir"), device=device, results_dir=str(results_dir), note="h200_epoch: random weights")
    rows: list[dict] = []
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train.train_run(config, resume=False, progress=False, on_epoch_end=rows.append)
    wall = time.perf_counter() - t0
    info = dist_mod.info()
    if not info.is_main:
        return {}
    r = rows[-1]  # the last epoch: past warm-up when --epochs > 1
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    n_val = int(round(r["eval_images_per_s"] * r["eval_seconds"]))
    other = r["epoch_seconds"] - r["train_seconds"] - r["val_loss_seconds"] - r["eval_seconds"]  # checkpoint
    setup = wall - sum(row["epoch_seconds"] for row in rows)
    train_ips = r["train_images"] / r["train_seconds"]
    val_per_image = (r["val_loss_seconds"] + r["eval_seconds"]) / n_val
    study_steps = STUDY["n_train"] // STUDY["batch_size"]
    epoch_proj = study_steps * STUDY["batch_size"] / train_ips + STUDY["n_val"] * val_per_image + other
    return dict(
        encoder=encoder, world_size=info.world_size, precision=s["precision"], data_cache=s["data_cache"],
        epochs_run=len(rows), first_epoch_seconds=round(rows[0]["epoch_seconds"], 2), train_images=r["train_images"], val_images=n_val,
        epoch_seconds=round(r["epoch_seconds"], 2), train_seconds=round(r["train_seconds"], 2),
        val_loss_seconds=round(r["val_loss_seconds"], 2), eval_seconds=round(r["eval_seconds"], 2),
        checkpoint_seconds=round(other, 2), setup_seconds=round(setup, 2),
        train_images_per_s=round(train_ips, 1), eval_images_per_s=round(r["eval_images_per_s"], 1),
        val_loss_images_per_s=round(n_val / r["val_loss_seconds"], 1),
        peak_gpu_memory_gib=round(peak, 2) if peak is not None else None, train_loss=r["train_loss"],
        projected_epoch_seconds=round(epoch_proj, 1),
        projected_study_seconds=round(STUDY["epochs"] * epoch_proj + setup, 1),
    )


def compare(one_path: str, many_path: str) -> dict:
    """Speed-up of a torchrun run over a 1-GPU run, per encoder present in both JSON files."""
    one, many = json.loads(Path(one_path).read_text()), json.loads(Path(many_path).read_text())
    base = {r["encoder"]: r for r in one["runs"]}
    rows = []
    for r in many["runs"]:
        b = base.get(r["encoder"])
        if b is None:
            continue
        rows.append(dict(encoder=r["encoder"], world_size=r["world_size"],
                         train_images_per_s_1gpu=b["train_images_per_s"], train_images_per_s_ddp=r["train_images_per_s"],
                         train_speedup=round(r["train_images_per_s"] / b["train_images_per_s"], 3),
                         epoch_seconds_1gpu=b["epoch_seconds"], epoch_seconds_ddp=r["epoch_seconds"],
                         epoch_speedup=round(b["epoch_seconds"] / r["epoch_seconds"], 3),
                         projected_study_seconds_1gpu=b["projected_study_seconds"],
                         projected_study_seconds_ddp=r["projected_study_seconds"],
                         train_loss_1gpu=b["train_loss"], train_loss_ddp=r["train_loss"]))
    return dict(one_gpu=one["provenance"], ddp=many["provenance"], rows=rows,
                note="DDP splits each global batch of 32 over the GPUs; validation and zero-shot evaluation run "
                     "on rank 0 alone, so the epoch speed-up is below the training speed-up")


def preflight() -> None:
    missing = []
    for module in ("sklearn", "pandas", "PIL", "tqdm", "open_clip", "timm", "ftfy", "regex", "mvlip_utils.towers"):
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001 - report them all at once
            missing.append(f"{module} ({type(exc).__name__}: {exc})")
    if missing:
        raise SystemExit("missing Python packages for mvlip_utils.train: " + "; ".join(missing) +
                         " -- install their wheels (e.g. pip install --no-deps --target /tmp/site .whl/*.whl)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny towers and data on the CPU (tests the code path)")
    ap.add_argument("--out", default=None, help="output folder or .json file (default $OUT, else ./h200_epoch_out)")
    ap.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated subset of " + ",".join(ENCODERS))
    ap.add_argument("--data", default=None, help="use this ImageNet-mini-shaped folder (default: generate one)")
    ap.add_argument("--workdir", default=None, help="where the generated data and run folders go (default: temp)")
    ap.add_argument("--data-only", action="store_true", help="generate the dataset into --workdir/data and stop")
    ap.add_argument("--train-per-class", type=int, default=None)
    ap.add_argument("--val-per-class", type=int, default=None)
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default 12; smoke 2)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: the setting's)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                    help="fp32 (the paper's, TF32 off), tf32 or bf16 autocast")
    ap.add_argument("--data-cache", action="store_true",
                    help="train and evaluate from the uint8 cache of CLIP-preprocessed images (built once)")
    ap.add_argument("--epochs", type=int, default=1,
                    help="epochs per encoder; timings and the projection come from the last one")
    ap.add_argument("--compare", nargs=2, metavar=("ONE_GPU_JSON", "DDP_JSON"),
                    help="print the speed-up of a torchrun run over a 1-GPU run (JSON) and stop")
    args = ap.parse_args(argv)
    if args.compare:
        print(json.dumps(compare(*args.compare), indent=2))
        return 0
    preflight()

    s = dict(SETTINGS["smoke" if args.smoke else "h200"])
    s.update(precision=args.precision, data_cache=args.data_cache, epochs=args.epochs)
    for key in ("train_per_class", "val_per_class", "num_workers", "device"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if s["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --smoke (or --device cpu) on the CPU")
    encoders = [e for e in args.encoders.split(",") if e]
    bad = [e for e in encoders if e not in ENCODERS]
    if bad:
        raise SystemExit(f"--encoders: unknown {bad}; choose from {list(ENCODERS)}")

    from mvlip_utils import distributed as dist_mod

    info = dist_mod.init_from_env(s["device"])
    if info.enabled and not args.workdir:
        raise SystemExit("under torchrun pass --workdir (a folder all ranks share, for the data and run folders)")
    out = Path(args.out or os.environ.get("OUT") or "h200_epoch_out")
    out_json = out if out.suffix == ".json" else out / ("h200_epoch.json" if info.world_size == 1
                                                       else f"h200_epoch_ddp{info.world_size}.json")
    tmp = tempfile.TemporaryDirectory(prefix="mvlip_epoch_", dir=args.workdir) if not args.workdir else None
    work = Path(args.workdir) if args.workdir else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        if info.is_main:
            print(f"[h200_epoch {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if args.data:
        data, data_info = Path(args.data), {"path": args.data, "generated": False}
        if (data / "manifest.json").is_file():
            data_info.update(json.loads((data / "manifest.json").read_text()))
    else:
        data = work / "data"
        with dist_mod.main_first():
            data_info = make_imagenet_mini_like(data, s["classes"], s["train_per_class"], s["val_per_class"],
                                                s["jpeg_min"], s["jpeg_max"])
        data_info["generated"] = True
        log(f"dataset {data}: {data_info}")
    if args.data_only:
        return 0

    blob = dict(provenance=provenance(s["device"], info.world_size), setting="smoke" if args.smoke else "h200",
                settings=s, study=STUDY, data=data_info, runs=[], failures=[])
    for encoder in encoders:
        log(f"{encoder}: one epoch ...")
        try:
            row = run_encoder(encoder, s, data, work / "results", s["device"])
        except Exception as exc:  # noqa: BLE001 - one failing tower must not lose the others
            if info.enabled:
                raise
            blob["failures"].append(dict(encoder=encoder, error=f"{type(exc).__name__}: {exc}"))
            log(f"{encoder}: FAILED {type(exc).__name__}: {exc}")
            continue
        if info.is_main:
            blob["runs"].append(row)
            log(f"{encoder}: {row}")
            done = [r["projected_study_seconds"] for r in blob["runs"]]
            blob["projected_total_study_seconds"] = round(sum(done), 1)
            blob["projected_total_study_hours"] = round(sum(done) / 3600, 3)
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(blob, indent=2))
    if info.is_main:
        print(f"\n{'encoder':<12}{'epoch s':>9}{'train img/s':>13}{'eval img/s':>12}{'peak GiB':>10}"
              f"{'study (20 ep) min':>19}")
        for r in blob["runs"]:
            print(f"{r['encoder']:<12}{r['epoch_seconds']:>9.1f}{r['train_images_per_s']:>13.1f}"
                  f"{r['eval_images_per_s']:>12.1f}{(r['peak_gpu_memory_gib'] or 0):>10.2f}"
                  f"{r['projected_study_seconds'] / 60:>19.1f}")
        if blob["runs"]:
            print(f"projected whole study (these encoders, {STUDY['epochs']} epochs, {STUDY['n_train']} train / "
                  f"{STUDY['n_val']} val): {blob['projected_total_study_hours']:.2f} h; JSON: {out_json}")
    dist_mod.barrier()
    dist_mod.destroy()
    if tmp is not None:
        tmp.cleanup()
    return 1 if blob["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

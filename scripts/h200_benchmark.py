"""The benchmark chapter's measurements in one run on one GPU (written for one H200, <= 8 minutes).

For the three image towers at paper size (random weights, mvlip_utils.towers), every number taken
with mvlip_utils.benchmark's one timing method (warm-up, CUDA events, median):

  paper   model-only images/s at the paper's conditions: fp32 (TF32 off), batch 32, 224 px,
          inference and a training step (forward, loss, backward, AdamW step); peak memory
  best    bf16 autocast, channels_last, batch 256: inference and training step
  sweep   resolution sweep 224..1120 px (bf16 inference, batch scaled to keep pixels per batch
          about constant), images/s and memory against pixel count, fitted growth exponents
  e2e     the paper's Table 2 method on a generated JPEG ImageFolder (3,923 images, 256-500 px):
          n_images / wall time of a zero-shot loop, DataLoader with 4 workers decoding JPEGs and
          applying CLIP preprocessing, batch 32, fp32 (and again with 16 workers); then the same
          loop from a preprocessed uint8 cache (mvlip_utils.data.cache_preprocessed) normalised on
          the device; each against the model-only fp32 batch-32 number
  compile the best-settings inference under torch.compile, each encoder in a child process with a
          time limit (failures and time-outs are recorded, not fatal); runs last, on what is left
          of --budget-s

Results go to --out (default $OUT, else ./benchmark_out) as JSON with provenance, written after each
part so a run cut short still leaves what it measured; a summary table is printed at the end.

  H200:  python3 scripts/h200_benchmark.py     (stops starting work at --budget-s 400; ~7 min at most)
  CPU:   python scripts/h200_benchmark.py --smoke --out /tmp/bench   (tiny towers, seconds)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mvlip_utils import benchmark as B  # noqa: E402
from mvlip_utils.data import write_random_jpegs  # noqa: E402

ENCODERS = ("mambavision", "swin", "vit")

# Each setting is one place: what runs, at which sizes, with how many repeats.
SETTINGS = {
    "h200": dict(
        size="paper", image_size=224, paper_batch=32, best_batch=256, best_train_batch=256,
        warmup=5, repeats=15, train_warmup=3, train_repeats=8, best_train_warmup=2, best_train_repeats=5,
        sweep_resolutions=[224, 448, 672, 896, 1120], sweep_base_batch=128, sweep_warmup=2, sweep_repeats=8,
        n_images=3923, n_classes=1000, jpeg_min=256, jpeg_max=500, eval_batch=32, workers=4,
        extra_jpeg_workers=[16], cache_workers=16, compile_timeout_s=150, budget_s=400,
    ),
    "smoke": dict(
        size="smoke", image_size=64, paper_batch=4, best_batch=8, best_train_batch=8,
        warmup=1, repeats=3, train_warmup=1, train_repeats=2, best_train_warmup=1, best_train_repeats=2,
        sweep_resolutions=[64, 128], sweep_base_batch=4, sweep_warmup=1, sweep_repeats=2,
        n_images=24, n_classes=6, jpeg_min=72, jpeg_max=120, eval_batch=8, workers=2,
        extra_jpeg_workers=[], cache_workers=0, compile_timeout_s=120, budget_s=300,
    ),
}


class Run:
    """Clock, log and incremental JSON output of one benchmark run."""

    def __init__(self, out: Path, budget_s: float, device: str, setting: str, args: argparse.Namespace):
        self.out, self.budget_s, self.device, self.setting = out, budget_s, device, setting
        self.t0 = time.perf_counter()
        self.records: dict[str, list] = {"model": [], "resolution": [], "eval_loop": []}
        self.extra: dict = {"setting": setting, "settings": SETTINGS[setting], "skipped": [], "failures": [],
                            "part_seconds": {}}
        self.log_path = out / "benchmark_log.txt"
        self.args = args

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as fh:
            fh.write(line + "\n")

    def skip(self, what: str, why: str) -> None:
        self.extra["skipped"].append(dict(what=what, why=why))
        self.log(f"SKIP {what}: {why}")

    def fail(self, what: str, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {str(exc)[:500]}"
        self.extra["failures"].append(dict(what=what, error=msg, oom=B.is_oom_error(exc)))
        self.log(f"FAILED {what}: {msg}")
        with open(self.log_path, "a") as fh:
            fh.write(traceback.format_exc() + "\n")

    def save(self) -> None:
        prov = dict(self.extra, device=self.device, elapsed_s=round(self.elapsed(), 1),
                    ssm_backend=_ssm_backend(self.device))
        B.write_benchmark(self.out / "benchmark_model.json", self.records["model"], prov)
        B.write_benchmark(self.out / "benchmark_resolution.json", self.records["resolution"], prov)
        B.write_benchmark(self.out / "benchmark_eval_loop.json", self.records["eval_loop"], prov)
        B.write_benchmark(self.out / "benchmark_summary.json", [summary(self)], prov)


def _ssm_backend(device: str) -> dict:
    try:
        from mvlip_utils import ssm, towers
        out = {"shim": towers.SSM_BACKEND}
        if hasattr(ssm, "backend_for"):
            out["cuda_tensor_path" if device == "cuda" else "cpu_tensor_path"] = ssm.backend_for(
                torch.empty(1, device=device))
        return out
    except Exception as exc:  # noqa: BLE001 - provenance only
        return {"error": f"{type(exc).__name__}: {exc}"}


def make_tower(encoder: str, size: str, image_size: int = 224):
    from mvlip_utils.towers import create_image_tower
    return create_image_tower(encoder, size, pretrained=False, image_size=image_size)


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "versions"}


# ------------------------------------------------------------------------------------- model parts
def part_model(run: Run, s: dict, encoders) -> None:
    dev = run.device
    plan = [  # (part, mode, precision, batch, channels_last, warmup, repeats)
        ("paper", "inference", "fp32", s["paper_batch"], False, s["warmup"], s["repeats"]),
        ("paper", "train", "fp32", s["paper_batch"], False, s["train_warmup"], s["train_repeats"]),
        ("best", "inference", "bf16", s["best_batch"], True, s["warmup"], s["repeats"]),
        ("best", "train", "bf16", s["best_train_batch"], True, s["best_train_warmup"], s["best_train_repeats"]),
    ]
    for enc in encoders:
        if run.left() < 30:
            run.skip(f"model/{enc}", "time budget")
            continue
        t = time.perf_counter()
        try:
            tower = make_tower(enc, s["size"], s["image_size"])
        except Exception as exc:  # noqa: BLE001 - one broken tower must not stop the others
            run.fail(f"model/{enc}/create", exc)
            continue
        n_params = sum(p.numel() for p in tower.parameters())
        run.log(f"{enc}: {type(tower.backbone).__name__}, {n_params / 1e6:.1f} M parameters, "
                f"created in {time.perf_counter() - t:.1f}s")
        for part, mode, prec, batch, cl, warm, rep in plan:
            what = f"{part}/{enc}/{mode}/{prec}/b{batch}"
            if run.left() < 15:
                run.skip(what, "time budget")
                continue
            try:
                r = B.model_throughput(tower, batch, s["image_size"], prec, mode, dev, channels_last=cl,
                                       warmup=warm, repeats=rep)
                r.update(part=part, encoder=enc)
                run.records["model"].append(r)
                mem = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] else "-"
                run.log(f"  {what:<40s} {r['images_per_s']:10.1f} img/s  (p10-p90 "
                        f"{batch / r['p90_s']:.0f}-{batch / r['p10_s']:.0f})  peak {mem}")
            except Exception as exc:  # noqa: BLE001 - record and go on
                run.fail(what, exc)
            B._free_memory()
        del tower
        B._free_memory()
        run.save()


def part_sweep(run: Run, s: dict, encoders) -> None:
    dev = run.device
    base = s["sweep_resolutions"][0]
    for enc in encoders:
        if run.left() < 30:
            run.skip(f"sweep/{enc}", "time budget")
            continue
        run.log(f"resolution sweep {enc} (bf16 inference, channels_last)")
        if enc == "mambavision":  # one model for every resolution: its stages pad to whole windows
            try:
                model = make_tower(enc, s["size"], base)
            except Exception as exc:  # noqa: BLE001
                run.fail(f"sweep/{enc}/create", exc)
                continue
        else:  # ViT and Swin take img_size at creation (position embedding / attention masks)
            model = (lambda r, _e=enc: make_tower(_e, s["size"], r))
        try:
            df = B.resolution_sweep(model, s["sweep_resolutions"],
                                    lambda r: B.scaled_batch_size(s["sweep_base_batch"], base, r),
                                    precision="bf16", device=dev, channels_last=True,
                                    warmup=s["sweep_warmup"], repeats=s["sweep_repeats"], catch_errors=True,
                                    log=run.log)
        except Exception as exc:  # noqa: BLE001
            run.fail(f"sweep/{enc}", exc)
            continue
        finally:
            del model
            B._free_memory()
        df.insert(0, "encoder", enc)
        run.records["resolution"].extend(df.to_dict(orient="records"))
        run.save()


# ------------------------------------------------------------------------------------ end-to-end
def make_jpeg_folder(root: Path, n_images: int, n_classes: int, lo: int, hi: int, workers: int) -> dict:
    """``root/c0000/*.jpg`` ...: n_images random-ish JPEGs (smooth colour fields plus noise) of
    lo..hi px per side, spread round-robin over n_classes folders (like ImageNet-mini's val split)."""
    jobs = []
    for i in range(n_images):
        folder = root / f"c{i % n_classes:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"img_{i:05d}.jpg"), 1000 + i, lo, hi))
    t = time.perf_counter()
    sizes = write_random_jpegs(jobs, workers, chunksize=32)
    return dict(n_images=n_images, n_classes=n_classes, min_side=lo, max_side=hi,
                mean_file_bytes=float(np.mean(sizes)), seconds=time.perf_counter() - t)


def zero_shot_loop(tower, loader, classifier, device, cached: bool) -> dict:
    """The model side of a zero-shot evaluation: features, L2 norm, 100 * f @ classifier, argmax.
    Predictions stay on the device until the end (one transfer), as a tuned loop would do."""
    from mvlip_utils.data import normalize_on_device
    preds, labels = [], []
    with torch.no_grad(), B.precision_context("fp32", device):
        for x, y in loader:
            x = normalize_on_device(x, device) if cached else x.to(device, non_blocking=True)
            f = F.normalize(tower(x).float(), dim=-1)
            preds.append((100.0 * f @ classifier).argmax(dim=-1))
            labels.append(y)
    p, y = torch.cat(preds).cpu(), torch.cat(labels)
    return dict(n_images=int(len(p)), predictions=p, accuracy=float((p == y).float().mean()))


def part_e2e(run: Run, s: dict, encoders, workdir: Path) -> None:
    from mvlip_utils.data import CachedImageDataset, ImageFolderSplit, cache_preprocessed, clip_transform, make_loader
    dev = run.device
    root = workdir / "jpeg_val"
    info = make_jpeg_folder(root, s["n_images"], s["n_classes"], s["jpeg_min"], s["jpeg_max"],
                            min(16, os.cpu_count() or 1) if run.setting == "h200" else 1)
    run.extra["e2e_dataset"] = info
    run.log(f"wrote {info['n_images']} JPEGs ({info['mean_file_bytes'] / 1024:.0f} KiB mean) in {info['seconds']:.1f}s")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    ds = ImageFolderSplit(root, classes, transform=clip_transform(s["image_size"]), check="none", progress=False)
    t = time.perf_counter()
    cache_path = cache_preprocessed(ds, workdir / "val_uint8.pt", s["image_size"], num_workers=s["cache_workers"],
                                    progress=False)
    run.extra["e2e_cache_build_s"] = time.perf_counter() - t
    run.log(f"built the uint8 cache in {run.extra['e2e_cache_build_s']:.1f}s")
    cached = CachedImageDataset(cache_path)
    model_only = {r["encoder"]: r["images_per_s"] for r in run.records["model"]
                  if r["part"] == "paper" and r["mode"] == "inference"}
    gen = torch.Generator().manual_seed(0)
    for enc in encoders:
        if run.left() < 25:
            run.skip(f"e2e/{enc}", "time budget")
            continue
        try:
            tower = make_tower(enc, s["size"], s["image_size"]).to(dev).eval()
        except Exception as exc:  # noqa: BLE001
            run.fail(f"e2e/{enc}/create", exc)
            continue
        classifier = F.normalize(torch.randn(512, len(classes), generator=gen), dim=0).to(dev)
        with torch.no_grad():  # warm the model (cuDNN/cuBLAS handles) so the loop times steady state
            for _ in range(2):
                tower(torch.randn(s["eval_batch"], 3, s["image_size"], s["image_size"], device=dev))
        variants = [("jpeg", ds, s["workers"])] + [("jpeg", ds, w) for w in s["extra_jpeg_workers"]]
        for source, dataset, workers in variants + [("uint8_cache", cached, 0)]:
            what = f"e2e/{enc}/{source}/w{workers}"
            if run.left() < 15:
                run.skip(what, "time budget")
                continue
            try:
                loader = make_loader(dataset, s["eval_batch"], shuffle=False, drop_last=False,
                                     num_workers=workers, pin_memory=(dev == "cuda" and source == "uint8_cache"))
                r = B.eval_loop_throughput(
                    lambda: zero_shot_loop(tower, loader, classifier, dev, cached=source != "jpeg"), device=dev)
                r.update(encoder=enc, source=source, num_workers=workers, batch_size=s["eval_batch"],
                         precision="fp32", image_size=s["image_size"], device_name=B.device_name(dev),
                         model_only_images_per_s=model_only.get(enc),
                         ratio_to_model_only=(r["images_per_s"] / model_only[enc]) if model_only.get(enc) else None)
                r.pop("wall_times_s", None)
                run.records["eval_loop"].append(r)
                ratio = f"{r['ratio_to_model_only']:.2f}x model-only" if r["ratio_to_model_only"] else ""
                run.log(f"  {what:<32s} {r['images_per_s']:9.1f} img/s  wall {r['wall_time_s']:.2f}s  {ratio}")
            except Exception as exc:  # noqa: BLE001
                run.fail(what, exc)
        del tower
        B._free_memory()
        run.save()


# -------------------------------------------------------------------------------------- compile
def compile_worker(args) -> None:
    """Child process: one encoder, best-settings inference under torch.compile; JSON to --result."""
    s = SETTINGS[args.setting]
    dev = args.device
    tower = make_tower(args.compile_worker, s["size"], s["image_size"])
    kw = {"backend": "eager"} if args.setting == "smoke" else {}
    rec = B.model_throughput(tower, s["best_batch"], s["image_size"], "bf16", "inference", dev, channels_last=True,
                             compile=True, warmup=3, repeats=s["repeats"], compile_kwargs=kw)
    rec.update(part="compile", encoder=args.compile_worker, compile_backend=kw.get("backend", "inductor"))
    Path(args.result).write_text(json.dumps(B._jsonable(rec)))


def part_compile(run: Run, s: dict, encoders) -> None:
    for enc in encoders:
        limit = min(s["compile_timeout_s"], run.left() - 10)
        what = f"compile/{enc}"
        if limit < 45:
            run.skip(what, f"time budget ({run.left():.0f}s left)")
            continue
        result = run.out / f".compile_{enc}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-worker", enc, "--result", str(result),
               "--setting", run.setting, "--device", run.device]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and its inductor compile workers
            out, _ = proc.communicate()
            rec = dict(part="compile", encoder=enc, compile=True, error=f"timed out after {limit:.0f}s")
            run.records["model"].append(rec)
            run.log(f"  {what:<40s} timed out after {limit:.0f}s (recorded)")
            run.save()
            continue
        wall = time.perf_counter() - t
        if proc.returncode == 0 and result.is_file():
            rec = json.loads(result.read_text())
            result.unlink()
            rec["process_wall_s"] = wall
            run.records["model"].append(rec)
            run.log(f"  {what:<40s} {rec['images_per_s']:10.1f} img/s  (first call {rec['first_call_s']:.0f}s, "
                    f"process {wall:.0f}s)")
        else:
            tail = (out or "")[-1500:]
            rec = dict(part="compile", encoder=enc, compile=True, error=f"exit {proc.returncode}: {tail[-400:]}")
            run.records["model"].append(rec)
            run.log(f"  {what:<40s} FAILED (exit {proc.returncode}); tail:\n{tail}")
        run.save()


# -------------------------------------------------------------------------------------- summary
def summary(run: Run) -> dict:
    out: dict = {"model": {}, "exponents": {}, "eval_loop": {}}
    for r in run.records["model"]:
        if r.get("images_per_s") is None:
            key = f"{r['part']}_error"
            out["model"].setdefault(r["encoder"], {})[key] = r.get("error")
            continue
        key = f"{r['part']}_{r['mode']}_{r['precision']}_b{r['batch_size']}" + ("_compiled" if r.get("compile") else "")
        out["model"].setdefault(r["encoder"], {})[key] = dict(
            images_per_s=r["images_per_s"], peak_memory_bytes=r.get("peak_memory_bytes"))
    by_enc: dict = {}
    for r in run.records["resolution"]:
        by_enc.setdefault(r["encoder"], []).append(r)
    for enc, rows in by_enc.items():
        ok = [r for r in rows if not r["oom"] and r.get("error") is None and r["seconds_per_image"] == r["seconds_per_image"]]
        e: dict = {"resolutions": [r["resolution"] for r in ok], "oom_at": [r["resolution"] for r in rows if r["oom"]]}
        if len(ok) >= 2:
            px = [r["pixels"] for r in ok]
            e["time_exponent"] = B.fit_growth_exponent(px, [r["seconds_per_image"] for r in ok])
            for key, col in (("memory_exponent", "marginal_memory_per_image_bytes"),
                             ("memory_exponent_incl_constants", "memory_per_image_bytes")):
                mem = [r.get(col) for r in ok]
                if all(m is not None and m > 0 for m in mem):
                    e[key] = B.fit_growth_exponent(px, mem)
        out["exponents"][enc] = e
    for r in run.records["eval_loop"]:
        out["eval_loop"].setdefault(r["encoder"], {})[f"{r['source']}_w{r['num_workers']}"] = dict(
            images_per_s=r["images_per_s"], ratio_to_model_only=r.get("ratio_to_model_only"))
    out["exponent_meaning"] = ("cost per image ~ pixels**b (pixels are proportional to tokens): b~1 linear, "
                               "b~2 quadratic (global attention only where it dominates the FLOPs)")
    return out


def print_table(run: Run) -> None:
    def gib(v):
        return f"{v / 2**30:7.2f}" if v else "      -"

    print("\n=== model-only (images/s) ===")
    print(f"{'encoder':<12s} {'part':<8s} {'mode':<10s} {'prec':<5s} {'batch':>5s} {'cl':>3s} {'comp':>4s} "
          f"{'img/s':>10s} {'peakGiB':>7s}")
    for r in run.records["model"]:
        if r.get("images_per_s") is None:
            print(f"{r['encoder']:<12s} {r['part']:<8s} {'':<10s} {'':<5s} {'':>5s} {'':>3s} {'':>4s} "
                  f"{'ERROR':>10s}  {r.get('error', '')[:60]}")
            continue
        print(f"{r['encoder']:<12s} {r['part']:<8s} {r['mode']:<10s} {r['precision']:<5s} {r['batch_size']:>5d} "
              f"{'y' if r['channels_last'] else 'n':>3s} {'y' if r['compile'] else 'n':>4s} "
              f"{r['images_per_s']:10.1f} {gib(r.get('peak_memory_bytes'))}")
    if run.records["resolution"]:
        print("\n=== resolution sweep (bf16 inference) ===")
        print(f"{'encoder':<12s} {'px':>5s} {'batch':>5s} {'img/s':>10s} {'ms/img':>8s} {'peakGiB':>7s} "
              f"{'MiB/img':>8s} oom")
        for r in run.records["resolution"]:
            ips, mm = r["images_per_s"], r.get("marginal_memory_per_image_bytes")
            print(f"{r['encoder']:<12s} {r['resolution']:>5d} {r['batch_size']:>5d} "
                  f"{ips:10.1f} {1000 * r['seconds_per_image']:8.3f} {gib(r['peak_memory_bytes'])} "
                  f"{(f'{mm / 2**20:8.1f}' if mm else '       -')} "
                  f"{'OOM' if r['oom'] else (r['error'] or '')[:40]}")
        for enc, e in summary(run)["exponents"].items():
            te, me = e.get("time_exponent"), e.get("memory_exponent")
            print(f"  {enc:<12s} time exponent {te if te is None else round(te, 3)}  "
                  f"memory/image exponent {me if me is None else round(me, 3)}")
    if run.records["eval_loop"]:
        print("\n=== eval loop, the paper's method (fp32, n_images / wall time) ===")
        print(f"{'encoder':<12s} {'source':<12s} {'workers':>7s} {'img/s':>9s} {'model-only':>10s} {'ratio':>6s}")
        for r in run.records["eval_loop"]:
            mo, ra = r.get("model_only_images_per_s"), r.get("ratio_to_model_only")
            print(f"{r['encoder']:<12s} {r['source']:<12s} {r['num_workers']:>7d} {r['images_per_s']:9.1f} "
                  f"{(f'{mo:10.1f}' if mo else '         -')} {(f'{ra:6.2f}' if ra else '     -')}")
    for k in ("skipped", "failures"):
        if run.extra[k]:
            print(f"\n{k}: " + "; ".join(f"{d['what']} ({d.get('why') or d.get('error')})" for d in run.extra[k]))
    print(f"\ntotal {run.elapsed():.0f}s; JSON under {run.out}")


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny towers and sizes, for the CPU (tests the code path)")
    ap.add_argument("--out", default=None, help="output folder (default $OUT, else ./benchmark_out)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated subset of " + ",".join(ENCODERS))
    ap.add_argument("--parts", default="model,sweep,e2e,compile", help="comma-separated subset of model,sweep,e2e,compile")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new work after this many seconds "
                    "(default 400 on the GPU setting, 300 for --smoke); compile gets what is left")
    ap.add_argument("--n-images", type=int, default=None, help="JPEG files for the e2e part (default 3923)")
    ap.add_argument("--workdir", default=None, help="where the JPEG dataset and cache go (default: a temp folder)")
    ap.add_argument("--compile-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--setting", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.setting = args.setting or ("smoke" if args.smoke else "h200")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.compile_worker:
        compile_worker(args)
        return 0
    encoders = [e for e in args.encoders.split(",") if e]
    bad = [e for e in encoders if e not in ENCODERS]
    if bad:
        raise SystemExit(f"--encoders: unknown {bad}; choose from {list(ENCODERS)}")
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in ("model", "sweep", "e2e", "compile")]
    if bad:
        raise SystemExit(f"--parts: unknown {bad}; choose from model,sweep,e2e,compile")
    if args.setting == "h200" and args.device != "cuda":
        raise SystemExit("the full setting needs a CUDA device; use --smoke on the CPU")
    s = dict(SETTINGS[args.setting])
    if args.n_images:
        s["n_images"] = args.n_images
    out = Path(args.out or os.environ.get("OUT") or "benchmark_out")
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, args.budget_s or s["budget_s"], args.device, args.setting, args)
    run.extra["settings"] = s
    run.log(f"device {B.device_name(args.device)}; torch {torch.__version__}; setting {args.setting}; "
            f"encoders {encoders}; parts {parts}; budget {run.budget_s:.0f}s; out {out}")
    run.log(f"ssm backend: {_ssm_backend(args.device)}")
    with tempfile.TemporaryDirectory(prefix="mvlip_bench_", dir=args.workdir) as tmp:
        for part in ("model", "sweep", "e2e", "compile"):  # compile last: it takes what time is left
            if part not in parts:
                continue
            t = time.perf_counter()
            try:
                if part == "model":
                    part_model(run, s, encoders)
                elif part == "sweep":
                    part_sweep(run, s, encoders)
                elif part == "e2e":
                    part_e2e(run, s, encoders, Path(tmp))
                else:
                    part_compile(run, s, encoders)
            except Exception as exc:  # noqa: BLE001 - one broken part must not lose the others
                run.fail(part, exc)
            run.extra["part_seconds"][part] = round(time.perf_counter() - t, 1)
            run.save()
    print_table(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())

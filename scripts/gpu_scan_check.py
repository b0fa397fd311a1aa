"""One-call GPU check of the Triton selective scan: correctness, kernel timings, MambaVision cost.

Run on a CUDA machine (the project's H200 lease), from the repo root, with mambavision importable:

    PYTHONPATH=.:/tmp/site python3 scripts/gpu_scan_check.py --out $OUT [--quick]

1. correctness: forward, last state and the gradients of u, delta, A, B, C, D, z, delta_bias of
   the Triton path against the float64 reference loop on the GPU, fresh random inputs, several
   shapes and flag combinations; bf16 inputs; MambaVision's strided dt;
2. kernel timings at MambaVision-B's scan shapes (triton.testing.do_bench, median), with a small
   sweep of BLOCK_D / num_warps; the portable path for comparison;
3. model level: MambaVision-B-21K (random weights, 224 px, image tower = backbone + Linear to 512)
   with the Triton scan vs the same model with the scan replaced by ``u * D`` (the upper bound), in
   the same process, interleaved: fp32 batch 32 inference, bf16-autocast batch 256 inference,
   fp32 batch 32 training step (forward, backward, AdamW).  TF32 off, CUDA events, warm-up,
   median of repeats.

Writes ``scan_ratios.json`` (and ``kernels.json``) under --out and prints a short table last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from mvlip_utils import ssm  # noqa: E402

DEV = "cuda"  # "cpu" only for a dry run of this script under TRITON_INTERPRET=1


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------- correctness
def correctness(quick):
    from test_ssm import ALL_GRADS, make_inputs, rel_err, run

    cases = [((2, 256, 8, 196), {}), ((4, 512, 8, 49), dict(use_z=False, last_state=False)),
             ((3, 40, 16, 33), dict(softplus=False, use_bias=False)), ((1, 8, 4, 1), {}),
             ((2, 100, 5, 70), dict(use_D=False))]
    if quick:
        cases = cases[:2]
    if DEV != "cuda":  # the interpreter is slow: tiny shapes
        cases = [((2, 8, 4, 17), {}), ((1, 12, 8, 9), dict(use_z=False, last_state=False))]
    rows = []
    worst = 0.0
    for shape, flags in cases:
        inp = make_inputs(*shape, seed=int(time.time_ns() % 100000), device=DEV)
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
        ref_leaves = {k: v.detach().double().requires_grad_() for k, v in inp.items()}
        out, last = run(ssm.selective_scan_triton, leaves, **flags)
        ref, ref_last = run(ssm.selective_scan_reference, ref_leaves, **flags)
        g = torch.randn_like(ref)
        ((out * g.float()).sum() + (last.sum() if last is not None else 0)).backward()
        ((ref * g).sum() + (ref_last.sum() if ref_last is not None else 0)).backward()
        errs = {"out": rel_err(out, ref)}
        if last is not None:
            errs["last_state"] = rel_err(last, ref_last)
        for name in ALL_GRADS:
            if ref_leaves[name].grad is not None:
                errs["d" + name] = rel_err(leaves[name].grad, ref_leaves[name].grad)
        worst = max(worst, max(errs.values()))
        rows.append(dict(shape=shape, flags=flags, rel_err=errs))
        log("correctness", shape, flags, f"max rel err {max(errs.values()):.2e}")
    # bf16 inputs, and MambaVision's dt layout (a (b, l, d) tensor viewed as (b, d, l))
    inp = make_inputs(*((4, 256, 8, 196) if DEV == "cuda" else (1, 8, 8, 12)), seed=3, device=DEV)
    bf = {k: v.to(torch.bfloat16) for k, v in inp.items()}
    out, _ = run(ssm.selective_scan_triton, bf)
    ref, _ = run(ssm.selective_scan_reference, {k: v.double() for k, v in bf.items()})
    bf16_err = rel_err(out, ref)
    dt_strided = inp["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    a = ssm.selective_scan_triton(inp["u"], dt_strided, inp["A"], inp["B"], inp["C"], inp["D"],
                                  delta_bias=inp["delta_bias"], delta_softplus=True)
    b = ssm.selective_scan_triton(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"],
                                  delta_bias=inp["delta_bias"], delta_softplus=True)
    strided_equal = bool(torch.equal(a, b))
    log(f"correctness bf16 rel err {bf16_err:.2e}; strided dt identical: {strided_equal}")
    return dict(cases=rows, worst_fp32_rel_err=worst, bf16_out_rel_err=bf16_err,
                strided_delta_identical=strided_equal, passed=worst <= 1e-5 and bf16_err < 1e-2 and strided_equal)


# ----------------------------------------------------------------------------- kernel timings
def scan_inputs(b, d, n, L, dtype, requires_grad=False):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, d, L, device="cuda", generator=g).to(dtype)
    dt = torch.randn(b, L, d, device="cuda", generator=g).to(dtype).transpose(1, 2)  # as MambaVision
    A = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(d, 1)
    B = torch.randn(b, n, L, device="cuda", generator=g).to(dtype)
    C = torch.randn(b, n, L, device="cuda", generator=g).to(dtype)
    D = torch.ones(d, device="cuda")
    bias = torch.log(torch.expm1(torch.full((d,), 0.01, device="cuda")))
    ts = [x, dt, A, B, C, D, bias]
    if requires_grad:
        ts = [t.detach().requires_grad_() for t in ts]
    return ts


def kernel_timings(quick):
    from triton.testing import do_bench

    shapes = {  # MambaVision-B: stage 3 d=256 L=196, stage 4 d=512 L=49; n=8
        "s3_b32_fp32": (32, 256, 8, 196, torch.float32),
        "s4_b32_fp32": (32, 512, 8, 49, torch.float32),
        "s3_b256_bf16": (256, 256, 8, 196, torch.bfloat16),
        "s4_b256_bf16": (256, 512, 8, 49, torch.bfloat16),
    }
    res = {}
    configs = [(8, 1), (16, 1), (16, 2), (32, 1), (32, 2), (32, 4), (64, 2), (64, 4)]
    if quick:
        configs = configs[:3]
    for name, (b, d, n, L, dtype) in shapes.items():
        x, dt, A, B, C, D, bias = scan_inputs(b, d, n, L, dtype)
        r = {"shape": [b, d, n, L], "dtype": str(dtype), "default_fwd": list(ssm._launch_config(b, d, n, False)),
             "default_bwd": list(ssm._launch_config(b, d, n, True))}

        def fwd():
            return ssm.selective_scan_triton(x, dt, A, B, C, D, delta_bias=bias, delta_softplus=True)

        def portable():
            return ssm.selective_scan_portable(x, dt, A, B, C, D, delta_bias=bias, delta_softplus=True)

        with torch.no_grad():
            r["fwd_default_ms"] = do_bench(fwd, warmup=25, rep=100, return_mode="median")
            r["portable_fwd_ms"] = do_bench(portable, warmup=10, rep=50, return_mode="median")
            sweep = {}
            for bd, w in configs:
                os.environ["MVLIP_SSM_BLOCK_D"], os.environ["MVLIP_SSM_WARPS"] = str(bd), str(w)
                sweep[f"{bd}x{w}"] = do_bench(fwd, warmup=10, rep=50, return_mode="median")
            os.environ.pop("MVLIP_SSM_BLOCK_D")
            os.environ.pop("MVLIP_SSM_WARPS")
            r["fwd_sweep_ms"] = sweep
        leaves = scan_inputs(b, d, n, L, dtype, requires_grad=True)
        out = ssm.selective_scan_triton(*leaves[:6], delta_bias=leaves[6], delta_softplus=True)
        gout = torch.randn_like(out)

        def bwd():
            return torch.autograd.grad(out, leaves, gout, retain_graph=True)

        r["bwd_default_ms"] = do_bench(bwd, warmup=25, rep=100, return_mode="median")
        sweep = {}
        for bd, w in configs:
            os.environ["MVLIP_SSM_BWD_BLOCK_D"], os.environ["MVLIP_SSM_BWD_WARPS"] = str(bd), str(w)
            sweep[f"{bd}x{w}"] = do_bench(bwd, warmup=10, rep=50, return_mode="median")
        os.environ.pop("MVLIP_SSM_BWD_BLOCK_D")
        os.environ.pop("MVLIP_SSM_BWD_WARPS")
        r["bwd_sweep_ms"] = sweep
        res[name] = r
        log("kernel", name, f"fwd {r['fwd_default_ms']*1e3:.0f} us (portable {r['portable_fwd_ms']*1e3:.0f} us),",
            f"bwd {r['bwd_default_ms']*1e3:.0f} us; best fwd {min(r['fwd_sweep_ms'].items(), key=lambda kv: kv[1])},",
            f"best bwd {min(r['bwd_sweep_ms'].items(), key=lambda kv: kv[1])}")
    return res


# ----------------------------------------------------------------------------- model level
def no_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """The scan removed: a cheap elementwise stand-in (upper bound for any scan)."""
    return (u * D[:, None]).to(u.dtype)


def model_timings(quick, repeats):
    import timm

    ssm.install_mamba_ssm_shim()
    import mambavision  # noqa: F401
    from mambavision.models import mamba_vision as mv

    torch.manual_seed(0)
    if DEV == "cuda":
        backbone = timm.create_model("mamba_vision_B_21k", pretrained=False, num_classes=0)
        res = 224
    else:  # dry run: a tiny MambaVision
        backbone = timm.create_model("mamba_vision_T", pretrained=False, num_classes=0, depths=[1, 1, 1, 1], dim=32,
                                     in_dim=16, num_heads=[1, 2, 4, 8], window_size=[8, 8, 4, 2], resolution=64)
        res = 64
    tower = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.norm.num_features, 512)).to(DEV)
    n_params = sum(p.numel() for p in tower.parameters())
    scans = {"triton": ssm.selective_scan, "no_scan": no_scan}
    probe = torch.randn(1, 256, 8, device=DEV)
    if DEV == "cuda":
        assert ssm.backend_for(probe) == "triton", ssm.backend_for(probe)
    else:
        scans["triton"] = ssm.selective_scan_triton
    opt = torch.optim.AdamW(tower.parameters(), lr=1e-6)

    def make_step(mode, batch):
        x = torch.randn(batch, 3, res, res, device=DEV)
        if mode == "inf_fp32":
            tower.eval()

            def step():
                with torch.inference_mode():
                    tower(x)
        elif mode == "inf_bf16":
            tower.eval()

            def step():
                with torch.inference_mode(), torch.autocast(DEV, dtype=torch.bfloat16):
                    tower(x)
        else:
            tower.train()

            def step():
                opt.zero_grad(set_to_none=True)
                tower(x).float().pow(2).mean().backward()
                opt.step()
        return step

    def timed(step, iters):
        ts = []
        for _ in range(iters):
            if DEV != "cuda":
                t0 = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t0)
                continue
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            step()
            e1.record()
            e1.synchronize()
            ts.append(e0.elapsed_time(e1) / 1e3)
        return ts

    modes = [("inf_fp32", 32), ("inf_bf16", 256), ("train_fp32", 32)]
    if DEV != "cuda":
        modes = [(m, 2) for m, _ in modes]
    out = {"params": n_params, "modes": {}}
    for mode, batch in modes:
        step = make_step(mode, batch)
        times = {k: [] for k in scans}
        for k, fn in scans.items():  # warm-up (compiles kernels, autotunes cuDNN)
            mv.selective_scan_fn = fn
            timed(step, 3)
        for _ in range(2 if not quick else 1):  # interleaved rounds
            for k, fn in scans.items():
                mv.selective_scan_fn = fn
                times[k] += timed(step, repeats)
        mv.selective_scan_fn = ssm.selective_scan
        ips = {k: batch / statistics.median(v) for k, v in times.items()}
        spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in times.items()}
        out["modes"][mode] = dict(batch=batch, images_per_s=ips, ratio=ips["triton"] / ips["no_scan"],
                                  median_s={k: statistics.median(v) for k, v in times.items()},
                                  rel_spread=spread, n=len(times["triton"]))
        log(f"model {mode} b{batch}: triton {ips['triton']:.0f} img/s, no_scan {ips['no_scan']:.0f} img/s,"
            f" ratio {ips['triton'] / ips['no_scan']:.3f}")
        del step
        if DEV == "cuda":
            torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true", help="fewer cases and repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=10, help="timed iterations per variant per round")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: correctness,kernels,model")
    ap.add_argument("--command", default=os.environ.get("MVLIP_COMMAND", ""), help="command line to record")
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="exercise the script on the CPU (needs TRITON_INTERPRET=1): tiny model, no kernel timings")
    args = ap.parse_args()
    global DEV
    if args.dry_run_cpu:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--dry-run-cpu needs TRITON_INTERPRET=1")
        DEV = "cpu"
        args.quick = True
        args.skip += ",kernels"
    elif not torch.cuda.is_available():
        sys.exit("gpu_scan_check.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    import triton

    os.makedirs(args.out, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    res = dict(gpu=torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu (dry run)", torch=torch.__version__, triton=triton.__version__,
               python=platform.python_version(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
               command=args.command or " ".join(sys.argv), tf32=False, timing="CUDA events, median")
    out_json = os.path.join(args.out, "scan_ratios.json")

    def save():
        with open(out_json, "w") as f:
            json.dump(res, f, indent=1, default=str)

    def part(name, fn):  # one failing part must not lose the others' numbers
        if name in skip:
            return None
        try:
            value = fn()
        except Exception as exc:  # recorded and reported, the script goes on
            import traceback

            traceback.print_exc()
            res.setdefault("errors", {})[name] = repr(exc)
            value = None
        if value is not None:
            res[name] = value
        save()
        return value

    part("correctness", lambda: correctness(args.quick))
    part("kernels", lambda: kernel_timings(args.quick))
    m = part("model", lambda: model_timings(args.quick, args.repeats if not args.quick else 3))
    if m is not None:
        res["ratios"] = {k: v["ratio"] for k, v in m["modes"].items()}
        res["targets"] = {"inf_fp32": 0.90, "inf_bf16": 0.90, "train_fp32": 0.80}
        res["targets_met"] = {k: res["ratios"][k] >= t for k, t in res["targets"].items()}
        save()
    log("\n=== summary ===")
    if "correctness" in res:
        c = res["correctness"]
        log(f"correctness passed={c['passed']} worst fp32 rel err {c['worst_fp32_rel_err']:.2e},"
            f" bf16 {c['bf16_out_rel_err']:.2e}")
    for mode, v in res.get("model", {}).get("modes", {}).items():
        log(f"{mode:<11} b{v['batch']:<4} triton {v['images_per_s']['triton']:8.0f} img/s  no_scan "
            f"{v['images_per_s']['no_scan']:8.0f} img/s  ratio {v['ratio']:.3f}")


if __name__ == "__main__":
    main()

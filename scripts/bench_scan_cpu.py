"""CPU timing of the selective scan variants at MambaVision-like shapes (prints a table).

Variants: the float64 reference loop, a float32 sequential time loop (what a naive port does),
the portable chunked path of mvlip_utils.ssm, and -- when installed -- the same discretisation
fed to mambapy's Blelloch pscan.  Forward alone and forward+backward, min (default) or median of repeats.

    python scripts/bench_scan_cpu.py [--repeats 5] [--threads N] [--stat min|median]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mvlip_utils import ssm


def loop_fp32(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Sequential float32 loop through autograd (the naive port)."""
    dt = delta + delta_bias[:, None] if delta_bias is not None else delta
    dt = F.softplus(dt) if delta_softplus else dt
    dA = torch.exp(dt[..., None] * A[:, None, :])
    dBu = (dt * u)[..., None] * B.transpose(1, 2)[:, None]
    h = torch.zeros_like(dA[:, :, 0])
    ys = []
    for i in range(u.shape[2]):
        h = dA[:, :, i] * h + dBu[:, :, i]
        ys.append((h * C[:, None, :, i]).sum(-1))
    y = torch.stack(ys, 2) + u * D[:, None]
    return y


def mambapy_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    from mambapy.pscan import pscan  # layout (b, l, d, n)
    dt = delta + delta_bias[:, None] if delta_bias is not None else delta
    dt = F.softplus(dt) if delta_softplus else dt
    dA = torch.exp(dt[..., None] * A[:, None, :]).transpose(1, 2)
    dBu = ((dt * u)[..., None] * B.transpose(1, 2)[:, None]).transpose(1, 2)
    h = pscan(dA, dBu)  # (b, l, d, n)
    y = (h * C.transpose(1, 2)[:, :, None]).sum(-1).transpose(1, 2)
    return y + u * D[:, None]


def inputs(b, d, n, l, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, l, generator=g, dtype=dtype)
    delta = torch.randn(b, d, l, generator=g, dtype=dtype)
    A = -torch.arange(1, n + 1, dtype=dtype).repeat(d, 1)
    B = torch.randn(b, n, l, generator=g, dtype=dtype)
    C = torch.randn(b, n, l, generator=g, dtype=dtype)
    D = torch.ones(d, dtype=dtype)
    bias = torch.log(torch.expm1(torch.full((d,), 0.01, dtype=dtype)))
    return u, delta, A, B, C, D, bias


def timeit(fn, repeats, stat):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return (min(ts) if stat == "min" else statistics.median(ts)) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stat", choices=["min", "median"], default="min",
                    help="min is the robust choice on a shared, busy CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import mambapy  # noqa: F401
        have_mambapy = True
    except ImportError:
        have_mambapy = False

    variants = {
        "reference f64 loop": lambda *a, **k: ssm.selective_scan_reference(*a, **k),
        "f32 time loop": loop_fp32,
        "chunked (ssm)": lambda *a, **k: ssm.selective_scan_portable(*a, **k),
    }
    if have_mambapy:
        variants["mambapy pscan"] = mambapy_scan
    shapes = [(2, 256, 8, 196), (8, 256, 8, 196), (8, 512, 8, 49), (4, 512, 16, 196)]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.stat} of {args.repeats}; ms")
    header = f"{'shape (b,d,n,l)':<20}{'variant':<22}{'fwd ms':>10}{'fwd+bwd ms':>12}"
    print(header)
    print("-" * len(header))
    for shape in shapes:
        u, delta, A, B, C, D, bias = inputs(*shape)
        for name, fn in variants.items():
            kw = dict(delta_bias=bias, delta_softplus=True)
            reps = max(1, args.repeats // 2) if "f64" in name else args.repeats

            def fwd():
                with torch.no_grad():
                    fn(u, delta, A, B, C, D, **kw)

            leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, bias)]

            def fwd_bwd():
                out = fn(*leaves[:6], delta_bias=leaves[6], delta_softplus=True)
                out.sum().backward()

            print(f"{str(shape):<20}{name:<22}{timeit(fwd, reps, args.stat):>10.1f}{timeit(fwd_bwd, reps, args.stat):>12.1f}",
                  flush=True)


if __name__ == "__main__":
    main()

"""CPU timing of the selective scan at MambaVision-like shapes: the float64 reference loop against the
portable chunked scan of mvlip_utils.models.ssm, forward and forward+backward, timed by mvlip_utils.measure.benchmark.

    python scripts/bench_scan_cpu.py [--repeats 5] [--threads N]
"""
import argparse

import torch

from mvlip_utils.models import ssm
from mvlip_utils.measure.benchmark import time_callable

SHAPES = [(2, 256, 8, 196), (8, 256, 8, 196), (8, 512, 8, 49), (4, 512, 16, 196)]  # (batch, dim, dstate, L)


def scan_inputs(b, d, n, length, generator):
    u, delta, B, C = (torch.randn(*s, generator=generator) for s in ((b, d, length), (b, d, length),
                                                                     (b, n, length), (b, n, length)))
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    bias = torch.log(torch.expm1(torch.full((d,), 0.01)))
    return [u, delta, A, B, C, torch.ones(d), bias]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {"reference (float64 loop)": ssm.selective_scan_reference, "portable (chunked)": ssm.selective_scan_portable}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fastest of {args.repeats} (ms)")
    print(f"{'shape (b,d,n,l)':<20}{'variant':<26}{'fwd':>9}{'fwd+bwd':>10}")
    for shape in SHAPES:
        inputs = scan_inputs(*shape, torch.Generator().manual_seed(0))
        for name, fn in variants.items():
            leaves = [t.clone().requires_grad_() for t in inputs]

            def forward():
                with torch.no_grad():
                    fn(*inputs[:6], delta_bias=inputs[6], delta_softplus=True)

            def forward_backward():
                fn(*leaves[:6], delta_bias=leaves[6], delta_softplus=True).sum().backward()

            times = [time_callable(f, "cpu", warmup=1, repeats=args.repeats).min() * 1e3
                     for f in (forward, forward_backward)]
            print(f"{str(shape):<20}{name:<26}{times[0]:>9.1f}{times[1]:>10.1f}", flush=True)


if __name__ == "__main__":
    main()

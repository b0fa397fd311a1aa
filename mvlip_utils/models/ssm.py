"""The selective scan (Mamba's S6 recurrence, mamba_ssm's ``selective_scan_fn``) without the mamba_ssm build.

Paths: :func:`selective_scan_reference` (float64 loop, the ground truth), :func:`selective_scan_portable`
(any device; a chunked first-order scan with a reverse-scan backward) and :func:`selective_scan_triton`
(kernels in :mod:`.ssm_triton`). :func:`selective_scan` picks mamba_ssm's kernel, else Triton, else portable;
:func:`install_mamba_ssm_shim` lets ``import mambavision`` work without mamba_ssm.

Recurrence (per batch b, channel d, state n; time t)::

    dt_t   = softplus(delta_t + delta_bias)      (bias and softplus optional)
    h_t    = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t    = sum_n C_t * h_t + D * u_t
    out_t  = y_t * silu(z_t)                      (optional)
"""

from __future__ import annotations

import math
import sys
import types

import torch
import torch.nn.functional as F

from .ssm_triton import TritonSelectiveScan, triton_available

__all__ = ["selective_scan", "selective_scan_portable", "selective_scan_reference", "selective_scan_triton",
           "install_mamba_ssm_shim", "LinearScan", "backend_for", "triton_available"]

_SHIM_MARK = "__mvlip_ssm_shim__"


def _bc_time_major(t, d, dtype):
    """B or C to the time-major layout (l|1, b|1, d|1, n)."""
    t = t.to(dtype)
    if t.dim() == 2:  # (d, n)
        return t[None, None]
    if t.dim() == 3:  # (b, n, l) -> (l, b, 1, n)
        return t.permute(2, 0, 1)[:, :, None]
    return t.repeat_interleave(d // t.shape[1], dim=1).permute(3, 0, 1, 2)  # (l, b, d, n)


def _deltas(delta, delta_bias, delta_softplus, dtype):
    """dt = softplus(delta + delta_bias) in ``dtype`` (bias and softplus optional; softplus's threshold is 20, as
    in mamba_ssm's kernel)."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


def _skip_and_gate(y, u, D, z):
    """y + D * u, then times silu(z) (each optional), in y's dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False, return_last_state=False):
    """Float64 loop with mamba_ssm's ``selective_scan_ref`` semantics; differentiable through autograd.

    Returns ``out`` in u's dtype (and ``last_state`` in float64 when ``return_last_state``)."""
    f64 = torch.float64
    b, d, l = u.shape
    uu = u.to(f64)
    dt = _deltas(delta, delta_bias, delta_softplus, f64)
    A64 = A.to(f64)
    Bt, Ct = _bc_time_major(B, d, f64), _bc_time_major(C, d, f64)
    h = torch.zeros(b, d, A.shape[1], dtype=f64, device=u.device)
    ys = []
    for i in range(l):
        Bi, Ci = Bt[min(i, len(Bt) - 1)], Ct[min(i, len(Ct) - 1)]
        h = torch.exp(dt[:, :, i, None] * A64) * h + dt[:, :, i, None] * Bi * uu[:, :, i, None]
        ys.append((h * Ci).sum(-1))
    out = _skip_and_gate(torch.stack(ys, dim=2), uu, D, z).to(u.dtype)
    return (out, h) if return_last_state else out


def _scan_chunked(a, x, chunk=None):
    """h_t = a_t * h_{t-1} + x_t along dim 0 of time-major (L, ...) tensors, h_{-1} = 0.

    About 2*sqrt(L) steps: a loop inside chunks (all chunks at once), then a carry between chunks.
    Only products of decays are formed, never quotients, so it is stable."""
    L = a.shape[0]
    rest = a.shape[1:]
    if chunk is None:
        chunk = max(1, int(math.ceil(math.sqrt(L))))
    nc = -(-L // chunk)
    Lp = nc * chunk
    a = a.reshape(L, -1)
    x = x.reshape(L, -1)
    M = a.shape[1]
    h = torch.empty(Lp, M, dtype=x.dtype, device=x.device)
    P = torch.empty(Lp, M, dtype=a.dtype, device=a.device)  # cumulative decays inside chunks
    h[:L] = x
    P[:L] = a
    if Lp != L:
        h[L:] = 0.0
        P[L:] = 1.0
    h = h.view(nc, chunk, M)
    P = P.view(nc, chunk, M)
    for t in range(1, chunk):
        h[:, t].addcmul_(P[:, t], h[:, t - 1])
        P[:, t].mul_(P[:, t - 1])
    if nc > 1:
        carries = torch.empty(nc, M, dtype=h.dtype, device=h.device)
        carries[0] = 0.0
        for c in range(1, nc):
            torch.addcmul(h[c - 1, -1], P[c - 1, -1], carries[c - 1], out=carries[c])
        h[1:].addcmul_(P[1:], carries[1:, None])
    return h.view(Lp, *rest)[:L]


class LinearScan(torch.autograd.Function):
    """Differentiable ``h_t = a_t * h_{t-1} + x_t`` along dim 0 of time-major (L, ...) tensors, with a reverse-scan
    backward (no autograd through loops)."""

    @staticmethod
    def forward(ctx, a, x):
        h = _scan_chunked(a, x)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, g):
        a, h = ctx.saved_tensors
        # G_t = g_t + a_{t+1} G_{t+1}: the same scan run backwards in time.
        a_next = torch.empty_like(a)
        a_next[:-1] = a[1:]
        a_next[-1] = 0.0
        G = _scan_chunked(a_next.flip(0), g.flip(0)).flip(0)
        da = torch.empty_like(a)
        da[0] = 0.0
        torch.mul(G[1:], h[:-1], out=da[1:])
        return da, G


def selective_scan_portable(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, return_last_state=False):
    """Portable selective scan (any device); float32 internally for float32/bf16/fp16 inputs."""
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    d = u.shape[1]
    uu = u.to(cdt)
    dt = _deltas(delta, delta_bias, delta_softplus, cdt)
    Bt, Ct = _bc_time_major(B, d, cdt), _bc_time_major(C, d, cdt)
    dtt = dt.permute(2, 0, 1)  # time-major (l, b, d): the scan runs along dim 0
    dA = torch.exp(dtt[..., None] * A.to(cdt))  # (l, b, d, n)
    dBu = (dtt * uu.permute(2, 0, 1))[..., None] * Bt  # (l, b, d, n)
    h = LinearScan.apply(dA, dBu)
    out = _skip_and_gate((h * Ct).sum(-1).permute(1, 2, 0), uu, D, z).to(u.dtype)  # (b, d, l)
    return (out, h[-1]) if return_last_state else out


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False):
    """Triton selective scan (CUDA tensors; CPU under TRITON_INTERPRET=1) for B, C of shape (batch, dstate, L);
    other layouts go to the portable path."""
    if B.dim() != 3 or C.dim() != 3 or u.shape[2] == 0:  # the kernels cover MambaVision's (batch, dstate, L)
        return selective_scan_portable(u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                                       delta_softplus=delta_softplus, return_last_state=return_last_state)
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return TritonSelectiveScan.apply(u, delta, A.contiguous(), B, C, D, z, delta_bias, bool(delta_softplus),
                                     bool(return_last_state), need_grad)


_REAL_MAMBA = None  # None: not probed yet; False: not importable; else the real selective_scan_fn


def _real_mamba_fn():
    """The real mamba_ssm selective_scan_fn if it imports cleanly (probed once), else None."""
    global _REAL_MAMBA
    if _REAL_MAMBA is None:
        mod = sys.modules.get("mamba_ssm.ops.selective_scan_interface")
        if mod is not None and getattr(mod, _SHIM_MARK, False):
            _REAL_MAMBA = False  # our shim is installed, so the real one did not import
        else:
            try:
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as real
                _REAL_MAMBA = real
            except Exception:  # ImportError, or a broken CUDA extension (OSError, RuntimeError)
                for name in [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]:
                    if not getattr(sys.modules[name], _SHIM_MARK, False):
                        del sys.modules[name]
                _REAL_MAMBA = False
    return _REAL_MAMBA or None


def backend_for(u: torch.Tensor) -> str:
    """Which backend :func:`selective_scan` uses for a tensor on u's device."""
    if u.is_cuda:
        if _real_mamba_fn() is not None:
            return "mamba_ssm"
        if triton_available():
            return "triton"
    return "portable"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """mamba_ssm's ``selective_scan_fn``: u, delta, z: (batch, dim, L); A: (dim, dstate) real; B, C: (batch,
    dstate, L), (batch, groups, dstate, L) or (dim, dstate); D, delta_bias: (dim,). Returns out (batch, dim, L)
    in u's dtype and, if ``return_last_state``, the final state (batch, dim, dstate) in float32."""
    backend = backend_for(u)
    if backend == "mamba_ssm":
        return _real_mamba_fn()(u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                                delta_softplus=delta_softplus, return_last_state=return_last_state)
    fn = selective_scan_triton if backend == "triton" else selective_scan_portable
    return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
              return_last_state=bool(return_last_state))


def install_mamba_ssm_shim() -> str:
    """Make ``from mamba_ssm.ops.selective_scan_interface import selective_scan_fn`` resolve (call it before
    ``import mambavision``; idempotent): ``"mamba_ssm"`` when the real package imports, else registers
    shim modules whose ``selective_scan_fn`` is :func:`selective_scan` and returns ``"mvlip_utils.ssm"``."""
    if _real_mamba_fn() is not None:
        return "mamba_ssm"
    existing = sys.modules.get("mamba_ssm.ops.selective_scan_interface")
    if existing is not None and getattr(existing, _SHIM_MARK, False):
        return "mvlip_utils.ssm"
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = []  # a package, so submodule imports go through sys.modules
    ops = types.ModuleType("mamba_ssm.ops")
    ops.__path__ = []
    iface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    iface.selective_scan_fn = selective_scan
    iface.selective_scan_ref = selective_scan_reference
    for m in (pkg, ops, iface):
        setattr(m, _SHIM_MARK, True)
        m.__file__ = __file__
    pkg.ops = ops
    ops.selective_scan_interface = iface
    sys.modules.update({"mamba_ssm": pkg, "mamba_ssm.ops": ops, "mamba_ssm.ops.selective_scan_interface": iface})
    return "mvlip_utils.ssm"

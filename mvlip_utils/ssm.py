"""Selective scan (Mamba's S6 recurrence) without the mamba_ssm CUDA build.

MambaVision calls exactly one op from mamba_ssm::

    selective_scan_fn(x, dt, A, B, C, D, z=None, delta_bias=..., delta_softplus=True,
                      return_last_state=None)

This module gives the same function, with mamba_ssm's semantics, in three flavours:

* :func:`selective_scan_reference` -- a float64 sequential loop, the ground truth for tests;
* a portable path (any device, any dtype; computes in float32 like mamba_ssm does): the
  discretised tensors ``exp(delta * A)`` and ``delta * B * u`` of shape (b, d, l, n) are scanned
  by a *chunked* first-order scan (a sequential loop of ``~sqrt(l)`` steps inside chunks, run
  over all chunks at once, then a carry of ``~sqrt(l)`` steps between chunks) with a hand-written
  reverse-scan backward;
* a Triton path for CUDA tensors (forward and backward kernels that keep the state in registers,
  see :class:`_TritonSelectiveScan`).

:func:`selective_scan` dispatches: CUDA tensors go to the real mamba_ssm kernel when it imports
cleanly, else to the Triton path, else to the portable one.  :func:`install_mamba_ssm_shim`
makes ``from mamba_ssm.ops.selective_scan_interface import selective_scan_fn`` resolve, so that
``import mambavision`` works without mamba_ssm.

Recurrence (per batch b, channel d, state n; time t)::

    dt_t   = softplus(delta_t + delta_bias)      (bias and softplus optional)
    h_t    = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t    = sum_n C_t * h_t + D * u_t
    out_t  = y_t * silu(z_t)                      (optional)
"""

from __future__ import annotations

import math
import os
import sys
import types

import torch
import torch.nn.functional as F

try:  # the Triton path is optional
    import triton.language as tl
except Exception:  # pragma: no cover - no triton
    tl = None

__all__ = [
    "selective_scan",
    "selective_scan_portable",
    "selective_scan_reference",
    "selective_scan_triton",
    "install_mamba_ssm_shim",
    "linear_scan",
    "backend_for",
    "triton_available",
]

_SHIM_MARK = "__mvlip_ssm_shim__"


# --------------------------------------------------------------------------- input checks
def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    b, d, l = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (dim={d}, dstate), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise NotImplementedError("A: complex state matrices are not supported (MambaVision uses real A)")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            if tuple(t.shape) != (d, n):
                raise ValueError(f"{name} must be (dim, dstate)=({d}, {n}) when 2-D, got {tuple(t.shape)}")
        elif t.dim() == 3:
            if tuple(t.shape) != (b, n, l):
                raise ValueError(f"{name} must be (batch, dstate, L)=({b}, {n}, {l}), got {tuple(t.shape)}")
        elif t.dim() == 4:
            if t.shape[0] != b or t.shape[2] != n or t.shape[3] != l or d % t.shape[1] != 0:
                raise ValueError(
                    f"{name} must be (batch, groups, dstate, L) with dim % groups == 0, got {tuple(t.shape)}")
        else:
            raise ValueError(f"{name} must be 2-, 3- or 4-D, got shape {tuple(t.shape)}")
        if t.is_complex():
            raise NotImplementedError(f"{name}: complex inputs are not supported")
    if D is not None and tuple(D.shape) != (d,):
        raise ValueError(f"D must be (dim,)=({d},), got {tuple(D.shape)}")
    if delta_bias is not None and tuple(delta_bias.shape) != (d,):
        raise ValueError(f"delta_bias must be (dim,)=({d},), got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def _expand_bc(t, d, dtype):
    """B or C to the layout (b, d|1, l, n) ready to broadcast, or (1, d, 1, n) if constant."""
    t = t.to(dtype)
    if t.dim() == 2:  # (d, n): time-invariant
        return t[None, :, None, :]
    if t.dim() == 3:  # (b, n, l) -> (b, 1, l, n)
        return t.transpose(1, 2)[:, None]
    g = t.shape[1]  # (b, g, n, l) -> (b, d, l, n)
    return t.repeat_interleave(d // g, dim=1).transpose(2, 3)


# --------------------------------------------------------------------------- reference
def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False, return_last_state=False):
    """Float64 sequential loop with mamba_ssm's ``selective_scan_ref`` semantics (ground truth).

    Differentiable through autograd.  Returns ``out`` in u's dtype (and ``last_state`` in
    float64 when ``return_last_state``).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    f64 = torch.float64
    b, d, l = u.shape
    uu = u.to(f64)
    dt = delta.to(f64)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f64)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)  # threshold 20, like mamba_ssm's kernel
    A64 = A.to(f64)
    Bx = _expand_bc(B, d, f64)
    Cx = _expand_bc(C, d, f64)
    h = torch.zeros(b, d, A.shape[1], dtype=f64, device=u.device)
    ys = []
    for i in range(l):
        Bi = Bx[:, :, i if Bx.shape[2] > 1 else 0]
        Ci = Cx[:, :, i if Cx.shape[2] > 1 else 0]
        h = torch.exp(dt[:, :, i, None] * A64) * h + dt[:, :, i, None] * Bi * uu[:, :, i, None]
        ys.append((h * Ci).sum(-1))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + uu * D.to(f64)[:, None]
    if z is not None:
        y = y * F.silu(z.to(f64))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


# --------------------------------------------------------------------------- chunked scan
def _scan_chunked(a, x, chunk=None):
    """h_t = a_t * h_{t-1} + x_t along dim 0 of time-major (L, ...) tensors, h_{-1} = 0.

    Chunked: a loop of ``chunk`` steps inside chunks (vectorised over all chunks; each step
    touches ``n_chunks`` contiguous blocks), then a loop of ``n_chunks`` steps carrying the state
    between chunks, then one fused correction.  About 2*sqrt(L) small steps instead of L.
    Only products of decays (|a| <= 1 in Mamba) are formed, never quotients, so it is stable.
    """
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


class _LinearScan(torch.autograd.Function):
    """First-order linear recurrence with a reverse-scan backward (no autograd through loops)."""

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


def linear_scan(a, x):
    """Differentiable ``h_t = a_t * h_{t-1} + x_t`` along dim 0 of time-major (L, ...) tensors."""
    return _LinearScan.apply(a, x)


# --------------------------------------------------------------------------- portable path
def _bc_time_major(t, d, dtype):
    """B or C to the time-major layout (l|1, b|1, d|1, n) used by the portable path."""
    t = t.to(dtype)
    if t.dim() == 2:  # (d, n)
        return t[None, None]
    if t.dim() == 3:  # (b, n, l) -> (l, b, 1, n)
        return t.permute(2, 0, 1)[:, :, None]
    return t.repeat_interleave(d // t.shape[1], dim=1).permute(3, 0, 1, 2)  # (l, b, d, n)


def selective_scan_portable(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, return_last_state=False):
    """Portable selective scan (any device); float32 internally for float32/bf16/fp16 inputs."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    cdt = torch.float64 if dtype_in == torch.float64 else torch.float32
    d = u.shape[1]
    uu = u.to(cdt)
    dt = delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bt = _bc_time_major(B, d, cdt)
    Ct = _bc_time_major(C, d, cdt)
    dtt = dt.permute(2, 0, 1)  # time-major (l, b, d): the scan runs along dim 0
    dA = torch.exp(dtt[..., None] * A.to(cdt))  # (l, b, d, n)
    dBu = (dtt * uu.permute(2, 0, 1))[..., None] * Bt  # (l, b, d, n)
    h = linear_scan(dA, dBu)
    y = (h * Ct).sum(-1).permute(1, 2, 0)  # (b, d, l)
    if D is not None:
        y = y + uu * D.to(cdt)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    out = y.to(dtype_in)
    if return_last_state:
        return out, h[-1]
    return out


# --------------------------------------------------------------------------- Triton (CUDA) path
_TRITON_CACHE: dict = {}


def triton_available() -> bool:
    """True when Triton imports (kernels run on CUDA, or on CPU with TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


# Triton kernels, as plain functions (annotations stay strings, thanks to `from __future__ import
# annotations`); _build_triton_kernels wraps them with triton.jit on first use.
def _ssm_fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                out_ptr, st_ptr, last_ptr,
                dim, L, dstate,
                s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl,
                s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_Ad, s_An,
                BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, STORE_STATES: tl.constexpr, STORE_LAST: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A2 = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn,
                 other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * s_ub + offs_d * s_ud
    t_base = dt_ptr + pid_b * s_tb + offs_d * s_td
    z_base = z_ptr + pid_b * s_zb + offs_d * s_zd
    B_base = B_ptr + pid_b * s_Bb + offs_n * s_Bn
    C_base = C_ptr + pid_b * s_Cb + offs_n * s_Cn
    o_base = out_ptr + (pid_b * dim + offs_d) * L
    st_base = st_ptr + ((pid_b * dim + offs_d[:, None]) * L) * dstate + offs_n[None, :]
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    # software prefetch: the loads for step t+1 are issued before step t's arithmetic
    u = tl.load(u_base, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(t_base, mask=mask_d, other=0.0).to(tl.float32)
    Bt = tl.load(B_base, mask=mask_n, other=0.0).to(tl.float32)
    Ct = tl.load(C_base, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_base, mask=mask_d, other=0.0).to(tl.float32)
    for t in range(L):
        nt = t + 1
        ok = nt < L
        u_n = tl.load(u_base + nt * s_ul, mask=mask_d & ok, other=0.0).to(tl.float32)
        dt_n = tl.load(t_base + nt * s_tl, mask=mask_d & ok, other=0.0).to(tl.float32)
        B_n = tl.load(B_base + nt * s_Bl, mask=mask_n & ok, other=0.0).to(tl.float32)
        C_n = tl.load(C_base + nt * s_Cl, mask=mask_n & ok, other=0.0).to(tl.float32)
        if HAS_Z:
            z_n = tl.load(z_base + nt * s_zl, mask=mask_d & ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:  # log1p(exp(x)) with Goldberg's accurate log1p; x > 20 -> x, as mamba_ssm
            e = tl.exp(tl.minimum(dt, 20.0))
            w = 1.0 + e
            dt = tl.where(dt <= 20.0, tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0))), dt)
        a = tl.exp2(dt[:, None] * A2)
        h = a * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y += u * Dv
        if HAS_Z:
            y = y * (z / (1.0 + tl.exp(-z)))
        tl.store(o_base + t, y, mask=mask_d)
        if STORE_STATES:
            tl.store(st_base + t * dstate, h, mask=mask_dn)
        u = u_n
        dt = dt_n
        Bt = B_n
        Ct = C_n
        if HAS_Z:
            z = z_n
    if STORE_LAST:
        tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :], h, mask=mask_dn)


def _ssm_bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, st_ptr,
                dout_ptr, dlast_ptr,
                du_ptr, ddt_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
                dim, L, dstate, n_dblk,
                s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl,
                s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_Ad, s_An, s_gb, s_gd, s_gl,
                BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn,
                other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * s_ub + offs_d * s_ud
    t_base = dt_ptr + pid_b * s_tb + offs_d * s_td
    z_base = z_ptr + pid_b * s_zb + offs_d * s_zd
    g_base = dout_ptr + pid_b * s_gb + offs_d * s_gd
    B_base = B_ptr + pid_b * s_Bb + offs_n * s_Bn
    C_base = C_ptr + pid_b * s_Cb + offs_n * s_Cn
    row = (pid_b * dim + offs_d) * L  # contiguous (b, d, L) gradient outputs
    st_base = st_ptr + row[:, None] * dstate + offs_n[None, :]
    part = ((pid_b * n_dblk + pid_d) * L) * dstate + offs_n  # dB/dC partials (b, n_dblk, L, n)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :],
                        mask=mask_dn, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # a_{t+1} * g_{t+1}
    h_t = tl.load(st_base + (L - 1) * dstate, mask=mask_dn, other=0.0)
    for i in range(L):
        t = L - 1 - i
        u = tl.load(u_base + t * s_ul, mask=mask_d, other=0.0).to(tl.float32)
        dtr = tl.load(t_base + t * s_tl, mask=mask_d, other=0.0).to(tl.float32)
        gout = tl.load(g_base + t * s_gl, mask=mask_d, other=0.0).to(tl.float32)
        Bt = tl.load(B_base + t * s_Bl, mask=mask_n, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + t * s_Cl, mask=mask_n, other=0.0).to(tl.float32)
        h_prev = tl.load(st_base + (t - 1) * dstate, mask=mask_dn & (t > 0), other=0.0)
        if HAS_BIAS:
            dtr = dtr + bias
        if SOFTPLUS:
            e = tl.exp(tl.minimum(dtr, 20.0))
            w = 1.0 + e
            dt = tl.where(dtr <= 20.0, tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0))), dtr)
        else:
            dt = dtr
        a = tl.exp2(dt[:, None] * A2)
        if HAS_Z:
            z = tl.load(z_base + t * s_zl, mask=mask_d, other=0.0).to(tl.float32)
            y = tl.sum(h_t * Ct[None, :], axis=1)
            if HAS_D:
                y += u * Dv
            sig = 1.0 / (1.0 + tl.exp(-z))
            dz = gout * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + row + t, dz, mask=mask_d)
            dy = gout * z * sig
        else:
            dy = gout
        if HAS_D:
            dD_acc += dy * u
            du = dy * Dv
        else:
            du = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dC_t = tl.sum(dy[:, None] * h_t, axis=0)
        tl.store(dC_ptr + part + t * dstate, dC_t, mask=mask_n)
        g = dy[:, None] * Ct[None, :] + carry
        gB = tl.sum(g * Bt[None, :], axis=1)
        du += gB * dt
        dB_t = tl.sum(g * (dt * u)[:, None], axis=0)
        tl.store(dB_ptr + part + t * dstate, dB_t, mask=mask_n)
        da = g * h_prev * a
        ddt = gB * u + tl.sum(da * A, axis=1)
        dA_acc += da * dt[:, None]
        if SOFTPLUS:
            ddt = ddt / (1.0 + tl.exp(-dtr))
        dbias_acc += ddt
        tl.store(du_ptr + row + t, du, mask=mask_d)
        tl.store(ddt_ptr + row + t, ddt, mask=mask_d)
        carry = g * a
        h_t = h_prev
    tl.store(dA_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :], dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)


def _build_triton_kernels():
    """JIT-wrap the kernels (lazily, so TRITON_INTERPRET is read at first use)."""
    import triton

    return triton.jit(_ssm_fwd_kernel), triton.jit(_ssm_bwd_kernel)


def _triton_kernels():
    key = _triton_interpret()
    if key not in _TRITON_CACHE:
        _TRITON_CACHE[key] = _build_triton_kernels()
    return _TRITON_CACHE[key]


def _pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


def _launch_config(batch, dim, dstate, backward):
    """(BLOCK_D, num_warps): enough programs to fill the GPU, a few state elements per thread.

    Override with MVLIP_SSM_BLOCK_D / MVLIP_SSM_WARPS (forward) or MVLIP_SSM_BWD_BLOCK_D /
    MVLIP_SSM_BWD_WARPS (backward)."""
    pre = "MVLIP_SSM_BWD_" if backward else "MVLIP_SSM_"
    bn = _pow2(dstate)
    env_bd, env_w = os.environ.get(pre + "BLOCK_D"), os.environ.get(pre + "WARPS")
    if env_bd:
        bd = int(env_bd)
    else:
        target = 4 * 132  # programs: about four per H100/H200 multiprocessor
        bd = 64 if not backward else 32
        while bd > 8 and batch * -(-dim // bd) < target:
            bd //= 2
        bd = min(bd, max(8, _pow2(dim)))
    warps = int(env_w) if env_w else max(1, min(4, bd * bn // 128))
    return bd, warps


def _bdl_strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


class _TritonSelectiveScan(torch.autograd.Function):
    """Selective scan with Triton kernels: state in registers, one program per (batch, d-block).

    Forward writes out (and, when gradients are needed, every state h_t in float32 to a scratch
    tensor (b, d, L, n), read back by the backward's reverse-time scan).  dA, dD and ddelta_bias
    are per-batch partial sums and dB, dC per-d-block partial sums, reduced with torch.sum
    (deterministic; no atomics).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, need_grad):
        fwd, _ = _triton_kernels()
        b, d, L = u.shape
        n = A.shape[1]
        dev = u.device
        out = torch.empty((b, d, L), dtype=u.dtype, device=dev)
        states = torch.empty((b, d, L, n) if need_grad else (1,), dtype=torch.float32, device=dev)
        last = torch.empty((b, d, n), dtype=torch.float32, device=dev) if return_last_state else states
        zz = z if z is not None else u
        bd, warps = _launch_config(b, d, n, backward=False)
        grid = (b, triton_cdiv(d, bd))
        fwd[grid](u, delta, A, B, C, D if D is not None else u, zz,
                  delta_bias if delta_bias is not None else u, out, states, last,
                  d, L, n, *_bdl_strides(u), *_bdl_strides(delta), *_bdl_strides(zz),
                  *_bdl_strides(B), *_bdl_strides(C), A.stride(0), A.stride(1),
                  BLOCK_D=bd, BLOCK_N=_pow2(n), HAS_D=D is not None, HAS_Z=z is not None,
                  HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                  STORE_STATES=bool(need_grad), STORE_LAST=bool(return_last_state), num_warps=warps)
        ctx.flags = (D is not None, z is not None, delta_bias is not None, bool(delta_softplus))
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        if return_last_state:
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, *rest):
        _, bwd = _triton_kernels()
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        has_D, has_z, has_bias, softplus = ctx.flags
        dlast = rest[0] if rest and rest[0] is not None else None
        b, d, L = u.shape
        n = A.shape[1]
        dev = u.device
        f32 = torch.float32
        bd, warps = _launch_config(b, d, n, backward=True)
        n_dblk = triton_cdiv(d, bd)
        du = torch.empty((b, d, L), dtype=f32, device=dev)
        ddt = torch.empty((b, d, L), dtype=f32, device=dev)
        dz = torch.empty((b, d, L), dtype=f32, device=dev) if has_z else du
        dA = torch.empty((b, d, n), dtype=f32, device=dev)
        dD = torch.empty((b, d), dtype=f32, device=dev) if has_D else du
        dbias = torch.empty((b, d), dtype=f32, device=dev) if has_bias else du
        dB = torch.empty((b, n_dblk, L, n), dtype=f32, device=dev)
        dC = torch.empty((b, n_dblk, L, n), dtype=f32, device=dev)
        zz = z if has_z else u
        dlast_c = dlast.contiguous() if dlast is not None else du
        bwd[(b, n_dblk)](u, delta, A, B, C, D if has_D else u, zz, delta_bias if has_bias else u, states,
                         dout, dlast_c, du, ddt, dz, dA, dD, dbias, dB, dC,
                         d, L, n, n_dblk, *_bdl_strides(u), *_bdl_strides(delta), *_bdl_strides(zz),
                         *_bdl_strides(B), *_bdl_strides(C), A.stride(0), A.stride(1), *_bdl_strides(dout),
                         BLOCK_D=bd, BLOCK_N=_pow2(n), HAS_D=has_D, HAS_Z=has_z, HAS_BIAS=has_bias,
                         SOFTPLUS=softplus, HAS_DLAST=dlast is not None, num_warps=warps)
        g = lambda grad, like: grad.to(like.dtype) if like is not None else None  # noqa: E731
        return (g(du, u), g(ddt, delta), g(dA.sum(0), A), g(dB.sum(1).transpose(1, 2), B),
                g(dC.sum(1).transpose(1, 2), C), g(dD.sum(0), D) if has_D else None,
                g(dz, z) if has_z else None, g(dbias.sum(0), delta_bias) if has_bias else None,
                None, None, None)


def triton_cdiv(a, b):
    return -(-a // b)


def _triton_supports(u, B, C):
    return B.dim() == 3 and C.dim() == 3 and u.shape[2] > 0


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False):
    """Triton selective scan (CUDA tensors; CPU tensors under TRITON_INTERPRET=1).

    Supports MambaVision's layout B, C: (batch, dstate, L); other layouts go to the portable path.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if not _triton_supports(u, B, C):
        return selective_scan_portable(u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                                       delta_softplus=delta_softplus, return_last_state=return_last_state)
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    A = A.contiguous()
    res = _TritonSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                     bool(return_last_state), need_grad)
    return res


# --------------------------------------------------------------------------- mamba_ssm + dispatch
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
        if triton_available() and _triton_ready():
            return "triton"
    return "portable"


def _triton_ready() -> bool:
    """Whether the Triton kernels can be built (probed once)."""
    if "ready" not in _TRITON_CACHE:
        try:
            _triton_kernels()
            _TRITON_CACHE["ready"] = True
        except Exception:  # no triton, or a triton without a GPU backend
            _TRITON_CACHE["ready"] = False
    return _TRITON_CACHE["ready"]


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """mamba_ssm's ``selective_scan_fn`` with the same arguments and semantics.

    u, delta: (batch, dim, L); A: (dim, dstate) real; B, C: (batch, dstate, L), (batch, groups,
    dstate, L) or (dim, dstate); D, delta_bias: (dim,); z: (batch, dim, L).  Returns out
    (batch, dim, L) in u's dtype and, if ``return_last_state``, the final state (batch, dim, dstate)
    in float32.
    """
    backend = backend_for(u)
    if backend == "mamba_ssm":
        return _real_mamba_fn()(u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                                delta_softplus=delta_softplus, return_last_state=return_last_state)
    fn = selective_scan_triton if backend == "triton" else selective_scan_portable
    return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
              return_last_state=bool(return_last_state))


def install_mamba_ssm_shim() -> str:
    """Make ``from mamba_ssm.ops.selective_scan_interface import selective_scan_fn`` resolve.

    Returns ``"mamba_ssm"`` when the real package imports cleanly, else registers module objects
    ``mamba_ssm``, ``mamba_ssm.ops`` and ``mamba_ssm.ops.selective_scan_interface`` (exposing
    ``selective_scan_fn = selective_scan``) in ``sys.modules`` and returns ``"mvlip_utils.ssm"``.
    Idempotent.  Call it before ``import mambavision``.
    """
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
    sys.modules["mamba_ssm"] = pkg
    sys.modules["mamba_ssm.ops"] = ops
    sys.modules["mamba_ssm.ops.selective_scan_interface"] = iface
    return "mvlip_utils.ssm"

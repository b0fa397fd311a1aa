"""The Triton selective scan: forward and backward kernels, their autograd Function and launch config.

Kernels run on CUDA tensors (CPU under ``TRITON_INTERPRET=1``) with the state in registers, one program per
(batch, d-block). Input checks, the recurrence and the backend choice are in :mod:`mvlip_utils.models.ssm`.
"""

from __future__ import annotations

import os

import torch

try:  # the Triton path is optional
    import triton.language as tl
except Exception:  # pragma: no cover - no triton
    tl = None

_TRITON_CACHE: dict = {}
_TRITON_READY: bool | None = None  # whether the kernels build; probed once by triton_available


def triton_available() -> bool:
    """Whether Triton imports and the kernels build (probed once); they run on CUDA, or on CPU with
    TRITON_INTERPRET=1."""
    global _TRITON_READY
    if _TRITON_READY is None:
        try:
            _triton_kernels()
            _TRITON_READY = True
        except Exception:  # no triton, or a triton without a GPU backend
            _TRITON_READY = False
    return _TRITON_READY


# Triton kernels as plain functions (annotations stay strings under `from __future__ import annotations`);
# _triton_kernels wraps them with triton.jit on first use.
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


def _triton_kernels():
    """The JIT-wrapped (forward, backward) kernels, built lazily per TRITON_INTERPRET setting."""
    key = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")
    if key not in _TRITON_CACHE:
        import triton

        _TRITON_CACHE[key] = triton.jit(_ssm_fwd_kernel), triton.jit(_ssm_bwd_kernel)
    return _TRITON_CACHE[key]


def _pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


def _launch_config(batch, dim, dstate, backward):
    """(BLOCK_D, num_warps): enough programs to fill the GPU, a few state elements per thread."""
    target = 4 * 132  # programs: about four per H100/H200 multiprocessor
    bd = 64 if not backward else 32
    while bd > 8 and batch * triton_cdiv(dim, bd) < target:
        bd //= 2
    bd = min(bd, max(8, _pow2(dim)))
    return bd, max(1, min(4, bd * _pow2(dstate) // 128))


def _arguments(u, delta, A, B, C, D, z, delta_bias, softplus):
    """What both kernels take alike: the inputs (``u`` stands in for an absent D, z or delta_bias), their strides
    and the compile-time flags."""
    zz = z if z is not None else u
    inputs = (u, delta, A, B, C, D if D is not None else u, zz, delta_bias if delta_bias is not None else u)
    strides = (*u.stride(), *delta.stride(), *zz.stride(), *B.stride(), *C.stride(), *A.stride())
    flags = dict(BLOCK_N=_pow2(A.shape[1]), HAS_D=D is not None, HAS_Z=z is not None,
                 HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus)
    return inputs, strides, flags


class TritonSelectiveScan(torch.autograd.Function):
    """Selective scan with Triton kernels, for checked inputs with B, C of shape (batch, dstate, L) and a contiguous
    A; mamba_ssm's arguments, then whether gradients are needed. When they are, the forward stores every state h_t
    (float32, (b, d, L, n)) for the backward's reverse-time scan; parameter gradients are partial sums
    reduced with torch.sum (deterministic; no atomics)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, need_grad):
        fwd, _ = _triton_kernels()
        b, d, L = u.shape
        n = A.shape[1]
        out = torch.empty((b, d, L), dtype=u.dtype, device=u.device)
        states = torch.empty((b, d, L, n) if need_grad else (1,), dtype=torch.float32, device=u.device)
        last = torch.empty((b, d, n), dtype=torch.float32, device=u.device) if return_last_state else states
        inputs, strides, flags = _arguments(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
        bd, warps = _launch_config(b, d, n, backward=False)
        fwd[(b, triton_cdiv(d, bd))](*inputs, out, states, last, d, L, n, *strides, BLOCK_D=bd, **flags,
                                     STORE_STATES=bool(need_grad), STORE_LAST=bool(return_last_state),
                                     num_warps=warps)
        ctx.softplus = bool(delta_softplus)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, *rest):
        _, bwd = _triton_kernels()
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        dlast = rest[0] if rest and rest[0] is not None else None
        b, d, L = u.shape
        n = A.shape[1]
        bd, warps = _launch_config(b, d, n, backward=True)
        n_dblk = triton_cdiv(d, bd)
        f32 = dict(dtype=torch.float32, device=u.device)
        du = torch.empty((b, d, L), **f32)
        ddt = torch.empty((b, d, L), **f32)
        dz = torch.empty((b, d, L), **f32) if z is not None else du
        dA = torch.empty((b, d, n), **f32)
        dD = torch.empty((b, d), **f32) if D is not None else du
        dbias = torch.empty((b, d), **f32) if delta_bias is not None else du
        dB = torch.empty((b, n_dblk, L, n), **f32)
        dC = torch.empty((b, n_dblk, L, n), **f32)
        inputs, strides, flags = _arguments(u, delta, A, B, C, D, z, delta_bias, ctx.softplus)
        bwd[(b, n_dblk)](*inputs, states, dout, dlast.contiguous() if dlast is not None else du,
                         du, ddt, dz, dA, dD, dbias, dB, dC, d, L, n, n_dblk, *strides, *dout.stride(),
                         BLOCK_D=bd, **flags, HAS_DLAST=dlast is not None, num_warps=warps)
        return (du.to(u.dtype), ddt.to(delta.dtype), dA.sum(0).to(A.dtype), dB.sum(1).transpose(1, 2).to(B.dtype),
                dC.sum(1).transpose(1, 2).to(C.dtype), dD.sum(0).to(D.dtype) if D is not None else None,
                dz.to(z.dtype) if z is not None else None,
                dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None, None, None, None)


def triton_cdiv(a, b):
    return -(-a // b)

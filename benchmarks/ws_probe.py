"""Probe: does triton 3.6's warp specialisation (``tl.range(..., warp_specialize=True)``) speed
up FlashAttention-2 loops on Hopper? Three minimal kernels (MHA, K pre-scaled by
scale * log2(e), every tile read through device-side TMA descriptors): dK/dV (one program per
key tile, a loop over query tiles), the forward and dQ (one program per query tile, a loop over
key tiles). Each is
checked against a float32 reference, then timed with and without warp specialisation at the
configs the generated kernels use and their 4-warp twins.

    python benchmarks/ws_probe.py [--bh 32] [--n 8192] [--dtype bf16] [--kernels dkdv,fwd,dq]
        [--configs "64,128,4,2 ..."] [--variant host,ptr_rows]

--variant makes the dK/dV probe more like the generated kernel, one difference at a time (the
generated kernel's first warp-specialised variant hung on an H200 where the probe ran; "host"
compiles to the same cause: see the results).

What compiling for sm_90 showed: warp specialisation applies at 4 warps only (8 is silently
ignored; 4 become 12: a producer group and two consumer groups that split the tile); K and V
must come through descriptors (pointer loads before the loop assert in the compiler); one
specialised loop per kernel (a masked loop followed by an unmasked one asserts), so the causal
variants run a single loop with the mask on every tile; param gathers in the loop (document ids,
a bias table) assert too. The dQ probe does not compile specialised at all: its Lse and Delta
rows, needed before the loop, assert as pointer loads and hit an "Unexpected op" in the data
partitioner as a [1, BLOCK_M] descriptor load reshaped to a column; its unspecialised rows time
the baseline. Results on an H200: benchmarks/results/2026-11-30-h200-warp-specialize.md
(some configs return NaNs, cf. triton-lang/triton#8311: the check runs first, and a row whose
error is nan is wrong). On the CPU (``TRITON_INTERPRET=1``, fp16, small sizes) only the check
runs.
"""

from __future__ import annotations

import argparse
import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _rows(base, rows, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A device-built TMA descriptor of [rows, HEAD_DIM] (contiguous) in boxes of BLOCK rows."""
    return tl.make_tensor_descriptor(base, shape=[rows, HEAD_DIM], strides=[HEAD_DIM, 1],
                                     block_shape=[BLOCK, HEAD_DIM])


@triton.jit
def _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, Lse, Delta, head, lo, hi,
                 offs_n, seq, BLOCK_M: tl.constexpr, MASK: tl.constexpr, WS: tl.constexpr,
                 HOST: tl.constexpr, PTR_ROWS: tl.constexpr):
    """dK, dV over query tiles [lo, hi) (tiles held transposed: keys along rows)."""
    for start_m in tl.range(lo, hi, BLOCK_M, warp_specialize=WS):
        if HOST:  # [1, heads, seq, D] descriptors built on the host (as the generated kernels)
            q = tl.reshape(q_desc.load([0, head, start_m, 0]), (BLOCK_M, k.shape[1]))
            do = tl.reshape(do_desc.load([0, head, start_m, 0]), (BLOCK_M, k.shape[1]))
        else:
            q = q_desc.load([head * seq + start_m, 0])
            do = do_desc.load([head * seq + start_m, 0])
        if PTR_ROWS:  # pointer loads in the loop (as the generated kernels)
            lse = tl.load(Lse + head * seq + start_m + tl.arange(0, BLOCK_M))[None, :]
            delta = tl.load(Delta + head * seq + start_m + tl.arange(0, BLOCK_M))[None, :]
        else:
            lse = lse_desc.load([head, start_m])  # [1, BLOCK_M], log2 units
            delta = delta_desc.load([head, start_m])
        p = tl.math.exp2(tl.dot(k, tl.trans(q)) - lse)
        if MASK:  # causal: query position >= key position
            p = tl.where((start_m + tl.arange(0, BLOCK_M))[None, :] >= offs_n[:, None], p, 0.0)
        dv += tl.dot(p.to(do.dtype), do)
        ds = p * (tl.dot(v, tl.trans(do)) - delta)
        dk += tl.dot(ds.to(q.dtype), q)
    return dk, dv


@triton.jit
def dkdv_probe(Q, K, V, DO, Lse, Delta, DK, DV, HostQ, HostDO, HostK, HostV, seq, heads,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
               WS: tl.constexpr, CAUSAL: tl.constexpr, HOST: tl.constexpr = False,
               PTR_ROWS: tl.constexpr = False):
    """Q, K, V, DO: [heads * seq, HEAD_DIM] (K pre-scaled by scale * log2(e)); Lse, Delta:
    [heads, seq] (Lse in log2 units). HOST: tiles through the host-built descriptors Host*
    (else built on the device); PTR_ROWS: Lse and Delta by pointer (else by descriptor)."""
    pid_n = tl.program_id(0)
    head = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = head * seq + offs_n
    k_desc = _rows(K, heads * seq, BLOCK_N, HEAD_DIM)
    v_desc = _rows(V, heads * seq, BLOCK_N, HEAD_DIM)
    if HOST:
        k = tl.reshape(HostK.load([0, head, pid_n * BLOCK_N, 0]), (BLOCK_N, HEAD_DIM))
        v = tl.reshape(HostV.load([0, head, pid_n * BLOCK_N, 0]), (BLOCK_N, HEAD_DIM))
        q_desc, do_desc = HostQ, HostDO
    else:
        k = k_desc.load([head * seq + pid_n * BLOCK_N, 0])
        v = v_desc.load([head * seq + pid_n * BLOCK_N, 0])
        q_desc = _rows(Q, heads * seq, BLOCK_M, HEAD_DIM)
        do_desc = _rows(DO, heads * seq, BLOCK_M, HEAD_DIM)
    lse_desc = tl.make_tensor_descriptor(Lse, shape=[heads, seq], strides=[seq, 1], block_shape=[1, BLOCK_M])
    delta_desc = tl.make_tensor_descriptor(Delta, shape=[heads, seq], strides=[seq, 1], block_shape=[1, BLOCK_M])
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    if not CAUSAL:
        dk, dv = _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, Lse,
                              Delta, head, 0, seq, offs_n, seq, BLOCK_M, False, WS, HOST, PTR_ROWS)
    elif WS:  # one loop: the mask on every tile
        dk, dv = _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, Lse,
                              Delta, head, pid_n * BLOCK_N, seq, offs_n, seq, BLOCK_M, True, WS,
                              HOST, PTR_ROWS)
    else:  # the diagonal tiles masked, the rest not (as the generated kernel splits them)
        lo = pid_n * BLOCK_N
        dk, dv = _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, Lse,
                              Delta, head, lo, lo + BLOCK_N, offs_n, seq, BLOCK_M, True, False,
                              HOST, PTR_ROWS)
        dk, dv = _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, Lse,
                              Delta, head, lo + BLOCK_N, seq, offs_n, seq, BLOCK_M, False, False,
                              HOST, PTR_ROWS)
    tl.store(DK + rows[:, None] * HEAD_DIM + offs_d[None, :], dk.to(DK.dtype.element_ty))
    tl.store(DV + rows[:, None] * HEAD_DIM + offs_d[None, :], dv.to(DV.dtype.element_ty))


@triton.jit
def _key_tiles(acc, l_i, m_i, q, k_desc, v_desc, head, lo, hi, offs_m, seq,
               BLOCK_N: tl.constexpr, MASK: tl.constexpr, WS: tl.constexpr):
    """Online softmax over key tiles [lo, hi) (K pre-scaled: scores in log2 units)."""
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
        k = k_desc.load([head * seq + start_n, 0])
        v = v_desc.load([head * seq + start_n, 0])
        s = tl.dot(q, tl.trans(k))
        if MASK:  # causal: query position >= key position
            s = tl.where(offs_m[:, None] >= (start_n + tl.arange(0, BLOCK_N))[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def fwd_probe(Q, K, V, Out, seq, heads, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              HEAD_DIM: tl.constexpr, WS: tl.constexpr, CAUSAL: tl.constexpr):
    """Q, K, V, Out: [heads * seq, HEAD_DIM] (K pre-scaled by scale * log2(e))."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest first
    head = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q_desc = _rows(Q, heads * seq, BLOCK_M, HEAD_DIM)
    k_desc = _rows(K, heads * seq, BLOCK_N, HEAD_DIM)
    v_desc = _rows(V, heads * seq, BLOCK_N, HEAD_DIM)
    o_desc = _rows(Out, heads * seq, BLOCK_M, HEAD_DIM)
    q = q_desc.load([head * seq + pid_m * BLOCK_M, 0])
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if not CAUSAL:
        acc, l_i, m_i = _key_tiles(acc, l_i, m_i, q, k_desc, v_desc, head, 0, seq, offs_m, seq,
                                   BLOCK_N, False, WS)
    elif WS:  # one loop: the mask on every tile
        acc, l_i, m_i = _key_tiles(acc, l_i, m_i, q, k_desc, v_desc, head, 0,
                                   (pid_m + 1) * BLOCK_M, offs_m, seq, BLOCK_N, True, WS)
    else:  # unmasked tiles, then the diagonal ones masked
        lo = pid_m * BLOCK_M
        acc, l_i, m_i = _key_tiles(acc, l_i, m_i, q, k_desc, v_desc, head, 0, lo, offs_m, seq,
                                   BLOCK_N, False, False)
        acc, l_i, m_i = _key_tiles(acc, l_i, m_i, q, k_desc, v_desc, head, lo, lo + BLOCK_M,
                                   offs_m, seq, BLOCK_N, True, False)
    o_desc.store([head * seq + pid_m * BLOCK_M, 0], (acc / l_i[:, None]).to(Out.dtype.element_ty))


@triton.jit
def _key_tiles_dq(dq, q, do, lse, delta, k_desc, v_desc, head, lo, hi, offs_m, seq,
                  BLOCK_N: tl.constexpr, MASK: tl.constexpr, WS: tl.constexpr):
    """dQ over key tiles [lo, hi) (K pre-scaled: the result is dQ of the pre-scaled K)."""
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
        k = k_desc.load([head * seq + start_n, 0])
        v = v_desc.load([head * seq + start_n, 0])
        p = tl.math.exp2(tl.dot(q, tl.trans(k)) - lse)
        if MASK:  # causal: query position >= key position
            p = tl.where(offs_m[:, None] >= (start_n + tl.arange(0, BLOCK_N))[None, :], p, 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta)
        dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def dq_probe(Q, K, V, DO, Lse, Delta, DQ, seq, heads, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, WS: tl.constexpr,
             CAUSAL: tl.constexpr):
    """As dkdv_probe, one program per query tile: dQ (of scores in log2 units, so d(q . k2)
    with k2 = K pre-scaled)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest first
    head = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = _rows(Q, heads * seq, BLOCK_M, HEAD_DIM)
    grads = _rows(DO, heads * seq, BLOCK_M, HEAD_DIM)
    k_desc = _rows(K, heads * seq, BLOCK_N, HEAD_DIM)
    v_desc = _rows(V, heads * seq, BLOCK_N, HEAD_DIM)
    # Lse and Delta by TMA (pointer loads before the loop assert): rows of [heads, seq]
    lse_desc = tl.make_tensor_descriptor(Lse, shape=[heads, seq], strides=[seq, 1], block_shape=[1, BLOCK_M])
    delta_desc = tl.make_tensor_descriptor(Delta, shape=[heads, seq], strides=[seq, 1], block_shape=[1, BLOCK_M])
    lse = tl.reshape(lse_desc.load([head, pid_m * BLOCK_M]), (BLOCK_M, 1))  # log2 units
    delta = tl.reshape(delta_desc.load([head, pid_m * BLOCK_M]), (BLOCK_M, 1))
    q = rows.load([head * seq + pid_m * BLOCK_M, 0])
    do = grads.load([head * seq + pid_m * BLOCK_M, 0])
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if not CAUSAL:
        dq = _key_tiles_dq(dq, q, do, lse, delta, k_desc, v_desc, head, 0, seq, offs_m, seq,
                           BLOCK_N, False, WS)
    elif WS:  # one loop: the mask on every tile
        dq = _key_tiles_dq(dq, q, do, lse, delta, k_desc, v_desc, head, 0, (pid_m + 1) * BLOCK_M,
                           offs_m, seq, BLOCK_N, True, WS)
    else:  # unmasked tiles, then the diagonal ones masked
        lo = pid_m * BLOCK_M
        dq = _key_tiles_dq(dq, q, do, lse, delta, k_desc, v_desc, head, 0, lo, offs_m, seq,
                           BLOCK_N, False, False)
        dq = _key_tiles_dq(dq, q, do, lse, delta, k_desc, v_desc, head, lo, lo + BLOCK_M, offs_m,
                           seq, BLOCK_N, True, False)
    out = _rows(DQ, heads * seq, BLOCK_M, HEAD_DIM)
    out.store([head * seq + pid_m * BLOCK_M, 0], dq.to(DQ.dtype.element_ty))


def inputs(heads: int, seq: int, head_dim: int, dtype: torch.dtype, device: str, causal: bool):
    """Q, K (pre-scaled), V, dO in ``dtype``, and Lse (log2 units), Delta; and the float32
    references: Out, and dK, dV of the pre-scaled K."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(heads, seq, head_dim, generator=gen) for _ in range(4))
    k = k * head_dim ** -0.5 * LOG2E
    q, k, v, do = (t.to(device, dtype) for t in (q, k, v, do))
    s = q.float() @ k.float().transpose(1, 2)  # log2 units
    if causal:
        s = s.masked_fill(torch.ones(seq, seq, dtype=torch.bool, device=device).triu(1), -math.inf)
    lse = torch.logsumexp(s * math.log(2), -1) / math.log(2)
    p = torch.exp2(s - lse[..., None])
    out = p @ v.float()
    delta = (out * do.float()).sum(-1)
    dv = p.transpose(1, 2) @ do.float()
    ds = p * (do.float() @ v.float().transpose(1, 2) - delta[..., None])
    dk = ds.transpose(1, 2) @ q.float()
    dq = ds @ k.float()
    flat = lambda t: t.reshape(heads * seq, head_dim)  # noqa: E731
    return (flat(q), flat(k), flat(v), flat(do), lse.contiguous(), delta.contiguous()), \
        {"fwd": (out,), "dkdv": (dk, dv), "dq": (dq,)}


def launcher(kernel, args, heads, seq, config, ws, causal, variant=()):
    """A launch of the probe ``kernel`` ("fwd", "dkdv" or "dq") and its outputs; ``variant`` (dK/dV):
    "host" (host-built descriptors), "ptr_rows" (Lse and Delta by pointer)."""
    block_m, block_n, warps, stages = config
    q, k, v, do, lse, delta = args
    meta = dict(BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=q.shape[1], WS=ws, CAUSAL=causal,
                num_warps=warps, num_stages=stages)
    if kernel == "fwd":
        out = torch.empty_like(q)

        def run():
            fwd_probe[(seq // block_m, heads)](q, k, v, out, seq, heads, **meta)
        return run, (out,)
    if kernel == "dq":
        dq = torch.empty_like(q)

        def run():
            dq_probe[(seq // block_m, heads)](q, k, v, do, lse, delta, dq, seq, heads, **meta)
        return run, (dq,)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    host = [None] * 4
    if "host" in variant:
        from triton.tools.tensor_descriptor import TensorDescriptor

        host = [TensorDescriptor.from_tensor(t.view(1, heads, seq, -1), [1, 1, b, t.shape[1]])
                for t, b in ((q, block_m), (do, block_m), (k, block_n), (v, block_n))]
    meta.update(HOST="host" in variant, PTR_ROWS="ptr_rows" in variant)

    def run():
        dkdv_probe[(seq // block_n, heads)](q, k, v, do, lse, delta, dk, dv, *host, seq, heads,
                                             **meta)
    return run, (dk, dv)


CONFIGS = {  # (BLOCK_M, BLOCK_N, warps, stages): the generated kernels' and Flex's, 4-warp twins
    "fwd": [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 4, 2), (128, 128, 4, 3), (128, 64, 4, 3),
            (64, 128, 4, 3)],
    "dkdv": [(64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 2), (64, 128, 4, 3), (32, 128, 4, 2),
             (64, 128, 8, 3)],
    "dq": [(128, 64, 8, 3), (64, 64, 4, 2), (128, 64, 4, 2), (128, 64, 4, 3), (128, 128, 4, 2)],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bh", type=int, default=32, help="batch * heads of the timed case")
    parser.add_argument("--n", type=int, default=8192, help="sequence length of the timed case")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--kernels", default="dkdv,fwd,dq")
    parser.add_argument("--variant", default="", help="dkdv: comma list of host, ptr_rows (how "
                        "the generated kernel differs from the probe)")
    parser.add_argument("--configs", default="", help="m,n,warps,stages ... (default: CONFIGS)")
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                 device=device))
    check_seq = 256 if gpu else 64
    print(f"{'kernel':6} {'causal':6} {'config':16} {'ws':5} {'rel err':>8} {'ms':>8} "
          f"{'TFLOP/s':>8}")
    for kernel in args.kernels.split(","):
        configs = [tuple(int(x) for x in c.split(",")) for c in args.configs.split()] or \
            CONFIGS[kernel]
        configs = configs if gpu else [(32, 32, 4, 1)]
        variant = tuple(v for v in args.variant.split(",") if v)
        for causal in (False, True):
            small, refs = inputs(2, check_seq, 128, dtype, device, causal)
            big = inputs(args.bh, args.n, 128, dtype, device, causal)[0] if gpu else None
            for config in configs:
                for ws in (False, True):
                    try:
                        run, outs = launcher(kernel, small, 2, check_seq, config, ws, causal,
                                             variant)
                        run()
                        err = max(((x.float().reshape(r.shape) - r).abs().max()
                                   / r.abs().max()).item() for x, r in zip(outs, refs[kernel]))
                        ms = flops = math.nan
                        if gpu:
                            run, _ = launcher(kernel, big, args.bh, args.n, config, ws, causal,
                                              variant)
                            ms = triton.testing.do_bench(run, warmup=50, rep=300)
                            flops = {"fwd": 4, "dkdv": 8, "dq": 6}[kernel] * args.bh * args.n ** 2 * 128 \
                                * (0.5 if causal else 1.0)
                        print(f"{kernel:6} {causal!s:6} {str(config):16} {ws!s:5} {err:8.1e} "
                              f"{ms:8.3f} {flops / ms / 1e9:8.0f}", flush=True)
                    except Exception as error:  # a config the compiler refuses: not fatal
                        print(f"{kernel:6} {causal!s:6} {str(config):16} {ws!s:5} FAIL "
                              f"{type(error).__name__}: {str(error)[:100]}", flush=True)


if __name__ == "__main__":
    main()

"""Probe: does triton 3.6's warp specialisation (``tl.range(..., warp_specialize=True)``) speed
up a FlashAttention-2 dK/dV loop on Hopper? A minimal dK/dV kernel (MHA, one program per key tile
of one head, a loop over query tiles; K, V, Q, dO, LSE and Delta read through device-side TMA
descriptors) is checked against a float32 reference, then timed with and without warp
specialisation at the configs our generated dK/dV kernel uses. Its answer decides whether the
generated dK/dV kernel (templates/bwd.py.jinja) should get a warp-specialised variant.

    python benchmarks/ws_probe.py [--bh 32] [--n 8192] [--dtype bf16]

What compiling for sm_90 showed (2026-11-30, no GPU): warp specialisation applies at 4 warps
only (8 is silently ignored); K and V must come through descriptors (pointer loads before the
loop assert in the compiler); one specialised loop per kernel (a masked loop followed by an
unmasked one asserts), so the causal variant runs a single loop with the mask on every tile.
triton-lang/triton#8311 reports wrong results with warp_specialize: the check below runs first.
On the CPU (``TRITON_INTERPRET=1``, fp16, small sizes) only the check runs.
"""

from __future__ import annotations

import argparse
import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, head, lo, hi, offs_n, seq,
                 BLOCK_M: tl.constexpr, MASK: tl.constexpr, WS: tl.constexpr):
    """dK, dV over query tiles [lo, hi) (tiles held transposed: keys along rows)."""
    for start_m in tl.range(lo, hi, BLOCK_M, warp_specialize=WS):
        q = q_desc.load([head * seq + start_m, 0])
        do = do_desc.load([head * seq + start_m, 0])
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
def dkdv_probe(Q, K, V, DO, Lse, Delta, DK, DV, seq, heads, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, WS: tl.constexpr,
               CAUSAL: tl.constexpr):
    """Q, K, V, DO: [heads * seq, HEAD_DIM] (K pre-scaled by scale * log2(e)); Lse, Delta:
    [heads, seq] (Lse in log2 units)."""
    pid_n = tl.program_id(0)
    head = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = head * seq + offs_n
    k_desc = tl.make_tensor_descriptor(K, shape=[heads * seq, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM])
    v_desc = tl.make_tensor_descriptor(V, shape=[heads * seq, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM])
    k = k_desc.load([head * seq + pid_n * BLOCK_N, 0])
    v = v_desc.load([head * seq + pid_n * BLOCK_N, 0])
    q_desc = tl.make_tensor_descriptor(Q, shape=[heads * seq, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_M, HEAD_DIM])
    do_desc = tl.make_tensor_descriptor(DO, shape=[heads * seq, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_M, HEAD_DIM])
    lse_desc = tl.make_tensor_descriptor(Lse, shape=[heads, seq], strides=[seq, 1], block_shape=[1, BLOCK_M])
    delta_desc = tl.make_tensor_descriptor(Delta, shape=[heads, seq], strides=[seq, 1], block_shape=[1, BLOCK_M])
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    if not CAUSAL:
        dk, dv = _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, head, 0, seq,
                              offs_n, seq, BLOCK_M, False, WS)
    elif WS:  # one loop: the mask on every tile
        dk, dv = _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, head,
                              pid_n * BLOCK_N, seq, offs_n, seq, BLOCK_M, True, WS)
    else:  # the diagonal tiles masked, the rest not (as the generated kernel splits them)
        lo = pid_n * BLOCK_N
        dk, dv = _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, head, lo,
                              lo + BLOCK_N, offs_n, seq, BLOCK_M, True, False)
        dk, dv = _query_tiles(dk, dv, k, v, q_desc, do_desc, lse_desc, delta_desc, head,
                              lo + BLOCK_N, seq, offs_n, seq, BLOCK_M, False, False)
    tl.store(DK + rows[:, None] * HEAD_DIM + offs_d[None, :], dk.to(DK.dtype.element_ty))
    tl.store(DV + rows[:, None] * HEAD_DIM + offs_d[None, :], dv.to(DV.dtype.element_ty))


def inputs(heads: int, seq: int, head_dim: int, dtype: torch.dtype, device: str, causal: bool):
    """Q, K (pre-scaled), V, dO in ``dtype``, and Lse (log2 units), Delta and the reference dK,
    dV of the pre-scaled K (float32)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(heads, seq, head_dim, generator=gen) for _ in range(4))
    k = k * head_dim ** -0.5 * LOG2E
    q, k, v, do = (t.to(device, dtype) for t in (q, k, v, do))
    s = q.float() @ k.float().transpose(1, 2)  # log2 units
    if causal:
        s = s.masked_fill(torch.ones(seq, seq, dtype=torch.bool, device=device).triu(1), -math.inf)
    lse = torch.logsumexp(s * math.log(2), -1) / math.log(2)
    p = torch.exp2(s - lse[..., None])
    delta = ((p @ v.float()) * do.float()).sum(-1)
    dv = p.transpose(1, 2) @ do.float()
    dk = (p * (do.float() @ v.float().transpose(1, 2) - delta[..., None])).transpose(1, 2) @ q.float()
    flat = lambda t: t.reshape(heads * seq, head_dim)  # noqa: E731
    return (flat(q), flat(k), flat(v), flat(do), lse.contiguous(), delta.contiguous()), (dk, dv)


def launcher(args, heads, seq, config, ws, causal):
    block_m, block_n, warps, stages = config
    q, k, v, do, lse, delta = args
    dk, dv = torch.empty_like(k), torch.empty_like(v)

    def run():
        dkdv_probe[(seq // block_n, heads)](q, k, v, do, lse, delta, dk, dv, seq, heads,
                                             BLOCK_M=block_m, BLOCK_N=block_n,
                                             HEAD_DIM=q.shape[1], WS=ws, CAUSAL=causal,
                                             num_warps=warps, num_stages=stages)
    return run, dk, dv


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bh", type=int, default=32, help="batch * heads of the timed case")
    parser.add_argument("--n", type=int, default=8192, help="sequence length of the timed case")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                 device=device))
    configs = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 2), (64, 128, 4, 3), (32, 128, 4, 2)]
    if not gpu:
        configs = [(16, 32, 4, 1)]
    check_seq = 256 if gpu else 64
    print(f"{'causal':6} {'config':14} {'ws':5} {'rel err':>8} {'ms':>8} {'TFLOP/s':>8}")
    for causal in (False, True):
        small, (ref_dk, ref_dv) = inputs(2, check_seq, 128, dtype, device, causal)
        big = inputs(args.bh, args.n, 128, dtype, device, causal)[0] if gpu else None
        for config in configs:
            for ws in (False, True):
                try:
                    run, dk, dv = launcher(small, 2, check_seq, config, ws, causal)
                    run()
                    err = max(((x.float().reshape(r.shape) - r).abs().max() / r.abs().max()).item()
                              for x, r in ((dk, ref_dk), (dv, ref_dv)))
                    ms = flops = math.nan
                    if gpu:
                        run, _, _ = launcher(big, args.bh, args.n, config, ws, causal)
                        ms = triton.testing.do_bench(run, warmup=50, rep=300)
                        flops = 4 * 2 * args.bh * args.n ** 2 * 128 * (0.5 if causal else 1.0)
                    print(f"{causal!s:6} {str(config):14} {ws!s:5} {err:8.1e} {ms:8.3f} "
                          f"{flops / ms / 1e9:8.0f}", flush=True)
                except Exception as error:  # a config the compiler refuses: reported, not fatal
                    print(f"{causal!s:6} {str(config):14} {ws!s:5} FAIL {type(error).__name__}: "
                          f"{str(error)[:100]}", flush=True)


if __name__ == "__main__":
    main()

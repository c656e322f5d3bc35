"""GPU check of block masks (masks the static analysis cannot bound): bf16 numerics with a block
mask against float64, and speed beside FlexAttention's BlockMask on the same mask, one process.

    python benchmarks/block_mask.py [--out DIR]

The mask: causal & keep[h, q // 128, kv // 128] != 0, a per-head table of 128-token blocks
(diagonal blocks kept, others with probability 0.3), B=2 H=16 N=8192 D=128 bf16. attngen runs it
with a block mask (op.block_mask, once per batch) and without one (every causal tile visited,
the mask evaluated per element); FlexAttention compiled (dynamic=False) with create_block_mask.
Writes block_mask.json under --out and prints a table last. FLOPs count only the kept fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import attngen  # noqa: E402
from attngen.testing import mean_abs_error, within_rule  # noqa: E402

SPEC = """attention routed {
    param  keep: i32[H, 64, 64]
    mask   causal & keep[h, q // 128, kv // 128] != 0
}"""


def table_of(heads: int, generator: torch.Generator) -> torch.Tensor:
    keep = (torch.rand(heads, 64, 64, generator=generator) < 0.3).int()
    keep[:, torch.arange(64), torch.arange(64)] = 1  # no fully masked rows
    return keep


def numerics(op) -> list[dict]:
    """bf16 out, lse and grads with a block mask within 1.1x the bf16 eager error (float64 golden)."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for B, Hq, Hkv, N, D in ((1, 4, 4, 1000, 128), (2, 8, 2, 777, 64), (1, 4, 1, 239, 128)):
        keep = table_of(Hq, gen).cuda()
        q, k, v = (torch.randn(B, h, N, D, generator=gen).cuda() for h in (Hq, Hkv, Hkv))
        d_out = torch.randn(B, Hq, N, D, generator=gen).cuda()
        mask = op.block_mask(B, Hq, N, N, heads_kv=Hkv, keep=keep)

        def run(fn, dtype, **kw):
            x = [t.to(dtype).requires_grad_() for t in (q, k, v)]
            out, lse = fn(*x, keep=keep, return_lse=True, **kw)
            grads = torch.autograd.grad(out, x, d_out.to(dtype))
            return dict(out=out, lse=lse, dq=grads[0], dk=grads[1], dv=grads[2])

        gold = run(op.reference, torch.float64)
        eager = run(op.reference, torch.bfloat16)
        ours = run(op, torch.bfloat16, block_mask=mask)
        row = dict(B=B, Hq=Hq, Hkv=Hkv, N=N, D=D, density=round(mask.density, 3))
        for key in gold:
            err, ref = mean_abs_error(ours[key], gold[key]), mean_abs_error(eager[key], gold[key])
            row[f"{key}_err"], row[f"{key}_ref_err"] = err, ref
            row[f"{key}_ok"] = within_rule(err, ref)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def speed(op) -> list[dict]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from triton.testing import do_bench

    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    flex = torch.compile(flex_attention, dynamic=False)
    B, H, N, D = 2, 16, 8192, 128
    keep = table_of(H, torch.Generator().manual_seed(1)).cuda()
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    d_out = torch.randn_like(q)

    def flex_mask(b, h, i, j):
        return (j <= i) & (keep[h, i // 128, j // 128] != 0)

    timed = lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median")  # noqa: E731
    mask = op.block_mask(B, H, N, N, keep=keep)
    torch.cuda.synchronize()
    setup_ms = timed(lambda: op.block_mask(B, H, N, N, keep=keep))
    start = time.time()
    flex_block = create_block_mask(flex_mask, 1, H, N, N, device="cuda")
    torch.cuda.synchronize()
    flex_first = time.time() - start
    flex_setup_ms = timed(lambda: create_block_mask(flex_mask, 1, H, N, N, device="cuda"))
    visited = mask.density  # the fraction of blocks the kernels visit
    pos = torch.arange(N, device="cuda")
    frac = sum(((pos[:, None] >= pos[None, :]) & (keep[h][pos // 128][:, pos // 128] != 0))
               .float().mean().item() for h in range(H)) / H  # kept elements
    flop = 4 * B * H * N * N * D * frac
    impls = {
        "attngen_block_mask": lambda: op(q, k, v, keep=keep, block_mask=mask),
        "attngen_no_block_mask": lambda: op(q, k, v, keep=keep),
        "flex": lambda: flex(q, k, v, block_mask=flex_block),
    }
    rows = [dict(case="setup", attngen_block_mask_ms=round(setup_ms, 4),
                 flex_create_block_mask_ms=round(flex_setup_ms, 4),
                 flex_first_call_s=round(flex_first, 3), visited_blocks=round(visited, 4),
                 kept_fraction=round(frac, 4))]
    print(json.dumps(rows[-1]), flush=True)
    outs = {}
    for name, fn in impls.items():
        outs[name] = fn()
        torch.cuda.synchronize()
        fwd = timed(fn)
        both = timed(lambda: torch.autograd.grad(fn(), (q, k, v), d_out))
        rows.append(dict(case="routed", impl=name, B=B, H=H, N=N, D=D, fwd_ms=round(fwd, 4),
                         bwd_ms=round(both - fwd, 4), fwd_tflops=round(flop / fwd / 1e9, 1),
                         bwd_tflops=round(2.5 * flop / (both - fwd) / 1e9, 1)))
        print(json.dumps(rows[-1]), flush=True)
    diff = (outs["attngen_block_mask"].float() - outs["flex"].float()).abs().max().item()
    rows.append(dict(case="agreement", max_abs_diff_vs_flex=diff))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    op = attngen.load(SPEC)
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=__import__("triton").__version__, python=platform.python_version(),
                date=str(date.today()))
    print(meta, flush=True)
    checks = numerics(op)
    rows = speed(op)
    (out_dir / "block_mask.json").write_text(json.dumps(
        {"meta": meta, "numerics": checks, "rows": rows}, indent=1))
    fields = ("out", "lse", "dq", "dk", "dv")
    passed = sum(r[f"{f}_ok"] for r in checks for f in fields)
    worst = max((r[f"{f}_err"] / max(r[f"{f}_ref_err"], 1e-9), f, r["N"]) for r in checks
                for f in fields)
    setup = rows[0]
    print(f"\nnumerics: {passed}/{len(checks) * len(fields)} within 1.1x bf16 eager error "
          f"(worst ratio {worst[0]:.3f}: {worst[1]} N={worst[2]})")
    print(f"setup per call: attngen block_mask {setup['attngen_block_mask_ms']:.3f} ms, Flex "
          f"create_block_mask {setup['flex_create_block_mask_ms']:.3f} ms (first call "
          f"{setup['flex_first_call_s']:.2f} s); visited blocks {setup['visited_blocks']:.3f}, "
          f"kept elements {setup['kept_fraction']:.3f}")
    print("| impl | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |\n|---|---|---|---|---|")
    for r in rows:
        if "fwd_ms" in r:
            print(f"| {r['impl']} | {r['fwd_ms']:.3f} | {r['fwd_tflops']} | {r['bwd_ms']:.3f} | "
                  f"{r['bwd_tflops']} |")
    print(f"max |attngen - flex| (bf16 out): {rows[-1]['max_abs_diff_vs_flex']:.4f}")


if __name__ == "__main__":
    main()

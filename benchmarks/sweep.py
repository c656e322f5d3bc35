"""Time every launch config of a wide space for the forward and backward kernels of a spec, on a
GPU, through Triton's autotuner (its do_bench timings), to choose the default spaces.

    python benchmarks/sweep.py --spec examples/llama.attn --shape 4,16,4096,128
    python benchmarks/sweep.py --spec examples/encoder.attn --shape 1,16,16384,128 --top 8

Prints, per kernel, the configs from fastest to slowest (ms and TFLOP/s of that kernel's share).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402

import attngen  # noqa: E402
from attngen.testing import random_params  # noqa: E402

SPACES = {
    "fwd": dict(m=(64, 128), n=(32, 64, 128), warps=(4, 8), stages=(2, 3)),
    "bwd_dkdv": dict(m=(32, 64, 128), n=(64, 128), warps=(4, 8), stages=(2, 3)),
    "bwd_dq": dict(m=(64, 128), n=(32, 64, 128), warps=(4, 8), stages=(2, 3)),
}


def inputs(op, B: int, H: int, N: int, D: int, H_kv: int | None = None):
    """Random bf16 q [B, H, N, D] and k, v [B, H_kv (default H), N, D] (requiring grad) and
    params: ALiBi slopes as in the papers, 8 equal documents for a `doc` table."""
    H_kv = H if H_kv is None else H_kv
    gen = torch.Generator().manual_seed(0)
    params = random_params(op.spec, B, H, H_kv, N, N, "cuda", gen)
    if "slopes" in params:
        params["slopes"] = torch.exp2(-8.0 * (torch.arange(H, device="cuda") + 1) / H)
    if "doc" in params:
        params["doc"] = ((torch.arange(N, device="cuda") * 8) // N).to(torch.int32).expand(B, N)
    q, k, v = (torch.randn(B, heads, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for heads in (H, H_kv, H_kv))
    return q, k, v, params


def parse_shape(text: str) -> tuple[int, ...]:
    """"B,H,N,D" or "B,H,N,D,Hkv" (GQA: Hkv kv heads) -> a tuple of ints."""
    shape = tuple(int(x) for x in text.split(","))
    if len(shape) not in (4, 5):
        raise SystemExit(f"--shape: expected B,H,N,D or B,H,N,D,Hkv, got {text!r}")
    return shape


def configs(space: dict, pre_hook=None) -> list:
    """The space's configs, with the kernel's pre-hook (the forward's sets its TMA boxes)."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s,
                          pre_hook=pre_hook)
            for m, n, w, s in itertools.product(space["m"], space["n"], space["warps"],
                                                space["stages"])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--shape", required=True, help="B,H,N,D or B,H,N,D,Hkv")
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--kernels", default="fwd,bwd_dkdv,bwd_dq")
    args = parser.parse_args()
    shape = parse_shape(args.shape)
    B, H, N, D = shape[:4]
    op = attngen.load(args.spec)
    q, k, v, params = inputs(op, *shape)
    wanted = args.kernels.split(",")
    kernels = {name: getattr(op.module, f"{op.name}_{name}") for name in wanted}
    for name, kernel in kernels.items():
        kernel.configs = configs(SPACES[name], kernel.configs[0].pre_hook)
        kernel.cache.clear()
    # each kernel's timings must be read right after it tuned: run the pieces one at a time
    results = {}
    out = op(q, k, v, **params)
    torch.cuda.synchronize()
    if "fwd" in kernels:
        results["fwd"] = dict(kernels["fwd"].configs_timings)
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
    for name in ("bwd_dkdv", "bwd_dq"):
        if name in kernels:
            results[name] = dict(kernels[name].configs_timings)
    causal = op.spec.mask_text != "all"
    flop = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
    share = {"fwd": 1.0, "bwd_dkdv": 2.5 * 0.6, "bwd_dq": 2.5 * 0.4}  # rough split of bwd FLOPs
    rows = []
    for name, timings in results.items():
        ranked = sorted(timings.items(), key=lambda kv: kv[1][0] if isinstance(kv[1], list)
                        else kv[1])
        print(f"== {op.name} {name} B,H,N,D[,Hkv]={args.shape}: {len(ranked)} configs")
        for config, t in ranked[:args.top]:
            ms = t[0] if isinstance(t, list) else t
            print(f"  {ms:8.4f} ms  {share[name] * flop / ms / 1e9:6.1f} TFLOP/s  "
                  f"m={config.kwargs['BLOCK_M']} n={config.kwargs['BLOCK_N']} "
                  f"w={config.num_warps} s={config.num_stages}")
        rows += [dict(spec=op.name, kernel=name, N=N, D=D, m=c.kwargs["BLOCK_M"],
                      n=c.kwargs["BLOCK_N"], warps=c.num_warps, stages=c.num_stages,
                      ms=t[0] if isinstance(t, list) else t) for c, t in ranked]
    print("JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()

"""Document masks beyond 8 aligned documents, on a GPU: kernel times (profiler) of the packed_docs
forward, dQ and dK/dV for several layouts of documents, per variant of the generated module
(copies of generated/packed_docs.py, as benchmarks/ab.py takes them), in turn over --rounds,
and FlexAttention's forward and backward call times on the same masks (--flex).

    python benchmarks/doc_layouts.py generated/packed_docs.py [/tmp/edited.py ...] [--flex]

Layouts at B=2 H=16 N=8192 D=128 bf16: 8 documents of 1024 tokens (tile-aligned), the same
shifted by 37 tokens (every boundary inside a query tile), 32 and 128 documents of random
lengths. Fixed configs (--fwd, --dq, --dkdv: m,n,warps,stages) so that variants compare like for
like; dK/dV runs its tuned config unless --dkdv is given. Prints a table last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402

from ab import load_variant  # noqa: E402

B, H, N, D = 2, 16, 8192, 128
KERNELS = ("packed_docs_fwd", "packed_docs_bwd_dq", "packed_docs_bwd_dkdv")


def layouts(seed: int = 0) -> dict[str, list[int]]:
    """Document lengths (summing to N) per layout name."""
    gen = torch.Generator().manual_seed(seed)

    def random_lengths(count: int) -> list[int]:
        cuts = torch.sort(torch.randperm(N - 1, generator=gen)[: count - 1] + 1).values.tolist()
        edges = [0, *cuts, N]
        return [b - a for a, b in zip(edges, edges[1:])]

    return {"aligned8": [1024] * 8, "shifted8": [1024 + 37] + [1024] * 6 + [1024 - 37],
            "random32": random_lengths(32), "random128": random_lengths(128)}


def ids_of(lengths: list[int]) -> torch.Tensor:
    ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return ids.to(device="cuda", dtype=torch.int32).expand(B, N).contiguous()


def fix_config(module, kernel: str, config: tuple[int, ...]) -> None:
    autotuner = getattr(module, kernel)
    m, n, warps, stages = config
    autotuner.configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps,
                                       num_stages=stages, pre_hook=autotuner.configs[0].pre_hook)]
    autotuner.cache.clear()


def kernel_ms(step, iters: int = 20) -> dict[str, float]:
    """Device ms per step of each of the packed_docs kernels (profiler)."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / 1000 / iters for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.key in KERNELS}


def flex_ms(q, k, v, d_out, ids: torch.Tensor) -> tuple[float, float]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from triton.testing import do_bench

    flex = torch.compile(flex_attention, dynamic=False)
    doc = ids[0].long()
    mask = create_block_mask(lambda b, h, i, j: (doc[i] == doc[j]) & (i >= j), 1, 1, N, N,
                             device="cuda")
    fwd = lambda: flex(q, k, v, block_mask=mask)  # noqa: E731
    fwd()
    f = do_bench(fwd, warmup=25, rep=200, return_mode="median")
    fb = do_bench(lambda: torch.autograd.grad(fwd(), (q, k, v), d_out), warmup=25, rep=200,
                  return_mode="median")
    return f, fb - f


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="+", help="copies of generated/packed_docs.py")
    parser.add_argument("--fwd", default="64,64,4,3", help="forward config m,n,warps,stages")
    parser.add_argument("--dq", default="64,64,4,2", help="dQ config m,n,warps,stages")
    parser.add_argument("--dkdv", default=None,
                        help="dK/dV config m,n,warps,stages (default: the tuned one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flex", action="store_true", help="also time FlexAttention")
    args = parser.parse_args()
    modules = {path: load_variant(path) for path in args.variants}
    for module in modules.values():
        fix_config(module, KERNELS[0], tuple(int(x) for x in args.fwd.split(",")))
        fix_config(module, KERNELS[1], tuple(int(x) for x in args.dq.split(",")))
        if args.dkdv:
            fix_config(module, KERNELS[2], tuple(int(x) for x in args.dkdv.split(",")))
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    d_out = torch.randn_like(q)
    docs = {name: ids_of(lengths) for name, lengths in layouts().items()}
    times: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for name, ids in docs.items():
            for path, module in modules.items():
                def step(module=module, ids=ids):
                    out = module.packed_docs(q, k, v, doc=ids)
                    torch.autograd.grad(out, (q, k, v), d_out)
                times.setdefault((name, path), []).append(kernel_ms(step))
    flex = {name: flex_ms(q, k, v, d_out, ids) for name, ids in docs.items()} if args.flex else {}
    print(f"packed_docs B={B} H={H} N={N} D={D} bf16 ({torch.cuda.get_device_name()}), "
          f"fwd {args.fwd}, dQ {args.dq}, dK/dV {args.dkdv or 'tuned'}, median of {args.rounds} rounds")
    print("| layout | documents | variant | fwd ms | dQ ms | dK/dV ms | Flex fwd / bwd ms |")
    print("|---|---|---|---|---|---|---|")
    for (name, path), rounds in times.items():
        med = [statistics.median(r.get(kern, float("nan")) for r in rounds) for kern in KERNELS]
        peer = "{:.4f} / {:.4f}".format(*flex[name]) if name in flex else "-"
        print(f"| {name} | {len(layouts()[name])} | {path} | {med[0]:.4f} | {med[1]:.4f} | "
              f"{med[2]:.4f} | {peer} |")


if __name__ == "__main__":
    main()

"""Where the time of one attention call goes, on a GPU: the config each kernel's autotuner kept
(with the timings it compared), each kernel's device time in a profiled forward + backward, and
the op's forward and forward + backward medians (so host overhead and gaps show as the rest).

    python benchmarks/breakdown.py --spec examples/packed_docs.attn --shape 2,16,8192,128
    python benchmarks/breakdown.py --spec examples/llama.attn --shape 2,16,8192,128 --top 4
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import attngen  # noqa: E402
from sweep import inputs, parse_shape  # noqa: E402


def _label(config) -> str:
    blocks = " ".join(f"{k[6:].lower()}={v}" for k, v in config.kwargs.items())
    return f"{blocks} w={config.num_warps} s={config.num_stages}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--shape", required=True, help="B,H,N,D or B,H,N,D,Hkv")
    parser.add_argument("--top", type=int, default=3, help="autotuner timings shown per kernel")
    parser.add_argument("--iters", type=int, default=20, help="profiled forward + backward calls")
    args = parser.parse_args()
    shape = parse_shape(args.shape)
    B, H, N, D = shape[:4]
    op = attngen.load(args.spec)
    q, k, v, params = inputs(op, *shape)
    d_out = torch.randn_like(q)
    call = lambda: op(q, k, v, **params)  # noqa: E731
    step = lambda: torch.autograd.grad(call(), (q, k, v), d_out)  # noqa: E731
    step()  # autotunes every kernel
    torch.cuda.synchronize()

    print(f"== {op.name} B,H,N,D[,Hkv]={args.shape} ({torch.cuda.get_device_name()})")
    for name in sorted(vars(op.module)):
        kernel = getattr(op.module, name)
        if isinstance(kernel, triton.runtime.Autotuner) and kernel.cache:
            for key, best in kernel.cache.items():
                # timings exist only when Triton benchmarked (not for seeded keys), and for
                # its latest key
                timings = sorted((t[0] if isinstance(t, list) else t, _label(c)) for c, t in
                                 (getattr(kernel, "configs_timings", None) or {}).items())
                shown = ", ".join(f"{label} {ms:.4f}" for ms, label in timings[:args.top])
                print(f"{name}: kept {_label(best)}; autotuner ms: {shown or '-'}")

    fwd_ms = do_bench(call, warmup=50, rep=300, return_mode="median")
    both_ms = do_bench(step, warmup=50, rep=300, return_mode="median")
    device = defaultdict(float)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.iters):
            step()
        torch.cuda.synchronize()
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            device[event.key] += event.device_time_total / 1000 / args.iters
    print("| kernel | device ms per call |\n|---|---|")
    for name, ms in sorted(device.items(), key=lambda kv: -kv[1]):
        print(f"| {name[:60]} | {ms:.4f} |")
    print(f"op forward {fwd_ms:.4f} ms, forward + backward {both_ms:.4f} ms (backward "
          f"{both_ms - fwd_ms:.4f}), device total {sum(device.values()):.4f} ms")


if __name__ == "__main__":
    main()

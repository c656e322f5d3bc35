"""A/B timing of kernel variants in one process, on a GPU: each variant is a copy of a generated
module (`attngen build`, then edit the copy); every (variant, config) pair runs the op's forward
(and backward) and reports, from the profiler, one kernel's device time and all kernels' (sums),
and the call's median (do_bench: where kernels overlap or the host lags, it differs from the
sum). Same process, same inputs, fixed configs: differences are the edits, not the autotuner or
the machine's mood.

    cp generated/llama.py /tmp/a.py; cp generated/llama.py /tmp/b.py   # then edit /tmp/b.py
    python benchmarks/ab.py --spec examples/llama.attn --kernel llama_bwd_dkdv \
        --configs 64,64,4,2 32,64,4,2 --shape 2,16,8192,128 /tmp/a.py /tmp/b.py

Configs are BLOCK_M,BLOCK_N,num_warps,num_stages[,maxnreg] (one that does not fit reports nan;
maxnreg caps the registers per thread, e.g. to fit more programs per SM). With --rounds R the
pairs are timed R times in turn (A B A B ...) and each reports its median and range: a drift of
the GPU's clock over the run lands on every pair alike. With one round, the first pair runs
again at the end: the difference between its two timings is the noise floor of the run.
Each pair also reports its error against the spec's float64 reference over the eager reference's
in the same dtype (at the shape's batch and heads, length 1000): above ~1.1 the pair is wrong.
(From the launch plans of commit aac9310 until runtime._still_chosen, a variant's later configs
reused the first one's compiled kernel at the timed shape: the config comparisons of
results/2026-11-30-h200-warp-specialize.md timed its first config only; ab.py now checks.)
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import attngen  # noqa: E402
from sweep import inputs, parse_shape  # noqa: E402


def load_variant(path: str):
    spec = importlib.util.spec_from_file_location(f"variant_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its torch.library ops get free names (runtime.free_op_name)
    return module


def kernel_ms(module, kernel: str, config: tuple, op, shape, backward: bool,
              iters: int) -> tuple[float, float, float]:
    """Device ms per call of `kernel` with one fixed config and of all kernels of the call
    (forward, and backward when `kernel` is a backward one), from the profiler, and the call's
    median ms (do_bench)."""
    autotuner = getattr(module, kernel)
    m, n, warps, stages, *maxnreg = config
    autotuner.configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps,
                                       num_stages=stages, maxnreg=(maxnreg or [None])[0],
                                       pre_hook=autotuner.configs[0].pre_hook)]
    autotuner.cache.clear()
    q, k, v, params = inputs(op, *shape)
    d_out = torch.randn_like(q)
    fn = getattr(module, module.NAME)

    def step():
        out = fn(q, k, v, **params)
        if backward:
            torch.autograd.grad(out, (q, k, v), d_out)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    if autotuner.best_config is not autotuner.configs[0]:  # the launch took another config
        raise RuntimeError(f"{kernel} launched {autotuner.best_config}, not {config}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    times = [e.device_time_total for e in events if e.key == kernel]
    total = sum(e.device_time_total for e in events) / 1000 / iters
    wall = do_bench(step, warmup=10, rep=100, return_mode="median")
    return (times[0] / 1000 / iters if times else float("nan")), total, wall


def error_ratio(module, op, shape, backward: bool) -> float:
    """The worst of out's (and dq's, dk's, dv's) mean errors against the spec's float64
    reference over the eager reference's in the inputs' dtype, at ``shape`` with its length cut
    to 1000 (ragged tiles): above ~1.1 the config computes something else (run after kernel_ms
    fixed it)."""
    B, H, N, D, *hkv = shape
    q, k, v, params = inputs(op, B, H, min(N, 1000), D, *hkv)
    d_out = torch.randn_like(q)

    def run(fn, cast):
        leaves = [x.detach().to(cast).requires_grad_(backward) for x in (q, k, v)]
        out = fn(*leaves, **params)
        grads = torch.autograd.grad(out, leaves, d_out.to(cast)) if backward else ()
        return [x.detach().double() for x in (out, *grads)]

    gold = run(op.reference, torch.float64)
    eager = run(op.reference, q.dtype)
    kern = run(getattr(module, module.NAME), q.dtype)
    return max(float((a - g).abs().mean()) / max(float((e - g).abs().mean()), 1e-6)
               for a, e, g in zip(kern, eager, gold))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="+", help="edited copies of the spec's generated module")
    parser.add_argument("--spec", required=True, help="the spec the variants were generated from")
    parser.add_argument("--kernel", required=True, help="e.g. llama_fwd, llama_bwd_dkdv")
    parser.add_argument("--configs", nargs="+", required=True,
                        help="m,n,warps,stages[,maxnreg] ...")
    parser.add_argument("--shape", default="2,16,8192,128", help="B,H,N,D or B,H,N,D,Hkv")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="time every pair this many times, "
                        "in turn, and report medians")
    args = parser.parse_args()
    shape = parse_shape(args.shape)
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs]
    op = attngen.load(args.spec)
    backward = "_bwd_" in args.kernel
    modules = {path: load_variant(path) for path in args.variants}

    def timed(path, config, check=True):
        try:
            times = kernel_ms(modules[path], args.kernel, config, op, shape, backward, args.iters)
            return (*times, error_ratio(modules[path], op, shape, backward) if check else None)
        except Exception as err:  # e.g. out of shared memory: the other configs still run
            print(f"{path} {config}: {type(err).__name__}: {str(err)[:200]}", flush=True)
            return (float("nan"),) * 4

    pairs = [(path, c) for path in args.variants for c in configs]
    runs = {pair: [timed(*pair)] for pair in pairs}
    for _ in range(args.rounds - 1):
        for pair in pairs:
            runs[pair].append(timed(*pair, check=False))
    if args.rounds == 1:
        again = timed(*pairs[0], check=False)
    print(f"{args.kernel} B,H,N,D[,Hkv]={args.shape} ({torch.cuda.get_device_name()}), "
          f"{args.rounds} round(s)")
    print("| variant | config (m, n, warps, stages[, maxnreg]) | kernel ms | range | all kernels ms "
          "| call ms | error / eager's |\n|---|---|---|---|---|---|---|")
    for pair in pairs:
        times = runs[pair]
        ms, total, wall = (statistics.median(t[i] for t in times) for i in range(3))
        spread = f"{min(t[0] for t in times):.4f}-{max(t[0] for t in times):.4f}"
        print(f"| {pair[0]} | {pair[1]} | {ms:.4f} | {spread} | {total:.4f} | {wall:.4f} "
              f"| {times[0][3]:.2f} |")
    if args.rounds == 1:
        print(f"noise: first pair again {again[0]:.4f} ms ({runs[pairs[0]][0][0]:.4f} first)")


if __name__ == "__main__":
    main()

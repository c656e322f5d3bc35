"""Host time per eager call (Python, checks, dispatch, launches) of a decode step and a small
forward, on a GPU, and where it goes (cProfile of the decode step or of the training step; or,
with --pieces, each layer of an 8-document forward's launch timed alone in a tight loop).

    python benchmarks/host_overhead.py [--top 30] [--profile decode|train] [--pieces]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import attngen  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def per_call_us(fn, calls: int = 300) -> float:
    """Host microseconds per call: the GPU work is tiny, so the loop is host-bound."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--profile", choices=("decode", "train"), default="decode",
                        help="the call to profile: a decode step, or forward + backward (8 docs)")
    parser.add_argument("--pieces", action="store_true",
                        help="time the layers of one forward launch alone, then stop")
    args = parser.parse_args()
    if args.pieces:
        pieces()
        return
    op = attngen.load(EXAMPLES / "llama.attn")
    dt = torch.bfloat16
    q = torch.randn(8, 32, 1, 128, device="cuda", dtype=dt)
    k, v = (torch.randn(8, 8, 512, 128, device="cuda", dtype=dt) for _ in range(2))
    kv_len = torch.full((8,), 512, device="cuda", dtype=torch.int32)
    qf, kf, vf = (torch.randn(1, 8, 128, 128, device="cuda", dtype=dt) for _ in range(3))
    m = op.module
    splits = m.runtime.decode_splits(m._decode_shapes(q, k, None), q.device, None)
    direct = (q, k, v, kv_len, None, 128**-0.5, splits, [])
    cases = {
        "decode": lambda: op.decode(q, k, v),
        "decode, the launches": lambda: m._decode_impl(*direct),
        "decode, torch.library": lambda: m._DECODE_OP(*direct),
        "decode kv_len": lambda: op.decode(q, k, v, kv_len=kv_len),
        "forward 128": lambda: op(qf, kf, vf),
        "empty kernel launch": None,
    }
    import triton
    import triton.language as tl

    @triton.jit
    def _nothing(x):
        pass

    cases["empty kernel launch"] = lambda: _nothing[(1,)](q)
    # a training step's host work: forward + backward with a document mask (4 launches)
    docs = attngen.load(EXAMPLES / "packed_docs.attn")
    qd, kd, vd = (torch.randn(2, 4, 256, 128, device="cuda", dtype=dt, requires_grad=True)
                  for _ in range(3))
    ids = ((torch.arange(256, device="cuda") * 8) // 256).to(torch.int32).expand(2, 256).contiguous()
    d_out = torch.randn_like(qd)
    cases["fwd + bwd, 8 docs"] = lambda: torch.autograd.grad(docs(qd, kd, vd, doc=ids),
                                                             (qd, kd, vd), d_out)
    for name, fn in cases.items():
        print(f"{name:22} {per_call_us(fn):8.1f} us per call", flush=True)
    # the same step with the autotuned kernels' launches (Triton's autotuner, binder and
    # launcher) replaced by nothing: what is left is attngen's Python, torch and autograd
    launch = docs.module._launch
    docs.module._launch = lambda *args, **kwargs: None
    try:  # (the backward's preprocess and the document runs still launch)
        print(f"{'  without autotuned':22} {per_call_us(cases['fwd + bwd, 8 docs']):8.1f} us per call")
    finally:
        docs.module._launch = launch
    profiled = (lambda: op.decode(q, k, v)) if args.profile == "decode" else \
        cases["fwd + bwd, 8 docs"]
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(300):
        profiled()
    profile.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(profile)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


def pieces() -> None:
    """Each layer of an 8-document forward call (B=1 H=2 N=128 D=128), from the op down to the
    launcher, timed alone: the GPU work is tiny, so every loop is host-bound."""
    from attngen import runtime

    op = attngen.load(EXAMPLES / "packed_docs.attn")
    m = op.module
    q, k, v = (torch.randn(1, 2, 128, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ids = ((torch.arange(128, device="cuda") * 8) // 128).to(torch.int32).expand(1, 128).contiguous()
    params = {"doc": ids}
    shapes, tensors = m._prepare(q, k, v, params)
    launched = []
    launch = runtime.launch
    runtime.launch = lambda *a: launched.append(a) or launch(*a)  # the forward's arguments
    try:
        op(q, k, v, doc=ids)
        op(q, k, v, doc=ids)  # the second launch goes through a plan
    finally:
        runtime.launch = launch
    kernel, grid, launch_args, flags = launched[-1]
    plan = next(iter(kernel.attngen_plans.values()))
    device = runtime._current_device()
    cases = {
        "op(q, k, v, doc=ids)": lambda: op(q, k, v, doc=ids),
        "module function": lambda: m.packed_docs(q, k, v, doc=ids),
        "_prepare (checks)": lambda: m._prepare(q, k, v, params),
        "_attention_fwd": lambda: m._attention_fwd(q, k, v, 0.1, list(tensors.values()), [], 0, 0),
        "_launch_fwd": lambda: m._launch_fwd(q, k, v, 0.1, tensors, shapes),
        "runtime.launch": lambda: runtime.launch(kernel, grid, launch_args, flags),
        "runtime._call_key": lambda: runtime._call_key(launch_args),
        "runtime._run_plan": lambda: runtime._run_plan(kernel, plan, grid, launch_args, device),
        "tma_descriptors(q, k, v)": lambda: runtime.tma_descriptors(q, k, v),
    }
    for name, fn in cases.items():
        print(f"{name:26} {per_call_us(fn, 2000):8.2f} us per call", flush=True)


if __name__ == "__main__":
    main()

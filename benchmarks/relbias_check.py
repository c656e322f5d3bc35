"""A learnt relative-position bias (examples/t5_bias.attn) on a GPU: bf16 correctness of out, dq,
dk, dv and the table's gradient against float64 (FlexAttention's rule: mean error over the bf16
eager reference's), for generated modules (variants: edited copies, as in ab.py) and
FlexAttention with the same score_mod; then each module's forward + backward time (the table
learnt) and its top kernels from the profiler.

    python benchmarks/relbias_check.py generated/t5_bias.py /tmp/edited.py \
        --dq-config 64,64,4,2 --lengths 4096,8192 --out /tmp/relbias

Flex's backward with a learnt table runs out of shared memory at D=128 with its default
options; it is retried with kernel_options={"num_stages": 1}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402
from torch.nn.attention.flex_attention import flex_attention  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import attngen  # noqa: E402
from ab import load_variant  # noqa: E402

SPEC = Path(__file__).resolve().parents[1] / "examples" / "t5_bias.attn"
TABLE = 257


def inputs(B, H, N, D, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, d_out = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                      for _ in range(4))
    return q, k, v, torch.randn(H, TABLE, device="cuda", generator=gen), d_out


class Flex:
    """FlexAttention with the same score_mod; ``fallback`` switches to one pipeline stage."""

    def __init__(self):
        self.flex = torch.compile(flex_attention, dynamic=False)
        self.options = None

    def __call__(self, q, k, v, table):
        def score_mod(score, b, h, i, j):
            return score + table[h, torch.clamp(j - i + 128, 0, TABLE - 1)]
        return self.flex(q, k, v, score_mod=score_mod, kernel_options=self.options)

    def fallback(self) -> bool:
        if self.options is not None:
            return False
        self.options = {"num_stages": 1}
        torch._dynamo.reset()
        print("flex: default options failed; kernel_options num_stages=1", flush=True)
        return True


def retried(fn, thunk):
    """thunk(), once more after fn's fallback where it has one (Flex compiles on first use)."""
    try:
        return thunk()
    except Exception:
        if not getattr(fn, "fallback", lambda: False)():
            raise
        return thunk()


def grads(fn, q, k, v, table, d_out, dtype):
    """out, dq, dk, dv, dtable in float64, computed in ``dtype`` (the table stays fp32)."""
    def run():
        leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        t = table.detach().float().requires_grad_()
        out = fn(*leaves, t)
        return [x.detach().double()
                for x in (out, *torch.autograd.grad(out, [*leaves, t], d_out.to(dtype)))]
    return retried(fn, run)


def timed(fn, shape) -> dict:
    q, k, v, table, d_out = inputs(*shape)
    q, k, v, table = (x.requires_grad_() for x in (q, k, v, table))

    def step():
        torch.autograd.grad(fn(q, k, v, table), (q, k, v, table), d_out)

    retried(fn, step)
    torch.cuda.synchronize()
    both = do_bench(step, warmup=5, rep=60, return_mode="median")
    fwd = do_bench(lambda: fn(q, k, v, table.detach()), warmup=5, rep=60, return_mode="median")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    kernels = sorted(((e.key[:48], e.device_time_total / 3000) for e in prof.key_averages()
                      if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda x: -x[1])
    return dict(fwd_bwd_ms=both, fwd_ms=fwd, bwd_ms=both - fwd, kernels=kernels[:4])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", default=["generated/t5_bias.py"])
    parser.add_argument("--dq-config", default="", help="m,n,warps,stages for the learnt dQ")
    parser.add_argument("--lengths", default="4096,8192")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    op = attngen.load(SPEC)
    impls = {}
    for path in args.variants:
        module = load_variant(path)
        if args.dq_config:
            m, n, w, s = (int(x) for x in args.dq_config.split(","))
            tuner = module.t5_bias_bwd_dq
            tuner.configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w,
                                           num_stages=s, pre_hook=tuner.configs[0].pre_hook)]
        impls[path] = lambda q, k, v, t, fn=getattr(module, module.NAME): fn(q, k, v, table=t)
    if not args.no_flex:
        impls["flex"] = Flex()

    rows = []
    q, k, v, table, d_out = inputs(2, 4, 1000, 128, seed=1)
    reference = lambda q, k, v, t: op.reference(q, k, v, table=t)  # noqa: E731
    gold = grads(reference, q, k, v, table, d_out, torch.float64)
    eager = grads(reference, q, k, v, table, d_out, torch.bfloat16)
    for name, fn in impls.items():
        got = grads(fn, q, k, v, table, d_out, torch.bfloat16)
        ratios = [float((a - g).abs().mean()) / max(float((e - g).abs().mean()), 1e-7)
                  for a, e, g in zip(got, eager, gold)]
        rows.append(dict(kind="correctness", impl=name, ratios=ratios))
        print(f"{name}: error / eager's out, dq, dk, dv, dtable = "
              + ", ".join(f"{r:.2f}" for r in ratios), flush=True)
    for N in (int(x) for x in args.lengths.split(",")):
        for name, fn in impls.items():
            row = dict(kind="time", impl=name, shape=(2, 16, N, 128), **timed(fn, (2, 16, N, 128)))
            rows.append(row)
            print(f"{name} N={N}: forward {row['fwd_ms']:.3f} ms, backward {row['bwd_ms']:.3f}; "
                  + "; ".join(f"{k} {t:.3f}" for k, t in row["kernels"]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "relbias-check.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

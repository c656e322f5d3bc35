"""GPU check: bf16/fp16 numerics of every example against float64, and forward speed beside
SDPA (flash, cuDNN) and compiled FlexAttention, all in one process.

    python benchmarks/gpu_check.py correctness      # the test matrix, FlexAttention's rule
    python benchmarks/gpu_check.py bench            # forward TFLOP/s table
    python benchmarks/gpu_check.py sparsity         # window / document masks against dense causal
    python benchmarks/gpu_check.py decode           # decode GB/s beside SDPA and FlexAttention
    python benchmarks/gpu_check.py all

    # the matrix at chosen head dims, one subprocess per (spec, head dim), 12 at a time
    python benchmarks/gpu_check.py correctness --head-dims 32,96,192 --gqa 4:4,8:4,8:2,8:1 --jobs 12
    # decode out/LSE against float64 at chosen head dims (no timing)
    python benchmarks/gpu_check.py decode --numerics-only --head-dims 32,96,192

Writes JSON under $OUT (or --out) and prints a short table last. FLOPs follow FlashAttention:
fwd = 4·B·H·M·N·D times the kept fraction of the score matrix (1/2 when causal).
"""

from __future__ import annotations

import argparse
import glob
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
from attngen.runtime import Shapes  # noqa: E402
from attngen.testing import mean_abs_error, random_params, within_rule  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# small windows/chunks so the masks bite at test lengths
INLINE = {
    "window7": "attention window7 { mask causal & window(7) }",
    "window5_3": "attention window5_3 { mask window(5, 3) }",
    "chunk16": "attention chunk16 { mask causal & chunk(16) }",
    "softcap": "attention softcap { score 30.0 * tanh(score / 30.0)\n mask causal }",
}
SHAPES = [(1, 1), (3, 3), (17, 17), (113, 113), (239, 239), (1, 239), (17, 113), (113, 203),
          (239, 1), (1023, 1024)]
GQA = [(4, 4), (8, 2), (8, 1)]
DEVICE = os.environ.get("ATTNGEN_CHECK_DEVICE", "cuda")  # "cpu" smoke-tests this script
HEAD_DIMS = [16, 32, 64, 80, 96, 128, 192]  # the reliability issue's matrix (256: gemma2_local)


def load_all():
    ops = [attngen.load(p) for p in sorted(glob.glob(str(EXAMPLES / "*.attn")))]
    ops += [attngen.load(text) for text in INLINE.values()]
    return ops


def check_case(op, dtype, B, Hq, Hkv, M, N, D, gen, backward=True):
    """Errors of out, lse (and dq, dk, dv, param grads) against a float64 golden, next to the
    errors of the eager reference run in ``dtype``; ok when every kernel error is within the rule."""
    dev = DEVICE
    # inputs are rounded to the kernel's dtype first, so errors measure arithmetic only
    q = torch.randn(B, Hq, M, D, generator=gen).to(dev, dtype)
    k = torch.randn(B, Hkv, N, D, generator=gen).to(dev, dtype)
    v = torch.randn(B, Hkv, N, D, generator=gen).to(dev, dtype)
    params = random_params(op.spec, B, Hq, Hkv, M, N, dev, gen)
    grad_params = [p.name for p in op.spec.params if p.grad] if backward else []
    d_out = torch.randn(B, Hq, M, D, generator=gen).to(dev, dtype)

    def run(fn, cast):
        leaves = [x.detach().to(cast).requires_grad_(backward) for x in (q, k, v)]
        ps = {n: (t.detach().clone().requires_grad_() if n in grad_params else t)
              for n, t in params.items()}
        out, lse = fn(*leaves, return_lse=True, **ps)
        results = {"out": out, "lse": lse}
        if backward and out.numel():
            grads = torch.autograd.grad(out, [*leaves, *(ps[n] for n in grad_params)],
                                        d_out.to(cast), allow_unused=True)
            results.update(zip(["dq", "dk", "dv", *(f"d{n}" for n in grad_params)], grads))
        return results

    gold = run(op.reference, torch.float64)
    ref = run(op.reference, dtype)
    kern = run(op, dtype)
    errs = {name: (mean_abs_error(kern[name], gold[name]), mean_abs_error(ref[name], gold[name]))
            for name in gold if gold[name] is not None}
    # FlexAttention's rule covers out, lse, dq, dk, dv; param gradients are reported beside it
    # (delta = rowsum(dO * O) uses the rounded O, an error that sums coherently over a param)
    ok = all(within_rule(kernel, eager) for name, (kernel, eager) in errs.items()
             if name in ("out", "lse", "dq", "dk", "dv"))
    return ok, errs


QUICK_SHAPES = [(1, 1), (17, 17), (239, 239), (1, 239), (113, 203), (239, 1), (1023, 1024)]


def spec_dims(op, quick: bool = False, head_dims: list[int] | None = None) -> list[int]:
    """The head dims to check a spec at: --head-dims where the spec takes them (a spec with a
    fixed head_dim outside them is skipped: []), else the spec's own, else the matrix's."""
    if head_dims:
        return [d for d in head_dims if not op.spec.head_dims or d in op.spec.head_dims]
    return list(op.spec.head_dims or ([64, 128] if quick else HEAD_DIMS))


def correctness(out_dir: Path, only: set[str] | None, quick: bool = False,
                head_dims: list[int] | None = None, gqa=None, name: str | None = None,
                dtypes: list[str] | None = None) -> list[dict]:
    """The numerics matrix; dtypes given: each over the whole matrix (default: bf16 over the
    whole matrix, fp16 over a slice)."""
    os.environ["ATTNGEN_AUTOTUNE"] = "0"  # one config per shape bucket keeps compiles bounded
    rows, gen = [], torch.Generator().manual_seed(0)
    t0 = saved = time.time()
    path = out_dir / (name or f"correctness{'-' + '-'.join(sorted(only)) if only else ''}.json")
    for op in load_all():
        if only and op.name not in only:
            continue
        dims = spec_dims(op, quick, head_dims)
        for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            if dtype_name not in op.spec.dtypes or (dtypes and dtype_name not in dtypes):
                continue
            for (M, N) in QUICK_SHAPES if quick else SHAPES:
                for (Hq, Hkv) in gqa or GQA:
                    for D in dims:
                        if not dtypes and dtype == torch.float16 and ((Hq, Hkv) != (8, 2) or D not in (64, 256)):
                            continue  # fp16: a slice; bf16 gets the whole matrix
                        case = dict(spec=op.name, dtype=dtype_name, M=M, N=N, Hq=Hq, Hkv=Hkv, D=D)
                        try:
                            ok, errs = check_case(op, dtype, 2, Hq, Hkv, M, N, D, gen)
                            rows.append(dict(**case, ok=ok,
                                             **{f"{k}_err": e[0] for k, e in errs.items()},
                                             **{f"{k}_ref_err": e[1] for k, e in errs.items()}))
                        except Exception as err:  # recorded as a failure; the matrix goes on
                            rows.append(dict(**case, ok=False, error=repr(err)[:500]))
                        if not rows[-1]["ok"]:
                            print("FAIL", rows[-1], flush=True)
                        if time.time() - saved > 10:  # partial results survive a kill
                            path.write_text(json.dumps(rows, indent=1))
                            saved = time.time()
        print(f"{op.name}: {sum(r['ok'] for r in rows if r['spec'] == op.name)}/"
              f"{sum(r['spec'] == op.name for r in rows)} ok ({time.time() - t0:.0f}s)", flush=True)
    path.write_text(json.dumps(rows, indent=1))
    return rows


def run_shards(shards: list[tuple[str, list[str]]], jobs: int, deadline: float | None) -> tuple[list, list]:
    """Runs ``gpu_check.py <argv> --out <tmp>`` for each (label, argv), ``jobs`` at a time (the
    Triton compiles are CPU-bound; the GPU has room for many processes). Returns the rows of the
    JSON files they wrote (a list, or a dict's "rows") and one status line per shard; a shard
    still running ``deadline`` seconds after the start is killed and its partial rows kept."""
    import subprocess
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))

    def one(i_shard):
        i, (label, argv) = i_shard
        out = tmp / f"shard{i}"
        out.mkdir()
        left = None if deadline is None else deadline - (time.time() - start)
        if left is not None and left <= 1:
            return [], f"{label}: not started (deadline)", ""
        log = out / "log.txt"
        t = time.time()
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv,
                                     "--out", str(out)], stdout=f, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=left)
                status = f"exit {rc}"
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                status = "KILLED at the deadline (partial)"
        rows = []
        for p in sorted(out.glob("*.json")):
            data = json.loads(p.read_text())
            rows += data["rows"] if isinstance(data, dict) else data
        text = log.read_text()
        print("\n".join(f"[{label}] {line}" for line in text.splitlines()), flush=True)
        return rows, f"{label}: {status}, {len(rows)} rows, {time.time() - t:.0f}s", text

    rows, statuses = [], []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for r, status, _ in pool.map(one, enumerate(shards)):
            rows += r
            statuses.append(status)
    print(f"shards done in {time.time() - start:.0f}s", flush=True)
    return rows, statuses


def correctness_summary(rows: list[dict]) -> list[str]:
    bad = [r for r in rows if not r["ok"]]
    lines = [f"correctness: {len(rows) - len(bad)}/{len(rows)} cases pass "
             f"(kernel mean error <= 1.1 x bf16/fp16 eager error + 1e-5 for out, lse, "
             f"dq, dk, dv; param grads reported beside)"]
    errors = [r for r in rows if "error" in r]
    if errors:
        lines.append(f"cases that raised: {len(errors)} (first: {errors[0]})")
    by = {}
    for r in rows:
        key = (r["spec"], r["dtype"], r["D"])
        by.setdefault(key, [0, 0])
        by[key][0] += r["ok"]
        by[key][1] += 1
    lines.append("| spec | dtype | D | pass |")
    lines.append("|---|---|---|---|")
    lines += [f"| {s} | {dt} | {d} | {ok}/{n} |" for (s, dt, d), (ok, n) in sorted(by.items())]
    fields = sorted({k[:-4] for r in rows for k in r if k.endswith("_err")
                     and not k.endswith("_ref_err")})
    for field in fields:
        have = [r for r in rows if f"{field}_err" in r]
        if not have:
            continue
        ratio = lambda r: r[f"{field}_err"] / max(r[f"{field}_ref_err"], 1e-9)  # noqa: E731
        worst = max(have, key=ratio)
        lines.append(f"worst {field} error / eager error: {ratio(worst):.3f} ({worst['spec']} "
                     f"{worst['dtype']} M={worst['M']} N={worst['N']} Hq={worst['Hq']} "
                     f"Hkv={worst['Hkv']} D={worst['D']}; err {worst[f'{field}_err']:.3g}, "
                     f"eager {worst[f'{field}_ref_err']:.3g})")
    return lines


def determinism(repeats: int = 20) -> list[str]:
    """deterministic=True: identical gradients over repeated backward passes."""
    lines, gen = [], torch.Generator().manual_seed(1)
    for spec, grad_param in (("llama", None), ("alibi", "slopes"), ("packed_docs", None)):
        op = attngen.load(EXAMPLES / f"{spec}.attn")
        B, H, N, D = 2, 8, 1000, 128
        q, k, v = (torch.randn(B, H, N, D, generator=gen).to("cuda", torch.bfloat16)
                   .requires_grad_() for _ in range(3))
        params = random_params(op.spec, B, H, H, N, N, "cuda", gen)
        leaves = [q, k, v]
        if grad_param:
            params[grad_param].requires_grad_()
            leaves.append(params[grad_param])
        d_out = torch.randn(B, H, N, D, generator=gen).to("cuda", torch.bfloat16)
        first = None
        same = True
        for _ in range(repeats):
            out = op(q, k, v, deterministic=True, **params)
            grads = torch.autograd.grad(out, leaves, d_out)
            if first is None:
                first = grads
            same &= all(torch.equal(a, b) for a, b in zip(first, grads))
        lines.append(f"deterministic {spec}: {repeats} backward passes "
                     f"{'bitwise identical' if same else 'DIFFER'}")
    return lines


# ---- speed ------------------------------------------------------------------------------------

def bench_cases(quick: bool = False):
    """(case, mode, B, H, N, D, attngen spec, kept fraction)"""
    cases = []
    for D, N in ((128, 4096), (128, 16384)) if quick else ((128, 4096), (128, 16384), (64, 4096)):
        B, H = max(1, 16384 // N), 2048 // D
        cases.append(("fwd", "full", B, H, N, D, "encoder", 1.0))
        cases.append(("fwd", "causal", B, H, N, D, "llama", 0.5))
    N, B, H, D = 8192, 2, 16, 128
    w = 1024
    cases.append(("fwd", "window1024", B, H, N, D, "attention w { mask causal & window(1023) }",
                  (w * N - w * (w - 1) / 2) / (N * N)))
    cases.append(("fwd", "doc8", B, H, N, D, "packed_docs", 0.5 / 8))
    cases.append(("fwd", "softcap", B, H, N, D, INLINE["softcap"], 0.5))
    cases.append(("fwd", "alibi", B, H, N, D, "alibi", 0.5))
    return cases


SPARSITY_CASES = [  # B=2 H=16 N=8192 D=128: dense causal, a window and 8 documents
    ("fwd", "causal", 2, 16, 8192, 128, "llama", 0.5),
    ("fwd", "window1024", 2, 16, 8192, 128, "attention w { mask causal & window(1023) }",
     (1024 * 8192 - 1024 * 1023 / 2) / 8192**2),
    ("fwd", "doc8", 2, 16, 8192, 128, "packed_docs", 0.5 / 8),
]


def sparsity(out_dir: Path) -> list[str]:
    """Forward/backward of the window and 8-document masks against dense causal scaled by the
    kept fraction (target: within 1.3x), and the per-call setup of a document mask (attngen's
    runs kernel) beside FlexAttention's create_block_mask on the same mask."""
    from torch.nn.attention.flex_attention import create_block_mask
    from triton.testing import do_bench

    rows = bench(out_dir, cases=SPARSITY_CASES, name="sparsity")
    B, H, N, D = 2, 16, 8192, 128
    dev = "cuda"
    op = attngen.load(EXAMPLES / "packed_docs.attn")
    doc = ((torch.arange(N, device=dev) * 8) // N).to(torch.int32).expand(B, N).contiguous()
    shapes = Shapes(B, H, H, N, N, D)
    def build_runs():  # a new ids tensor every call: the runs kernel always runs
        op.module._RUNS["doc"].put(doc.clone(), None)  # forget the last ids
        return op.module._documents({"doc": doc}, shapes)

    setup_ms = do_bench(build_runs, warmup=25, rep=200, return_mode="median")
    reuse_ms = do_bench(lambda: op.module._documents({"doc": doc}, shapes), warmup=25, rep=200,
                        return_mode="median")
    doc64 = doc[0].long()
    mask = lambda b, h, i, j: (doc64[i] == doc64[j]) & (i >= j)  # noqa: E731
    start = time.time()
    create_block_mask(mask, 1, 1, N, N, device=dev)
    torch.cuda.synchronize()
    flex_first = time.time() - start
    flex_ms = do_bench(lambda: create_block_mask(mask, 1, 1, N, N, device=dev), warmup=5, rep=50,
                       return_mode="median")
    setup = dict(case="doc8_setup", attngen_ms=round(setup_ms, 4), attngen_reuse_ms=round(reuse_ms, 4),
                 flex_ms=round(flex_ms, 3),
                 flex_first_call_s=round(flex_first, 3))
    rows.append(setup)
    (out_dir / "sparsity.json").write_text(json.dumps({"meta": _meta(), "rows": rows}, indent=1))
    times = {(r["mode"], r["impl"]): r for r in rows if "fwd_ms" in r}
    causal = times[("causal", "attngen")]
    lines = [table(rows), "",
             f"document-mask setup per call: attngen {setup_ms * 1000:.1f} us (reused across "
             f"layers: {reuse_ms * 1000:.1f} us), Flex "
             f"create_block_mask {flex_ms:.2f} ms (first call {flex_first:.2f} s)",
             "| mask | kept / causal | attngen fwd ms | target fwd ms (1.3x) | ratio | "
             "attngen bwd ms | ratio | flex fwd ms | flex bwd ms |", "|---" * 9 + "|"]
    for _, mode, _, _, _, _, _, frac in SPARSITY_CASES[1:]:
        ours, flex = times.get((mode, "attngen")), times.get((mode, "flex"), {})
        rel = frac / 0.5
        f_ratio = ours["fwd_ms"] / (causal["fwd_ms"] * rel)
        b_ratio = ours["bwd_ms"] / (causal["bwd_ms"] * rel)
        lines.append(f"| {mode} | {rel:.3f} | {ours['fwd_ms']:.3f} | "
                     f"{1.3 * causal['fwd_ms'] * rel:.3f} | {f_ratio:.2f} | {ours['bwd_ms']:.3f} | "
                     f"{b_ratio:.2f} | {flex.get('fwd_ms', '-')} | {flex.get('bwd_ms', '-')} |")
    return lines


def _meta() -> dict:
    return dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=__import__("triton").__version__, python=platform.python_version(),
                date=str(date.today()))


def bench(out_dir: Path, quick: bool = False, cases=None, name: str = "bench") -> list[dict]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from triton.testing import do_bench

    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    dev, dt = "cuda", torch.bfloat16

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        return do_bench(fn, warmup=25, rep=200, return_mode="median")

    for case, mode, B, H, N, D, spec, frac in cases or bench_cases(quick):
        torch._dynamo.reset()
        q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=dt) for _ in range(3))
        flop = 4 * B * H * N * N * D * frac
        op = attngen.load(EXAMPLES / f"{spec}.attn") if "{" not in spec else attngen.load(spec)
        params = {}
        if op.name == "alibi":
            params["slopes"] = torch.exp2(-8.0 * (torch.arange(H, device=dev) + 1) / H)
        doc = (torch.arange(N, device=dev) * 8) // N
        if op.name == "packed_docs":
            params["doc"] = doc.to(torch.int32).expand(B, N).contiguous()
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        impls = {"attngen": lambda: op(q, k, v, **params)}
        if mode in ("full", "causal"):
            for impl, be in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                             ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                def sdpa(be=be):
                    with sdpa_kernel([be]):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=mode == "causal")
                impls[impl] = sdpa
        causal = lambda b, h, i, j: i >= j  # noqa: E731
        masks = {"full": None, "causal": causal, "softcap": causal, "alibi": causal,
                 "window1024": lambda b, h, i, j: (i >= j) & (i - j < 1024),
                 "doc8": lambda b, h, i, j: (doc[i] == doc[j]) & (i >= j)}
        block_mask = create_block_mask(masks[mode], 1, 1, N, N, device=dev) if masks[mode] else None
        score_mod = None
        if mode == "softcap":
            score_mod = lambda s, b, h, i, j: 30.0 * torch.tanh(s / 30.0)  # noqa: E731
        if mode == "alibi":
            slopes = params["slopes"]
            score_mod = lambda s, b, h, i, j: s + slopes[h] * (j - i)  # noqa: E731
        impls["flex"] = lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask)
        outs = {}
        for impl, fn in impls.items():
            try:
                start = time.time()
                outs[impl] = fn()
                torch.cuda.synchronize()
                first = time.time() - start
                ms = timed(fn)
                d_out = torch.randn_like(outs[impl])

                def fwd_bwd(fn=fn, d_out=d_out):
                    torch.autograd.grad(fn(), (q, k, v), d_out)

                ms_both = timed(fwd_bwd)
                rows.append(dict(case=case, impl=impl, mode=mode, B=B, H=H, N=N, D=D,
                                 fwd_ms=round(ms, 4), fwd_tflops=round(flop / ms / 1e9, 1),
                                 bwd_ms=round(ms_both - ms, 4),
                                 bwd_tflops=round(2.5 * flop / (ms_both - ms) / 1e9, 1),
                                 first_call_s=round(first, 2)))
            except Exception as err:  # a peer failing must not hide the others
                rows.append(dict(case=case, impl=impl, mode=mode, N=N, D=D, error=repr(err)[:300]))
            print(json.dumps(rows[-1]), flush=True)
        if "flex" in outs and "attngen" in outs:  # same function: outputs must agree
            diff = (outs["attngen"].detach().float() - outs["flex"].detach().float()).abs().max().item()
            rows.append(dict(case="agreement", mode=mode, N=N, D=D, max_abs_diff_vs_flex=diff))
            print(json.dumps(rows[-1]), flush=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"meta": _meta(), "rows": rows}, indent=1))
    return rows


def table(rows):
    by = {}
    for r in rows:
        if "fwd_tflops" in r:
            by.setdefault((r["mode"], r["N"], r["D"]), {})[r["impl"]] = (r["fwd_tflops"],
                                                                         r.get("bwd_tflops"))
    impls = ["attngen", "sdpa_flash", "sdpa_cudnn", "flex"]
    lines = ["fwd / bwd TFLOP/s",
             "| mode | N | D | " + " | ".join(impls) + " | attngen/flex fwd, bwd |",
             "|---" * 7 + "|---|"]
    for (mode, N, D), vals in by.items():
        cells = [f"{vals[i][0]} / {vals[i][1]}" if i in vals else "–" for i in impls]
        ratio = "–"
        if "flex" in vals and "attngen" in vals:
            ratio = f"{vals['attngen'][0] / vals['flex'][0]:.2f}, " \
                    f"{(vals['attngen'][1] or 0) / (vals['flex'][1] or 1):.2f}"
        lines.append(f"| {mode} | {N} | {D} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def decode(out_dir: Path) -> list[str]:
    """Decode (issue target: >= 80% of copy bandwidth at 32k keys): GB/s of K and V read, B=8
    Hq=32 Hkv=8 D=128 bf16, q_len 1, beside SDPA and compiled FlexAttention; eager calls and
    CUDA-graph replays (how serving engines run decode); bf16 numerics of ragged/paged calls."""
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention
    from triton.testing import do_bench

    from attngen import testing

    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    flex = torch.compile(flex_attention, dynamic=False)
    dev, dt = "cuda", torch.bfloat16
    rows, lines = [], []

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        return do_bench(fn, warmup=25, rep=200, return_mode="median")

    def graphed(fn):
        fn()  # autotune outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return timed(graph.replay)

    x = torch.empty(2 * 1024**3 // 2, device=dev, dtype=dt)
    y = torch.empty_like(x)
    copy_gbps = 2 * x.numel() * 2 / (timed(lambda: y.copy_(x)) * 1e-3) / 1e9
    del x, y
    rows.append(dict(case="ceiling", copy_gbps=round(copy_gbps, 1)))
    print(json.dumps(rows[-1]), flush=True)
    lines.append(f"device copy: {copy_gbps:.0f} GB/s")

    def save():  # after the timings and again at the end: a run cut short keeps what it measured
        (out_dir / "decode.json").write_text(json.dumps({"meta": _meta(), "rows": rows}, indent=1))
    B, Hq, Hkv, D = 8, 32, 8, 128
    for spec in ("llama", "alibi"):
        op = attngen.load(EXAMPLES / f"{spec}.attn")
        for L in (4096, 32768):
            torch._dynamo.reset()
            q = torch.randn(B, Hq, 1, D, device=dev, dtype=dt)
            k, v = (torch.randn(B, Hkv, L, D, device=dev, dtype=dt) for _ in range(2))
            kv_len = torch.full((B,), L, device=dev, dtype=torch.int32)
            k_pages, v_pages, table = testing.paged_cache(k, v, 64)
            params, score_mod, bias = {}, None, None
            if spec == "alibi":
                slopes = torch.exp2(-8.0 * (torch.arange(Hq, device=dev) + 1) / Hq)
                params["slopes"] = slopes
                score_mod = lambda s, b, h, i, j: s + slopes[h] * (j - (i + L - 1))  # noqa: E731
                bias = (slopes[:, None] * (torch.arange(L, device=dev) - (L - 1))).to(dt)[None, :, None, :]
            nbytes = 2 * B * Hkv * L * D * 2
            impls = {
                "attngen": lambda: op.decode(q, k, v, **params),
                "attngen_ragged": lambda: op.decode(q, k, v, kv_len=kv_len, **params),
                "attngen_paged64": lambda: op.decode(q, k_pages, v_pages, kv_len=kv_len,
                                                     page_table=table, **params),
                "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True),
                "flex": lambda: flex(q, k, v, score_mod=score_mod, enable_gqa=True),
            }
            for name, fn in impls.items():
                for mode, timer in (("eager", timed), ("graph", graphed)):
                    if mode == "graph" and name == "flex":
                        continue
                    try:
                        ms = timer(fn)
                        rows.append(dict(case=f"decode_{spec}", impl=name, mode=mode, L=L, D=D,
                                         B=B, Hq=Hq, Hkv=Hkv, ms=round(ms, 4),
                                         gbps=round(nbytes / (ms * 1e-3) / 1e9, 1)))
                    except Exception as err:
                        rows.append(dict(case=f"decode_{spec}", impl=name, mode=mode, L=L,
                                         error=repr(err)[:300]))
                    print(json.dumps(rows[-1]), flush=True)
            kern = getattr(op.module, f"{op.name}_decode_kernel")
            rows.append(dict(case=f"decode_{spec}", L=L, best_config=str(kern.best_config)))
            ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                 attn_mask=None if bias is None else bias.double(),
                                                 enable_gqa=True)
            err = (op.decode(q, k, v, **params).double() - ref).abs().max().item()
            rows.append(dict(case=f"decode_{spec}", L=L, max_abs_err_vs_f64_sdpa=err))
    # a window of 4k over a 128k cache must read 4k keys, not 128k
    op = attngen.load(EXAMPLES / "mistral_swa.attn")
    L = 131072
    q = torch.randn(B, Hq, 1, D, device=dev, dtype=dt)
    k, v = (torch.randn(B, Hkv, L, D, device=dev, dtype=dt) for _ in range(2))
    for mode, timer in (("eager", timed), ("graph", graphed)):
        ms = timer(lambda: op.decode(q, k, v))
        rows.append(dict(case="decode_window4096", impl="attngen", mode=mode, L=L, D=D, ms=round(ms, 4),
                         window_gbps=round(2 * B * Hkv * 4097 * D * 2 / (ms * 1e-3) / 1e9, 1)))
        print(json.dumps(rows[-1]), flush=True)
    del k, v
    save()
    # bf16 numerics: ragged, paged, GQA packing, q_len 4, against float64 (FlexAttention's rule)
    checks, bad = _decode_numerics_d128()
    rows.append(dict(case="decode_correctness", checks=checks, failures=bad))
    lines.append(f"decode bf16 numerics: {checks - len(bad)}/{checks} within 1.1 x eager bf16 error (+1e-5)")
    for r in rows:
        if "gbps" in r:
            lines.append(f"{r['case']:16} {r['impl']:16} {r['mode']:5} L={r['L']:6} {r['ms']:.4f} ms "
                         f"{r['gbps']:7.1f} GB/s ({100 * r['gbps'] / copy_gbps:.0f}% of copy)")
        elif "window_gbps" in r:
            lines.append(f"{r['case']:16} {r['impl']:16} {r['mode']:5} L={r['L']:6} {r['ms']:.4f} ms "
                         f"(window bytes {r['window_gbps']:.0f} GB/s)")
        elif "best_config" in r or "max_abs_err_vs_f64_sdpa" in r:
            lines.append(str(r))
    save()
    return lines


def _decode_numerics_d128() -> tuple[int, list[dict]]:
    from attngen import testing

    dev, dt = DEVICE, torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    checks = 0
    bad = []
    for spec in ("llama", "alibi", "packed_docs", "prefix_lm", "t5_bias", "gemma2_local"):
        op = attngen.load(EXAMPLES / f"{spec}.attn")
        for (hq, hkv), m, page in (((32, 8), 1, 16), ((8, 1), 4, 64), ((4, 4), 1, 256)):
            d = 256 if spec == "gemma2_local" else 128
            cap = 2048
            q = torch.randn(4, hq, m, d, generator=gen).to(dev, dt)
            k, v = (torch.randn(4, hkv, cap, d, generator=gen).to(dev, dt) for _ in range(2))
            kv_len = torch.tensor([cap, 1, 777, 1500], device=dev, dtype=torch.int32)
            params = {n: t.to(dev) for n, t in random_params(op.spec, 4, hq, hkv, m, cap, "cpu", gen).items()}
            kp, vp, table = testing.paged_cache(k, v, page, gen)
            gold = testing.decode_reference(op.spec, q.double(), k.double(), v.double(), kv_len=kv_len, **params)
            eager = testing.decode_reference(op.spec, q, k, v, kv_len=kv_len, **params)
            for paged in (False, True):
                args = (q, kp, vp) if paged else (q, k, v)
                out, lse = op.decode(*args, kv_len=kv_len, page_table=table if paged else None,
                                     return_lse=True, **params)
                for what, got, g, e in (("out", out, gold[0], eager[0]), ("lse", lse, gold[1], eager[1])):
                    err, ref_err = mean_abs_error(got, g), mean_abs_error(e, g)
                    checks += 1
                    if not within_rule(err, ref_err):
                        bad.append(dict(spec=spec, what=what, paged=paged, m=m, hq=hq, hkv=hkv, err=err, ref_err=ref_err))
    return checks, bad


DECODE_NUMERICS_SPECS = ["llama", "alibi", "mistral_swa", "gemma2_local"]


def _pad_kv(spec, params: dict, capacity: int) -> dict:
    """Params declared over KV (document ids), edge-padded to a paged cache's capacity (its
    pages x page size, past the contiguous cache's): positions past every kv_len, never read."""
    padded = dict(params)
    for p in spec.params:
        t = padded.get(p.name)
        if t is None or "KV" not in p.dims:
            continue
        axis = p.dims.index("KV")
        extra = capacity - t.shape[axis]
        if extra > 0:
            edge = t.narrow(axis, t.shape[axis] - 1, 1)
            padded[p.name] = torch.cat([t, edge.repeat_interleave(extra, dim=axis)], dim=axis)
    return padded


def decode_numerics(out_dir: Path, specs: list[str], head_dims: list[int], gqa=((8, 2),),
                    name: str = "decode-numerics.json") -> list[dict]:
    """bf16 decode out and LSE against the spec's float64 reference (FlexAttention's rule, as
    the correctness matrix): q_len 1 and 4, contiguous and paged caches, ragged kv_len
    (5000, 1, 777, 4500: past mistral_swa's 4096 window; q_len 4 over 1 key masks rows fully),
    at each head dim the spec takes (a spec with a fixed head_dim outside them is skipped)."""
    from attngen import testing

    dev, dt = DEVICE, torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    rows, path = [], out_dir / name
    cap = 5000
    for spec in specs:
        op = attngen.load(EXAMPLES / f"{spec}.attn")
        dims = spec_dims(op, head_dims=head_dims)
        if not dims:
            rows.append(dict(spec=spec, skipped=f"head_dim {list(op.spec.head_dims)} only"))
            print(f"{spec}: skipped, takes head_dim {list(op.spec.head_dims)} only", flush=True)
            continue
        for d in dims:
            for hq, hkv in gqa:
                for m, page in ((1, 16), (4, 64)):
                    case = dict(spec=spec, D=d, hq=hq, hkv=hkv, m=m)
                    try:
                        q = torch.randn(4, hq, m, d, generator=gen).to(dev, dt)
                        k, v = (torch.randn(4, hkv, cap, d, generator=gen).to(dev, dt) for _ in range(2))
                        kv_len = torch.tensor([cap, 1, 777, 4500], device=dev, dtype=torch.int32)
                        params = {n: t.to(dev) for n, t in
                                  random_params(op.spec, 4, hq, hkv, m, cap, "cpu", gen).items()}
                        kp, vp, table = testing.paged_cache(k, v, page, gen)
                        gold = testing.decode_reference(op.spec, q.double(), k.double(), v.double(),
                                                        kv_len=kv_len, **params)
                        eager = testing.decode_reference(op.spec, q, k, v, kv_len=kv_len, **params)
                    except Exception as err:
                        rows.append(dict(**case, ok=False, error=f"setup: {err!r}"[:500]))
                        print("FAIL", rows[-1], flush=True)
                        continue
                    for paged in (False, True):
                        args = (q, kp, vp) if paged else (q, k, v)
                        try:
                            call_params = _pad_kv(op.spec, params, table.shape[1] * page) \
                                if paged else params
                            out, lse = op.decode(*args, kv_len=kv_len,
                                                 page_table=table if paged else None,
                                                 return_lse=True, **call_params)
                            for what, got, g, e in (("out", out, gold[0], eager[0]),
                                                    ("lse", lse, gold[1], eager[1])):
                                err, ref_err = mean_abs_error(got, g), mean_abs_error(e, g)
                                rows.append(dict(**case, paged=paged, page=page if paged else None,
                                                 what=what, err=err, ref_err=ref_err,
                                                 ok=within_rule(err, ref_err)))
                                if not rows[-1]["ok"]:
                                    print("FAIL", rows[-1], flush=True)
                        except Exception as err:
                            rows.append(dict(**case, paged=paged, ok=False, error=repr(err)[:500]))
                            print("FAIL", rows[-1], flush=True)
                    path.write_text(json.dumps(rows, indent=1))
        done = [r for r in rows if r.get("spec") == spec and "ok" in r]
        print(f"{spec}: {sum(r['ok'] for r in done)}/{len(done)} decode checks ok", flush=True)
    path.write_text(json.dumps(rows, indent=1))
    return rows


def decode_numerics_summary(rows: list[dict]) -> list[str]:
    checks = [r for r in rows if "ok" in r]
    bad = [r for r in checks if not r["ok"]]
    lines = [f"decode bf16 numerics: {len(checks) - len(bad)}/{len(checks)} checks within 1.1 x "
             f"eager bf16 error (+1e-5)"]
    lines += [f"skipped: {r['spec']} ({r['skipped']})" for r in rows if "skipped" in r]
    by = {}
    for r in checks:
        by.setdefault((r["spec"], r["D"]), [0, 0])
        by[(r["spec"], r["D"])][0] += r["ok"]
        by[(r["spec"], r["D"])][1] += 1
    lines += ["| spec | D | pass |", "|---|---|---|"]
    lines += [f"| {s} | {d} | {ok}/{n} |" for (s, d), (ok, n) in sorted(by.items())]
    for what in ("out", "lse"):
        have = [r for r in checks if r.get("what") == what]
        if have:
            ratio = lambda r: r["err"] / max(r["ref_err"], 1e-9)  # noqa: E731
            w = max(have, key=ratio)
            lines.append(f"worst decode {what} error / eager error: {ratio(w):.3f} ({w['spec']} "
                         f"D={w['D']} q_len={w['m']} paged={w['paged']}; err {w['err']:.3g}, "
                         f"eager {w['ref_err']:.3g})")
    lines += [f"FAIL {r}" for r in bad]
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["correctness", "bench", "sparsity", "determinism", "decode",
                                         "all"])
    parser.add_argument("--specs", default="", help="comma list of spec names (correctness)")
    parser.add_argument("--quick", action="store_true",
                        help="bench: skip the D=64 cases; correctness: fewer shapes, D 64 and 128")
    parser.add_argument("--head-dims", default="",
                        help="comma list: check these head dims (correctness, decode "
                             "--numerics-only); specs with a fixed head_dim outside them skip")
    parser.add_argument("--gqa", default="",
                        help="comma list of Hq:Hkv (correctness; default 4:4,8:2,8:1)")
    parser.add_argument("--dtypes", default="",
                        help="comma list of bf16,fp16 (correctness): each over the whole matrix "
                             "(default: bf16 whole, fp16 a slice)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="correctness, decode --numerics-only: one subprocess per (spec, "
                             "head dim), this many at a time; one merged JSON")
    parser.add_argument("--deadline", type=float, default=None,
                        help="with --jobs: kill shards still running after this many seconds")
    parser.add_argument("--numerics-only", action="store_true",
                        help="decode: only the bf16 numerics against float64 (--specs, "
                             "--head-dims), no timing")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(torch.__version__, gpu, flush=True)
    only = set(args.specs.split(",")) - {""} or None
    head_dims = [int(d) for d in args.head_dims.split(",") if d]
    gqa = [tuple(int(x) for x in g.split(":")) for g in args.gqa.split(",") if g] or None
    meta = dict(_meta() if DEVICE == "cuda" else {}, argv=sys.argv[1:])
    summary = []
    if args.part in ("correctness", "all"):
        tag = "-d" + "-".join(map(str, head_dims)) if head_dims else ""
        name = f"correctness{'-' + '-'.join(sorted(only)) if only else ''}{tag}.json"
        if args.jobs > 1:
            shards = []
            for op in load_all():
                if only and op.name not in only:
                    continue
                for d in spec_dims(op, args.quick, head_dims):
                    argv = ["correctness", "--specs", op.name, "--head-dims", str(d)]
                    argv += ["--quick"] * args.quick + (["--gqa", args.gqa] if args.gqa else [])
                    argv += ["--dtypes", args.dtypes] if args.dtypes else []
                    shards.append((f"{op.name} D={d}", argv))
            rows, statuses = run_shards(shards, args.jobs, args.deadline)
            summary += ["shards:", *statuses]
            (out_dir / name).write_text(json.dumps({"meta": meta, "shards": statuses,
                                                    "rows": rows}, indent=1))
        else:
            rows = correctness(out_dir, only, args.quick, head_dims or None, gqa, name,
                               [d for d in args.dtypes.split(",") if d] or None)
        summary.extend(correctness_summary(rows))
    if args.part in ("determinism", "all"):
        summary.extend(determinism())
    if args.part in ("bench", "all"):
        rows = bench(out_dir, args.quick)
        summary.append(table(rows))
    if args.part in ("sparsity", "all"):
        summary.extend(sparsity(out_dir))
    if args.part == "decode" and args.numerics_only:
        specs = sorted(only) if only else DECODE_NUMERICS_SPECS
        dims = head_dims or [128]
        if args.jobs > 1:
            shards = [(f"decode {s} D={d}", ["decode", "--numerics-only", "--specs", s,
                                             "--head-dims", str(d)])
                      for s in specs for d in dims]
            rows, statuses = run_shards(shards, args.jobs, args.deadline)
            summary += ["shards:", *statuses]
            skipped = {r["spec"]: r for r in rows if "skipped" in r}
            rows = [r for r in rows if "skipped" not in r] + list(skipped.values())
            (out_dir / "decode-numerics.json").write_text(
                json.dumps({"meta": meta, "shards": statuses, "rows": rows}, indent=1))
        else:
            rows = decode_numerics(out_dir, specs, dims)
        summary.extend(decode_numerics_summary(rows))
    elif args.part in ("decode", "all"):
        summary.extend(decode(out_dir))
    print("\n".join(summary))


if __name__ == "__main__":
    main()

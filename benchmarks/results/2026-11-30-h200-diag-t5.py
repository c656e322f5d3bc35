"""t5_bias at D=96 (bf16): where the shared-memory error comes from, and autotuning on.

Run from the repository root (see 2026-11-30-h200-numerics.md):
    ATTNGEN_AUTOTUNE=0 python benchmarks/results/2026-11-30-h200-diag-t5.py
    ATTNGEN_AUTOTUNE=1 python benchmarks/results/2026-11-30-h200-diag-t5.py
"""
import os, sys, traceback
sys.path.insert(0, "."); sys.path.insert(0, "benchmarks")
import torch  # noqa: E402
import gpu_check as G  # noqa: E402
import attngen  # noqa: E402

op = attngen.load("examples/t5_bias.attn")
mode = os.environ.get("ATTNGEN_AUTOTUNE")
gen = torch.Generator().manual_seed(0)
q = torch.randn(2, 8, 239, 96, generator=gen).to("cuda", torch.bfloat16)
k, v = (torch.randn(2, 2, 239, 96, generator=gen).to("cuda", torch.bfloat16) for _ in range(2))
table = torch.randn(8, 257, generator=gen).cuda()
for what in ("fwd", "fwd+bwd"):
    try:
        qq = q.clone().requires_grad_(what != "fwd")
        out = op(qq, k, v, table=table)
        if what != "fwd":
            out.sum().backward()
        torch.cuda.synchronize()
        print(f"AUTOTUNE={mode} {what}: ran; fwd config {getattr(op.module, 't5_bias_fwd').best_config}")
    except Exception as err:
        print(f"AUTOTUNE={mode} {what}: {err!r}")
        print("".join(traceback.format_exc().splitlines(True)[-12:]))
if mode == "1":
    for M, N in ((1, 1), (17, 113), (239, 239), (239, 1), (1023, 1024)):
        try:
            ok, errs = G.check_case(op, torch.bfloat16, 2, 8, 2, M, N, 96, gen)
            print(f"AUTOTUNE=1 check M={M} N={N} D=96 8:2: ok={ok} " +
                  " ".join(f"{n}={e[0]:.3g}/{e[1]:.3g}" for n, e in errs.items()))
        except Exception as err:
            print(f"AUTOTUNE=1 check M={M} N={N}: {err!r}")

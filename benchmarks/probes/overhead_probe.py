import cProfile, pstats, sys, time, torch
sys.path.insert(0, ".")
import attngen
dev = "cuda"
op = attngen.load("examples/packed_docs.attn")
op2 = attngen.load("examples/llama.attn")
D = 128
qs, ks, vs = (torch.randn(1, 1, 16, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
ds = torch.zeros(1, 16, dtype=torch.int32, device=dev)
for name, f in (("packed_docs", lambda: op(qs, ks, vs, doc=ds)), ("llama", lambda: op2(qs, ks, vs)),
                ("launch_fwd only", lambda: op2.module._launch_fwd(qs, ks, vs, 0.1, {}, op2.module._prepare(qs, ks, vs, {})[0])),
                ("sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True))):
    f(); torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(300): f()
    torch.cuda.synchronize(); print(f"{name}: {(time.perf_counter() - t0) / 300 * 1e6:.1f} us per call")
pr = cProfile.Profile(); pr.enable()
for _ in range(300): op(qs, ks, vs, doc=ds)
pr.disable(); torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("tottime").print_stats(25)

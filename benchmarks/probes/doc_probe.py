import os, sys, time, torch, triton
sys.path.insert(0, ".")
import attngen
from attngen.runtime import Shapes
from triton.testing import do_bench
B, H, N, D = 2, 16, 8192, 128
dev = "cuda"
op = attngen.load("examples/packed_docs.attn")
m = op.module
doc = ((torch.arange(N, device=dev) * 8) // N).to(torch.int32).expand(B, N).contiguous()
q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
f = lambda: op(q, k, v, doc=doc)
f(); torch.cuda.synchronize()
print("op call ms", do_bench(f, warmup=25, rep=200, return_mode="median"))
print("best config", m.packed_docs_fwd.best_config)
shapes = Shapes(B, H, H, N, N, D)
params = {"doc": doc}
print("launch_fwd ms", do_bench(lambda: m._launch_fwd(q, k, v, 0.088, params, shapes), warmup=25, rep=200, return_mode="median"))
# tiny shape: CPU overhead floor
qs, ks, vs = (torch.randn(1, 1, 16, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
ds = torch.zeros(1, 16, dtype=torch.int32, device=dev)
op(qs, ks, vs, doc=ds)
t0 = time.perf_counter()
for _ in range(200): op(qs, ks, vs, doc=ds)
torch.cuda.synchronize(); print("cpu per call us (tiny)", (time.perf_counter() - t0) / 200 * 1e6)
# fixed configs on the raw kernel
runs = m._documents(params, shapes)
out = torch.empty_like(q); lse = torch.empty(B, H, N, device=dev)
args = [q, k, v, out, lse, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        doc, *doc.stride(), *runs, B, H, H, N, N, 0.088, 8192, 8192]
for bm, bn, w, st in [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 8, 2), (64, 128, 4, 2), (128, 32, 4, 3)]:
    grid = (triton.cdiv(N, bm), B * H)
    fn = lambda: m.packed_docs_fwd.fn[grid](*args, HEAD_DIM=D, BLOCK_D=D, PRECISION="tf32", **m.FWD_FLAGS, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
    try:
        fn(); torch.cuda.synchronize()
        ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        print(f"cfg m={bm} n={bn} w={w} s={st}: {ms:.4f} ms  {4*B*H*N*N*D*0.5/8/ms/1e9:.0f} TFLOP/s")
    except Exception as e:
        print("cfg fail", bm, bn, w, st, repr(e)[:200])
# same for causal dense llama
op2 = attngen.load("examples/llama.attn"); m2 = op2.module
f2 = lambda: op2(q, k, v)
f2(); print("llama best", m2.llama_fwd.best_config, do_bench(f2, warmup=25, rep=200, return_mode="median"))
# llama on 8 separate 1024 sequences = same work as doc8
q8, k8, v8 = (x.view(B, H, 8, 1024, D).permute(0, 2, 1, 3, 4).reshape(B * 8, H, 1024, D).contiguous() for x in (q, k, v))
f3 = lambda: op2(q8, k8, v8)
f3(); print("llama 16x1024 causal", m2.llama_fwd.best_config, do_bench(f3, warmup=25, rep=200, return_mode="median"))

"""Why does greedy generation differ between attngen_llama and sdpa (bf16, GPU)?

Run from the repository root (see 2026-11-30-h200-hf-train.md):
    ATTNGEN_AUTOTUNE=0 python benchmarks/results/2026-11-30-h200-diag-hf.py   # DEV=cpu: fp32 smoke

Same model, seed and input ids as examples/hf_llama.py on a GPU; generation with
output_logits, then 32 teacher-forced decode steps on sdpa's tokens through both KV caches.
"""
import sys
sys.path.insert(0, "."); sys.path.insert(0, "examples")
import attngen.hf  # noqa: E402
import torch  # noqa: E402
import hf_llama as H  # noqa: E402
import os  # noqa: E402
DEV = os.environ.get("DEV", "cuda")
L, P = (1024, 512) if DEV == "cuda" else (48, 24)
from pathlib import Path  # noqa: E402

name = attngen.hf.register(Path("examples/llama.attn"))
cfg = H.tiny_llama_config(scale=4 if DEV == "cuda" else 1)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def stepwise(m, seq, P):
    with torch.no_grad():
        out = m(seq[:, :P], use_cache=True)
        pkv, logits = out.past_key_values, [out.logits[:, -1]]
        for t in range(P, seq.shape[1] - 1):
            out = m(seq[:, t:t + 1], past_key_values=pkv, use_cache=True)
            pkv = out.past_key_values
            logits.append(out.logits[:, -1])
    return torch.stack(logits, 1).float()


for dtype in ((torch.bfloat16, torch.float32) if DEV == "cuda" else (torch.float32,)):
    ref, model = H.twin_models(cfg, name, DEV, dtype)
    ids = torch.randint(0, cfg.vocab_size, (2, L), device=DEV)  # as hf_llama.py draws them
    prompt = ids[:, :P]
    kw = dict(max_new_tokens=32 if DEV == "cuda" else 4, do_sample=False, pad_token_id=0,
              attention_mask=torch.ones_like(prompt), output_logits=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        g, e = model.generate(prompt, **kw), ref.generate(prompt, **kw)
    sg, se = g.sequences[:, P:], e.sequences[:, P:]
    print(f"== {dtype}: same tokens {torch.equal(sg, se)}")
    for row in range(2):
        diff = (sg[row] != se[row]).nonzero()
        if len(diff):
            s = diff[0].item()
            le, lg = e.logits[s][row].float(), g.logits[s][row].float()
            top = le.topk(2)
            print(f"row {row}: first differing new token at step {s}: sdpa {se[row, s].item()} "
                  f"attngen {sg[row, s].item()}; sdpa top-2 logits {top.values.tolist()} "
                  f"(margin {(top.values[0] - top.values[1]).item():.4g}); attngen's logits at "
                  f"sdpa's pick {lg[se[row, s]].item():.4f}, at its own {lg[sg[row, s]].item():.4f}")
            pre = [rel(g.logits[t][row], e.logits[t][row]) for t in range(s + 1)]
            print(f"  max rel logit diff over steps 0..{s}: {max(pre):.3e}")
        else:
            print(f"row {row}: all new tokens equal")
    # teacher forcing on sdpa's sequence: both through their KV caches, and sdpa without a cache
    seq = e.sequences
    a_dec, s_dec = stepwise(model, seq, P), stepwise(ref, seq, P)
    with torch.no_grad():
        full = ref(seq).logits[:, P - 1:-1].float()
    print(f"teacher-forced 32 steps, max rel logit diff: attngen decode vs sdpa decode "
          f"{rel(a_dec, s_dec):.3e}; sdpa decode vs sdpa no-cache {rel(s_dec, full):.3e}; "
          f"attngen decode vs sdpa no-cache {rel(a_dec, full):.3e}")
    am, sm = a_dec.argmax(-1), s_dec.argmax(-1)
    dis = (am != sm)
    top2 = s_dec.topk(2, -1).values
    margin = (top2[..., 0] - top2[..., 1])
    print(f"  argmax disagreements attngen vs sdpa (teacher-forced): {int(dis.sum())}/{dis.numel()}"
          + (f"; sdpa top-2 margin there: {margin[dis].tolist()}" if dis.any() else "")
          + f"; median sdpa top-2 margin {margin.median().item():.4g}")

"""A five-minute tour in code: run generated attngen ops on CPU tensors and check them.

    make demo        # = attngen build examples/*.attn, then this script

Runs through the Triton interpreter when there is no GPU (slow, exact), on the GPU otherwise.
"""

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import attngen  # noqa: E402  (selects the Triton interpreter when there is no GPU)
from generated.alibi import alibi  # noqa: E402  (written by `attngen build`)
from generated.packed_docs import packed_docs  # noqa: E402


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    B, Hq, Hkv, N, D = 2, 8, 2, 128, 64  # grouped-query attention, 4 query heads per kv head
    q = torch.randn(B, Hq, N, D, device=device, dtype=dtype)
    k = torch.randn(B, Hkv, N, D, device=device, dtype=dtype)
    v = torch.randn(B, Hkv, N, D, device=device, dtype=dtype)

    # ALiBi: one slope per head, a param passed at call time (a new value never rebuilds)
    slopes = torch.exp2(-8.0 * torch.arange(1, Hq + 1, device=device) / Hq)
    # packed documents: three documents of 40, 50 and 38 tokens in every row
    doc = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 50, 38]))
    doc = doc.to(device=device, dtype=torch.int32).expand(B, N).contiguous()

    print(f"device {device}, dtype {str(dtype)[6:]}, q {tuple(q.shape)}, k/v {tuple(k.shape)}")
    print(f"{'op':<12} {'time':>8} {'max |out - float64 reference|':>32}")
    for name, fn, params in (("alibi", alibi, {"slopes": slopes}),
                             ("packed_docs", packed_docs, {"doc": doc})):
        start = time.perf_counter()
        out = fn(q, k, v, **params)
        elapsed = time.perf_counter() - start
        op = attngen.load(ROOT / "examples" / f"{name}.attn")
        golden = op.reference(q.double(), k.double(), v.double(), **params)
        err = (out.double() - golden).abs().max().item()
        print(f"{name:<12} {elapsed:>7.2f}s {err:>32.2e}")
        assert err < 2e-2, f"{name}: kernel and reference disagree ({err})"
    print("ok: the generated kernels match their specs' references")


if __name__ == "__main__":
    main()

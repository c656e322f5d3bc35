"""Generated ops as torch.library custom ops: ``torch.library.opcheck`` passes (schema, fake
tensors, autograd registration, AOT dispatch with dynamic shapes), and ``torch.compile(fullgraph=
True, dynamic=True)`` traces a two-layer model calling the op (forward and backward) and a decode
step with no graph break and no recompile when the sequence length changes.

Runs on CPU through the Triton interpreter (the custom op is opaque to the compiler, so its
kernels run as they do eagerly). The model test uses Inductor, which compiles C++ on a CPU
machine: it is skipped, with the reason, where no C++ compiler exists.
"""

from __future__ import annotations

import functools
import os
import shutil

import pytest
import torch

import attngen
from attngen import runtime  # noqa: F401  before triton: with no GPU this selects the interpreter
from test_forward import DEVICE, EXAMPLES_DIR

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]


@functools.cache
def _load(name: str) -> attngen.AttentionOp:
    return attngen.load(EXAMPLES_DIR / f"{name}.attn")


def _qkv(b, hq, hkv, m, n, d, requires_grad=False):
    g = torch.Generator().manual_seed(b * 1000 + m * 10 + n)
    q = torch.randn(b, hq, m, d, generator=g)
    k, v = (torch.randn(b, hkv, n, d, generator=g) for _ in range(2))
    return tuple(t.to(DEVICE).requires_grad_(requires_grad) for t in (q, k, v))


@pytest.mark.parametrize("name,params", [
    ("alibi", lambda: [torch.rand(4, device=DEVICE).requires_grad_()]),  # a param with a gradient
    ("alibi", lambda: [torch.rand(4, device=DEVICE)]),  # frozen: the dQ without its terms
    ("packed_docs", lambda: [torch.tensor([[0] * 9 + [1] * 8] * 2, dtype=torch.int32,
                                          device=DEVICE)]),
    ("llama", lambda: []),
])
def test_opcheck_forward_and_backward(name, params):
    module = _load(name).module
    q, k, v = _qkv(2, 4, 2, 17, 17, 16, requires_grad=True)
    result = torch.library.opcheck(module._FWD_OP, (q, k, v, 0.25, params(), [], 0, 0))
    assert set(result.values()) == {"SUCCESS"}, result


def test_opcheck_with_a_block_mask():
    module = _load("packed_docs").module
    q, k, v = _qkv(2, 4, 2, 17, 17, 16, requires_grad=True)
    ids = torch.tensor([[0] * 9 + [1] * 8] * 2, dtype=torch.int32, device=DEVICE)
    mask = module.block_mask(2, 4, 17, 17, heads_kv=2, doc=ids)
    result = torch.library.opcheck(module._FWD_OP, (q, k, v, 0.25, [ids], [mask.rows, mask.cols],
                                                    *mask.block))
    assert set(result.values()) == {"SUCCESS"}, result


def test_opcheck_decode():
    module = _load("alibi").module
    q, k, v = _qkv(2, 4, 2, 1, 40, 16)
    kv_len = torch.tensor([40, 5], dtype=torch.int32, device=DEVICE)
    result = torch.library.opcheck(module._DECODE_OP, (q, k, v, kv_len, None, 0.25, 2,
                                                       [torch.rand(4, device=DEVICE)]))
    assert set(result.values()) == {"SUCCESS"}, result


class _Layer(torch.nn.Module):
    def __init__(self, op, dim=32, heads=2):
        super().__init__()
        self.op, self.heads = op, heads
        self.qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.slopes = torch.nn.Parameter(torch.rand(heads))

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = self.op(q, k, v, slopes=self.slopes)
        return x + self.out(y.transpose(1, 2).reshape(B, N, C))


def _compile_counters():
    from torch._dynamo.utils import counters
    return counters


@pytest.mark.skipif(DEVICE.type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="Inductor needs a C++ compiler on a CPU machine and none was found")
def test_compiled_model_fullgraph_no_recompile():
    torch._dynamo.reset()
    counters = _compile_counters()
    counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Sequential(_Layer(_load("alibi")), _Layer(_load("alibi"))).to(DEVICE)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for n in (17, 33, 40):  # new sequence lengths: one graph serves them all
        x = torch.randn(2, n, 32, device=DEVICE, requires_grad=True)
        y = compiled(x)
        y.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        x_eager = x.detach().requires_grad_()
        y_eager = model(x_eager)
        y_eager.square().sum().backward()
        torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x.grad, x_eager.grad, rtol=1e-4, atol=1e-4)
        for got, want in zip(grads, (p.grad for p in model.parameters())):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        model.zero_grad()
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compiled_decode_step_fullgraph():
    torch._dynamo.reset()
    counters = _compile_counters()
    counters.clear()
    op = _load("alibi")
    slopes = torch.rand(4, device=DEVICE)

    def step(q, k, v, kv_len):
        return op.decode(q, k, v, kv_len=kv_len, slopes=slopes) * 2.0

    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")
    for capacity in (40, 64):
        q, k, v = _qkv(2, 4, 2, 1, capacity, 16)
        kv_len = torch.tensor([capacity, 5], dtype=torch.int32, device=DEVICE)
        torch.testing.assert_close(compiled(q, k, v, kv_len), step(q, k, v, kv_len))
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compiled_call_with_a_block_mask_fullgraph():
    # the block mask is built outside the compiled code; the call inside it traces with no break
    torch._dynamo.reset()
    counters = _compile_counters()
    counters.clear()
    op = _load("packed_docs")
    ids = torch.tensor([[0] * 40 + [1] * 30] * 2, dtype=torch.int32, device=DEVICE)
    q, k, v = _qkv(2, 4, 2, 70, 70, 16, requires_grad=True)
    mask = op.block_mask(2, 4, 70, 70, doc=ids)

    def attend(q, k, v):
        return op(q, k, v, doc=ids, block_mask=mask)

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    want = attend(q, k, v)
    want.square().sum().backward()
    torch.testing.assert_close(out, want)
    for got, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(got, t.grad)
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_op_names_change_with_the_ops_signatures():
    # torch.compile's on-disk caches call ops by name: a schema change (an upgrade adding an
    # argument) must come with new names, or a cached graph calls the new op the old way
    def bwd(q: torch.Tensor, scale: float) -> torch.Tensor: ...

    def bwd_later(q: torch.Tensor, scale: float, param_grads: bool) -> torch.Tensor: ...

    bwd_later.__name__ = "bwd"
    assert runtime.schema_tag(bwd) != runtime.schema_tag(bwd_later)
    assert runtime.schema_tag(bwd) == runtime.schema_tag(bwd)
    module = _load("alibi").module
    tag = runtime.schema_tag(module._attention_fwd, module._attention_bwd, module._decode_impl)
    assert module._OP.startswith(f"attngen::{module.NAME}_{module.SPEC_HASH[:16]}_{tag}")

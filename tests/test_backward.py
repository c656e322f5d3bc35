"""Backward kernels against the reference's autograd, through the Triton interpreter (fp32).

For every example spec: dq, dk, dv and the gradients of `grad` params (ALiBi slopes, the T5 bias
table) match torch autograd through ``op.reference`` in float64, over odd lengths, q_len < kv_len
and q_len > kv_len, GQA and several head dims; the LSE's gradient flows too; fully masked rows
give zero gradients and no NaN; deterministic mode is bitwise stable or refuses clearly.
Rule: max |kernel - golden| / max(max |golden|, 1e-6) <= 1e-4 per gradient (fp32 kernels).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attngen
import attngen.cache
from attngen import runtime  # noqa: F401  (before triton: selects the interpreter without a GPU)
from attngen.testing import random_params

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOL = 1e-4

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNGEN_CACHE_DIR", str(tmp_path_factory.mktemp("attngen-cache")))
        attngen.cache.cache_root.cache_clear()
        yield
    attngen.cache.cache_root.cache_clear()


def _op(name_or_text: str):
    return attngen.load(name_or_text if "{" in name_or_text else EXAMPLES / f"{name_or_text}.attn")


def _grads(op, q, k, v, params, d_out, d_lse, *, golden: bool, deterministic=False):
    """Gradients of sum(out * d_out) + sum(lse * d_lse) (finite lse entries) w.r.t. q, k, v and
    the `grad` params, through the kernels or (golden) the float64 reference."""
    grad_names = [p.name for p in op.spec.params if p.grad]
    cast = torch.float64 if golden else q.dtype
    leaves = [x.detach().to(cast).requires_grad_() for x in (q, k, v)]
    ps = {n: (t.detach().clone().requires_grad_() if n in grad_names else t)
          for n, t in params.items()}
    fn = op.reference if golden else (lambda *a, **kw: op(*a, deterministic=deterministic, **kw))
    out, lse = fn(*leaves, return_lse=True, **ps)
    finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    loss = (out * d_out.to(cast)).sum() + (finite_lse * d_lse.to(cast)).sum()
    grads = torch.autograd.grad(loss, [*leaves, *(ps[n] for n in grad_names)])
    return dict(zip(["dq", "dk", "dv", *(f"d{n}" for n in grad_names)], grads))


def _check(op, B, Hq, Hkv, M, N, D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, M, D, generator=gen)
    k = torch.randn(B, Hkv, N, D, generator=gen)
    v = torch.randn(B, Hkv, N, D, generator=gen)
    params = random_params(op.spec, B, Hq, Hkv, M, N, "cpu", gen)
    d_out = torch.randn(B, Hq, M, D, generator=gen)
    d_lse = torch.randn(B, Hq, M, generator=gen)
    kernel = _grads(op, q, k, v, params, d_out, d_lse, golden=False)
    golden = _grads(op, q, k, v, params, d_out, d_lse, golden=True)
    for name, g in golden.items():
        got = kernel[name]
        assert not torch.isnan(got).any(), f"{op.name} {name}: NaN"
        err = (got.double() - g.double()).abs().max().item()
        scale = max(g.double().abs().max().item(), 1e-6)
        assert err / scale <= TOL, f"{op.name} {name}: relative error {err / scale:.2e}"


EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.attn") if p.stem != "llama4_chunked")
SHAPES = [(17, 17, 4, 1, 16), (113, 113, 4, 4, 64), (3, 113, 8, 2, 80), (130, 70, 4, 1, 128),
          (1, 1, 2, 2, 64)]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
@pytest.mark.parametrize("M, N, Hq, Hkv, D", [SHAPES[0], SHAPES[2]])
def test_examples_match_reference_gradients(name, M, N, Hq, Hkv, D):
    op = _op(name)
    if op.spec.head_dims and D not in op.spec.head_dims:
        D = op.spec.head_dims[0]
    _check(op, 2, Hq, Hkv, M, N, D)


@pytest.mark.parametrize("M, N, Hq, Hkv, D", SHAPES[1:2] + SHAPES[3:])
@pytest.mark.parametrize("name", ["alibi", "t5_bias", "packed_docs"])
def test_odd_shapes_and_q_longer_than_kv(name, M, N, Hq, Hkv, D):
    _check(_op(name), 2, Hq, Hkv, M, N, D)


INLINE = {
    "window": "attention w { mask causal & window(7, 3) }",
    "two_sided_window": "attention w2 { mask window(5, 9) }",
    "chunk": "attention c { mask causal & chunk(16) }",
    "softcap_scalar_grad": "attention s { param cap: f32 grad  score cap * tanh(score / cap) "
                           "mask causal }",
    "smooth_and_nonsmooth": "attention n { score clamp(score, -1.5, 1.5) + 0.1 * abs(score) "
                            "- score ** 2 / 20.0 + sigmoid(score) mask causal }",
    "float_table_by_query": "attention t { param bias: f32[B, Q] grad  score score + bias[b, q - "
                            "kv_len + q_len] }",
}


@pytest.mark.parametrize("key", sorted(INLINE))
def test_inline_score_and_mask_forms(key):
    op = _op(INLINE[key])
    _check(op, 2, 4, 2, 40, 57, 16, seed=1)


def test_llama4_chunked_fp16_gradients_close_to_reference():
    """llama4_chunked only takes bf16/fp16: fp16 kernel gradients vs the float64 golden."""
    op = _op("llama4_chunked")
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 40, 64, generator=gen).half() for _ in range(3))
    d_out = torch.randn(1, 2, 40, 64, generator=gen)
    zeros = torch.zeros(1, 2, 40)
    kernel = _grads(op, q, k, v, {}, d_out, zeros, golden=False)
    golden = _grads(op, q, k, v, {}, d_out, zeros, golden=True)
    for name in ("dq", "dk", "dv"):
        err = (kernel[name].double() - golden[name]).abs().max().item()
        assert err <= 5e-3 * max(golden[name].abs().max().item(), 1.0), (name, err)


def test_fully_masked_rows_have_zero_gradients_and_no_nan():
    op = _op("attention m { mask kv < 0 | q < 5 }")  # rows at positions >= 5 see nothing
    q, k, v = (torch.randn(1, 2, 9, 16, requires_grad=True) for _ in range(3))
    out, lse = op(q, k, v, return_lse=True)
    assert torch.isinf(lse[..., 5:]).all() and (out[..., 5:, :] == 0).all()
    out.sum().backward()
    for t in (q, k, v):
        assert not torch.isnan(t.grad).any()
    assert (q.grad[..., 5:, :] == 0).all()


def test_deterministic_gradients_are_bitwise_stable():
    op = _op("alibi")
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 4, 33, 16, generator=gen) for _ in range(3))
    params = random_params(op.spec, 1, 4, 4, 33, 33, "cpu", gen)
    d = torch.randn(1, 4, 33, 16, generator=gen)
    first = _grads(op, q, k, v, params, d, torch.zeros(1, 4, 33), golden=False, deterministic=True)
    again = _grads(op, q, k, v, params, d, torch.zeros(1, 4, 33), golden=False, deterministic=True)
    assert all(torch.equal(first[n], again[n]) for n in first)


def test_deterministic_refuses_atomic_param_gradients():
    op = _op("t5_bias")
    q = torch.randn(1, 2, 8, 16)
    table = torch.randn(2, 257, requires_grad=True)
    with pytest.raises(NotImplementedError, match="NYI.*table"):
        op(q, q, q, table=table, deterministic=True)
    op(q, q, q, table=table.detach(), deterministic=True)  # a constant table is fine


def test_params_without_grad_are_constants():
    op = _op("prefix_lm")
    q = torch.randn(1, 2, 8, 16, requires_grad=True)
    out = op(q, q, q, prefix=torch.tensor([3], dtype=torch.int32))
    (g,) = torch.autograd.grad(out.sum(), [q])
    assert g.shape == q.shape and not torch.isnan(g).any()


def test_spec_without_bwd_kernels_refuses_backward():
    op = _op("attention f { mask causal kernels fwd }")
    q = torch.randn(1, 2, 8, 16, requires_grad=True)
    with pytest.raises(NotImplementedError, match="kernels"):
        op(q, q, q).sum().backward()


# ---- regressions found in review ---------------------------------------------------------------

REGRESSIONS = {
    # a hand-written lower bound with a negative literal is not a window: the mask must stay
    "negative_literal_bound": ("attention r1 { mask q - (-2) <= kv  blocks fwd(m=16, n=16), "
                               "bwd(m=16, n=16) }", 64, 64, {}),
    # padding query rows of a FULL dQ tile must not feed NaN into a param gradient
    "param_grad_with_padding_rows": ("attention r2 { param bias: f32[H] grad  score score + "
                                     "bias[h]  blocks fwd(m=16, n=16), bwd(m=16, n=16) }", 20, 32,
                                     {"bias": torch.full((2,), 100.0)}),
    # torch's pow backward at base 0: no NaN from 0 * log(0)
    "pow_at_base_zero": ("attention r3 { param e: f32[H] grad  score score + (max(kv - q + 2, 0) "
                         "* 1.0) ** (e[h] + kv * 0.0)  mask causal }", 32, 32,
                         {"e": torch.tensor([1.5, 2.0])}),
    # a grad param read at a score-dependent index varies over the tile
    "score_dependent_index": ("attention r4 { param t: f32[8] grad  score score + "
                              "t[clamp(floor(score * 2.0) + 4, 0, 7)] }", 32, 32,
                              {"t": torch.randn(8, generator=torch.Generator().manual_seed(0))}),
}


@pytest.mark.parametrize("key", sorted(REGRESSIONS))
def test_review_regressions(key):
    text, M, N, params = REGRESSIONS[key]
    op = _op(text)
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, M, 16, generator=gen)
    k, v = (torch.randn(1, 1, N, 16, generator=gen) for _ in range(2))
    d_out = torch.randn(1, 2, M, 16, generator=gen)
    zeros = torch.zeros(1, 2, M)
    kernel = _grads(op, q, k, v, params, d_out, zeros, golden=False)
    golden = _grads(op, q, k, v, params, d_out, zeros, golden=True)
    out, gold = op(q, k, v, **params), op.reference(q.double(), k.double(), v.double(), **params)
    assert (out.double() - gold).abs().max().item() <= 1e-4 * max(gold.abs().max().item(), 1.0)
    for name, g in golden.items():
        assert not torch.isnan(kernel[name]).any(), name
        err = (kernel[name].double() - g.double()).abs().max().item()
        assert err <= TOL * max(g.double().abs().max().item(), 1.0), (name, err)


def test_power_with_a_scalar_param_exponent_and_negative_clamp_index():
    op = _op("attention r5 { param e: f32  param t: f32[4]  score score + max(score, 0.0) ** e "
             "+ t[clamp(kv, 0, -1)] }")
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=gen) for _ in range(3))
    params = {"e": torch.tensor(1.5), "t": torch.arange(8.0)[4:]}  # t[-1] is outside: reads 0
    out = op(q, k, v, **params)
    gold = op.reference(q.double(), k.double(), v.double(), **params)
    assert (out.double() - gold).abs().max().item() <= 1e-5


@pytest.mark.parametrize("text", ["attention torch { mask causal }", "attention tl { }",
                                  "attention x { param deterministic: f32[H] }"])
def test_names_the_generated_module_needs_are_refused(text):
    with pytest.raises(attngen.SpecError):
        attngen.parse_and_check(text)

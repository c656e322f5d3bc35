"""Backward kernels against the reference's autograd, through the Triton interpreter (fp32).

For every example spec: dq, dk, dv and the gradients of `grad` params (ALiBi slopes, the T5 bias
table) match torch autograd through ``op.reference`` in float64, over odd lengths, q_len < kv_len
and q_len > kv_len, GQA and several head dims; the LSE's gradient flows too; fully masked rows
give zero gradients and no NaN; deterministic mode is bitwise stable or refuses clearly.
Rule: max |kernel - golden| / max(max |golden|, 1e-6) <= 1e-4 per gradient (fp32 kernels).

The default run is a covering subset (about a minute on two cores):

* every example on one of the five ``SHAPES``, rotating so that every shape is used: odd
  lengths (1, 3, 17, 113, 130 x 70), q_len < kv_len and q_len > kv_len, GQA 1:1 and 4:1 (4x1
  and 8x2 heads), head dims 16, 64, 80, 128 (gemma2_local always 256);
* the T5 bias table's atomics on q_len > kv_len and packed documents on multi-tile square
  lengths;
* every inline score / mask form, llama4_chunked in fp16, fully masked rows, deterministic mode
  and the review regressions.

test_forward.py adds fp16 with 8:1 GQA and rows at negative positions. ``ATTNGEN_FULL_MATRIX=1``
runs every example on every shape, and ALiBi, T5 bias and packed_docs on the three odd shapes.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

import attngen
from attngen import runtime  # noqa: F401  (before triton: selects the interpreter without a GPU)
from attngen.testing import random_params

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOL = 1e-4
FULL_MATRIX = os.environ.get("ATTNGEN_FULL_MATRIX") == "1"

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]


@functools.cache
def _op(name_or_text: str):
    """One op per spec for the module (loading renders and imports the generated module)."""
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
# (M, N, Hq, Hkv, D)
SHAPES = [(17, 17, 4, 1, 16), (113, 113, 4, 4, 64), (3, 113, 8, 2, 80), (130, 70, 4, 1, 128),
          (1, 1, 2, 2, 64)]
# the default run's rotation: example j on SHAPES[(j + 3) % 5], which gives gemma2_local (D=256
# whatever the shape) the small 17 x 17 shape and alibi (a grad param) 130 x 70
ROTATION = 3


def _shape_id(shape):
    return "-".join(map(str, shape))


def _example_cases(full=FULL_MATRIX):
    return [pytest.param(name, *shape, id=f"{_shape_id(shape)}-{name}")
            for j, name in enumerate(EXAMPLE_NAMES)
            for shape in (SHAPES if full else [SHAPES[(j + ROTATION) % len(SHAPES)]])]


def test_default_example_cases_use_every_shape():
    cases = [p.values for p in _example_cases(full=False)]
    assert sorted(c[0] for c in cases) == EXAMPLE_NAMES  # every example, once
    assert {c[1:] for c in cases} == set(SHAPES)
    assert ("gemma2_local", *SHAPES[0]) in cases


@pytest.mark.parametrize("name, M, N, Hq, Hkv, D", _example_cases())
def test_examples_match_reference_gradients(name, M, N, Hq, Hkv, D):
    op = _op(name)
    if op.spec.head_dims and D not in op.spec.head_dims:
        D = op.spec.head_dims[0]
    _check(op, 2, Hq, Hkv, M, N, D)


# grad params (ALiBi slopes: per-program sums; the T5 table: atomics) and document runs on the
# odd shapes; by default the ones the rotation above does not already give them
ODD_SHAPES = [SHAPES[1], SHAPES[3], SHAPES[4]]
ODD_DEFAULT = [("t5_bias", SHAPES[3]), ("packed_docs", SHAPES[1])]


@pytest.mark.parametrize("name, M, N, Hq, Hkv, D", [
    pytest.param(name, *shape, id=f"{name}-{_shape_id(shape)}")
    for name, shape in ([(n, s) for n in ["alibi", "t5_bias", "packed_docs"] for s in ODD_SHAPES]
                        if FULL_MATRIX else ODD_DEFAULT)])
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


def test_gradients_of_the_lse_alone_and_of_the_output_alone():
    """A loss that reads only the lse (or only the output) leaves the other output's gradient
    undefined: autograd passes None (not a tensor of zeros) and the backward takes it as 0."""
    op = _op("packed_docs")
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 37, 16, generator=gen) for _ in range(3))
    params = random_params(op.spec, 2, 4, 4, 37, 37, "cpu", gen)
    weights = torch.randn(2, 4, 37, generator=gen)
    for use in ("lse", "out"):
        grads = {}
        for golden in (False, True):
            cast = torch.float64 if golden else q.dtype
            leaves = [x.detach().to(cast).requires_grad_() for x in (q, k, v)]
            out, lse = (op.reference if golden else op)(*leaves, return_lse=True, **params)
            loss = (lse * weights.to(cast)).sum() if use == "lse" else (out ** 2).sum()
            grads[golden] = torch.autograd.grad(loss, leaves, allow_unused=True)
        for got, want, leaf in zip(grads[False], grads[True], (q, k, v)):
            # (the lse does not read v: the reference leaves dv undefined, the kernels give 0)
            want = torch.zeros_like(leaf, dtype=torch.float64) if want is None else want
            err = (got.double() - want).abs().max().item()
            assert err <= 1e-4 * max(want.abs().max().item(), 1.0), (use, err)


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


@pytest.mark.parametrize("name", ["alibi", "t5_bias"])
@pytest.mark.parametrize("eager", [True, False])
def test_frozen_grad_params_skip_their_gradient_terms(name, eager, monkeypatch):
    # a param marked `grad` that needs none (fixed ALiBi slopes, a frozen bias table): the dQ
    # kernel without its terms runs (`_frozen`), q, k, v get the same gradients, the param none
    op = _op(name)
    module = op.module
    launched = []
    launch = module._launch
    monkeypatch.setattr(module, "_launch", lambda kernel, *a: (launched.append(kernel), launch(kernel, *a))[1])
    if not eager:  # through the torch.library op (what torch.compile and export trace)
        monkeypatch.setattr(module.runtime, "plain_eager", lambda q: False)
    gen = torch.Generator().manual_seed(11)
    q, k, v, d_out = (torch.randn(2, 4, 40, 32, generator=gen) for _ in range(4))
    params = random_params(op.spec, 2, 4, 4, 40, 40, "cpu", gen)
    learnt = _grads(op, q, k, v, params, d_out, torch.zeros(2, 4, 40), golden=False)
    dq_kernels = lambda: [kernel.fn.__name__ for kernel in launched if "_bwd_dq" in kernel.fn.__name__]  # noqa: E731
    assert dq_kernels() == [f"{name}_bwd_dq"]
    launched.clear()
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    frozen = {n: t.detach() for n, t in params.items()}
    out = op(*leaves, **frozen)
    got = torch.autograd.grad((out * d_out).sum(), leaves)
    assert dq_kernels() == [f"{name}_bwd_dq_frozen"]
    for n, g in zip(("dq", "dk", "dv"), got):
        assert torch.equal(g, learnt[n]), n


def test_frozen_grad_params_with_a_block_mask(monkeypatch):
    # the frozen dQ's block-mask variant: the same q, k, v gradients as with learnt slopes
    op = _op("alibi")
    launched = []
    launch = op.module._launch
    monkeypatch.setattr(op.module, "_launch", lambda kernel, *a: (launched.append(kernel.fn.__name__), launch(kernel, *a))[1])
    gen = torch.Generator().manual_seed(12)
    q, k, v, d_out = (torch.randn(1, 2, 150, 16, generator=gen) for _ in range(4))
    slopes = torch.rand(2, generator=gen)
    mask = op.block_mask(1, 2, 150, 150, block=64)
    grads = []
    for learnt in (True, False):
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        out = op(*leaves, slopes=slopes.detach().requires_grad_(learnt), block_mask=mask)
        grads.append(torch.autograd.grad((out * d_out).sum(), leaves))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert [n for n in launched if "_bwd_dq" in n] == ["alibi_bwd_dq", "alibi_bwd_dq_frozen"]


# a clamped relative bias on 16x16 tiles: most tiles read one bucket at run time (one atomic of
# the tile's sum), the tiles near the diagonal several (one atomic per element); causal, padding
# rows and q_len != kv_len put masked elements into both kinds
# (the index reads q and kv only as kv - q: the other tiles add one atomic per diagonal; 32x16
# tiles wrap each row around the tile's width up to twice)
RELATIVE = ("attention rel {{ param t: f32[H, 9] grad  score score + t[h, clamp(kv - q + 4, 0, 8)]"
            "  {mask} blocks fwd(m=16, n=16), bwd(m={m}, n=16) }}")


@pytest.mark.parametrize("mask, m", [("mask causal", 16), ("", 16), ("mask causal", 32)])
@pytest.mark.parametrize("M, N", [(17, 113), (113, 70), (1, 3)])
def test_relative_bias_gradient_on_tiles_of_one_bucket(mask, m, M, N):
    _check(_op(RELATIVE.format(mask=mask, m=m)), 2, 4, 2, M, N, 16, seed=3)


@pytest.mark.parametrize("index, diagonal", [
    ("clamp(kv - q + 4, 0, 8)", True), ("abs(q - kv)", True),
    ("kv + 1 - q", False), ("clamp(kv, 0, 8)", False), ("clamp(kv - q + floor(score), 0, 8)", False)])
def test_relative_reads_are_summed_by_diagonal(index, diagonal):
    """Only reads that see q and kv as kv - q (or q - kv), and not the score, take the dQ
    kernel's per-diagonal sums."""
    from attngen.lower import lower

    (attention,) = attngen.parse_and_check(
        f"attention d {{ param t: f32[9] grad  score score + t[{index}] }}")
    (term,) = lower(attention).grad_terms
    assert term.varying and (term.diagonal_offset is not None) == diagonal


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


def test_an_expanded_output_gradient_keeps_the_backward_on_tma(monkeypatch):
    """The gradient of out.sum(2) is expanded (stride 0 along the queries), which TMA cannot
    describe: the backward reads a dense copy, so dK/dV and dQ still launch with TMA, and the
    gradients match the reference's."""
    op = _op("attention tma_sum { mask causal }")
    launched = []
    real = op.module._launch
    monkeypatch.setattr(op.module, "_launch",
                        lambda kernel, grid, args, flags, trace: launched.append(flags["TMA"])
                        or real(kernel, grid, args, flags, trace))
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 33, 64, generator=gen, requires_grad=True) for _ in range(3))
    grads = torch.autograd.grad(op(q, k, v).sum(2).pow(2).sum(), (q, k, v))
    golden = [x.detach().double().requires_grad_() for x in (q, k, v)]
    expected = torch.autograd.grad(op.reference(*golden).sum(2).pow(2).sum(), golden)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    assert launched == [True] * 3  # forward, dK/dV, dQ


@pytest.mark.parametrize("tma", ["1", "0"])
def test_gradients_with_and_without_tma(tma, monkeypatch):
    """dQ (K and V, and its own Q and dO) and dK/dV (Q and dO) read through TMA descriptors and
    through pointers
    (ATTNGEN_TMA=0): both match the reference, with GQA, ragged lengths (q_len > kv_len too), a
    padded head dim (48 -> 64), a window with sinks (a gap) and an ALiBi-like head bias; the
    launches really took the path asked for."""
    monkeypatch.setenv("ATTNGEN_TMA", tma)
    op = _op("attention tma_grads { param slopes: f32[H]  score score + slopes[h] * (kv - q)"
             "  mask causal & window(40, 0) | kv < 4 }")
    launched = []
    real = op.module._launch
    monkeypatch.setattr(op.module, "_launch",
                        lambda kernel, grid, args, flags, trace: launched.append(flags["TMA"])
                        or real(kernel, grid, args, flags, trace))
    _check(op, 2, 4, 2, 113, 113, 48, seed=1)
    _check(op, 1, 4, 2, 70, 33, 48, seed=2)
    assert launched == [tma == "1"] * 6  # forward, dK/dV, dQ; twice

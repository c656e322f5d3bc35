"""The eager reference against independent, hand-written PyTorch formulas.

Every expected value here is computed from the documented semantics only, never from attngen's
internals: score = (q . k) * scale (default 1/sqrt(D)), then the spec's score expression, then the
mask (keep where true), softmax over keys, @ v. Positions are bottom-right aligned: query row i
sits at q = i + N - M, key j at kv = j. GQA: query head h reads kv head h // (Hq // Hkv). A row
whose every key is masked gives out = 0 and lse = -inf. An index outside a param's extent reads 0.
Goldens are float64 on CPU.

The default run is a covering subset (about 15 s on two cores; the full matrix about 25 s):

* every example on every length pair of ``MN_PAIRS`` (odd lengths 1, 3, 17, 113; q_len < kv_len
  too), with the heads (Hq x Hkv of 4x4, 4x1, 8x2) and head dim (16, 64) rotating so that each
  example meets every head layout and head dim (``test_default_cases_cover_every_value`` checks
  that);
* every inline spec on ``DEFAULT_INLINE_MN`` (1, 3, 17, 113, q_len < kv_len and q_len > kv_len),
  alternating between 1:1 and 4:1 GQA;
* the lower-precision check for every example in fp32 or fp16 (both dtypes used), four float
  literals (three that float32 cannot hold, one it can);
* unchanged: explicit scales, the examples at their real window and chunk sizes, builtin
  functions, floor division, packed-document and prefix patterns, fully masked rows (every row,
  the last row, rows before the sequence, empty keys), gradients and gradchecks, validation.

Specs are parsed and checked but not built: the reference needs no kernel module (one test checks
that ``attngen.load(...).reference`` is this same function).

``ATTNGEN_FULL_MATRIX=1`` runs the full cross products instead: every example x length pair x
GQA ratio x head dim, every inline spec x both GQA ratios x ``MN_PAIRS + MN_LONGER_Q``, every
example in both fp32 and fp16, and all eight float literals.
"""

from __future__ import annotations

import functools
import math
import os
import zlib
from pathlib import Path

import pytest
import torch

import attngen
from attngen.reference import reference as eager_reference

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
F64 = torch.float64
NEG_INF = float("-inf")
TOL = {"atol": 1e-12, "rtol": 1e-12}

MN_PAIRS = [(1, 1), (3, 3), (17, 17), (113, 113), (1, 17), (3, 113), (17, 113)]
# q_len > kv_len: the first M - N query rows sit at negative positions
MN_LONGER_Q = [(5, 3), (17, 5)]
GQA = [(4, 4), (4, 1), (8, 2)]
B = 3  # three rows, so prefix_lm can have a prefix of 0, one inside and one past kv_len
FULL_MATRIX = os.environ.get("ATTNGEN_FULL_MATRIX") == "1"
INLINE_GQA = [(4, 4), (8, 2)]
# the inline specs' default lengths: odd, q_len < kv_len and q_len > kv_len
DEFAULT_INLINE_MN = [(1, 1), (3, 3), (17, 17), (113, 113), (3, 113), (17, 5)]


class Reference:
    """A checked spec and its eager reference, ``attngen.reference.reference``: what
    ``AttentionOp.reference`` evaluates (``test_op_reference_is_this_reference`` checks that),
    without rendering and importing the spec's kernel module, which costs most of a second per
    spec and is tested in test_build.py and test_forward.py."""

    def __init__(self, attention):
        self.spec = attention
        self.name = attention.name

    def reference(self, q, k, v, **kwargs):
        return eager_reference(self.spec, q, k, v, **kwargs)


def _checked(source: str, path: str | None = None) -> Reference:
    (attention,) = attngen.parse_and_check(source, path)
    return Reference(attention)


@functools.cache
def example(name: str) -> Reference:
    path = EXAMPLES / f"{name}.attn"
    return _checked(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def inline(text: str) -> Reference:
    return _checked(text)


def _seed(*parts) -> int:
    """A seed that is stable across runs (str hashes are salted per process)."""
    return zlib.crc32(repr(parts).encode())


def make_qkv(b, hq, hkv, m, n, d, *, seed=0, dtype=F64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, m, d, generator=g, dtype=F64)
    k = torch.randn(b, hkv, n, d, generator=g, dtype=F64)
    v = torch.randn(b, hkv, n, d, generator=g, dtype=F64)
    return tuple(t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v))


# ---- the independent formula ------------------------------------------------------------------


def positions(m: int, n: int):
    """Absolute positions, bottom-right aligned: qpos [M, 1] and kpos [1, N]."""
    qpos = torch.arange(m).view(m, 1) + (n - m)
    kpos = torch.arange(n).view(1, n)
    return qpos, kpos


def pymask(m: int, n: int, pred) -> torch.Tensor:
    """A [M, N] bool mask from a predicate on Python ints (q, kv): Python's own // and %."""
    return torch.tensor([[bool(pred(i + n - m, j)) for j in range(n)] for i in range(m)])


def read_or_zero(table: torch.Tensor, b_idx, pos) -> torch.Tensor:
    """table[b, pos] for a [B, L] table, 0 where pos is outside [0, L); via Python lists."""
    rows = table.tolist()
    length = table.shape[1]
    return torch.tensor([[rows[b][p] if 0 <= p < length else 0 for p in pos] for b in b_idx])


def formula(q, k, v, keep, score_fn=None, scale=None):
    """softmax(masked_fill(score', ~keep, -inf)) @ v and the natural-log LSE.

    ``keep`` broadcasts to [B, Hq, M, N]; ``score_fn`` maps the scaled scores [B, Hq, M, N].
    Fully masked rows: out 0, lse -inf, and gradients that are zero, not NaN.
    """
    hq, d = q.shape[1], q.shape[-1]
    kv_head = torch.arange(hq) // (hq // k.shape[1])
    k, v = k[:, kv_head], v[:, kv_head]
    s = torch.einsum("bhmd,bhnd->bhmn", q, k) * (1.0 / math.sqrt(d) if scale is None else scale)
    if score_fn is not None:
        s = score_fn(s)
    keep = torch.as_tensor(keep).expand(s.shape)
    live = keep.any(dim=-1, keepdim=True)
    s = s.masked_fill(~keep, NEG_INF).masked_fill(~live, 0.0)
    p = torch.softmax(s, dim=-1).masked_fill(~live, 0.0)
    out = torch.einsum("bhmn,bhnd->bhmd", p, v)
    lse = torch.logsumexp(s, dim=-1).masked_fill(~live.squeeze(-1), NEG_INF)
    return out, lse


def check_against(op, q, k, v, params, keep, score_fn=None, scale=None, tol=TOL):
    out, lse = op.reference(q, k, v, scale=scale, return_lse=True, **params)
    b, hq, m, d = q.shape
    assert out.shape == (b, hq, m, d) and lse.shape == (b, hq, m)
    assert out.dtype == q.dtype and lse.dtype == q.dtype
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    to64 = lambda t: t.detach().to(F64)  # noqa: E731
    exp_out, exp_lse = formula(to64(q), to64(k), to64(v), keep, score_fn, scale)
    torch.testing.assert_close(to64(out), exp_out, **tol)
    torch.testing.assert_close(to64(lse), exp_lse, **tol)
    return out, lse


# ---- the examples: params, mask and score modification of each -------------------------------


def causal(qpos, kpos):
    return kpos <= qpos


def window(qpos, kpos, left, right=None):
    right = left if right is None else right
    return (qpos - left <= kpos) & (kpos <= qpos + right)


def sorted_doc_ids(b, n, g):
    """Random sorted document ids per row: a new document starts with probability 0.2."""
    starts = (torch.rand(b, n, generator=g) < 0.2).to(torch.int32)
    starts[:, 0] = 0
    return (torch.cumsum(starts, dim=1) + torch.randint(0, 3, (b, 1), generator=g)).to(torch.int32)


def doc_keep(doc, m, n):
    qpos, kpos = positions(m, n)
    doc_q = read_or_zero(doc, range(doc.shape[0]), qpos.flatten().tolist())  # [B, M]
    return (doc_q[:, :, None] == doc.to(torch.int64)[:, None, :]).unsqueeze(1)  # [B, 1, M, N]


def case_alibi(b, h, m, n, g):
    slopes = torch.rand(h, generator=g, dtype=torch.float32) * 0.5 + 0.01
    qpos, kpos = positions(m, n)
    dist = (kpos - qpos).to(F64)
    return ({"slopes": slopes}, causal(qpos, kpos),
            lambda s: s + slopes.to(F64).view(1, h, 1, 1) * dist)


def case_encoder(b, h, m, n, g):
    return {}, torch.ones(m, n, dtype=torch.bool), None


def case_gemma2_local(b, h, m, n, g):
    qpos, kpos = positions(m, n)
    return {}, causal(qpos, kpos) & window(qpos, kpos, 4096), lambda s: 50.0 * torch.tanh(s / 50.0)


def case_llama(b, h, m, n, g):
    qpos, kpos = positions(m, n)
    return {}, causal(qpos, kpos), None


def case_llama4_chunked(b, h, m, n, g):
    return {}, pymask(m, n, lambda q, kv: kv <= q and q // 8192 == kv // 8192), None


def case_mistral_swa(b, h, m, n, g):
    qpos, kpos = positions(m, n)
    return {}, causal(qpos, kpos) & window(qpos, kpos, 4096), None


def case_packed_docs(b, h, m, n, g):
    doc = sorted_doc_ids(b, n, g)
    qpos, kpos = positions(m, n)
    return {"doc": doc}, causal(qpos, kpos) & doc_keep(doc, m, n), None


def case_prefix_lm(b, h, m, n, g):
    # a prefix of 0, one inside [1, N] and one past kv_len
    prefix = torch.tensor([0, int(torch.randint(1, n + 1, (1,), generator=g)), n + 7][:b],
                          dtype=torch.int32)
    qpos, kpos = positions(m, n)
    keep = causal(qpos, kpos) | (kpos < prefix.view(b, 1, 1).to(torch.int64))
    return {"prefix": prefix}, keep.unsqueeze(1), None


def case_t5_bias(b, h, m, n, g):
    table = torch.randn(h, 257, generator=g, dtype=torch.float32)
    qpos, kpos = positions(m, n)
    bucket = (kpos - qpos + 128).clamp(0, 256)  # [M, N]
    return {"table": table}, torch.ones(m, n, dtype=torch.bool), \
        lambda s: s + table.to(F64)[:, bucket].unsqueeze(0)


CASES = {
    "alibi": case_alibi, "encoder": case_encoder, "gemma2_local": case_gemma2_local,
    "llama": case_llama, "llama4_chunked": case_llama4_chunked, "mistral_swa": case_mistral_swa,
    "packed_docs": case_packed_docs, "prefix_lm": case_prefix_lm, "t5_bias": case_t5_bias,
}


def test_every_example_has_a_formula():
    assert {p.stem for p in EXAMPLES.glob("*.attn")} == set(CASES)


@pytest.mark.parametrize("name", ["alibi", "packed_docs"])
def test_op_reference_is_this_reference(name):
    """The loaded op's ``reference`` (the public API) gives exactly what this file tests, and
    validates its inputs the same way."""
    op = attngen.load(EXAMPLES / f"{name}.attn")
    assert op.spec == example(name).spec
    m, n = 17, 40
    q, k, v = make_qkv(B, 4, 2, m, n, 16, seed=31)
    params, _, _ = CASES[name](B, 4, m, n, torch.Generator().manual_seed(6))
    for return_lse in (False, True):
        got = op.reference(q, k, v, scale=0.5, return_lse=return_lse, **params)
        want = example(name).reference(q, k, v, scale=0.5, return_lse=return_lse, **params)
        got, want = (list(x) if return_lse else [x] for x in (got, want))
        assert len(got) == len(want) == (2 if return_lse else 1)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=0, rtol=0)
    messages = []
    for ref in (op, example(name)):
        with pytest.raises(ValueError) as info:
            ref.reference(q, k, v)  # the param is missing
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "missing param" in messages[0]


def _example_head_dims(name):
    return (256,) if name == "gemma2_local" else (16, 64)


def _example_params(full=FULL_MATRIX):
    """Every example x length pair; GQA ratio and head dim either all (full) or rotating with
    the pair's and the example's index (7 consecutive indices meet all 3 x 2 combinations)."""
    out = []
    for j, name in enumerate(CASES):
        dims = _example_head_dims(name)
        for i, (m, n) in enumerate(MN_PAIRS):
            combos = [(g, d) for d in dims for g in GQA] if full else \
                [(GQA[(i + j) % len(GQA)], dims[(i + j) % len(dims)])]
            for (hq, hkv), d in combos:
                out.append(pytest.param(name, m, n, hq, hkv, d,
                                        id=f"{name}-M{m}-N{n}-H{hq}x{hkv}-D{d}"))
    return out


def _inline_params(full=FULL_MATRIX):
    """Every inline spec x lengths; GQA ratios all (full) or alternating."""
    out = []
    for j, name in enumerate(INLINE):
        for i, (m, n) in enumerate(MN_PAIRS + MN_LONGER_Q if full else DEFAULT_INLINE_MN):
            for hq, hkv in INLINE_GQA if full else [INLINE_GQA[(i + j) % len(INLINE_GQA)]]:
                out.append(pytest.param(name, m, n, hq, hkv, id=f"{name}-M{m}-N{n}-H{hq}x{hkv}"))
    return out


def test_default_cases_cover_every_value():
    """The default (covering) subsets still meet every value: each example every length pair,
    GQA ratio and head dim, each inline spec every default length and both GQA ratios."""
    cases = [p.values for p in _example_params(full=False)]
    for name in CASES:
        mine = [c for c in cases if c[0] == name]
        assert sorted((c[1], c[2]) for c in mine) == sorted(MN_PAIRS)
        assert {(c[3], c[4]) for c in mine} == set(GQA)
        assert {c[5] for c in mine} == set(_example_head_dims(name))
        # every head dim with more than one GQA ratio
        for d in _example_head_dims(name):
            assert len({(c[3], c[4]) for c in mine if c[5] == d}) >= 2
    assert {1, 3, 17, 113} <= {c[1] for c in cases}
    inline_cases = [p.values for p in _inline_params(full=False)]
    for name in INLINE:
        mine = [c for c in inline_cases if c[0] == name]
        assert sorted((c[1], c[2]) for c in mine) == sorted(DEFAULT_INLINE_MN)
        assert {(c[3], c[4]) for c in mine} == set(INLINE_GQA)
    assert any(m < n for m, n in DEFAULT_INLINE_MN) and any(m > n for m, n in DEFAULT_INLINE_MN)
    # and the full matrix is the cross product
    assert len(_example_params(full=True)) == sum(
        len(MN_PAIRS) * len(GQA) * len(_example_head_dims(n)) for n in CASES)
    assert len(_inline_params(full=True)) == \
        len(INLINE) * len(INLINE_GQA) * len(MN_PAIRS + MN_LONGER_Q)


@pytest.mark.parametrize("name, m, n, hq, hkv, d", _example_params())
def test_example_matches_formula(name, m, n, hq, hkv, d):
    g = torch.Generator().manual_seed(_seed(name, m, n, hq, hkv, d))
    q, k, v = make_qkv(B, hq, hkv, m, n, d, seed=m * 1000 + n)
    params, keep, score_fn = CASES[name](B, hq, m, n, g)
    out, _ = check_against(example(name), q, k, v, params, keep, score_fn)
    # return_lse=False returns the output alone
    alone = example(name).reference(q, k, v, **params)
    assert isinstance(alone, torch.Tensor)
    torch.testing.assert_close(alone, out, atol=0, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_example_with_explicit_scale(name):
    # a large scale makes gemma2's soft cap bite (scores well past +-50)
    m, n, d = 17, 40, (256 if name == "gemma2_local" else 32)
    q, k, v = make_qkv(B, 4, 2, m, n, d, seed=7)
    params, keep, score_fn = CASES[name](B, 4, m, n, torch.Generator().manual_seed(3))
    check_against(example(name), q, k, v, params, keep, score_fn, scale=9.0)


@pytest.mark.parametrize("name, m, n, d", [
    ("mistral_swa", 17, 4200, 16),       # the last rows lose the first keys
    ("mistral_swa", 1, 4098, 16),        # decode: q = 4097 sees kv 1..4097, not kv 0
    ("gemma2_local", 5, 4110, 256),
    ("llama4_chunked", 17, 8200, 16),    # rows before and after the chunk boundary at 8192
    ("llama4_chunked", 1, 8193, 16),     # q = 8192 starts a new chunk: sees only itself
])
def test_examples_at_their_real_window_and_chunk_sizes(name, m, n, d):
    q, k, v = make_qkv(1, 2, 1, m, n, d, seed=11)
    params, keep, score_fn = CASES[name](1, 2, m, n, torch.Generator().manual_seed(0))
    qpos, kpos = positions(m, n)
    assert not torch.equal(torch.as_tensor(keep).expand(m, n), causal(qpos, kpos))  # it matters
    check_against(example(name), q, k, v, params, keep, score_fn)


# ---- inline specs with windows and chunks small enough to matter ------------------------------


# Each builder: (b, h, m, n, generator, hkv) -> (params, keep, score_fn), from the semantics.


def _inline_mask(text, mask_fn, score_fn=None):
    def build(b, h, m, n, g, hkv):
        qpos, kpos = positions(m, n)
        return {}, mask_fn(qpos, kpos), score_fn
    return text, build


def _inline_pymask(text, pred):
    """A mask from a predicate on Python ints (q, kv, m, n): Python's own // and %."""
    return text, lambda b, h, m, n, g, hkv: ({}, pymask(m, n, lambda q, kv: pred(q, kv, m, n)),
                                             None)


def _case_alibi_window(b, h, m, n, g, hkv):
    params, keep, score_fn = case_alibi(b, h, m, n, g)
    qpos, kpos = positions(m, n)
    return params, keep & window(qpos, kpos, 5), score_fn


def _case_let(b, h, m, n, g, hkv):
    qpos, kpos = positions(m, n)
    d = (kpos - qpos).to(F64)
    return {}, ((kpos - qpos) <= 0) & ((kpos - qpos) > -7), lambda s: s + 0.125 * d


def _case_doc_only(b, h, m, n, g, hkv):
    doc = torch.randint(0, 3, (b, n), generator=g, dtype=torch.int32)  # non-monotone ids
    return {"doc": doc}, doc_keep(doc, m, n), None


def _case_scalars(b, h, m, n, g, hkv):
    qpos, kpos = positions(m, n)
    return ({"w": 3, "c": 2.5}, causal(qpos, kpos) & window(qpos, kpos, 3),
            lambda s: 2.5 * torch.tanh(s / 2.5))


def _case_bool_param(b, h, m, n, g, hkv):
    allow = torch.rand(b, n, generator=g) < 0.6
    qpos, kpos = positions(m, n)
    return {"allow": allow}, (causal(qpos, kpos) & allow[:, None, :]).unsqueeze(1), None


def _case_q_indexed(b, h, m, n, g, hkv):
    # bias[q, kv] with the absolute query position: rows where q >= q_len read 0
    bias = torch.randn(m, n, generator=g, dtype=torch.float32)
    qpos, _ = positions(m, n)
    rows = torch.stack([bias[p].to(F64) if 0 <= p < m else torch.zeros(n, dtype=F64)
                        for p in qpos.flatten().tolist()])
    return {"bias": bias}, torch.ones(m, n, dtype=torch.bool), lambda s: s + rows


def _case_small_table(b, h, m, n, g, hkv):
    # t[h, kv - q + 4] for a table of 8 columns: distances outside [-4, 3] read 0
    t = torch.randn(h, 8, generator=g, dtype=torch.float32)
    qpos, kpos = positions(m, n)
    col = kpos - qpos + 4
    inside = (col >= 0) & (col < 8)
    bias = torch.where(inside, t.to(F64)[:, col.clamp(0, 7)], torch.zeros((), dtype=F64))
    return {"t": t}, torch.ones(m, n, dtype=torch.bool), lambda s: s + bias


def _case_heads(b, h, m, n, g, hkv):
    # hkv is the kv head a query head reads: h // (Hq // Hkv)
    hq_idx = torch.arange(h).view(1, h, 1, 1)
    kv_of = hq_idx // (h // hkv)
    qpos, kpos = positions(m, n)
    keep = (kv_of == 0) | causal(qpos, kpos)
    return {}, keep, lambda s: s + 0.25 * hq_idx.to(F64) - 0.5 * kv_of.to(F64)


def _case_hkv_param(b, h, m, n, g, hkv):
    sv = torch.randn(hkv, generator=g, dtype=torch.float32)
    qpos, kpos = positions(m, n)
    per_q_head = sv.to(F64)[torch.arange(h) // (h // hkv)].view(1, h, 1, 1)
    return ({"s": sv}, causal(qpos, kpos),
            lambda s: s + per_q_head * (kpos - qpos).to(F64) * 0.125)


INLINE = {
    "window5": _inline_mask("attention w { mask window(5) }",
                            lambda qp, kp: window(qp, kp, 5)),
    "causal_window5": _inline_mask("attention w { mask causal & window(5) }",
                                   lambda qp, kp: causal(qp, kp) & window(qp, kp, 5)),
    "window3_2": _inline_mask("attention w { mask window(3, 2) }",
                              lambda qp, kp: window(qp, kp, 3, 2)),
    "causal_window3_2": _inline_mask("attention w { mask causal & window(3, 2) }",
                                     lambda qp, kp: causal(qp, kp) & window(qp, kp, 3, 2)),
    "window0": _inline_mask("attention w { mask window(0) }", lambda qp, kp: kp == qp),
    "chunk4": _inline_pymask("attention c { mask chunk(4) }",
                             lambda q, kv, m, n: q // 4 == kv // 4),
    "causal_chunk4": _inline_pymask("attention c { mask causal & chunk(4) }",
                                    lambda q, kv, m, n: kv <= q and q // 4 == kv // 4),
    "softcap_window5": _inline_mask(
        "attention g { score 30.0 * tanh(score / 30.0)\n mask causal & window(5) }",
        lambda qp, kp: causal(qp, kp) & window(qp, kp, 5), lambda s: 30.0 * torch.tanh(s / 30.0)),
    "drop": _inline_mask("attention d { mask causal\n drop q - kv > 6 }",
                         lambda qp, kp: causal(qp, kp) & ~(qp - kp > 6)),
    "let": ("attention l { let d = kv - q\n score score + 0.125 * d\n mask d <= 0 & d > -7 }",
            _case_let),
    "lengths": _inline_pymask("attention ln { mask kv >= kv_len - 4 | kv < q_len - 3 }",
                              lambda q, kv, m, n: kv >= n - 4 or kv < m - 3),
    "heads": ("attention hd { score score + 0.25 * h - 0.5 * hkv\n mask hkv == 0 | causal }",
              _case_heads),
    "alibi_window5": ("attention aw { param slopes: f32[H]\n score score + slopes[h] * (kv - q)\n"
                      " mask causal & window(5) }", _case_alibi_window),
    "hkv_param": ("attention hk { param s: f32[HKV]\n score score + s[hkv] * (kv - q) * 0.125\n"
                  " mask causal }", _case_hkv_param),
    "document_only": ("attention dd { param doc: i32[B, KV]\n mask document(doc) }",
                      _case_doc_only),
    "scalar_params": ("attention sc { param w: i32\n param c: f32\n score c * tanh(score / c)\n"
                      " mask causal & window(w) }", _case_scalars),
    "bool_param": ("attention bp { param allow: bool[B, KV]\n mask causal & allow[b, kv] }",
                   _case_bool_param),
    "q_indexed_param": ("attention qi { param bias: f32[Q, KV]\n score score + bias[q, kv] }",
                        _case_q_indexed),
    "small_table": ("attention st { param t: f32[H, 8]\n score score + t[h, kv - q + 4] }",
                    _case_small_table),
}


@pytest.mark.parametrize("name, m, n, hq, hkv", _inline_params())
def test_inline_spec_matches_formula(name, m, n, hq, hkv):
    g = torch.Generator().manual_seed(_seed(name, m, n, hq))
    q, k, v = make_qkv(B, hq, hkv, m, n, 16, seed=m * 1000 + n + 1)
    text, build = INLINE[name]
    params, keep, score_fn = build(B, hq, m, n, g, hkv)
    check_against(inline(text), q, k, v, params, keep, score_fn)


def test_scalar_params_as_zero_dim_tensors():
    op = inline(INLINE["scalar_params"][0])
    q, k, v = make_qkv(2, 2, 2, 9, 9, 16, seed=5)
    params, keep, score_fn = _case_scalars(2, 2, 9, 9, None, 2)
    as_tensors = {"w": torch.tensor(3, dtype=torch.int32), "c": torch.tensor(2.5)}
    check_against(op, q, k, v, as_tensors, keep, score_fn)
    torch.testing.assert_close(op.reference(q, k, v, **as_tensors), op.reference(q, k, v, **params),
                               atol=0, rtol=0)


FUNCTIONS_SPEC = """attention fx {
    let d = kv - q
    score where(d < -2, score, score * 0.5) + sigmoid(score) + cos(score)
          + min(d, -1) * 0.25 + max(-d, 2) * 0.125 + abs(d) ** 2 * 0.0625
          - floor(d / 4.0) * 0.5 + ceil(q / 3.0) * 0.25 + clamp(d, -3, 1) * 0.75
          + sqrt(kv + 1) * 0.5 + exp(-abs(d) / 8.0) + 0.5 ** abs(d) - tanh(d / 5.0)
          + log(kv + 2.0) * 0.5 + exp2(-abs(d) / 4.0) + log2(q_len + 1.0) + rsqrt(kv + 1.0)
          + sin(d / 3.0)
    mask q - 5 <= kv <= q + 1 & !(kv == q - 2) | kv == 0
}"""


def _functions_bias(q, kv, m):
    d = kv - q
    return (min(d, -1) * 0.25 + max(-d, 2) * 0.125 + abs(d) ** 2 * 0.0625
            - math.floor(d / 4.0) * 0.5 + math.ceil(q / 3.0) * 0.25 + max(-3, min(d, 1)) * 0.75
            + math.sqrt(kv + 1) * 0.5 + math.exp(-abs(d) / 8.0) + 0.5 ** abs(d)
            - math.tanh(d / 5.0) + math.log(kv + 2.0) * 0.5 + 2.0 ** (-abs(d) / 4.0)
            + math.log2(m + 1.0) + 1.0 / math.sqrt(kv + 1.0) + math.sin(d / 3.0))


@pytest.mark.parametrize("m, n", MN_PAIRS + MN_LONGER_Q)
def test_builtin_functions_and_chained_comparisons(m, n):
    bias = torch.tensor([[_functions_bias(i + n - m, j, m) for j in range(n)] for i in range(m)],
                        dtype=F64)
    keep = pymask(m, n, lambda q, kv: (q - 5 <= kv <= q + 1 and not kv == q - 2) or kv == 0)
    near = pymask(m, n, lambda q, kv: kv - q < -2)
    q, k, v = make_qkv(2, 4, 2, m, n, 16, seed=m * 7 + n)

    def score_fn(s):
        return torch.where(near, s, s * 0.5) + torch.sigmoid(s) + torch.cos(s) + bias

    check_against(inline(FUNCTIONS_SPEC), q, k, v, {}, keep, score_fn)


# ---- packed documents and prefixes --------------------------------------------------------------


@pytest.mark.parametrize("m, n", MN_PAIRS + MN_LONGER_Q)
@pytest.mark.parametrize("pattern", ["sorted", "non_monotone", "alternating"])
def test_packed_docs_id_patterns(pattern, m, n):
    g = torch.Generator().manual_seed(m * 31 + n)
    if pattern == "sorted":
        doc = sorted_doc_ids(2, n, g)
    elif pattern == "non_monotone":  # a document may resume after another one
        doc = torch.randint(0, 3, (2, n), generator=g, dtype=torch.int32)
    else:
        doc = torch.stack([torch.arange(n) % 2, (torch.arange(n) // 3) % 2]).to(torch.int32) + 5
    q, k, v = make_qkv(2, 4, 2, m, n, 16, seed=m + n)
    qpos, kpos = positions(m, n)
    keep = pymask(m, n, lambda qq, kv: kv <= qq).unsqueeze(0) & doc_keep(doc, m, n).squeeze(1)
    check_against(example("packed_docs"), q, k, v, {"doc": doc}, keep.unsqueeze(1))


@pytest.mark.parametrize("m, n", MN_PAIRS + MN_LONGER_Q)
def test_prefix_lm_prefixes(m, n):
    prefix = torch.tensor([0, 1, n // 2, n, n + 1, 10 * n + 3], dtype=torch.int32)
    b = prefix.numel()
    q, k, v = make_qkv(b, 2, 1, m, n, 16, seed=m + 2 * n)
    keep = torch.stack([pymask(m, n, lambda qq, kv, p=p: kv <= qq or kv < p)
                        for p in prefix.tolist()]).unsqueeze(1)
    out, lse = check_against(example("prefix_lm"), q, k, v, {"prefix": prefix}, keep)
    # a prefix >= kv_len makes the row fully bidirectional: same as the encoder
    enc = example("encoder").reference(q, k, v)
    torch.testing.assert_close(out[prefix >= n], enc[prefix >= n], **TOL)


# ---- fully masked rows ----------------------------------------------------------------------


def _assert_no_nan_grads(*tensors):
    for t in tensors:
        assert t.grad is not None and not torch.isnan(t.grad).any(), "NaN gradient"


@pytest.mark.parametrize("text", ["attention z { mask kv < 0 }", "attention z { mask none }",
                                  "attention z { drop all }", "attention z { mask kv > kv_len }"])
@pytest.mark.parametrize("m, n", [(1, 1), (3, 113), (17, 5)])
def test_every_row_masked(text, m, n):
    op = inline(text)
    q, k, v = make_qkv(2, 4, 2, m, n, 16, seed=3, requires_grad=True)
    out, lse = op.reference(q, k, v, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(lse, torch.full_like(lse, NEG_INF))
    # backward through out and through lse: zero gradients, never NaN
    torch.autograd.backward([out, lse], [torch.randn_like(out), torch.ones_like(lse)])
    _assert_no_nan_grads(q, k, v)
    for t in (q, k, v):
        assert torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("m, n", MN_PAIRS + MN_LONGER_Q)
def test_last_row_masked_by_kv_greater_than_q(m, n):
    # the row at q = N - 1 has no key kv > q: fully masked, the others are not
    op = inline("attention up { mask kv > q }")
    q, k, v = make_qkv(2, 4, 2, m, n, 16, seed=13, requires_grad=True)
    qpos, kpos = positions(m, n)
    out, lse = check_against(op, q, k, v, {}, kpos > qpos)
    assert torch.equal(out[:, :, -1], torch.zeros_like(out[:, :, -1]))
    assert (lse[:, :, -1] == NEG_INF).all()
    assert torch.isfinite(lse[:, :, :-1]).all()
    _check_grads_against_formula(op, q, k, v, {}, kpos > qpos)


def _check_grads_against_formula(op, q, k, v, params, keep, score_fn=None, grad_params=()):
    """Backward of sum(out * w) + sum(finite lse) through the reference and the formula."""
    out, lse = op.reference(q, k, v, return_lse=True, **params)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    live = torch.isfinite(lse)
    loss = (out * w).sum() + lse.masked_fill(~live, 0.0).sum()
    leaves = [q, k, v, *(params[p] for p in grad_params)]
    got = torch.autograd.grad(loss, leaves)
    for gr in got:
        assert not torch.isnan(gr).any()
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    exp_out, exp_lse = formula(q2, k2, v2, keep, score_fn)
    exp_loss = (exp_out * w).sum() + exp_lse.masked_fill(~live, 0.0).sum()
    want = torch.autograd.grad(exp_loss, [q2, k2, v2])
    for gr, wr in zip(got, want):
        torch.testing.assert_close(gr, wr, atol=1e-11, rtol=1e-11)
    return got


@pytest.mark.parametrize("name", ["llama", "packed_docs", "prefix_lm", "mistral_swa"])
@pytest.mark.parametrize("m, n", MN_LONGER_Q + [(9, 1)])
def test_rows_before_the_sequence_are_masked(name, m, n):
    # q_len > kv_len: the first M - N rows (negative positions) see no key (prefix 0 here)
    q, k, v = make_qkv(2, 4, 2, m, n, 16, seed=17, requires_grad=True)
    qpos, kpos = positions(m, n)
    params = {"packed_docs": {"doc": torch.zeros(2, n, dtype=torch.int32)},
              "prefix_lm": {"prefix": torch.zeros(2, dtype=torch.int32)}}.get(name, {})
    keep = causal(qpos, kpos)
    out, lse = check_against(example(name), q, k, v, params, keep)
    lead = m - n
    assert torch.equal(out[:, :, :lead], torch.zeros_like(out[:, :, :lead]))
    assert (lse[:, :, :lead] == NEG_INF).all() and torch.isfinite(lse[:, :, lead:]).all()
    gq, _, _ = _check_grads_against_formula(example(name), q, k, v, params, keep)
    assert torch.equal(gq[:, :, :lead], torch.zeros_like(gq[:, :, :lead]))


@pytest.mark.parametrize("with_param", [False, True], ids=["score_only", "float_param"])
def test_masked_positions_leak_no_nan_into_gradients(with_param):
    m = n = 6
    text = ("attention r { param c: f32[H] grad\n score score / (q - kv) + c[h] / (q - kv)\n"
            " mask kv < q }" if with_param else "attention r { score score / (q - kv)\n mask kv < q }")
    q, k, v = make_qkv(1, 2, 2, m, n, 16, seed=29, requires_grad=True)
    c = torch.tensor([0.5, -0.25], requires_grad=True)
    params = {"c": c} if with_param else {}
    qpos, kpos = positions(m, n)
    keep = kpos < qpos
    # the same function, written with a finite stand-in (0) at the masked positions
    inv = torch.where(keep, 1.0 / (qpos - kpos).clamp(min=1).to(F64), torch.zeros((), dtype=F64))
    c64 = c.detach().to(F64).requires_grad_()
    score_fn = (lambda s: s * inv + c64.view(1, 2, 1, 1) * inv) if with_param else \
        (lambda s: s * inv)
    out, lse = check_against(inline(text), q, k, v, params, keep, score_fn)  # forward is fine
    got = _check_grads_against_formula(inline(text), q, k, v, params, keep, score_fn,
                                       grad_params=("c",) if with_param else ())
    if with_param:
        exp_out, exp_lse = formula(q.detach(), k.detach(), v.detach(), keep, score_fn)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
        live = torch.isfinite(exp_lse)
        (want,) = torch.autograd.grad(
            (exp_out * w).sum() + exp_lse.masked_fill(~live, 0.0).sum(), [c64])
        torch.testing.assert_close(got[3].to(F64), want, atol=1e-6, rtol=1e-6)


# ---- gradients ----------------------------------------------------------------------------------

GB, GH, GM, GN, GD = 1, 2, 3, 5, 16


def _tiny(requires_grad=True, m=GM, n=GN, seed=0):
    return make_qkv(GB, GH, GH, m, n, GD, seed=seed, requires_grad=requires_grad)


def _with_finite_lse(result):
    out, lse = result
    return out, lse.masked_fill(torch.isinf(lse), 0.0)


def test_gradcheck_alibi_qkv():
    slopes = torch.tensor([0.5, 0.125], dtype=torch.float32)
    op = example("alibi")
    assert torch.autograd.gradcheck(
        lambda q, k, v: op.reference(q, k, v, slopes=slopes, return_lse=True), _tiny())


def _gradcheck_f32_param(op, name, value, q, k, v):
    """Gradcheck a param declared f32 (the reference rejects float64 for it): the float64 leaf is
    cast to float32 inside, so the finite-difference step has to be far above f32 resolution."""
    leaf = value.to(F64).requires_grad_()
    fn = lambda p: op.reference(q, k, v, return_lse=True, **{name: p.to(torch.float32)})  # noqa: E731
    assert torch.autograd.gradcheck(fn, (leaf,), eps=1e-3, atol=1e-4, rtol=1e-3)


def test_gradcheck_alibi_slopes():
    q, k, v = _tiny(requires_grad=False)
    _gradcheck_f32_param(example("alibi"), "slopes",
                         torch.tensor([0.5, 0.125], dtype=torch.float32), q, k, v)


def test_gradcheck_t5_bias_table():
    q, k, v = _tiny(requires_grad=False)
    table = torch.randn(GH, 257, generator=torch.Generator().manual_seed(2))
    _gradcheck_f32_param(example("t5_bias"), "table", table, q, k, v)
    op = example("t5_bias")
    assert torch.autograd.gradcheck(
        lambda q, k, v: op.reference(q, k, v, table=table, return_lse=True), _tiny())


@pytest.mark.parametrize("name", ["alibi", "t5_bias"])
def test_param_gradient_matches_formula(name):
    m, n = 7, 11
    q, k, v = make_qkv(2, 4, 2, m, n, 16, seed=21, requires_grad=True)
    params, keep, _ = CASES[name](2, 4, m, n, torch.Generator().manual_seed(4))
    pname = next(iter(params))
    param = params[pname].clone().requires_grad_()
    out, lse = example(name).reference(q, k, v, return_lse=True, **{pname: param})
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    (got,) = torch.autograd.grad((out * w).sum() + lse.sum(), [param])
    assert got.dtype == torch.float32
    p64 = params[pname].to(F64).requires_grad_()
    qpos, kpos = positions(m, n)
    if name == "alibi":
        score_fn = lambda s: s + p64.view(1, 4, 1, 1) * (kpos - qpos).to(F64)  # noqa: E731
    else:
        bucket = (kpos - qpos + 128).clamp(0, 256)
        score_fn = lambda s: s + p64[:, bucket].unsqueeze(0)  # noqa: E731
    exp_out, exp_lse = formula(q.detach(), k.detach(), v.detach(), keep, score_fn)
    (want,) = torch.autograd.grad((exp_out * w).sum() + exp_lse.sum(), [p64])
    torch.testing.assert_close(got.to(F64), want, atol=1e-5, rtol=1e-6)
    _check_grads_against_formula(example(name), q, k, v, params, keep,
                                 CASES[name](2, 4, m, n, torch.Generator().manual_seed(4))[2])


def test_gradcheck_softcap():
    op = inline("attention s { score 30.0 * tanh(score / 30.0)\n mask causal }")
    q, k, v = _tiny()
    with torch.no_grad():
        q.mul_(20.0)  # scores of tens: tanh is well past its linear part
    assert torch.autograd.gradcheck(lambda q, k, v: op.reference(q, k, v, return_lse=True),
                                    (q, k, v))


@pytest.mark.parametrize("text, m, n", [
    ("attention up { mask kv > q }", GM, GN),  # the last row is fully masked
    ("attention c { mask causal }", 5, 3),      # the first two rows are fully masked
])
def test_gradcheck_with_fully_masked_rows(text, m, n):
    op = inline(text)
    q, k, v = _tiny(m=m, n=n)
    _, lse = op.reference(q, k, v, return_lse=True)
    assert torch.isinf(lse).any() and torch.isfinite(lse).any()
    assert torch.autograd.gradcheck(
        lambda q, k, v: _with_finite_lse(op.reference(q, k, v, return_lse=True)), (q, k, v))


# ---- Python's floor semantics for // and % ---------------------------------------------------

FLOOR_SPECS = {
    "positive_divisor": (
        "attention fl {\n"
        " score score + 0.25 * ((kv - q) // 3) + 0.5 * ((kv - q) % 3)\n"
        "       + 0.375 * ((kv - q) / 2.0 // 1.5) + 0.625 * ((kv - q) / 2.0 % 1.5)\n"
        " mask ((kv - q) // 3) % 2 == 0 | (kv - q) % 3 == 1\n}",
        lambda r: 0.25 * (r // 3) + 0.5 * (r % 3) + 0.375 * ((r / 2.0) // 1.5)
        + 0.625 * ((r / 2.0) % 1.5),
        lambda r: (r // 3) % 2 == 0 or r % 3 == 1,
        lambda r: int(r / 3) % 2 == 0 or math.fmod(r, 3) == 1),  # C-style: truncation
    "negative_divisor": (
        "attention fn {\n"
        " score score + 0.125 * ((q - kv) // -4) - 0.25 * ((kv - q) % -4)\n"
        " mask (kv - q) % -4 != -1 & (q - kv) // -4 != -1\n}",
        lambda r: 0.125 * ((-r) // -4) - 0.25 * (r % -4),
        lambda r: r % -4 != -1 and (-r) // -4 != -1,
        lambda r: math.fmod(r, -4) != -1 and int(-r / -4) != -1),
}


@pytest.mark.parametrize("m, n", [(7, 11), (11, 7), (13, 13)])
@pytest.mark.parametrize("which", list(FLOOR_SPECS))
def test_floor_division_and_modulo_follow_python(which, m, n):
    text, bias_fn, keep_fn, trunc_keep_fn = FLOOR_SPECS[which]
    keep = pymask(m, n, lambda q, kv: keep_fn(kv - q))
    # the test discriminates: C-style truncation would give another mask
    assert not torch.equal(keep, pymask(m, n, lambda q, kv: trunc_keep_fn(kv - q)))
    # and torch's floor rounding mode agrees with Python's ints
    qpos, kpos = positions(m, n)
    rel = kpos - qpos
    if which == "positive_divisor":
        torch_keep = (torch.div(rel, 3, rounding_mode="floor").remainder(2) == 0) | \
            (rel.remainder(3) == 1)
    else:
        torch_keep = (rel.remainder(-4) != -1) & (torch.div(-rel, -4, rounding_mode="floor") != -1)
    assert torch.equal(keep, torch_keep)
    bias = torch.tensor([[bias_fn(j - (i + n - m)) for j in range(n)] for i in range(m)],
                        dtype=F64)
    q, k, v = make_qkv(2, 2, 2, m, n, 16, seed=m * n)
    check_against(inline(text), q, k, v, {}, keep, lambda s: s + bias)


# ---- float literals ------------------------------------------------------------------------


def _literal_check(literal):
    text = f"attention lit {{ score score + {literal!r} * (kv - q) }}"
    m, n = 7, 11
    qpos, kpos = positions(m, n)
    dist = (kpos - qpos).to(F64)
    q, k, v = make_qkv(2, 2, 2, m, n, 16, seed=23)
    check_against(inline(text), q, k, v, {}, torch.ones(m, n, dtype=torch.bool),
                  lambda s: s + literal * dist)


# literals float32 cannot hold exactly must keep float64 precision in a float64 golden
# (regression: they were once built as float32 tensors, 0.1 -> 0.10000000149011612)
@pytest.mark.parametrize("literal", [0.5, 0.375, 1.25, 30.0, 0.1, 0.3, 1e-3, 2.0 / 3.0]
                         if FULL_MATRIX else [0.375, 0.1, 1e-3, 2.0 / 3.0])
def test_float_literals_keep_float64_precision(literal):
    _literal_check(literal)


# ---- lower precision ----------------------------------------------------------------------------


LOWER = {"fp32": (torch.float32, {"atol": 2e-5, "rtol": 2e-5}),
         "fp16": (torch.float16, {"atol": 3e-2, "rtol": 3e-2})}


def _lower_precision_params(full=FULL_MATRIX):
    """Every example in both dtypes (full) or in one, alternating (both dtypes used)."""
    dtypes = list(LOWER)
    return [pytest.param(name, *LOWER[dt], id=f"{dt}-{name}")
            for j, name in enumerate(CASES)
            for dt in (dtypes if full else [dtypes[j % len(dtypes)]])]


def test_lower_precision_default_uses_both_dtypes():
    cases = [p.values for p in _lower_precision_params(full=False)]
    assert sorted(c[0] for c in cases) == sorted(CASES)
    assert {c[1] for c in cases} == {dt for dt, _ in LOWER.values()}


@pytest.mark.parametrize("name, dtype, tol", _lower_precision_params())
def test_lower_precision_close_to_float64(name, dtype, tol):
    m, n = 17, 113
    d = 256 if name == "gemma2_local" else 64
    q, k, v = make_qkv(B, 8, 2, m, n, d, seed=9, dtype=dtype)
    params, keep, score_fn = CASES[name](B, 8, m, n, torch.Generator().manual_seed(5))
    out, lse = check_against(example(name), q, k, v, params, keep, score_fn, tol=tol)
    assert out.dtype == dtype and lse.dtype == dtype
    # and close to the float64 reference itself
    out64 = example(name).reference(*(t.to(F64) for t in (q, k, v)), **params)
    torch.testing.assert_close(out.to(F64), out64, **tol)


# ---- degenerate lengths -------------------------------------------------------------------------


def test_empty_query():
    q, k, v = make_qkv(2, 4, 2, 0, 9, 16)
    out, lse = example("llama").reference(q, k, v, return_lse=True)
    assert out.shape == (2, 4, 0, 16) and lse.shape == (2, 4, 0)


@pytest.mark.parametrize("name", ["llama", "encoder", "alibi", "prefix_lm"])
def test_empty_keys_every_row_masked(name):
    # kv_len == 0: every row has no key, so out 0 and lse -inf; backward gives zeros, not NaN
    # (regression: amax() over the empty key dimension once raised IndexError)
    q, k, v = make_qkv(2, 4, 2, 3, 0, 16, requires_grad=True)
    params = {"alibi": {"slopes": torch.ones(4)},
              "prefix_lm": {"prefix": torch.tensor([0, 5], dtype=torch.int32)}}.get(name, {})
    out, lse = example(name).reference(q, k, v, return_lse=True, **params)
    assert out.shape == (2, 4, 3, 16) and lse.shape == (2, 4, 3)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(lse, torch.full_like(lse, NEG_INF))
    torch.autograd.backward([out, lse], [torch.randn_like(out), torch.ones_like(lse)])
    _assert_no_nan_grads(q, k, v)
    assert torch.equal(q.grad, torch.zeros_like(q))


# ---- input validation ---------------------------------------------------------------------------


def _raises(fn, *substrings):
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    for s in substrings:
        assert s in message, f"{s!r} not in {message!r}"
    return message


def test_rejects_wrong_ndim():
    q, k, v = make_qkv(1, 2, 2, 3, 5, 16)
    op = example("llama")
    _raises(lambda: op.reference(q[0], k, v), "q", "4 dimensions", "got 3")
    _raises(lambda: op.reference(q, k.unsqueeze(0), v), "k must", "4 dimensions", "got 5")
    _raises(lambda: op.reference(q, k, v[0, 0]), "v must", "4 dimensions", "got 2")


def test_rejects_heads_not_a_multiple():
    q, _, _ = make_qkv(1, 4, 4, 3, 5, 16)
    _, k, v = make_qkv(1, 3, 3, 3, 5, 16)
    _raises(lambda: example("llama").reference(q, k, v), "q's 4 heads", "k's 3 heads", "multiple")


def test_rejects_missing_param():
    q, k, v = make_qkv(1, 2, 2, 3, 5, 16)
    _raises(lambda: example("alibi").reference(q, k, v), "missing param", "slopes")
    _raises(lambda: example("packed_docs").reference(q, k, v), "missing param", "doc")


def test_rejects_extra_param():
    q, k, v = make_qkv(1, 2, 2, 3, 5, 16)
    _raises(lambda: example("llama").reference(q, k, v, slopes=torch.ones(2)),
            "unexpected param", "slopes")
    _raises(lambda: example("alibi").reference(q, k, v, slopes=torch.ones(2), bogus=1),
            "unexpected param", "bogus")


def test_rejects_wrong_param_shape():
    q, k, v = make_qkv(2, 4, 2, 3, 5, 16)
    _raises(lambda: example("alibi").reference(q, k, v, slopes=torch.ones(2)),
            "slopes", "shape", "[4]")  # H means the query heads
    _raises(lambda: example("t5_bias").reference(q, k, v, table=torch.ones(4, 256)),
            "table", "shape", "[4, 257]")
    _raises(lambda: example("packed_docs").reference(
        q, k, v, doc=torch.zeros(2, 3, dtype=torch.int32)), "doc", "shape", "[2, 5]")
    _raises(lambda: example("prefix_lm").reference(q, k, v, prefix=3), "prefix", "tensor")


def test_rejects_wrong_param_dtype():
    q, k, v = make_qkv(2, 4, 2, 3, 5, 16)
    _raises(lambda: example("alibi").reference(q, k, v, slopes=torch.ones(4, dtype=F64)),
            "slopes", "dtype", "float32")
    _raises(lambda: example("packed_docs").reference(
        q, k, v, doc=torch.zeros(2, 5, dtype=torch.int64)), "doc", "dtype", "int32")
    _raises(lambda: example("prefix_lm").reference(
        q, k, v, prefix=torch.zeros(2, dtype=torch.float32)), "prefix", "dtype")
    op = inline(INLINE["scalar_params"][0])
    _raises(lambda: op.reference(q, k, v, w=3.0, c=2.5), "param w", "i32")
    _raises(lambda: op.reference(q, k, v, w=True, c=2.5), "param w", "i32")


def test_rejects_bad_head_dim_and_mismatched_inputs():
    q, k, v = make_qkv(1, 2, 2, 3, 5, 64)
    _raises(lambda: example("gemma2_local").reference(q, k, v), "head_dim 64", "256")
    q8, k8, v8 = make_qkv(1, 2, 2, 3, 5, 8)
    _raises(lambda: example("llama").reference(q8, k8, v8), "head_dim", "16..256")
    _raises(lambda: example("llama").reference(q, k[..., :32], v[..., :32]), "head_dim")
    _raises(lambda: example("llama").reference(q, k, v[:, :, :4]), "k and v")
    _raises(lambda: example("llama").reference(q, k.float(), v), "dtype")
    _raises(lambda: example("llama").reference(q.long(), k, v), "q must", "floating")

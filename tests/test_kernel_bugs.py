"""Kernel bugs found by the numerics work and the valid-spec fuzzing: fixed ones as regression
tests ([Fixed]), open ones as strict xfail tests ([Bug]) that fail as XPASS once fixed, so the
marker comes off with the fix.

All valid specs, all compared with the float64 reference on small fp32 shapes through the Triton
interpreter.
"""

from __future__ import annotations

import functools

import pytest
import torch

import attngen
from attngen import runtime

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]


@functools.cache
def _load(text: str) -> attngen.AttentionOp:
    return attngen.load(text)


def _check(text, m, n, params=None, *, backward=False, heads=(2, 1)):
    op = _load(text)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads[0], m, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(1, heads[1], n, 16, generator=g, requires_grad=True) for _ in range(2))
    params = params or {}
    out = op(q, k, v, **params)
    gold = op.reference(q.double(), k.double(), v.double(), **params)
    assert (out.double() - gold).abs().max().item() <= 1e-4 * max(gold.abs().max().item(), 1.0)
    if backward:
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# [Fixed: lower.py gives such scores the tile's shape] A score constant along the keys (it
# reads neither `score` nor `kv`: a literal, h, b,
# lengths, scalar params, q) is not broadcast to the [BLOCK_M, BLOCK_N] tile: the forward's FULL
# tiles (no mask, or tiles inside it; PARTIAL tiles go through tl.where(keep, s, -INF), which
# broadcasts) run `s = 0.5` then `tl.max(s, 1)`: "axis 1 out of bounds for shape []" ([M, 1] for
# a score over q: "input and other must have equal reduction dimensions" in tl.dot). Lengths of
# one tile (<= 64 in the interpreter) pass. Where: attngen/lower.py's score hook or the
# `s = {{ score_hook }}` line of templates/fwd.py.jinja (and bwd.py.jinja).
@pytest.mark.parametrize("score", ["0.5 * h", "0.1 * q"])
def test_score_constant_along_keys(score):
    _check(f"attention const_score {{ score {score} }}", 70, 70)


# [Fixed: the dQ kernel now takes the document runs before the gradient buffers] A `grad`
# float param together with a document() mask broke the backward's dQ launch:
# the dQ kernel takes (params, G0, G0_numel, doc_runs_T, doc_sorted_T, grad_rows, ...), the
# launcher passes param_args (params then `*_documents(...)`) then grad_args, so the document
# runs and the gradient buffers swap places: "Unsupported ptr type triton.language.int32 in
# `tl.load`" at `doc_sorted1 = tl.load(doc_sorted_doc + off_b) != 0` in NAME_bwd_dq, whether or
# not the param requires grad at the call. Where: `_launch_bwd` in templates/module.py.jinja.
def test_grad_param_with_document_mask():
    text = ("attention doc_grad { param doc: i32[B, KV]  param slopes: f32[H] grad\n"
            "  score score + slopes[h]  mask document(doc) }")
    params = {"doc": torch.zeros(1, 8, dtype=torch.int32), "slopes": torch.rand(2)}
    _check(text, 8, 8, params, backward=True)


# [Fixed: lower.py casts literal-only ints with `* 1.0`] An int subexpression of literals
# only, in a float context, was lowered as
# `(0 * 2).to(tl.float32)`: a Python int has no `.to` ("'int' object has no attribute 'to'").
# Masks (int comparisons) and a lone int literal (`0.1 * 0`) are fine. Where: attngen/lower.py's int -> float cast (the checker's
# `float(x)`); folding literal-only int arithmetic in the checker would also avoid it.
@pytest.mark.parametrize("score", ["score * (2 + 3)"])
def test_literal_int_arithmetic_in_a_float_context(score):
    _check(f"attention lit_int {{ score {score} }}", 19, 11)


# [Fixed] int32 overflow: positions and integer arithmetic were int32 in the kernels and int64
# in the reference, so products past 2**31 wrapped in the kernels only (`q * 1000000000` kept
# other keys than the reference's). Lowering now bounds every integer expression (lengths at most
# 2**29) and computes in int64 where a result can leave int32; i32 params count as unbounded.
@pytest.mark.parametrize("text", [
    "attention wrap_mask { mask (q * 1000000000) % 7 < 3 }",
    "attention wrap_score { score score + 0.1 * (kv * 1000000000 - q * 1000000000) / "
    "1000000000.0 }",
    "attention wrap_power { mask (q ** 3 * 1000000) % 5 != 1 | q == kv }",
    "attention wrap_param { param w: i32\n mask (kv * w) % 3 != 1 | q == kv }",
])
def test_int32_overflow_of_position_products(text):
    params = {"w": torch.tensor(1_500_000_000, dtype=torch.int32)} if "param w" in text else None
    _check(text, 20, 20, params, heads=(1, 1))


def test_lengths_beyond_the_position_limit_are_refused():
    """The range analysis assumes lengths <= 2**29: a longer (paged) cache is refused."""
    op = _load("attention lim { mask causal }")
    q = torch.randn(1, 1, 1, 16)
    k_pages = torch.randn(1, 1, 1024, 16)
    table = torch.zeros(1, 2**19 + 1, dtype=torch.int32)  # capacity 2**29 + 1024
    with pytest.raises(ValueError, match=r"the cache capacity is 536871936; at most 536870912"):
        op.decode(q, k_pages, k_pages, page_table=table)


def test_overflow_analysis_leaves_plain_position_arithmetic_in_int32():
    """Window, bucket and distance arithmetic of the examples needs no int64 (speed): only
    results that can leave int32 are widened."""
    from attngen import runtime
    from attngen.api import parse_and_check
    from attngen.lower import POSITION_LIMIT, lower

    assert POSITION_LIMIT == runtime.POSITION_LIMIT
    for text in ("attention a { score score + 0.5 * (kv - q)\n mask q - kv < 4096 & q >= kv }",
                 "attention b { param t: f32[H, 257]\n score score + t[h, clamp(kv - q + 128, 0, "
                 "256)] }", "attention c { mask q // 128 == kv // 128 }"):
        lowered = lower(parse_and_check(text)[0])
        assert "int64" not in f"{lowered.score} {lowered.mask}", text
    wide = lower(parse_and_check("attention d { mask (q * 1000000000) % 7 < 3 }")[0])
    assert "q_pos[:, None].to(tl.int64) * 1000000000" in wide.mask


# [Fixed] A hand-written bound at the int32 limit, `kv <= q + 2147483647`, made the mask analysis
# emit `hi = tl.minimum(hi, last_q + 2147483648)` (c + 1 for `<=`), a constant outside int32 (the
# interpreter refused it). sparsity.py now sums any bound that can leave int32 in int64 and clamps
# it to +-BIG (beyond every position, lengths being <= 2**29); that includes bounds with i32
# params (`kv <= q + w`, w near 2**31), whose range is all of int32.
@pytest.mark.parametrize("mask", ["kv <= q + 2147483647", "kv >= q - 2147483647 & q >= kv",
                                  "kv <= q + w", "kv > q - w & kv <= q"])
def test_linear_bound_at_the_int32_limit(mask):
    params = {"w": torch.tensor(2_000_000_000, dtype=torch.int32)} if "w" in mask else None
    param = "param w: i32\n " if "w" in mask else ""
    _check(f"attention bound {{ {param}mask {mask} }}", 20, 20, params, heads=(1, 1))


@pytest.mark.parametrize("shift", [2**31 - 1, -(2**31), 2**30 + 7])
def test_i32_scalars_over_their_whole_range(shift):
    """i32 scalars given as Python ints take any int32 value: sums with positions are widened
    where they could wrap (a shift near 2**31 keeps every key, near -2**31 none)."""
    _check("attention shifted { param shift: i32\n mask kv <= q + shift & kv - shift >= q - "
           "shift - 5 }", 20, 20, {"shift": shift}, heads=(1, 1))

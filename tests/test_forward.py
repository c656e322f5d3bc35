"""The generated Triton kernels against the eager reference, through the Triton interpreter on
a CPU-only machine (on a CUDA machine the same tests run on the GPU): the forward (out and LSE)
of every example and of inline specs, input validation, a few backward checks (gradients of out
and LSE, deterministic mode) and autotuning keys across sequence lengths.

Comparison rule (all against a float64 golden: ``op.reference`` on the inputs upcast to float64,
so input rounding is not counted as kernel error):

* fp32: max relative error ``max|x - gold| / max|gold|`` <= 1e-4, for out and for the LSE;
* fp16: the kernel's error is at most 2x the error of the reference evaluated in fp16 itself,
  plus an absolute floor of 1e-3;
* the LSE is compared on its finite entries only, and its -inf pattern must equal the golden's
  (a fully masked row has out exactly 0 and lse -inf, never NaN). The LSE's relative error uses
  max(max|gold|, 1) as denominator, so rows whose LSE is near 0 do not blow the ratio up.

The default run is a covering subset that stays around a minute and a half on two cores:

* every example on two of ``EXAMPLE_SHAPES``, once in fp32 and once in fp16 (where its spec
  allows), every shape in both dtypes across the examples;
* every length pair of ``MN_PAIRS`` (odd lengths 1, 3, 17, 113, 239), GQA ratio (1:1, 4:1, 8:1),
  head dim (16, 64, 80, 128) and dtype (fp32, fp16) on ``llama`` and on one param spec
  (``alibi``);
* inline specs with windows and chunks small enough to bite at these sizes (the soft cap without
  a mask skips the multi-tile 239 x 239 shape);
* fully masked rows: rows at negative positions (both dtypes), every row masked (each spec and
  length pair in one dtype, alternating, so each meets both), -inf scores from ``where``;
* layouts (non-contiguous inputs: each spec in one dtype, both used), scale, large inputs,
  validation, autotuning keys, scalar params and powers;
* backward: fp16 with 8:1 GQA and rows at negative positions (test_backward.py checks every
  example's gradients in fp32).

``ATTNGEN_FULL_MATRIX=1`` adds the full cross product (examples x lengths x GQA x head dims x
dtypes), every example on all four ``EXAMPLE_SHAPES``, softcap30 at 239 x 239, every-row-masked
and non-contiguous cases in both dtypes, and five more backward cases (llama fp32, ALiBi slopes,
the T5 table, packed_docs, gemma2_local).

bf16 is not tested: the Triton interpreter mishandles it.
"""

from __future__ import annotations

import functools
import os
import zlib
from pathlib import Path

import pytest
import torch

import attngen
from attngen import runtime  # before triton: with no GPU this selects the Triton interpreter
from attngen.testing import max_rel_error

REPO = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO / "examples"
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES_DIR.glob("*.attn"))

F64 = torch.float64
NEG_INF = float("-inf")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
FP32_TOL = 1e-4
FP16_FACTOR, FP16_FLOOR = 2.0, 1e-3
BATCH = 2

MN_PAIRS = [(1, 1), (3, 3), (17, 17), (113, 113), (239, 239), (1, 239), (17, 113), (3, 64)]
GQA = [(2, 2), (8, 2), (8, 1)]  # Hq:Hkv of 1:1, 4:1, 8:1
HEAD_DIMS = [16, 64, 80, 128]
FULL_MATRIX = os.environ.get("ATTNGEN_FULL_MATRIX") == "1"

pytestmark = [
    # the Triton interpreter's own noise: numpy deprecations, and exp/log2 overflowing to inf in
    # emulated tanh and pow, which the kernels handle
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning"),
]

if torch.cuda.is_available() and not runtime.interpreting():
    DEVICE = torch.device("cuda")
else:
    DEVICE = torch.device("cpu")
    if not runtime.interpreting():
        raise RuntimeError(
            "tests/test_forward.py needs the Triton interpreter on a machine without a GPU, but "
            "triton was imported before attngen.runtime could select it; set TRITON_INTERPRET=1")


@functools.cache
def _load(spec: str) -> attngen.AttentionOp:
    return attngen.load(spec)


def example(name: str) -> attngen.AttentionOp:
    return _load(str(EXAMPLES_DIR / f"{name}.attn"))


def inline(text: str) -> attngen.AttentionOp:
    assert "{" in text
    return _load(text)


def _seed(*parts) -> int:
    """A seed stable across runs (str hashes are salted per process)."""
    return zlib.crc32(repr(parts).encode())


def make_qkv(b, hq, hkv, m, n, d, dtype, *, seed=0, scale_inputs=1.0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, hq, m, d), (b, hkv, n, d), (b, hkv, n, d)]
    return tuple((torch.randn(s, generator=g, dtype=F64) * scale_inputs).to(dtype).to(DEVICE)
                 for s in shapes)


# ---- params of the examples ------------------------------------------------------------------


def make_params(name: str, b: int, hq: int, m: int, n: int, g: torch.Generator) -> dict:
    if name == "alibi":
        return {"slopes": torch.rand(hq, generator=g) * 0.5 + 0.01}
    if name == "t5_bias":
        return {"table": torch.randn(hq, 257, generator=g)}
    if name == "packed_docs":
        starts = (torch.rand(b, n, generator=g) < 0.2).to(torch.int32)
        if n:
            starts[:, 0] = 0
        return {"doc": (torch.cumsum(starts, dim=1) + torch.randint(0, 3, (b, 1), generator=g))
                .to(torch.int32)}
    if name == "prefix_lm":
        # one prefix inside [1, kv_len], one past kv_len (fully bidirectional), cycling
        choices = [int(torch.randint(1, n + 1, (1,), generator=g)) if n else 0, n + 7, 0]
        return {"prefix": torch.tensor([choices[i % 3] for i in range(b)], dtype=torch.int32)}
    return {}


def example_dtypes(name: str) -> list[str]:
    return ["fp16"] if name == "llama4_chunked" else ["fp32", "fp16"]


def example_head_dims(name: str) -> list[int]:
    return [256] if name == "gemma2_local" else HEAD_DIMS


def _on_device(params: dict) -> dict:
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in params.items()}


# ---- the comparison ------------------------------------------------------------------------


def _lse_err(lse: torch.Tensor, gold: torch.Tensor) -> float:
    finite = torch.isfinite(gold.cpu())
    return max_rel_error(lse.cpu()[finite], gold.cpu()[finite], floor=1.0)


def _assert_lse_pattern(lse, gold, what="kernel"):
    lse, gold = lse.detach().cpu().to(F64), gold.detach().cpu().to(F64)
    assert not torch.isnan(lse).any(), f"{what} lse has NaN"
    assert not (lse == float("inf")).any(), f"{what} lse has +inf"
    assert torch.equal(lse == NEG_INF, gold == NEG_INF), (
        f"{what} lse -inf pattern differs from the golden's: kernel -inf at "
        f"{(lse == NEG_INF).nonzero().tolist()[:8]}, golden at "
        f"{(gold == NEG_INF).nonzero().tolist()[:8]}")


def check_op(op, q, k, v, params=None, *, scale=None, rule="strict"):
    """Run the kernel and the reference; assert the comparison rule. Returns (out, lse, gold)."""
    params = _on_device(params or {})
    dtype = q.dtype
    out, lse = op(q, k, v, scale=scale, return_lse=True, **params)
    b, hq, m, d = q.shape
    assert out.shape == (b, hq, m, d) and out.dtype == dtype and out.device == q.device
    assert lse.shape == (b, hq, m) and lse.dtype == torch.float32
    assert not torch.isnan(out).any(), "kernel out has NaN"
    assert torch.isfinite(out).all(), "kernel out has inf"
    gold_out, gold_lse = op.reference(*(t.to(F64) for t in (q, k, v)), scale=scale,
                                      return_lse=True, **params)
    _assert_lse_pattern(lse, gold_lse)
    out_err, lse_err = max_rel_error(out, gold_out), _lse_err(lse, gold_lse)
    if dtype == torch.float32 and rule == "strict":
        assert out_err <= FP32_TOL, f"fp32 out: max rel error {out_err:.3g} > {FP32_TOL}"
        assert lse_err <= FP32_TOL, f"fp32 lse: max rel error {lse_err:.3g} > {FP32_TOL}"
    else:
        # versus the reference evaluated in the kernel's own dtype
        ref_out, ref_lse = op.reference(q, k, v, scale=scale, return_lse=True, **params)
        ref_out_err, ref_lse_err = max_rel_error(ref_out, gold_out), _lse_err(ref_lse, gold_lse)
        floor = FP16_FLOOR if dtype == torch.float16 else FP32_TOL
        assert out_err <= FP16_FACTOR * ref_out_err + floor, (
            f"{dtype} out: kernel error {out_err:.3g} > {FP16_FACTOR} x reference error "
            f"{ref_out_err:.3g} + {floor}")
        assert lse_err <= FP16_FACTOR * ref_lse_err + floor, (
            f"{dtype} lse: kernel error {lse_err:.3g} > {FP16_FACTOR} x reference error "
            f"{ref_lse_err:.3g} + {floor}")
    return out, lse, (gold_out, gold_lse)


def run_example(name, dtype_name, m, n, hq, hkv, d, *, scale=None):
    op = example(name)
    seed = _seed(name, dtype_name, m, n, hq, hkv, d)
    q, k, v = make_qkv(BATCH, hq, hkv, m, n, d, DTYPES[dtype_name], seed=seed)
    params = make_params(name, BATCH, hq, m, n, torch.Generator().manual_seed(seed))
    return check_op(op, q, k, v, params, scale=scale)


def test_examples_are_all_known():
    assert set(EXAMPLE_NAMES) == {"alibi", "encoder", "gemma2_local", "llama", "llama4_chunked",
                                  "mistral_swa", "packed_docs", "prefix_lm", "t5_bias"}


# ---- every example on a few shapes -----------------------------------------------------------

# (dtype, M, N, (Hq, Hkv), D); gemma2_local always runs D=256, llama4_chunked always fp16
EXAMPLE_SHAPES = [
    ("fp32", 17, 17, (8, 2), 64),
    ("fp16", 17, 113, (8, 1), 128),
    ("fp32", 1, 239, (2, 2), 80),
    ("fp32", 113, 17, (4, 1), 16),  # q_len > kv_len: the first 96 rows sit at negative positions
]


def _example_cases(full=FULL_MATRIX):
    """Every example on every shape in the shape's dtype (full), or on two shapes: j and j + 2
    for the j-th example, the first in fp32 for even j and fp16 for odd j, the second in the
    other dtype; so every example runs in fp32 and fp16 (where its spec allows) and every shape
    runs in both dtypes across the examples (the test below checks both)."""
    out = []
    for j, name in enumerate(EXAMPLE_NAMES):
        if full:
            picks = [(shape, shape[0]) for shape in EXAMPLE_SHAPES]
        else:
            first, other = ("fp32", "fp16") if j % 2 == 0 else ("fp16", "fp32")
            picks = [(EXAMPLE_SHAPES[j % len(EXAMPLE_SHAPES)], first),
                     (EXAMPLE_SHAPES[(j + 2) % len(EXAMPLE_SHAPES)], other)]
        for (_, m, n, (hq, hkv), d), dtype_name in picks:
            dtype_name = dtype_name if dtype_name in example_dtypes(name) else "fp16"
            d = d if d in example_head_dims(name) else example_head_dims(name)[0]
            out.append(pytest.param(name, dtype_name, m, n, hq, hkv, d,
                                    id=f"{name}-{dtype_name}-M{m}-N{n}-H{hq}x{hkv}-D{d}"))
    return out


def test_default_example_cases_cover_shapes_and_dtypes():
    cases = [p.values for p in _example_cases(full=False)]
    for name in EXAMPLE_NAMES:
        assert {c[1] for c in cases if c[0] == name} == set(example_dtypes(name))
    shapes = {(m, n, (hq, hkv), d) for _, m, n, (hq, hkv), d in EXAMPLE_SHAPES}
    for dtype_name in DTYPES:
        got = {(c[2], c[3], (c[4], c[5]), c[6]) for c in cases
               if c[1] == dtype_name and c[0] not in ("gemma2_local", "llama4_chunked")}
        assert got == shapes, dtype_name


@pytest.mark.parametrize("name, dtype_name, m, n, hq, hkv, d", _example_cases())
def test_example_matches_reference(name, dtype_name, m, n, hq, hkv, d):
    run_example(name, dtype_name, m, n, hq, hkv, d)


# ---- every length pair, GQA ratio, head dim and dtype on llama and alibi ---------------------


def _sweep_cases():
    out = []
    for name in ("llama", "alibi"):
        for i, (m, n) in enumerate(MN_PAIRS):
            hq, hkv = GQA[i % len(GQA)]
            d = HEAD_DIMS[i % len(HEAD_DIMS)]
            dtype_name = ("fp32", "fp16")[(i + i // len(HEAD_DIMS)) % 2]
            out.append(pytest.param(name, dtype_name, m, n, hq, hkv, d,
                                    id=f"{name}-{dtype_name}-M{m}-N{n}-H{hq}x{hkv}-D{d}"))
    return out


def test_sweep_covers_every_value():
    cases = [p.values for p in _sweep_cases()]
    for name in ("llama", "alibi"):
        mine = [c for c in cases if c[0] == name]
        assert {(c[2], c[3]) for c in mine} == set(MN_PAIRS)
        assert {(c[4], c[5]) for c in mine} == set(GQA)
        assert {c[6] for c in mine} == set(HEAD_DIMS)
        assert {c[1] for c in mine} == set(DTYPES)
        for d in HEAD_DIMS:  # each head dim in both dtypes
            assert {c[1] for c in mine if c[6] == d} == set(DTYPES)


@pytest.mark.parametrize("name, dtype_name, m, n, hq, hkv, d", _sweep_cases())
def test_shape_sweep(name, dtype_name, m, n, hq, hkv, d):
    run_example(name, dtype_name, m, n, hq, hkv, d)


# ---- the full cross product (opt-in) ---------------------------------------------------------


def _full_cases():
    out = []
    for name in EXAMPLE_NAMES:
        for dtype_name in example_dtypes(name):
            for d in example_head_dims(name):
                for hq, hkv in GQA:
                    for m, n in MN_PAIRS:
                        out.append(pytest.param(
                            name, dtype_name, m, n, hq, hkv, d,
                            id=f"{name}-{dtype_name}-M{m}-N{n}-H{hq}x{hkv}-D{d}"))
    return out


if FULL_MATRIX:
    _FULL = _full_cases()
else:
    _FULL = [pytest.param(
        None, None, 0, 0, 0, 0, 0, id="full-matrix",
        marks=pytest.mark.skip(reason=f"the full cross product ({len(_full_cases())} interpreter "
                                      f"runs, tens of minutes) runs only with "
                                      f"ATTNGEN_FULL_MATRIX=1"))]


@pytest.mark.slow
@pytest.mark.parametrize("name, dtype_name, m, n, hq, hkv, d", _FULL)
def test_full_matrix(name, dtype_name, m, n, hq, hkv, d):
    run_example(name, dtype_name, m, n, hq, hkv, d)


# ---- inline specs whose windows and chunks bite at test sizes ---------------------------------

INLINE = {
    "window7": "attention win7 { mask window(7) }",
    "chunk16": "attention chunk16 { mask chunk(16) }",
    "causal_window5_3": "attention cwin53 { mask causal & window(5, 3) }",
    "softcap30": "attention softcap30 { score 30.0 * tanh(score / 30.0) }",
    # a window wider than a tile: query tiles see partial, full and partial key tiles
    "softcap_causal_window130": "attention scw130 {\n score 30.0 * tanh(score / 30.0)\n"
                                " mask causal & window(130)\n}",
}
# (dtype, M, N, (Hq, Hkv), D)
INLINE_SHAPES = [
    ("fp32", 239, 239, (4, 1), 64),
    ("fp16", 17, 113, (8, 2), 64),
    ("fp32", 1, 239, (2, 2), 16),
]




def _inline_cases(full=FULL_MATRIX):
    """Every inline spec on every shape; by default softcap30 (no mask: every key tile is FULL
    at any length) skips the multi-tile 239 x 239 shape, which is there for the masks."""
    return [pytest.param(which, s[0], s[1], s[2], *s[3], s[4],
                         id=f"{which}-{s[0]}-M{s[1]}-N{s[2]}-H{s[3][0]}x{s[3][1]}-D{s[4]}")
            for which in INLINE for s in INLINE_SHAPES
            if full or not (which == "softcap30" and s[1] == 239)]


@pytest.mark.parametrize("which, dtype_name, m, n, hq, hkv, d", _inline_cases())
def test_inline_spec_matches_reference(which, dtype_name, m, n, hq, hkv, d):
    op = inline(INLINE[which])
    seed = _seed(which, dtype_name, m, n, hq, hkv, d)
    q, k, v = make_qkv(BATCH, hq, hkv, m, n, d, DTYPES[dtype_name], seed=seed)
    scale = 1.0 if "softcap" in which else None  # scores of tens: the soft cap bites
    _, _, (gold, _) = check_op(op, q, k, v, scale=scale)
    # the mask or score modification matters at this size
    plain = example("encoder").reference(*(t.to(F64) for t in (q, k, v)), scale=scale)
    assert max_rel_error(gold, plain) > 1e-3


@pytest.mark.parametrize("name, m, n, d, dtype_name", [
    ("mistral_swa", 17, 4200, 16, "fp32"),      # the last rows lose the first keys
    ("llama4_chunked", 17, 8200, 16, "fp16"),   # rows before and after the boundary at 8192
])
def test_examples_at_their_real_window_and_chunk_sizes(name, m, n, d, dtype_name):
    q, k, v = make_qkv(1, 2, 1, m, n, d, DTYPES[dtype_name], seed=_seed(name, m, n))
    _, _, (gold, _) = check_op(example(name), q, k, v)
    causal_only = example("llama").reference(*(t.to(F64) for t in (q, k, v)))
    assert max_rel_error(gold, causal_only) > 1e-3  # the window / chunk matters here


# ---- fully masked rows ------------------------------------------------------------------------


def _assert_rows_empty(out, lse, rows):
    """``rows``: bool [B, Hq, M] of rows that must be fully masked."""
    rows = rows.to(out.device)
    assert torch.equal(out[rows], torch.zeros_like(out[rows])), "masked rows are not exactly 0"
    assert (lse[rows] == NEG_INF).all(), "masked rows do not have lse -inf"
    assert torch.isfinite(lse[~rows]).all(), "rows with keys have a non-finite lse"


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", ["llama", "prefix_lm", "packed_docs"])
def test_rows_at_negative_positions_are_empty(name, dtype_name):
    # q_len > kv_len: rows 0..12 sit at negative positions and see no key (prefix 0 for batch 0;
    # batch 1 of prefix_lm has prefix 3, so its early rows see keys 0..2)
    m, n, hq, hkv, d = 20, 7, 4, 2, 16
    q, k, v = make_qkv(BATCH, hq, hkv, m, n, d, DTYPES[dtype_name], seed=_seed(name, "neg"))
    params = {"llama": {}, "prefix_lm": {"prefix": torch.tensor([0, 3], dtype=torch.int32)},
              "packed_docs": {"doc": torch.zeros(BATCH, n, dtype=torch.int32)}}[name]
    out, lse, _ = check_op(example(name), q, k, v, params)
    rows = torch.zeros(BATCH, hq, m, dtype=torch.bool)
    rows[:, :, : m - n] = True
    if name == "prefix_lm":
        rows[1] = False
    _assert_rows_empty(out, lse, rows)


EVERY_ROW_MASKED = ["attention nokeys { mask kv < 0 }", "attention nothing { mask none }",
                    "attention allneginf { score where(kv >= 0, -inf, score) }"]
EVERY_ROW_MASKED_MN = [(17, 113), (113, 17), (1, 1)]


def _every_row_masked_cases(full=FULL_MATRIX):
    """Each spec x lengths, in both dtypes (full) or in one, alternating: each spec and each
    length pair still meets both dtypes."""
    return [pytest.param(text, m, n, dtypes, id=f"{text}-{m}-{n}-{'-'.join(dtypes)}")
            for j, text in enumerate(EVERY_ROW_MASKED)
            for i, (m, n) in enumerate(EVERY_ROW_MASKED_MN)
            for dtypes in [list(DTYPES) if full else [list(DTYPES)[(i + j) % len(DTYPES)]]]]


def test_every_row_masked_cases_meet_both_dtypes():
    cases = [p.values for p in _every_row_masked_cases(full=False)]
    for text in EVERY_ROW_MASKED:
        assert {d for c in cases if c[0] == text for d in c[3]} == set(DTYPES)
    for m, n in EVERY_ROW_MASKED_MN:
        assert {d for c in cases if c[1:3] == (m, n) for d in c[3]} == set(DTYPES)


@pytest.mark.parametrize("text, m, n, dtype_names", _every_row_masked_cases())
def test_every_row_masked(text, m, n, dtype_names):
    op = inline(text)
    for dtype_name in dtype_names:
        q, k, v = make_qkv(BATCH, 4, 2, m, n, 64, DTYPES[dtype_name], seed=m + n)
        out, lse = op(q, k, v, return_lse=True)
        _assert_rows_empty(out, lse, torch.ones(BATCH, 4, m, dtype=torch.bool))


@pytest.mark.parametrize("text", [
    "attention futureneginf { score where(kv > q, -inf, score) }",   # causal through the score
    "attention firsttile { score where(kv < 64, -inf, score) }",     # a whole key tile is -inf
    "attention mixedneginf { score where(kv > q + 3, -inf, score)\n mask kv >= q - 40 }",
])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_score_minus_inf_from_where(text, dtype_name):
    op = inline(text)
    m, n = 17, 113
    q, k, v = make_qkv(BATCH, 4, 2, m, n, 64, DTYPES[dtype_name], seed=_seed(text))
    out, lse, (gold, gold_lse) = check_op(op, q, k, v)
    assert torch.isfinite(gold_lse).all()
    if text.startswith("attention futureneginf"):
        # the same as the causal mask
        causal = example("llama").reference(*(t.to(F64) for t in (q, k, v)))
        torch.testing.assert_close(gold, causal, atol=1e-12, rtol=1e-12)


def test_empty_query_and_empty_keys():
    op = example("llama")
    q, k, v = make_qkv(BATCH, 4, 2, 0, 9, 16, torch.float32)
    out, lse = op(q, k, v, return_lse=True)
    assert out.shape == (BATCH, 4, 0, 16) and lse.shape == (BATCH, 4, 0)
    q, k, v = make_qkv(BATCH, 4, 2, 3, 0, 16, torch.float32)
    out, lse = op(q, k, v, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out))
    assert (lse == NEG_INF).all()


# ---- layouts, scale, magnitude -----------------------------------------------------------------


@pytest.mark.parametrize("name, dtype_name", [
    (name, dtype_name) for j, name in enumerate(["llama", "alibi", "packed_docs"])
    for i, dtype_name in enumerate(DTYPES) if FULL_MATRIX or (i + j) % 2 == 0])
def test_non_contiguous_inputs(name, dtype_name):
    # q, k, v as transposed views of [B, M, H, D] tensors (the layout a fused QKV projection
    # gives); params as strided views
    b, hq, hkv, m, n, d = BATCH, 4, 2, 17, 113, 64
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(_seed(name, "layout"))
    q = torch.randn(b, m, hq, d, generator=g).to(dtype).to(DEVICE).transpose(1, 2)
    k = torch.randn(b, n, hkv, d, generator=g).to(dtype).to(DEVICE).transpose(1, 2)
    v = torch.randn(b, n, hkv, 2 * d, generator=g).to(dtype).to(DEVICE).transpose(1, 2)[..., :d]
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    params = make_params(name, b, hq, m, n, g)
    if name == "alibi":
        params["slopes"] = torch.stack([params["slopes"], params["slopes"]], 1)[:, 0]
        assert params["slopes"].stride() == (2,)
    if name == "packed_docs":
        params["doc"] = torch.stack([params["doc"], params["doc"]], 2)[:, :, 0]
        assert not params["doc"].is_contiguous()
    check_op(example(name), q, k, v, params)
    # and the same as with contiguous copies
    out = example(name)(q, k, v, **_on_device(params))
    out_c = example(name)(q.contiguous(), k.contiguous(), v.contiguous(),
                          **_on_device({p: t.contiguous() for p, t in params.items()}))
    torch.testing.assert_close(out, out_c, atol=0, rtol=0)


def test_broadcast_kv_with_zero_strides():
    # k and v expanded over the batch (stride 0): the kernel follows strides
    q, k, v = make_qkv(1, 4, 1, 17, 33, 64, torch.float32, seed=5)
    q = torch.cat([q, q * 0.5])
    check_op(example("llama"), q, k.expand(2, 1, 33, 64), v.expand(2, 1, 33, 64))


@pytest.mark.parametrize("name, dtype_name, scale", [
    ("llama", "fp32", 0.3), ("alibi", "fp32", 2.0), ("t5_bias", "fp16", 1.7),
    ("gemma2_local", "fp32", 9.0),  # scores well past +-50: the soft cap bites
    ("encoder", "fp32", 0.0),       # uniform weights
    ("llama", "fp16", 0.0),         # uniform over the kept keys: the tile loop masks raw scores
    ("packed_docs", "fp32", 0.0),   # (-inf), so a scale of 0 turns SCORE_IS_IDENTITY off (no NaN)
])
def test_custom_scale(name, dtype_name, scale):
    d = 256 if name == "gemma2_local" else 64
    m, n, hq, hkv = 17, 40, 4, 2
    seed = _seed(name, "scale", scale)
    q, k, v = make_qkv(BATCH, hq, hkv, m, n, d, DTYPES[dtype_name], seed=seed)
    params = make_params(name, BATCH, hq, m, n, torch.Generator().manual_seed(seed))
    _, _, (gold, _) = check_op(example(name), q, k, v, params, scale=scale)
    default = example(name).reference(*(t.to(F64) for t in (q, k, v)), **_on_device(params))
    assert max_rel_error(gold, default) > 1e-3  # the scale changed the result


@pytest.mark.parametrize("scale, plain", [(0.0, False), (1e-40, False), (1e-30, True), (0.125, True)])
def test_a_scale_that_is_zero_in_fp32_turns_the_plain_score_off(scale, plain, monkeypatch):
    """The plain score's one tile loop masks raw scores with -inf before the scale: a scale the
    GPU sees as 0 (fp32: below the smallest normal) launches the kernel's scaled path instead,
    where -inf * 0 cannot happen (the interpreter computes in float64, so only the flag shows)."""
    module = example("llama").module
    launched = []
    monkeypatch.setattr(module, "_launch", lambda kernel, grid, args, flags, trace:
                        launched.append(flags))
    q, k, v = make_qkv(1, 2, 2, 5, 5, 16, torch.float32, seed=0)
    module._launch_fwd(q, k, v, scale, {}, module._shapes_of(q, k))
    assert launched[0]["SCORE_IS_IDENTITY"] is plain


@pytest.mark.parametrize("name, dtype_name", [
    ("llama", "fp32"), ("alibi", "fp32"), ("gemma2_local", "fp32"), ("llama", "fp16"),
])
def test_large_inputs_do_not_overflow(name, dtype_name):
    # inputs x100: scores of ~1e4, far past exp's range without the running max
    d = 256 if name == "gemma2_local" else 64
    m, n = 17, 113
    seed = _seed(name, "x100")
    q, k, v = make_qkv(BATCH, 4, 2, m, n, d, DTYPES[dtype_name], seed=seed, scale_inputs=100.0)
    params = make_params(name, BATCH, 4, m, n, torch.Generator().manual_seed(seed))
    if dtype_name == "fp32":
        # matches the reference: within 2x the fp32 reference's own error (+1e-4); the softmax is
        # nearly one-hot here, so score rounding is amplified for both
        check_op(example(name), q, k, v, params, rule="relative")
        return
    # the fp16 reference overflows here (it computes q @ k^T in fp16), so compare with the golden
    out, lse = example(name)(q, k, v, return_lse=True, **_on_device(params))
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    gold, gold_lse = example(name).reference(*(t.to(F64) for t in (q, k, v)), return_lse=True,
                                             **_on_device(params))
    assert max_rel_error(out, gold) <= 1e-2
    assert _lse_err(lse, gold_lse) <= 1e-3


# ---- input validation: ValueError naming the argument, before any launch ---------------------


@pytest.fixture
def no_launch(monkeypatch):
    """Make every kernel launch of the given op fail the test."""

    def patch(op):
        def launch(*args, **kwargs):
            raise AssertionError("the kernel was launched before the inputs were validated")

        monkeypatch.setattr(op.module, "_launch_fwd", launch)
        return op

    return patch


def _raises(fn, *substrings):
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    for s in substrings:
        assert s in message, f"{s!r} not in {message!r}"
    return message


def test_rejects_dtype_not_in_spec(no_launch):
    op = no_launch(example("llama4_chunked"))
    q, k, v = make_qkv(1, 2, 2, 3, 5, 64, torch.float32)
    msg = _raises(lambda: op(q, k, v), "llama4_chunked", "q", "dtype", "torch.float32")
    assert "bfloat16" in msg and "float16" in msg  # says what it accepts
    q16, k16, v16 = make_qkv(1, 2, 2, 3, 5, 64, torch.float16)
    _raises(lambda: op(q16, k16.float(), v16), "dtype")  # mixed dtypes


def test_rejects_head_dim_not_in_spec(no_launch):
    op = no_launch(example("gemma2_local"))
    q, k, v = make_qkv(1, 2, 2, 3, 5, 64, torch.float32)
    _raises(lambda: op(q, k, v), "head_dim 64", "256")
    op = no_launch(example("llama"))
    q, k, v = make_qkv(1, 2, 2, 3, 5, 8, torch.float32)
    _raises(lambda: op(q, k, v), "head_dim", "16..256")


@pytest.mark.parametrize("arg", ["q", "k", "v"])
def test_rejects_last_dim_not_contiguous(no_launch, arg):
    op = no_launch(example("llama"))
    tensors = dict(zip("qkv", make_qkv(1, 2, 2, 5, 5, 16, torch.float32)))
    tensors[arg] = tensors[arg].transpose(-1, -2).contiguous().transpose(-1, -2)  # stride(-1) 5
    assert tensors[arg].stride(-1) != 1
    _raises(lambda: op(tensors["q"], tensors["k"], tensors["v"]), f"{arg} must be contiguous",
            "last dimension")


def test_rejects_heads_not_a_multiple(no_launch):
    op = no_launch(example("llama"))
    q, _, _ = make_qkv(1, 4, 4, 3, 5, 16, torch.float32)
    _, k, v = make_qkv(1, 3, 3, 3, 5, 16, torch.float32)
    _raises(lambda: op(q, k, v), "q's 4 heads", "k's 3 heads", "multiple")


def test_rejects_missing_and_extra_params(no_launch):
    q, k, v = make_qkv(2, 4, 2, 3, 5, 16, torch.float32)
    alibi = no_launch(example("alibi"))
    _raises(lambda: alibi(q, k, v), "missing param", "slopes")
    _raises(lambda: alibi(q, k, v, slopes=torch.ones(4), bogus=1), "unexpected param", "bogus")
    llama = no_launch(example("llama"))
    _raises(lambda: llama(q, k, v, slopes=torch.ones(4)), "unexpected param", "slopes")
    docs = no_launch(example("packed_docs"))
    _raises(lambda: docs(q, k, v), "missing param", "doc")


def test_rejects_wrong_param_shape(no_launch):
    q, k, v = make_qkv(2, 4, 2, 3, 5, 16, torch.float32)
    _raises(lambda: no_launch(example("alibi"))(q, k, v, slopes=torch.ones(2)),
            "slopes", "shape", "[4]")  # H is the query heads
    _raises(lambda: no_launch(example("t5_bias"))(q, k, v, table=torch.ones(4, 256)),
            "table", "shape", "[4, 257]")
    _raises(lambda: no_launch(example("packed_docs"))(
        q, k, v, doc=torch.zeros(2, 3, dtype=torch.int32)), "doc", "shape", "[2, 5]")
    _raises(lambda: no_launch(example("prefix_lm"))(q, k, v, prefix=3), "prefix", "tensor")


def test_rejects_wrong_param_dtype(no_launch):
    q, k, v = make_qkv(2, 4, 2, 3, 5, 16, torch.float32)
    _raises(lambda: no_launch(example("alibi"))(q, k, v, slopes=torch.ones(4, dtype=F64)),
            "slopes", "dtype", "float32")
    _raises(lambda: no_launch(example("packed_docs"))(
        q, k, v, doc=torch.zeros(2, 5, dtype=torch.int64)), "doc", "dtype", "int32")
    _raises(lambda: no_launch(example("prefix_lm"))(
        q, k, v, prefix=torch.zeros(2, dtype=torch.float32)), "prefix", "dtype")


def test_rejects_param_on_another_device(no_launch):
    q, k, v = make_qkv(2, 4, 2, 3, 5, 16, torch.float32)
    _raises(lambda: no_launch(example("alibi"))(q, k, v, slopes=torch.ones(4, device="meta")),
            "slopes", "meta")


# ---- backward: gradients of out and lse against the float64 golden ---------------------------

# (name, dtype, M, N, (Hq, Hkv), D, param that requires grad); test_backward.py checks every
# example's fp32 gradients, so the default run here keeps what it does not: fp16 with 8:1 GQA,
# and rows at negative positions (exactly zero gradients)
BACKWARD_CASES = [
    ("llama", "fp16", 17, 113, (8, 1), 64, None),
    ("llama", "fp32", 20, 7, (4, 2), 16, None),  # rows at negative positions: zero gradients
] + ([
    ("llama", "fp32", 17, 113, (8, 2), 64, None),
    ("alibi", "fp32", 17, 40, (4, 2), 64, "slopes"),
    ("t5_bias", "fp32", 17, 40, (4, 2), 64, "table"),
    ("packed_docs", "fp32", 17, 40, (4, 2), 80, None),
    ("gemma2_local", "fp32", 17, 40, (2, 1), 256, None),
] if FULL_MATRIX else [])


def _grads(fn, q, k, v, params, grad_param, w_out, w_lse):
    """Gradients of sum(out * w_out) + sum(finite lse * w_lse) wrt q, k, v (and the param)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    params = dict(params)
    if grad_param is not None:
        params[grad_param] = params[grad_param].detach().clone().requires_grad_()
        leaves.append(params[grad_param])
    out, lse = fn(*leaves[:3], return_lse=True, **params)
    lse = lse.to(F64)
    loss = (out.to(F64) * w_out).sum() + (lse.masked_fill(torch.isinf(lse), 0.0) * w_lse).sum()
    return torch.autograd.grad(loss, leaves)


def _check_grads(op, q, k, v, params, grad_param=None, *, scale=None):
    params = _on_device(params)
    kernel = functools.partial(op, scale=scale)
    reference = functools.partial(op.reference, scale=scale)
    g = torch.Generator().manual_seed(7)
    w_out = torch.randn(q.shape, generator=g, dtype=F64).to(DEVICE)
    w_lse = torch.randn(q.shape[:3], generator=g, dtype=F64).to(DEVICE)
    got = _grads(kernel, q, k, v, params, grad_param, w_out, w_lse)
    gold = _grads(reference, *(t.to(F64) for t in (q, k, v)), params, grad_param, w_out, w_lse)
    names = ["dq", "dk", "dv", f"d{grad_param}"]
    for name, x, ref in zip(names, got, gold):
        assert x.shape == ref.shape and x.dtype == (q.dtype if name in names[:3] else ref.dtype)
        assert torch.isfinite(x).all(), f"{name} has NaN or inf"
    if q.dtype == torch.float32:
        for name, x, ref in zip(names, got, gold):
            err = max_rel_error(x, ref)
            assert err <= FP32_TOL, f"fp32 {name}: max rel error {err:.3g} > {FP32_TOL}"
    else:
        low = _grads(reference, q, k, v, params, grad_param, w_out, w_lse)
        for name, x, ref, r in zip(names, got, gold, low):
            err, ref_err = max_rel_error(x, ref), max_rel_error(r, ref)
            assert err <= FP16_FACTOR * ref_err + FP16_FLOOR, (
                f"{q.dtype} {name}: kernel error {err:.3g} > {FP16_FACTOR} x reference error "
                f"{ref_err:.3g} + {FP16_FLOOR}")
    return got


@pytest.mark.parametrize("name, dtype_name, m, n, hq, hkv, d, grad_param", [
    pytest.param(c[0], c[1], c[2], c[3], *c[4], c[5], c[6],
                 id=f"{c[0]}-{c[1]}-M{c[2]}-N{c[3]}-H{c[4][0]}x{c[4][1]}-D{c[5]}")
    for c in BACKWARD_CASES])
def test_backward_matches_reference(name, dtype_name, m, n, hq, hkv, d, grad_param):
    seed = _seed("bwd", name, dtype_name, m, n)
    q, k, v = make_qkv(BATCH, hq, hkv, m, n, d, DTYPES[dtype_name], seed=seed)
    params = make_params(name, BATCH, hq, m, n, torch.Generator().manual_seed(seed))
    dq, dk, dv, *_ = _check_grads(example(name), q, k, v, params, grad_param)
    if m > n:  # rows that see no key get no gradient
        assert torch.equal(dq[:, :, : m - n], torch.zeros_like(dq[:, :, : m - n]))


def test_backward_of_an_inline_spec_with_a_wide_window():
    op = inline(INLINE["softcap_causal_window130"])
    q, k, v = make_qkv(1, 2, 1, 239, 239, 64, torch.float32, seed=11)
    _check_grads(op, q, k, v, {}, scale=1.0)


def test_backward_through_out_only():
    op = example("llama")
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 2, 5, 7, 16, torch.float32))
    out = op(q, k, v)
    assert out.requires_grad
    (out * out).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_deterministic_gradients_are_bitwise_identical():
    op = example("alibi")
    q, k, v = make_qkv(BATCH, 4, 2, 17, 40, 64, torch.float32, seed=12)
    params = {"slopes": torch.rand(4, generator=torch.Generator().manual_seed(1)).to(DEVICE)}
    det = functools.partial(op, deterministic=True)
    w_out = torch.ones(q.shape, dtype=F64, device=DEVICE)
    w_lse = torch.ones(q.shape[:3], dtype=F64, device=DEVICE)
    first = _grads(det, q, k, v, params, "slopes", w_out, w_lse)
    second = _grads(det, q, k, v, params, "slopes", w_out, w_lse)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_deterministic_with_a_varying_param_gradient_raises_nyi(no_launch):
    # table[h, kv - q + 128] is read at positions that vary over a tile: its gradient needs
    # atomics, so deterministic=True is refused before anything runs
    op = no_launch(example("t5_bias"))
    q, k, v = make_qkv(BATCH, 4, 2, 5, 7, 16, torch.float32)
    table = torch.randn(4, 257, device=DEVICE, requires_grad=True)
    with pytest.raises(NotImplementedError, match="NYI") as info:
        op(q, k, v, table=table, deterministic=True)
    assert "table" in str(info.value)


# ---- a new sequence length in the same bucket does not re-tune --------------------------------


def _do_not_specialize(fn) -> set[str]:
    names = list(fn.arg_names)
    raw = getattr(fn, "do_not_specialize", None)
    if raw is None:  # the interpreter's InterpretedFunction keeps the decorator's kwargs
        raw = fn.kwargs.get("do_not_specialize") or []
    return {names[i] if isinstance(i, int) else i for i in raw}


def test_sequence_lengths_are_not_specialized():
    tuner = example("llama").module.llama_fwd
    assert list(tuner.keys) == ["q_bucket", "kv_bucket", "HEAD_DIM"]
    assert {"batch", "q_len", "kv_len", "q_bucket", "kv_bucket"} <= _do_not_specialize(tuner.fn)
    assert runtime.length_bucket(100) == runtime.length_bucket(113) == 128
    assert runtime.length_bucket(200) == 256


def test_same_length_bucket_does_not_retune(monkeypatch):
    """The interpreter builds one config, so the autotuner never benchmarks: give it two configs
    and a fake benchmark, then count benchmarks and cache keys across sequence lengths."""
    op = example("llama")
    tuner = op.module.llama_fwd
    base = tuner.configs[0]
    other = runtime.config_like(base, {**base.kwargs, "BLOCK_N": base.kwargs["BLOCK_N"] // 2})
    benched = []

    def fake_bench(*args, config, **meta):
        benched.append(config)
        return [1.0 if config is base else 2.0] * 3

    monkeypatch.setattr(tuner, "configs", [base, other])
    monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(tuner, "_bench", fake_bench)

    def call(m, n):
        q, k, v = make_qkv(1, 2, 1, m, n, 64, torch.float32, seed=m + n)
        check_op(op, q, k, v)

    call(100, 100)
    tuned = len(benched)  # the configs left after pruning, each benchmarked once
    assert tuned >= 1 and len(tuner.cache) == 1
    (key,) = tuner.cache
    assert 128 in key and 100 not in key  # the key holds the bucket, not the length
    call(113, 113)  # same bucket
    call(113, 100)
    assert len(benched) == tuned and len(tuner.cache) == 1, \
        "re-tuned for a length in the same bucket"
    call(200, 200)  # a new bucket tunes once more
    assert len(benched) == 2 * tuned and len(tuner.cache) == 2


@pytest.mark.skipif(DEVICE.type != "cuda", reason=(
    "compiled variants exist only on a GPU: the interpreter runs one Python function for every "
    "call, so there is nothing to count"))
def test_new_length_adds_no_compiled_variant():
    op = example("llama")
    fn = op.module.llama_fwd.fn

    def variants() -> int:
        return sum(len(caches[0]) for caches in fn.device_caches.values())

    def call(m, n):
        q, k, v = make_qkv(1, 4, 2, m, n, 64, torch.float16, seed=m + n)
        check_op(op, q, k, v)

    call(100, 100)  # tunes: compiles one variant per config
    first = variants()
    assert first >= 1
    for m, n in [(113, 113), (113, 100), (127, 120), (97, 128)]:  # the same buckets
        call(m, n)
    assert variants() == first, "a new sequence length in the same bucket compiled a new variant"


# ---- scalar params and powers ---------------------------------------------------------------


def test_scalar_params():
    op = inline("attention scal { param w: i32\n param c: f32\n score c * tanh(score / c)\n"
                " mask causal & window(w) }")
    q, k, v = make_qkv(BATCH, 2, 2, 17, 17, 16, torch.float32, seed=1)
    check_op(op, q, k, v, {"w": 3, "c": 2.5})
    check_op(op, q, k, v, {"w": torch.tensor(5, dtype=torch.int32), "c": torch.tensor(7.0)})


def test_float_powers():
    # libdevice.pow does not run in the interpreter: a negative base with an integral exponent
    # keeps pow's sign, a fractional exponent of a non-negative base works
    op = inline("attention fpow { score score + 0.01 * (0.1 * (kv - q)) ** 5.0"
                " + 0.1 * abs(0.1 * (kv - q)) ** 0.5 }")
    q, k, v = make_qkv(BATCH, 2, 2, 17, 40, 16, torch.float32, seed=2)
    _, _, (gold, _) = check_op(op, q, k, v)
    plain = example("encoder").reference(*(t.to(F64) for t in (q, k, v)))
    assert max_rel_error(gold, plain) > 1e-3


def test_integer_power():
    op = inline("attention ipow { score score + 0.001 * (kv - q) ** 5 }")
    q, k, v = make_qkv(BATCH, 2, 2, 17, 17, 16, torch.float32, seed=3)
    check_op(op, q, k, v)


@pytest.mark.skipif(DEVICE.type != "cuda" or torch.cuda.device_count() < 2,
                    reason="tensors on a GPU other than the current one: needs two GPUs")
def test_tensors_on_another_gpu_than_the_current_one():
    """Triton launches on the current device: the launchers make the tensors' device current
    (forward, backward with its preprocess, document runs, decode and its combine, block
    masks), so every result matches the float64 reference on that device."""
    other = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    op = example("packed_docs")
    gen = torch.Generator(device=other).manual_seed(0)
    q, k, v = (torch.randn(2, 4, 100, 64, device=other, dtype=torch.float16, generator=gen,
                           requires_grad=True) for _ in range(3))
    doc = ((torch.arange(100, device=other) * 3) // 100).to(torch.int32).expand(2, 100).contiguous()
    d_out = torch.randn_like(q)
    out = op(q, k, v, doc=doc)
    grads = torch.autograd.grad(out, (q, k, v), d_out)
    with torch.enable_grad():
        q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
        golden = op.reference(q64, k64, v64, doc=doc)
        golden_grads = torch.autograd.grad(golden, (q64, k64, v64), d_out.double())
    assert out.device == other and torch.cuda.current_device() == 0
    for x, ref in zip((out, *grads), (golden, *golden_grads)):
        assert max_rel_error(x, ref) < 2e-2
    mask = op.module.block_mask(2, 4, 100, 100, doc=doc, device=other)
    torch.testing.assert_close(op(q, k, v, doc=doc, block_mask=mask), out, atol=2e-3, rtol=0)
    llama = example("llama")
    step = llama.decode(q[:, :, -1:].detach(), k.detach(), v.detach())
    full = llama(q.detach(), k.detach(), v.detach())
    torch.testing.assert_close(step, full[:, :, -1:], atol=2e-3, rtol=0)


# ---- TMA loads -------------------------------------------------------------------------------

def test_tma_descriptors_only_for_tensors_tma_can_describe(monkeypatch):
    """runtime.tma_descriptors gives descriptors of [B, H, N, D] for tensors TMA can read and
    None otherwise (or with ATTNGEN_TMA=0): base, strides and rows multiples of 16 bytes, no
    expanded (stride-0) dim, nothing empty; a size-1 dim's unused stride is described densely."""
    aligned = torch.zeros(2, 3, 17, 64, dtype=torch.float16)
    descs = runtime.tma_descriptors(aligned, aligned)
    assert [list(d.shape) for d in descs] == [[2, 3, 17, 64]] * 2
    assert list(descs[0].strides) == list(aligned.stride())
    assert runtime.tma_descriptors(aligned, torch.zeros(2, 3, 17, 20, dtype=torch.float16)) is None
    shifted = torch.zeros(2 * 3 * 17 * 64 + 1, dtype=torch.float16)[1:].view(2, 3, 17, 64)
    assert runtime.tma_descriptors(shifted, aligned) is None  # base 2 bytes past 16
    assert runtime.tma_descriptors(aligned, torch.zeros(2, 3, 0, 64)) is None
    narrow = torch.zeros(2, 3, 17, 64, dtype=torch.float16)[..., :20]  # rows of 40 bytes
    assert runtime.tma_descriptors(narrow, aligned) is None
    expanded = torch.zeros(2, 1, 17, 64, dtype=torch.float16).expand(2, 3, 17, 64)
    assert runtime.tma_descriptors(expanded, aligned) is None
    sum_grad = torch.ones(2, 3, 1, 64, dtype=torch.float16).expand(2, 3, 17, 64)  # d(out.sum(2))
    assert runtime.tma_descriptors(aligned, sum_grad) is None
    one_head = torch.zeros(2, 17, 1, 64, dtype=torch.float16).transpose(1, 2)  # [2, 1, 17, 64]
    odd = torch.as_strided(one_head, one_head.shape, (17 * 64, 3, 64, 1))  # stride 3 on H = 1
    (desc,) = runtime.tma_descriptors(odd)
    assert list(desc.strides) == [17 * 64, 17 * 64, 64, 1]
    monkeypatch.setenv("ATTNGEN_TMA", "0")
    assert runtime.tma_descriptors(aligned, aligned) is None


@pytest.mark.parametrize("tma", ["1", "0"])
def test_forward_matches_with_and_without_tma(tma, monkeypatch):
    """The forward with Q, K and V read through TMA descriptors and through pointers
    (ATTNGEN_TMA=0) both match the reference: GQA, ragged lengths, a window and sinks (PARTIAL and FULL tiles,
    a gap), D padded (48 -> 64); the launch really took the path asked for."""
    monkeypatch.setenv("ATTNGEN_TMA", tma)
    op = inline("attention tma_probe { mask causal & window(40, 0) | kv < 4 }")
    launched = []
    real = op.module._launch
    monkeypatch.setattr(op.module, "_launch",
                        lambda kernel, grid, args, flags, trace: launched.append(flags["TMA"])
                        or real(kernel, grid, args, flags, trace))
    for m, n in ((113, 113), (3, 239)):
        q, k, v = make_qkv(2, 4, 2, m, n, 48, torch.float32, seed=m)
        check_op(op, q, k, v)
    assert launched == [tma == "1"] * 2


def test_a_query_tma_cannot_describe_sends_the_forward_to_pointer_loads(monkeypatch):
    """Q, K and V go through TMA together or not at all: a query whose base is 4 bytes past a
    16-byte boundary (K and V aligned) launches the pointer-load forward, which matches the
    reference; the same values, aligned, launch the TMA one where TMA applies (the interpreter,
    Hopper)."""
    op = inline("attention tma_query { mask causal }")
    launched = []
    real = op.module._launch
    monkeypatch.setattr(op.module, "_launch",
                        lambda kernel, grid, args, flags, trace: launched.append(flags["TMA"])
                        or real(kernel, grid, args, flags, trace))
    q, k, v = make_qkv(1, 2, 2, 17, 17, 64, torch.float32, seed=5)
    shifted = torch.empty(q.numel() + 1, dtype=q.dtype, device=q.device)[1:].view_as(q).copy_(q)
    assert runtime.tma_descriptors(shifted) is None
    check_op(op, shifted, k, v)
    check_op(op, q, k, v)
    assert launched == [False, runtime.tma_descriptors(q, k, v) is not None]

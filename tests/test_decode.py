"""Decode kernels (split-KV, GQA packing, ragged and paged caches) against the eager reference,
through the Triton interpreter on CPU (fp32, fp16; on a CUDA machine the same tests run there).

The golden is ``testing.decode_reference`` in float64: each sequence's first kv_len[b] keys
(gathered from its pages), params cut to the sequence, the spec's reference on them. The rules
are test_forward.py's (fp32 relative 1e-4; fp16 within 2x the fp16 reference's own error).

Default run (covering, about a minute on two cores): every example spec once, each case cycling
GQA 1:1 / 4:1 / 8:1, q_len 1 / 4, page sizes 16 / 64 / 256, head dims and dtypes, with ragged
kv_len (the capacity, 1, 3, 113: lengths that are not multiples of a page or a tile, and rows
at negative positions when kv_len < q_len) in one or three splits (alternating, both in the full
matrix; other tests use 2, 4, 5 and the default); the paged cache must give
bit-for-bit the contiguous cache's result (in the interpreter; on a GPU the autotuner may pick
another tile size for the paged kernel, so there they agree to rounding). Traced tiles: a window over a long cache visits the
window's tiles only, and the visited/FULL tiles of several masks equal the brute-force
classification. Bad inputs raise ValueError before any launch.
``ATTNGEN_FULL_MATRIX=1``: every example x GQA x q_len x page size x dtype, in one and three
splits.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

import attngen
from attngen import runtime, testing  # before triton: with no GPU this selects the interpreter
from attngen.reference import mask_grid
from test_forward import (DEVICE, EXAMPLE_NAMES, EXAMPLES_DIR, F64, FP16_FACTOR, FP16_FLOOR,
                          FP32_TOL, FULL_MATRIX, _assert_lse_pattern, _lse_err, _seed,
                          example_dtypes, example_head_dims, make_params)

GQA = [(2, 2), (8, 2), (8, 1)]  # Hq:Hkv of 1:1, 4:1, 8:1
Q_LENS = [1, 4]
PAGE_SIZES = [16, 64, 256]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning"),
]


@functools.cache
def _load(spec: str) -> attngen.AttentionOp:
    return attngen.load(spec)


def _example(name: str) -> attngen.AttentionOp:
    return _load(str(EXAMPLES_DIR / f"{name}.attn"))


def _caches(b, hq, hkv, m, capacity, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, m, d, generator=g, dtype=F64)
    k, v = (torch.randn(b, hkv, capacity, d, generator=g, dtype=F64) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype), g


def _on_device(params):
    return {n: (t.to(DEVICE) if isinstance(t, torch.Tensor) else t) for n, t in params.items()}


def check_decode(op, q, k, v, kv_len, params, *, page_table=None, num_splits=None):
    """Run the decode kernel, assert the rule against the float64 golden; return (out, lse)."""
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    kv_len = None if kv_len is None else kv_len.to(DEVICE)
    page_table = None if page_table is None else page_table.to(DEVICE)
    params = _on_device(params)
    out, lse = op.decode(q, k, v, kv_len=kv_len, page_table=page_table, return_lse=True,
                         num_splits=num_splits, **params)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]
    assert torch.isfinite(out).all(), "decode out has NaN or inf"
    gold_out, gold_lse = testing.decode_reference(
        op.spec, *(t.to(F64) for t in (q, k, v)), kv_len=kv_len, page_table=page_table, **params)
    _assert_lse_pattern(lse, gold_lse, "decode")
    out_err, lse_err = testing.max_rel_error(out, gold_out), _lse_err(lse, gold_lse)
    if q.dtype == torch.float32:
        assert out_err <= FP32_TOL and lse_err <= FP32_TOL, (out_err, lse_err)
    else:
        ref_out, ref_lse = testing.decode_reference(op.spec, q, k, v, kv_len=kv_len,
                                                    page_table=page_table, **params)
        assert out_err <= FP16_FACTOR * testing.max_rel_error(ref_out, gold_out) + FP16_FLOOR, out_err
        assert lse_err <= FP16_FACTOR * _lse_err(ref_lse, gold_lse) + FP16_FLOOR, lse_err
    return out, lse


def _cases():
    if FULL_MATRIX:
        for name in EXAMPLE_NAMES:
            for gqa, m, page, dtype in itertools.product(GQA, Q_LENS, PAGE_SIZES,
                                                         example_dtypes(name)):
                yield name, gqa, m, page, dtype, example_head_dims(name)[0]
        return
    for i, name in enumerate(EXAMPLE_NAMES):
        dtypes, dims = example_dtypes(name), example_head_dims(name)
        yield (name, GQA[i % 3], Q_LENS[i % 2], PAGE_SIZES[i % 3], dtypes[i % len(dtypes)],
               dims[i % len(dims)])


def _splits(name: str) -> int:
    """The default run's split count for an example: 1, 1, 3, 3, 1, ... (the full matrix runs
    both)."""
    return (1, 3)[EXAMPLE_NAMES.index(name) // 2 % 2]


def test_cases_alternate_splits():
    cases = list(_cases())
    for splits in (1, 3):
        mine = [c for c in cases if _splits(c[0]) == splits]
        assert {c[1] for c in mine} == set(GQA), splits
        assert {c[2] for c in mine} == set(Q_LENS), splits
        assert {c[3] for c in mine} == set(PAGE_SIZES), splits
        assert {c[4] for c in mine} == set(DTYPES), splits


@pytest.mark.parametrize("name,gqa,q_len,page_size,dtype,head_dim", list(_cases()),
                         ids=lambda x: str(x))
def test_decode_matches_reference(name, gqa, q_len, page_size, dtype, head_dim):
    op = _example(name)
    hq, hkv = gqa
    capacity = -(-200 // page_size) * page_size
    batch_lengths = [capacity, 1, 3, 113]
    q, k, v, g = _caches(len(batch_lengths), hq, hkv, q_len, capacity, head_dim, DTYPES[dtype],
                         _seed(name, gqa, q_len, page_size, dtype))
    kv_len = torch.tensor(batch_lengths, dtype=torch.int32)
    params = make_params(name, len(batch_lengths), hq, q_len, capacity, g)
    # one split (Out and LSE written directly) or three (partials merged by the combine
    # kernel), alternating over the examples: each path meets every GQA ratio, q_len, page size
    # and dtype across the cases (test_cases_alternate_splits)
    k_pages, v_pages, table = testing.paged_cache(k, v, page_size, g)
    for splits in (1, 3) if FULL_MATRIX else (_splits(name),):
        split, _ = check_decode(op, q, k, v, kv_len, params, num_splits=splits)
        paged, _ = check_decode(op, q, k_pages, v_pages, kv_len, params, page_table=table,
                                num_splits=splits)
        if runtime.interpreting():  # one config: the same tiles in the same order, bit for bit
            assert torch.equal(paged, split), "paged and contiguous caches differ"
        else:  # the autotuner may pick another BLOCK_N for the paged kernel
            assert testing.max_rel_error(paged, split) <= (1e-5 if q.dtype == torch.float32 else 2e-3)


def test_default_length_and_splits_and_many_rows():
    # kv_len None (the capacity), the default split count, and 8:1 GQA x q_len 16 = 128 rows
    # per kv head: two row blocks of 64
    op = _example("alibi")
    q, k, v, g = _caches(2, 8, 1, 16, 75, 32, torch.float32, 7)
    params = make_params("alibi", 2, 8, 16, 75, g)
    check_decode(op, q, k, v, None, params)
    check_decode(op, q, k, v, torch.tensor([75, 20], dtype=torch.int32), params, num_splits=4)


def test_matches_the_forward_op():
    # decode of the last q_len rows equals the training op's rows at the same positions
    op = _example("t5_bias")
    q, k, v, g = _caches(1, 4, 2, 5, 90, 64, torch.float32, 3)
    params = make_params("t5_bias", 1, 4, 5, 90, g)
    out = op.decode(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), num_splits=2, **_on_device(params))
    ref = op(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), **_on_device(params))
    assert testing.max_rel_error(out, ref) <= FP32_TOL


# ---- which key tiles decode visits ---------------------------------------------------------

TRACE_SPECS = {
    "window": "attention w { mask causal & window(40, 0) }",
    "chunk": "attention c { mask causal & chunk(48) }",
    "prefix": "attention p { param prefix: i32[B]\n mask causal | kv < prefix[b] }",
    "documents": "attention d { param doc: i32[B, KV]\n mask causal & document(doc) }",
    "head_window": "attention hw { param w: i32[H]\n mask causal & kv >= q - w[h] }",
    "sinks": "attention s { mask causal & (kv < 4 | window(40, 0)) }",
}


def _trace_params(kind, b, hq, capacity, g):
    if kind == "prefix":
        return {"prefix": torch.tensor([5, 70, 0][:b], dtype=torch.int32)}
    if kind == "documents":
        cu = torch.sort(torch.randint(0, capacity, (b, 4), generator=g), dim=1).values
        cu = torch.cat([torch.zeros(b, 1, dtype=cu.dtype), cu], dim=1)
        return {"doc": attngen.document_ids(cu, capacity)}
    if kind == "head_window":
        return {"w": torch.randint(0, 50, (hq,), generator=g).to(torch.int32)}
    return {}


def _expected_tiles(op, kv_len, hq, hkv, q_len, capacity, params, block_n):
    """Brute force: per (sequence, kv head) the key tiles some packed row keeps (visit) and the
    in-sequence tiles every row keeps (FULL)."""
    group = hq // hkv
    visit = torch.zeros(len(kv_len), hkv, -(-capacity // block_n), dtype=torch.bool)
    full = torch.zeros_like(visit)
    for b, n in enumerate(kv_len.tolist()):
        cut = {name: (t[b:b + 1, :n] if name == "doc" else t[b:b + 1] if name == "prefix" else t)
               for name, t in params.items()}
        keep = mask_grid(op.spec, runtime.Shapes(1, hq, hkv, q_len, n, 16), **cut)[0]
        for h in range(hkv):
            rows = keep[h * group:(h + 1) * group].reshape(group * q_len, n)
            nonempty, every = testing.tile_classes(rows[None, None], group * q_len, block_n)
            visit[b, h, :nonempty.shape[-1]] = nonempty[0, 0, 0]
            full[b, h, :every.shape[-1]] = every[0, 0, 0]
    return visit, full


@pytest.mark.parametrize("kind", list(TRACE_SPECS))
def test_traced_tiles_equal_brute_force(kind):
    op = _load(TRACE_SPECS[kind])
    hq, hkv, q_len, capacity, block_n = 4, 2, 3, 160, 16
    q, k, v, g = _caches(3, hq, hkv, q_len, capacity, 16, torch.float32, _seed(kind))
    kv_len = torch.tensor([160, 77, 37], dtype=torch.int32)
    params = _trace_params(kind, 3, hq, capacity, g)
    trace = op.trace_decode_tiles(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE),
                                  kv_len=kv_len.to(DEVICE), block_n=block_n, num_splits=2,
                                  **_on_device(params)).cpu()
    assert trace.shape == (3, hkv, 1, capacity // block_n)
    visit, full = _expected_tiles(op, kv_len, hq, hkv, q_len, capacity, params, block_n)
    trace = trace[:, :, 0]
    assert torch.equal(trace != testing.EMPTY, visit), (kind, trace, visit)
    assert torch.equal(trace == testing.FULL, full), (kind, trace, full)
    check_decode(op, q, k, v, kv_len, params, num_splits=2)


def test_window_over_long_cache_reads_the_window_only():
    # a window of 64 over a 4096-key cache: one query visits ceil(65 / 16) + 1 tiles at most
    op = _load(TRACE_SPECS["window"].replace("window(40, 0)", "window(64, 0)"))
    q, k, v, _ = _caches(1, 8, 1, 1, 4096, 16, torch.float32, 11)
    trace = op.trace_decode_tiles(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), block_n=16,
                                  num_splits=5)
    visited = (trace != testing.EMPTY).nonzero()[:, -1].tolist()
    assert visited == list(range(4096 // 16 - 5, 4096 // 16)), visited


@pytest.mark.parametrize("splits", [1, 2, 5])
def test_sinks_and_a_window_over_a_long_cache_skip_the_gap(splits):
    # 4 sink keys and a window of 64: the sink tile, then the window's tiles, divided among the
    # splits as one run (the gap between them is never read)
    op = _load(TRACE_SPECS["sinks"].replace("window(40, 0)", "window(64, 0)"))
    q, k, v, _ = _caches(1, 8, 1, 1, 4096, 16, torch.float32, 12)
    trace = op.trace_decode_tiles(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), block_n=16,
                                  num_splits=splits)
    visited = (trace != testing.EMPTY).nonzero()[:, -1].tolist()
    assert visited == [0] + list(range(4096 // 16 - 5, 4096 // 16)), visited
    check_decode(op, q, k, v, None, {}, num_splits=splits)


# ---- bad inputs ----------------------------------------------------------------------------


def _bad_call(op, **changes):
    q, k, v, _ = _caches(2, 4, 2, 1, 64, 16, torch.float32, 0)
    args = dict(q=q, k_cache=k, v_cache=v, kv_len=torch.tensor([64, 3], dtype=torch.int32))
    args.update(changes)
    args = {n: (t.to(DEVICE) if isinstance(t, torch.Tensor) else t) for n, t in args.items()}
    return lambda: op.decode(args.pop("q"), args.pop("k_cache"), args.pop("v_cache"), **args)


@pytest.mark.parametrize("changes,message", [
    (dict(kv_len=torch.tensor([65, 3], dtype=torch.int32)), r"kv_len must lie in 0\.\.64"),
    (dict(kv_len=torch.tensor([-1, 3], dtype=torch.int32)), r"kv_len must lie in 0\.\.64"),
    (dict(kv_len=torch.tensor([4, 3, 2], dtype=torch.int32)), r"kv_len must have shape \[2\]"),
    (dict(kv_len=torch.tensor([4.0, 3.0])), r"kv_len must be an int32 \(or int64\) tensor"),
    (dict(kv_len=[4, 3]), r"kv_len must be an int32 torch.Tensor"),
    (dict(k_cache=torch.randn(3, 2, 64, 16), v_cache=torch.randn(3, 2, 64, 16)),
     r"k_cache has batch 3 but q has batch 2"),
    (dict(v_cache=torch.randn(2, 2, 32, 16)), r"v_cache has shape .* but k_cache has shape"),
    (dict(q=torch.randn(2, 3, 1, 16)), r"q's 3 heads must be a multiple of k_cache's 2 heads"),
    (dict(q=torch.randn(2, 4, 1, 16, dtype=torch.float64)), r"q has dtype torch.float64"),
    (dict(k_cache=torch.randn(2, 2, 64, 16).half()), r"k_cache has dtype torch.float16"),
    (dict(k_cache=torch.randn(3, 2, 16, 16), v_cache=torch.randn(3, 2, 16, 16),
          page_table=torch.tensor([[0, 1, 2, 0], [9, 2, 2, 2]], dtype=torch.int32)),
     r"page_table must hold page numbers in 0\.\.2 \(k_cache has 3 pages\) wherever kv_len"),
    (dict(k_cache=torch.randn(3, 2, 16, 16), v_cache=torch.randn(3, 2, 16, 16),
          page_table=torch.zeros(2, 4)), r"page_table must be an int32 \(or int64\) tensor"),
    (dict(k_cache=torch.randn(3, 2, 16, 16), v_cache=torch.randn(3, 2, 16, 16),
          page_table=torch.zeros(4, dtype=torch.int32)), r"page_table must be an int32 tensor"),
    (dict(num_splits=0), r"num_splits must be an int in 1\.\.256"),
])
def test_bad_inputs(changes, message):
    op = _example("llama")
    with pytest.raises(ValueError, match=message):
        _bad_call(op, **changes)()


def test_page_table_entries_past_kv_len_are_not_read():
    # pages a sequence never reaches may hold anything (-1 padding, as serving engines use)
    op = _example("llama")
    q, k, v, g = _caches(2, 4, 2, 1, 64, 16, torch.float32, 5)
    k_pages, v_pages, table = testing.paged_cache(k, v, 16, g)
    kv_len = torch.tensor([64, 20], dtype=torch.int32)
    table[1, 2:] = -1
    check_decode(op, q, k_pages, v_pages, kv_len, {}, page_table=table, num_splits=2)


def test_decode_refuses_gradients_and_missing_kernels():
    op = _example("llama")
    q, k, v, _ = _caches(1, 2, 2, 1, 16, 16, torch.float32, 0)
    with pytest.raises(ValueError, match="decode has no backward, but q require grad"):
        op.decode(q.requires_grad_(), k, v)
    no_decode = _load("attention fwd_only { mask causal\n kernels fwd, bwd }")
    with pytest.raises(NotImplementedError, match="leaves out decode"):
        no_decode.decode(q.detach(), k, v)

"""Tile classification (the sparsity stage) against brute force, through the Triton interpreter.

For masks of the closed forms (causal, windows, chunks, prefixes, documents and their
combinations) the tiles each kernel visits must be exactly the non-EMPTY ones, and the tiles it
runs without mask math exactly the FULL ones (every in-bounds element kept, the tile inside the
sequence along the loop's axis), compared with the dense mask reduced to tiles
(`attngen.testing.tile_classes`). The kernels report what they visit through `trace_tiles`.
Property tests draw random lengths (odd, not multiples of the tiles), windows, chunk sizes,
prefixes and document layouts (sorted, with empty documents, and non-monotone ids, which must stay
correct); the outputs must still match the reference.

ATTNGEN_SPARSITY_EXAMPLES raises the number of hypothesis examples per property (CI runs few).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import attngen
from attngen import runtime  # noqa: F401  (before triton: selects the interpreter with no GPU)
from attngen.reference import mask_grid
from attngen.sparsity import analyse
from attngen.testing import tile_classes

EXAMPLES = int(os.environ.get("ATTNGEN_SPARSITY_EXAMPLES", "6"))
# no shrinking: every example runs kernels in the interpreter, and the messages print the case
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]

SMALL_TILES = "blocks fwd(m=16, n=16, warps=4, stages=1)\nblocks bwd(m=16, n=16, warps=4, stages=1)"
SPECS = {
    "causal": "mask causal",
    "window": "param wl: i32\nparam wr: i32\nmask window(wl, wr)",
    "causal_window": "param wl: i32\nmask causal & window(wl, 0)",
    "causal_chunk": "param c: i32\nmask causal & chunk(c)",
    "prefix": "param prefix: i32[B]\nmask causal | kv < prefix[b]",
    # documents with 16 x 16 tiles (the interpreter's default is 64 x 64): at the drawn lengths
    # (up to 80) query tiles lie inside one document or span several; with sorted ids the
    # forward and dQ test their PARTIAL tiles against the queries' runs (sparsity.decided),
    # with unsorted ids they read the ids
    "document": f"param doc: i32[B, KV]\nmask document(doc)\n{SMALL_TILES}",
    "causal_document": f"param doc: i32[B, KV]\nmask causal & document(doc)\n{SMALL_TILES}",
    "sink_window": "param wl: i32\nparam sink: i32\nmask causal & (kv < sink | q - wl <= kv)",
}
# a union of two ranges that need not touch (attention sinks beside a window): the kernels skip
# the gap between them, so they visit exactly the non-EMPTY tiles, but run FULL only the tiles of
# one part (correct: the other part's FULL tiles run the mask)
FULL_OF_ONE_PART = {"sink_window"}


@pytest.fixture(scope="module")
def ops():
    return {name: attngen.load(f"attention {name} {{\n{body}\n}}")
            for name, body in SPECS.items()}


def _documents(draw, batch: int, kv_len: int, sorted_ids: bool) -> torch.Tensor:
    rows = []
    for _ in range(batch):
        if sorted_ids:  # cumulative lengths with empty documents and trailing padding
            cuts = sorted(draw(st.lists(st.integers(0, kv_len), min_size=0, max_size=6)))
            cu = torch.tensor([0, *cuts], dtype=torch.int64)
            rows.append(attngen.document_ids(cu, kv_len))
        else:
            rows.append(torch.tensor(draw(st.lists(st.integers(0, 3), min_size=kv_len,
                                                   max_size=kv_len)), dtype=torch.int32))
    return torch.stack(rows)


@st.composite
def cases(draw, name: str):
    q_len = draw(st.integers(1, 80))
    kv_len = draw(st.integers(1, 80))
    if draw(st.booleans()):
        q_len = kv_len  # the common self-attention shape
    batch = 2
    heads_q, heads_kv = draw(st.sampled_from([(1, 1), (2, 1)]))
    block_m, block_n = draw(st.sampled_from([(16, 16), (32, 16), (16, 32)]))
    params = {}
    if name in ("window", "causal_window", "sink_window"):
        params["wl"] = torch.tensor(draw(st.integers(0, 60)), dtype=torch.int32)
    if name == "window":
        params["wr"] = torch.tensor(draw(st.integers(0, 40)), dtype=torch.int32)
    if name == "sink_window":
        params["sink"] = torch.tensor(draw(st.integers(0, 20)), dtype=torch.int32)
    if name == "causal_chunk":
        params["c"] = torch.tensor(draw(st.integers(1, 50)), dtype=torch.int32)
    if name == "prefix":
        params["prefix"] = torch.tensor(draw(st.lists(st.integers(0, kv_len + 5), min_size=batch,
                                                      max_size=batch)), dtype=torch.int32)
    sorted_ids = True
    if name.endswith("document"):
        sorted_ids = draw(st.booleans()) or not draw(st.booleans())  # 3 in 4 sorted
        params["doc"] = _documents(draw, batch, kv_len, sorted_ids)
    return dict(q_len=q_len, kv_len=kv_len, batch=batch, heads_q=heads_q, heads_kv=heads_kv,
                block_m=block_m, block_n=block_n, params=params, sorted_ids=sorted_ids)


def _inputs(case, dtype=torch.float32):
    g = torch.Generator().manual_seed(case["q_len"] * 1000 + case["kv_len"])
    b, hq, hkv, d = case["batch"], case["heads_q"], case["heads_kv"], 16
    q = torch.randn(b, hq, case["q_len"], d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, case["kv_len"], d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, case["kv_len"], d, generator=g, dtype=dtype)
    return q, k, v


def _shapes(case):
    return runtime.Shapes(case["batch"], case["heads_q"], case["heads_kv"], case["q_len"],
                          case["kv_len"], 16)


def check_tiles(op, case, exact=True, kernels=("fwd", "dq", "dkdv")):
    """Every kernel visits every non-EMPTY tile and runs only FULL tiles without the mask;
    ``exact``: it visits nothing else and runs every FULL tile without the mask; "visits": it
    visits nothing else."""
    q, k, v = _inputs(case)
    keep = mask_grid(op.spec, _shapes(case), **case["params"])
    traces = op.trace_tiles(q, k, v, kernel="all", block_m=case["block_m"],
                            block_n=case["block_n"], **case["params"])
    for kernel in kernels:
        transposed = kernel == "dkdv"
        nonempty, full = tile_classes(keep, case["block_m"], case["block_n"], transposed=transposed)
        trace = traces[kernel]
        visited, flagged_full = trace > 0, trace == 2
        where = f"{op.name} {kernel} {case}"
        assert not (nonempty & ~visited).any(), f"a non-EMPTY tile was skipped: {where}"
        assert not (flagged_full & ~full).any(), f"a FULL tile holds a masked element: {where}"
        if exact:
            assert torch.equal(visited, nonempty), f"an EMPTY tile was visited: {where}"
        if exact is True:
            assert torch.equal(flagged_full, full), f"a FULL tile ran the mask: {where}"
    return traces


def check_output(op, case, backward=False):
    q, k, v = _inputs(case)
    if backward:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, lse = op(q, k, v, return_lse=True, **case["params"])
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    gold, gold_lse = op.reference(qd, kd, vd, return_lse=True, **case["params"])
    assert torch.allclose(out.double(), gold, atol=2e-5, rtol=1e-4), case
    assert torch.equal(torch.isinf(lse), torch.isinf(gold_lse)), case
    finite = torch.isfinite(gold_lse)
    assert torch.allclose(lse.double()[finite], gold_lse[finite], atol=2e-5, rtol=1e-4), case
    if backward:  # each kernel's PARTIAL tiles (documents: decided by runs or reading ids)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
        grads = torch.autograd.grad(out, (q, k, v), grad)
        golds = torch.autograd.grad(gold, (qd, kd, vd), grad.double())
        for name, g, want in zip(("dq", "dk", "dv"), grads, golds):
            assert torch.allclose(g.double(), want, atol=1e-4, rtol=1e-3), (name, case)


def _exact(case) -> bool:
    # documents: exact for sorted ids; a query tile holding negative positions (q_len > kv_len)
    # reads id 0 there and visits every key
    return case["sorted_ids"] and case["q_len"] <= case["kv_len"]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_closed_forms_are_exact(name):
    """The analysis finds a closed form for every part of these masks (no fallback)."""
    (attention,) = attngen.parse_and_check(f"attention {name} {{\n{SPECS[name]}\n}}")
    result = analyse(attention)
    assert result.exact
    assert "no FULL tiles" not in result.key_range
    assert result.documents == (("doc",) if "document" in name else ())


@pytest.mark.parametrize("mask, decided", [
    ("causal & document(doc)", (1,)),                # q >= kv & doc == doc: the second conjunct
    ("document(doc)", (0,)),
    ("document(doc) & q - kv < 100", (0,)),
    ("causal & (document(doc) | q < 4)", ()),        # not a conjunct of its own: read the ids
])
def test_document_conjuncts_a_query_tile_can_decide(mask, decided):
    """A top-level document conjunct: with sorted ids each query keeps exactly its own run, so
    the PARTIAL tiles of the forward and dQ test keys against their queries' runs, and dK/dV's
    queries against their keys' runs, instead of reading ids."""
    (attention,) = attngen.parse_and_check(
        f"attention d {{\nparam doc: i32[B, KV]\nmask {mask}\n}}")
    result = analyse(attention)
    assert result.decided == decided
    assert ("decided = " in result.key_range) == bool(decided)
    assert ("decided = " in result.query_range) == bool(decided)
    assert bool(result.row_runs) == bool(result.key_runs) == bool(decided)


def test_other_masks_fall_back_to_partial():
    (attention,) = attngen.parse_and_check(
        "attention odd { mask causal & (q + kv) % 3 == 0 }")
    result = analyse(attention)
    assert not result.exact
    assert "no FULL tiles" in result.key_range and "no FULL tiles" in result.query_range
    assert "hi = tl.minimum(hi, last_q + 1)" in result.key_range  # causal still bounds the loop


@pytest.mark.parametrize("name", ["causal_window", "causal_chunk", "prefix", "sink_window", "window"])
@SETTINGS
@given(data=st.data())
def test_affine_tiles_match_brute_force(ops, name, data):
    case = data.draw(cases(name))
    check_tiles(ops[name], case, exact="visits" if name in FULL_OF_ONE_PART else True)
    check_output(ops[name], case)


@pytest.mark.parametrize("name", ["document", "causal_document"])
@SETTINGS
@given(data=st.data())
def test_document_tiles_match_brute_force(ops, name, data):
    case = data.draw(cases(name))
    check_tiles(ops[name], case, exact=_exact(case))
    check_output(ops[name], case, backward=True)


# ---- the debug counter on fixed cases: visited tiles, counted --------------------------------

def _case(q_len, kv_len, params=None, block=16):
    return dict(q_len=q_len, kv_len=kv_len, batch=2, heads_q=1, heads_kv=1, block_m=block,
                block_n=block, params=params or {}, sorted_ids=True)


def test_causal_visits_the_lower_triangle(ops):
    trace = check_tiles(ops["causal"], _case(128, 128))["fwd"]
    assert int((trace[0, 0] == 1).sum()) == 8 and int((trace[0, 0] == 2).sum()) == 28  # 8 diagonal


def test_window_visits_a_band(ops):
    case = _case(128, 128, {"wl": torch.tensor(32, dtype=torch.int32)})
    trace = check_tiles(ops["causal_window"], case)["fwd"]
    assert (trace[0, 0] > 0).sum(1).max() == 3  # each query tile sees at most 3 key tiles


def test_sinks_beside_a_window_skip_the_gap(ops):
    # keys 0..3 (sinks) and the 32 before each query: tile 0 and the band, nothing between
    case = _case(256, 256, {"wl": torch.tensor(32, dtype=torch.int32),
                            "sink": torch.tensor(4, dtype=torch.int32)})
    traces = check_tiles(ops["sink_window"], case, exact="visits")
    fwd, dkdv = traces["fwd"][0, 0], traces["dkdv"][0, 0]
    assert (fwd > 0).sum(1).tolist() == [1, 2, 3] + [4] * 13  # sink tile + at most 3 band tiles
    assert (dkdv > 0).sum(0).tolist() == [16] + [3] * 13 + [2, 1]  # query tiles per key tile
    assert int((fwd > 0).sum()) < 16 * 17 // 2 // 2  # far below the causal hull's 136 tiles


def test_chunk_visits_blocks(ops):
    case = _case(96, 96, {"c": torch.tensor(32, dtype=torch.int32)})
    trace = check_tiles(ops["causal_chunk"], case)["fwd"]
    assert int((trace[0, 0] > 0).sum()) == 3 * 3  # 3 chunks of 2x2 tiles, lower triangles


def test_documents_visit_only_their_own_tiles(ops):
    lengths = torch.tensor([[0, 32, 48, 96, 128], [0, 5, 70, 71, 128]])
    doc = attngen.document_ids(lengths, 128)
    trace = check_tiles(ops["causal_document"], _case(128, 128, {"doc": doc}))["fwd"]
    # row 0: documents of 32, 16, 48, 32 tokens, tile-aligned: causal triangles of 2, 1, 3, 2 tiles
    assert int((trace[0, 0] > 0).sum()) == 3 + 1 + 6 + 3 and int((trace[0, 0] == 1).sum()) == 8


def test_unsorted_documents_stay_correct(ops):
    doc = torch.tensor([[0, 1, 0, 2] * 16, [3] * 32 + [1] * 32], dtype=torch.int32)
    case = _case(64, 64, {"doc": doc})
    check_tiles(ops["causal_document"], case, exact=False)
    check_output(ops["causal_document"], case)


@pytest.mark.parametrize("learnt", [True, False])
def test_decided_document_tiles_with_a_grad_param(learnt):
    """Documents of 10, 60 and 10 tokens at 16 x 16 tiles (sorted ids: decided, the PARTIAL
    tiles test the queries' runs) with ALiBi slopes: the dQ kernel's decided PARTIAL loop also
    accumulates the slopes' gradient (learnt), or is the frozen dQ's (fixed slopes)."""
    op = attngen.load("attention doc_slopes {\nparam doc: i32[B, KV]\nparam slopes: f32[H] grad\n"
                      "score score + slopes[h] * (kv - q)\nmask causal & document(doc)\n"
                      f"{SMALL_TILES}\n}}")
    doc = attngen.document_ids(torch.tensor([[0, 10, 70], [0, 30, 40]]), 80)
    case = _case(80, 80, {"doc": doc})
    case["heads_q"] = 2
    q, k, v = (t.requires_grad_() for t in _inputs(case))
    slopes = torch.tensor([0.25, 0.0625], requires_grad=learnt)
    out = op(q, k, v, doc=doc, slopes=slopes)
    leaves = (q, k, v, slopes) if learnt else (q, k, v)
    golden_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    golden_slopes = slopes.detach().clone().requires_grad_(learnt)  # f32, as declared
    if learnt:
        golden_leaves.append(golden_slopes)
    gold = op.reference(*golden_leaves[:3], doc=doc, slopes=golden_slopes)
    assert torch.allclose(out.double(), gold, atol=2e-5, rtol=1e-4)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    for name, g, want in zip(("dq", "dk", "dv", "dslopes"), torch.autograd.grad(out, leaves, grad),
                             torch.autograd.grad(gold, golden_leaves, grad.double())):
        assert torch.allclose(g.double(), want.double(), atol=1e-4, rtol=1e-3), name


def test_sorted_documents_are_tested_by_runs_not_ids(ops, monkeypatch):
    """Sorted ids: every PARTIAL tile of the forward and dQ tests keys against the runs of its
    queries, and dK/dV's tests queries against the runs of its keys, also in tiles that span
    two documents (boundaries at 30 and 75 with 16-row tiles). Given the runs of the true ids
    and other ids, out, dq, dk and dv are unchanged, bit for bit."""
    op = ops["causal_document"]
    doc = attngen.document_ids(torch.tensor([[0, 30, 75], [0, 7, 50]]), 113)
    case = _case(113, 113, {"doc": doc})
    check_output(op, case, backward=True)
    q, k, v = (t.requires_grad_() for t in _inputs(case))
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    module = op.module
    runs = module._documents({"doc": doc}, module._shapes_of(q, k))
    results = []
    for ids in (doc, doc.flip(-1).contiguous()):  # the true ids, then others (never read)
        monkeypatch.setattr(module, "_documents", lambda params, shapes: runs)
        out = op(q, k, v, doc=ids)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for name, true_ids, other_ids in zip(("out", "dq", "dk", "dv"), *results):
        assert torch.equal(true_ids, other_ids), name


@pytest.mark.parametrize("second_sorted", [True, False])
def test_two_document_tables_intersect_their_runs(second_sorted):
    """Two document conjuncts: a query keeps the keys in both of its runs (row_runs takes their
    intersection); with the second table unsorted no tile is decided and both read ids."""
    op = attngen.load("attention two_docs {\nparam a: i32[B, KV]\nparam c: i32[B, KV]\n"
                      f"mask causal & document(a) & document(c)\n{SMALL_TILES}\n}}")
    (attention,) = attngen.parse_and_check(op.spec.source)
    assert len(analyse(attention).decided) == 2
    a = attngen.document_ids(torch.tensor([[0, 30, 75], [0, 7, 50]]), 113)
    c = attngen.document_ids(torch.tensor([[0, 20, 41, 90], [0, 64, 65, 100]]), 113)
    if not second_sorted:
        c = c.flip(-1).contiguous()
    check_output(op, _case(113, 113, {"a": a, "c": c}), backward=True)


def test_document_runs_follow_in_place_edits(ops):
    """The runs are reused while the same ids tensor returns unmodified, rebuilt after an edit."""
    doc = torch.zeros(2, 160, dtype=torch.int32)  # one document: tiles below the diagonal FULL
    case = _case(160, 160, {"doc": doc})
    check_output(ops["causal_document"], case)
    doc[:, 100:] = 1  # in place: two documents, those tiles must now be split
    check_output(ops["causal_document"], case)
    doc[0] = doc[0].flip(0)  # in place, now decreasing ids
    check_output(ops["causal_document"], case)


def test_document_ids_from_cumulative_lengths():
    ids = attngen.document_ids(torch.tensor([0, 3, 3, 7]), 9)
    assert ids.tolist() == [0, 0, 0, 2, 2, 2, 2, 3, 3]
    assert ids.dtype == torch.int32
    batch = attngen.document_ids(torch.tensor([[0, 2, 4], [0, 1, 4]]))
    assert batch.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    with pytest.raises(ValueError, match="start at 0 and never decrease"):
        attngen.document_ids(torch.tensor([0, 5, 3]))
    with pytest.raises(ValueError, match="length must cover every document"):
        attngen.document_ids(torch.tensor([0, 5]), 4)
    with pytest.raises(ValueError, match="integer tensor"):
        attngen.document_ids(torch.tensor([0.0, 2.0]))

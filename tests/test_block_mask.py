"""Block masks (`op.block_mask`): any mask classified per block on the device, through the Triton
interpreter.

For masks the static analysis cannot bound (tables, arbitrary expressions) and for closed forms
alike, `op.block_mask(batch, heads, q_len, kv_len, heads_kv=, block=, **mask params)` must give
exactly the brute-force classes of the dense mask (`attngen.reference.mask_grid` reduced by
`attngen.testing.tile_classes`): EMPTY where no in-bounds element is kept, FULL where the block
lies inside q_len and kv_len and keeps every element, PARTIAL otherwise; with batch / head dims
of 1 when the mask does not read b / h (hkv). Its lists (`rows`, `cols`) name those blocks; the
forward, dQ and dK/dV kernels given `block_mask=` visit exactly them (`trace_tiles` at the
block's granularity equals the classes; at a finer one, the classes upsampled), and the outputs
and gradients still match the float64 reference. Every misuse (other shapes, spec, device,
params, block sizes) is a ValueError naming the argument, what was expected and what was
received, raised before any launch.

Specs: a per-head table with causal (reads h), a per-batch table aligned to 64 (reads b: FULL
blocks), an expression no closed form bounds, examples/packed_docs.attn (closed-form prefilter
and document runs inside the classification kernel), and a spec whose mask reads hkv and scalar
params beside a score param the block mask must not take.

ATTNGEN_BLOCK_MASK_EXAMPLES sets the number of hypothesis examples per spec (default 3; the
whole file then runs in under a minute on two cores).
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import attngen
from attngen import runtime  # noqa: F401  (before triton: selects the interpreter with no GPU)
from attngen.reference import mask_grid
from attngen.testing import EMPTY, FULL, PARTIAL, max_rel_error, tile_classes
from test_forward import _raises as raises  # ValueError with these fragments in its message

EXAMPLES = int(os.environ.get("ATTNGEN_BLOCK_MASK_EXAMPLES", "3"))
# no shrinking: every example runs kernels in the interpreter, and the messages print the case
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
F64 = torch.float64
FP32_TOL = 1e-4  # max |x - gold| / max |gold| against the float64 golden
FP16_FACTOR, FP16_FLOOR = 2.0, 1e-3  # fp16: within 2x the fp16 reference's error, plus a floor
HEAD_DIM = 16

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]

SPECS = {
    # the example: a per-head table of 32 x 32 cells (positions >= 256 read 0: masked)
    "tablemask": """attention tablemask {
    param  keep: i32[H, 8, 8]
    mask   keep[h, q // 32, kv // 32] != 0 & kv <= q
}""",
    # per batch row, cells aligned to 64: blocks of 64 (or 128 over all-true cells) are FULL
    "batch_table": """attention batch_table {
    param  allowed: bool[B, 5, 5]
    mask   allowed[b, q // 64, kv // 64]
}""",
    # no closed form: the analysis visits everything, the block mask finds the stripes
    "stripes": """attention stripes {
    mask   (q // 48) % 2 == (kv // 80) % 2
}""",
    # reads hkv and two scalar-or-table params; cap is a score param, not the block mask's
    "gated": """attention gated {
    param  period: i32
    param  lanes: i32[HKV, 4]
    param  cap: f32
    score  cap * tanh(score / cap)
    mask   (q // period) % 2 == (kv // period) % 2 & lanes[hkv, kv // 64] != 0
}""",
    # a closed form with a gap (sinks beside a window): the prefilter skips blocks inside it
    "sinks": """attention sinks {
    param  sink: i32
    param  w: i32
    mask   causal & (kv < sink | q - w <= kv)
}""",
}
# what each mask reads (the generated module's MASK_READS): the batch / head dims of the classes
MASK_READS = {"tablemask": ("h", "keep"), "batch_table": ("allowed", "b"), "stripes": (),
              "packed_docs": ("b", "doc"), "gated": ("hkv", "lanes", "period"),
              "sinks": ("sink", "w")}
PROPERTY_SPECS = ["tablemask", "batch_table", "stripes", "packed_docs", "sinks"]


@pytest.fixture(scope="module")
def ops(examples_dir):
    loaded = {name: attngen.load(text) for name, text in SPECS.items()}
    loaded["packed_docs"] = attngen.load(examples_dir / "packed_docs.attn")
    return loaded


# ---- the oracles ---------------------------------------------------------------------------------

def _shapes(batch, heads_q, heads_kv, q_len, kv_len):
    return runtime.Shapes(batch, heads_q, heads_kv, q_len, kv_len, HEAD_DIM)


def brute_force_classes(op, shapes, block, params) -> torch.Tensor:
    """int8 [B, Hq, q blocks, kv blocks] of the dense mask: 0 EMPTY, 1 PARTIAL, 2 FULL (every
    element kept and the block inside both lengths)."""
    rows, keys = block
    keep = mask_grid(op.spec, shapes, **params)
    nonempty, full = tile_classes(keep, rows, keys)  # FULL needs the keys inside kv_len
    rows_inside = torch.arange(nonempty.shape[2]) * rows + rows <= shapes.q_len
    full &= rows_inside[:, None]  # a block mask's FULL blocks also lie inside q_len
    return nonempty.to(torch.int8) + full.to(torch.int8)


def check_lists(bm):
    """rows (key blocks per query block) and cols (query blocks per key block): per class,
    PARTIAL then FULL, the count then the block indices in increasing order."""
    for lists, classes in ((bm.rows, bm.classes), (bm.cols, bm.classes.transpose(-1, -2))):
        assert lists.dtype == torch.int32
        assert tuple(lists.shape) == (*classes.shape[:-1], 2, 1 + classes.shape[-1])
        for index in itertools.product(*map(range, classes.shape[:-1])):
            for slot, cls in enumerate((PARTIAL, FULL)):
                want = torch.nonzero(classes[index] == cls).flatten().to(torch.int32)
                got = lists[index][slot]
                assert int(got[0]) == len(want), (bm, index, cls)
                assert torch.equal(got[1:1 + len(want)], want), (bm, index, cls)


def check_block_mask(op, bm, shapes, block, params, reads):
    """classes against brute force, with the broadcast dims; lists, density, shapes."""
    rows, keys = block
    blocks = (-(-shapes.q_len // rows), -(-shapes.kv_len // keys))
    dims = (shapes.batch if "b" in reads else 1,
            shapes.heads_q if {"h", "hkv"} & set(reads) else 1)
    assert bm.block == (rows, keys)
    assert bm.classes.dtype == torch.int8
    assert tuple(bm.classes.shape) == (*dims, *blocks), bm
    want = brute_force_classes(op, shapes, block, params)
    got = bm.classes.expand(shapes.batch, shapes.heads_q, *blocks)
    assert torch.equal(got, want), (
        f"{bm}: classes differ from brute force at {(got != want).nonzero().tolist()[:8]}\n"
        f"got {got.tolist()}\nwant {want.tolist()}")
    check_lists(bm)
    assert bm.density == pytest.approx((bm.classes != EMPTY).double().mean().item())
    s = bm.shapes
    assert (s.batch, s.heads_q, s.heads_kv, s.q_len, s.kv_len) == (
        shapes.batch, shapes.heads_q, shapes.heads_kv, shapes.q_len, shapes.kv_len)
    return want


def check_traces(op, bm, q, k, v, params, want, block_m=None, block_n=None):
    """The tiles fwd, dq and dkdv visit with the block mask: its classes (upsampled when the
    tiles are finer than the blocks)."""
    rows, keys = bm.block
    block_m, block_n = block_m or rows, block_n or keys
    traces = op.trace_tiles(q, k, v, kernel="all", block_m=block_m, block_n=block_n,
                            block_mask=bm, **params)
    tiles = (-(-q.shape[2] // block_m), -(-k.shape[2] // block_n))
    upsampled = (want.repeat_interleave(rows // block_m, 2)
                 .repeat_interleave(keys // block_n, 3)[:, :, :tiles[0], :tiles[1]])
    for kernel in ("fwd", "dq", "dkdv"):
        trace = traces[kernel]
        assert torch.equal(trace, upsampled), (
            f"{bm} {kernel} trace ({block_m} x {block_n}) differs from the classes at "
            f"{(trace != upsampled).nonzero().tolist()[:8]}")


def _forward_backward(fn, q, k, v, params, w_out, w_lse):
    """out, lse and the gradients of sum(out * w_out) + sum(finite lse * w_lse) wrt q, k, v."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse = fn(*leaves, return_lse=True, **params)
    finite_lse = lse.to(F64).masked_fill(torch.isinf(lse), 0.0)
    loss = (out.to(F64) * w_out).sum() + (finite_lse * w_lse).sum()
    return (out.detach(), lse.detach(), *torch.autograd.grad(loss, leaves))


def check_against_reference(op, bm, q, k, v, params, seed=0):
    """out, lse, dq, dk, dv of the call with block_mask against op.reference in float64; fp16
    within 2x the error of the reference run in fp16."""
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(q.shape, generator=g, dtype=F64)
    w_lse = torch.randn(q.shape[:3], generator=g, dtype=F64)
    kernel = (lambda *a, **kw: op(*a, block_mask=bm, **kw))  # noqa: E731
    got = _forward_backward(kernel, q, k, v, params, w_out, w_lse)
    gold = _forward_backward(op.reference, *(t.to(F64) for t in (q, k, v)), params, w_out, w_lse)
    out, lse, gold_out, gold_lse = got[0], got[1], gold[0], gold[1]
    assert lse.dtype == torch.float32 and out.dtype == q.dtype
    assert not torch.isnan(lse).any() and not (lse == torch.inf).any()
    masked = gold_lse == -torch.inf
    assert torch.equal(lse == -torch.inf, masked), (
        f"{bm}: -inf lse (fully masked rows) at {(lse == -torch.inf).nonzero().tolist()[:8]}, "
        f"golden at {masked.nonzero().tolist()[:8]}")
    assert (out[masked] == 0).all(), f"{bm}: a fully masked row's output is not 0"
    errors = {"out": max_rel_error(out, gold_out, floor=1e-6),
              "lse": max_rel_error(lse[~masked], gold_lse[~masked], floor=1.0),
              **{name: max_rel_error(x, y, floor=1e-6)
                 for name, x, y in zip(("dq", "dk", "dv"), got[2:], gold[2:])}}
    for name, x in zip(("out", "dq", "dk", "dv"), (out, *got[2:])):
        assert torch.isfinite(x).all(), f"{bm}: {name} has NaN or inf"
    if q.dtype == torch.float32:
        for name, err in errors.items():
            assert err <= FP32_TOL, f"{bm}: fp32 {name} max rel error {err:.3g} > {FP32_TOL}"
        return
    low = _forward_backward(op.reference, q, k, v, params, w_out, w_lse)
    low_errors = {"out": max_rel_error(low[0], gold_out, floor=1e-6),
                  "lse": max_rel_error(low[1][~masked], gold_lse[~masked], floor=1.0),
                  **{n: max_rel_error(x, y, floor=1e-6)
                     for n, x, y in zip(("dq", "dk", "dv"), low[2:], gold[2:])}}
    for name, err in errors.items():
        bound = FP16_FACTOR * low_errors[name] + FP16_FLOOR
        assert err <= bound, (f"{bm}: {q.dtype} {name} error {err:.3g} > {FP16_FACTOR} x "
                              f"reference error {low_errors[name]:.3g} + {FP16_FLOOR}")


def make_qkv(batch, heads_q, heads_kv, q_len, kv_len, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads_q, q_len, HEAD_DIM, generator=g)
    k = torch.randn(batch, heads_kv, kv_len, HEAD_DIM, generator=g)
    v = torch.randn(batch, heads_kv, kv_len, HEAD_DIM, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def table(shape, density, seed, dtype=torch.int32):
    """Random 0/1 cells, about `density` of them set (all for density 1)."""
    cells = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density
    return cells.to(dtype)


# ---- property: random lengths, blocks, GQA and tables --------------------------------------------

def _document_ids(draw, batch, kv_len):
    """Sorted ids from cumulative lengths (empty documents, trailing padding); 1 row in 4 not
    monotone (the runs' prefilter gives up there; the elements decide)."""
    rows = []
    for _ in range(batch):
        if draw(st.integers(0, 3)):
            cuts = sorted(draw(st.lists(st.integers(0, kv_len), max_size=6)))
            rows.append(attngen.document_ids(torch.tensor([0, *cuts]), kv_len))
        else:
            rows.append(table((kv_len,), 0.5, draw(st.integers(0, 2**16))) * 2)
    return torch.stack(rows).to(torch.int32)


def _rotate(choices, turn):
    turn %= len(choices)
    return choices[turn:] + choices[:turn]


@st.composite
def cases(draw, name):
    q_len, kv_len = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    if draw(st.integers(0, 3)) == 0:
        q_len = kv_len  # the self-attention shape
    # rotated per spec: the few examples of each (the first is the simplest) differ across specs
    turn = PROPERTY_SPECS.index(name)
    heads_q, heads_kv = draw(st.sampled_from(_rotate([(2, 2), (2, 1)], turn)))
    block = draw(st.sampled_from(_rotate([64, (64, 128), 128], turn)))
    batch = 2 if "b" in MASK_READS[name] else 1  # the others broadcast over it: time
    seed = draw(st.integers(0, 2**16))
    density = draw(st.sampled_from([0.5, 0.8, 1.0]))
    params = {}
    if name == "tablemask":
        keep = table((heads_q, 8, 8), density, seed)
        if draw(st.booleans()):  # a row of cells off: the queries of 32 positions see nothing
            keep[:, draw(st.integers(0, 7))] = 0
        params["keep"] = keep
    elif name == "batch_table":
        params["allowed"] = table((batch, 5, 5), density, seed, torch.bool)
    elif name == "packed_docs":
        params["doc"] = _document_ids(draw, batch, kv_len)
    elif name == "sinks":
        params.update(sink=draw(st.integers(0, 150)), w=draw(st.integers(0, 200)))
    return dict(batch=batch, heads_q=heads_q, heads_kv=heads_kv, q_len=q_len, kv_len=kv_len,
                block=block, params=params, seed=seed)


@pytest.mark.parametrize("name", PROPERTY_SPECS)
@SETTINGS
@given(data=st.data())
def test_block_masks_match_brute_force(ops, name, data):
    """classes = brute force; the three kernels visit exactly its blocks; outputs and gradients
    match the reference."""
    case = data.draw(cases(name))
    op, params = ops[name], case["params"]
    dims = (case["batch"], case["heads_q"], case["heads_kv"], case["q_len"], case["kv_len"])
    bm = op.block_mask(*dims[:2], *dims[3:], heads_kv=case["heads_kv"], block=case["block"],
                       **params)
    block = (case["block"],) * 2 if isinstance(case["block"], int) else case["block"]
    want = check_block_mask(op, bm, _shapes(*dims), block, params, MASK_READS[name])
    q, k, v = make_qkv(*dims, seed=case["seed"])
    check_traces(op, bm, q, k, v, params, want)
    check_against_reference(op, bm, q, k, v, params, seed=case["seed"])


def test_mask_reads(ops):
    """MASK_READS lists the position indices and params the mask reads, and nothing else."""
    for name, reads in MASK_READS.items():
        assert tuple(ops[name].module.MASK_READS) == reads, name


# ---- broadcast dims, FULL blocks, finer tiles ----------------------------------------------------

@pytest.mark.parametrize("name", sorted(MASK_READS))
def test_classes_broadcast_over_what_the_mask_does_not_read(ops, name):
    """batch dim 1 unless the mask reads b, heads dim 1 unless it reads h or hkv."""
    B, Hq, Hkv, M, N = 2, 4, 2, 70, 90
    g = torch.Generator().manual_seed(5)
    params = {"tablemask": {"keep": table((Hq, 8, 8), 0.6, 1)},
              "batch_table": {"allowed": table((B, 5, 5), 0.6, 2, torch.bool)},
              "stripes": {},
              "packed_docs": {"doc": attngen.document_ids(torch.tensor([[0, 30, 90],
                                                                        [0, 5, 61]]), N)},
              "gated": {"period": 24, "lanes": torch.randint(0, 2, (Hkv, 4), generator=g,
                                                             dtype=torch.int32)},
              "sinks": {"sink": 4, "w": 20}}[name]
    bm = ops[name].block_mask(B, Hq, M, N, heads_kv=Hkv, block=64, **params)
    call_params = dict(params, cap=20.0) if name == "gated" else params
    check_block_mask(ops[name], bm, _shapes(B, Hq, Hkv, M, N), (64, 64), call_params,
                     MASK_READS[name])
    assert bm.rows.shape[:2] == bm.classes.shape[:2] == bm.cols.shape[:2]


def test_all_kept_blocks_are_full_except_at_the_edges(ops):
    """A table of all ones, no causal: blocks inside both lengths FULL, the edge ones PARTIAL;
    the kernels run the FULL blocks as FULL."""
    op = ops["batch_table"]
    B, Hq, Hkv, M, N = 2, 1, 1, 150, 200
    params = {"allowed": torch.ones(B, 5, 5, dtype=torch.bool)}
    bm = op.block_mask(B, Hq, M, N, heads_kv=Hkv, block=64, **params)
    want = torch.full((B, 1, 3, 4), PARTIAL, dtype=torch.int8)
    want[:, :, :2, :3] = FULL  # rows 0..127 < 150, keys 0..191 < 200
    assert torch.equal(bm.classes, want), bm.classes
    assert bm.density == 1.0
    full = check_block_mask(op, bm, _shapes(B, Hq, Hkv, M, N), (64, 64), params,
                            MASK_READS["batch_table"])
    q, k, v = make_qkv(B, Hq, Hkv, M, N, seed=3)
    check_traces(op, bm, q, k, v, params, full)
    check_against_reference(op, bm, q, k, v, params)


def test_rectangular_blocks_and_finer_tiles(ops):
    """block (64, 128) given as a list; tiles of 32 x 64 inside its blocks take their class."""
    op = ops["tablemask"]
    B, Hq, Hkv, M, N = 1, 2, 1, 100, 230
    params = {"keep": table((Hq, 8, 8), 0.7, 11)}
    bm = op.block_mask(B, Hq, M, N, heads_kv=Hkv, block=[64, 128], **params)
    want = check_block_mask(op, bm, _shapes(B, Hq, Hkv, M, N), (64, 128), params, ("h",))
    q, k, v = make_qkv(B, Hq, Hkv, M, N, seed=4)
    check_traces(op, bm, q, k, v, params, want, block_m=32, block_n=64)


def test_hkv_mask_with_scalar_params_and_a_score_param(ops):
    """The mask reads hkv and a Python scalar; the score's cap is passed to the calls only."""
    op = ops["gated"]
    B, Hq, Hkv, M, N = 1, 4, 2, 90, 130
    lanes = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.int32)
    bm = op.block_mask(B, Hq, M, N, heads_kv=Hkv, block=64, period=40, lanes=lanes)
    params = {"period": 40, "lanes": lanes, "cap": 20.0}
    check_block_mask(op, bm, _shapes(B, Hq, Hkv, M, N), (64, 64), params, MASK_READS["gated"])
    q, k, v = make_qkv(B, Hq, Hkv, M, N, seed=6)
    check_against_reference(op, bm, q, k, v, params)


# ---- fully masked rows, fp16, reuse --------------------------------------------------------------

def test_fully_masked_rows_and_empty_query_blocks(ops):
    """Rows at negative positions (q_len > kv_len) and rows whose table cells are off: lse -inf,
    output 0, zero gradients; a query block with no listed key block at all."""
    op = ops["tablemask"]
    B, Hq, Hkv, M, N = 1, 2, 1, 150, 120  # rows 0..29 sit at negative positions
    keep = table((Hq, 8, 8), 0.8, 12)
    keep[:, :2] = 0  # positions 0..63 see nothing: query block 0 (positions -30..33) is EMPTY
    params = {"keep": keep}
    bm = op.block_mask(B, Hq, M, N, heads_kv=Hkv, block=64, **params)
    check_block_mask(op, bm, _shapes(B, Hq, Hkv, M, N), (64, 64), params, ("h",))
    assert (bm.classes[:, :, 0] == EMPTY).all() and (bm.rows[:, :, 0, :, 0] == 0).all()
    q, k, v = make_qkv(B, Hq, Hkv, M, N, seed=7)
    out, lse = op(q, k, v, block_mask=bm, return_lse=True, **params)
    assert torch.isinf(lse[:, :, :94]).all() and (out[:, :, :94] == 0).all()
    check_against_reference(op, bm, q, k, v, params, seed=7)


def test_fp16(ops):
    op = ops["tablemask"]
    B, Hq, Hkv, M, N = 2, 2, 1, 100, 150
    params = {"keep": table((Hq, 8, 8), 0.7, 13)}
    bm = op.block_mask(B, Hq, M, N, heads_kv=Hkv, block=(64, 128), **params)
    q, k, v = make_qkv(B, Hq, Hkv, M, N, seed=8, dtype=torch.float16)
    check_against_reference(op, bm, q, k, v, params, seed=8)


def test_one_block_mask_serves_several_calls(ops):
    """The issue's example: one block mask, reused by two calls with other q, k, v (layers)."""
    op = ops["tablemask"]
    keep = table((4, 8, 8), 0.6, 14)
    bm = op.block_mask(1, 4, 160, 160, heads_kv=2, block=64, keep=keep)
    assert repr(bm).startswith("BlockMask(tablemask, batch=1, heads=4, q_len=160, kv_len=160, "
                               "block=(64, 64), classes=[1, 4, 3, 3], density=")
    assert f"density={bm.density:.3f})" in repr(bm)
    for layer in range(2):
        q, k, v = make_qkv(1, 4, 2, 160, 160, seed=20 + layer)
        check_against_reference(op, bm, q, k, v, {"keep": keep}, seed=layer)


# ---- validation: a ValueError naming what was expected and received, before any launch -----------

class Launched(Exception):
    """Raised by the patched launchers: the call got past validation."""


class _NoLaunch:
    def __getitem__(self, grid):
        raise Launched


def forbid_launches(monkeypatch, *ops):
    def launch(*args, **kwargs):
        raise Launched

    for op in ops:
        monkeypatch.setattr(op.module, "_launch_fwd", launch)
        monkeypatch.setattr(op.module, "_launch_bwd", launch)
        monkeypatch.setattr(op.module, f"_{op.name}_block_classes", _NoLaunch())


B, HQ, HKV, M, N = 2, 4, 2, 50, 70
LANES = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1]], dtype=torch.int32)


@pytest.fixture(scope="module")
def built(ops):
    """Block masks for calls of B x HQ (HKV) x M x N, built before any test patches launches."""
    keep = table((HQ, 8, 8), 0.6, 15)
    return {
        "stripes": ops["stripes"].block_mask(B, HQ, M, N, heads_kv=HKV, block=64),
        "keep": keep,
        "tablemask": ops["tablemask"].block_mask(B, HQ, M, N, heads_kv=HKV, block=64, keep=keep),
        "gated": ops["gated"].block_mask(B, HQ, M, N, heads_kv=HKV, block=64, period=48,
                                         lanes=LANES),
    }


def _call(op, shape=(B, HQ, HKV, M, N), **kwargs):
    b, hq, hkv, m, n = shape
    q, k, v = make_qkv(b, hq, hkv, m, n, seed=0)
    return lambda: op(q, k, v, **kwargs)


@pytest.mark.parametrize("name, shape, have, want", [
    ("batch", (1, HQ, HKV, M, N), 2, 1),
    ("heads", (B, 8, HKV, M, N), 4, 8),
    ("q_len", (B, HQ, HKV, 49, N), 50, 49),
    ("kv_len", (B, HQ, HKV, M, 71), 70, 71),
])
def test_block_mask_for_other_shapes(ops, built, monkeypatch, name, shape, have, want):
    op = ops["stripes"]
    forbid_launches(monkeypatch, op)
    raises(_call(op, shape, block_mask=built["stripes"]), "block_mask",
           f"built for {name}={have}", f"call has {name}={want}")
    q, k, v = make_qkv(*shape, seed=0)
    raises(lambda: op.trace_tiles(q, k, v, block_mask=built["stripes"]), f"{name}={have}",
           f"{name}={want}")


def test_heads_kv_matters_only_to_masks_that_read_hkv(ops, built, monkeypatch):
    forbid_launches(monkeypatch, ops["stripes"], ops["gated"])
    with pytest.raises(Launched):  # stripes does not read hkv: any GQA ratio of the same heads
        _call(ops["stripes"], (B, HQ, 4, M, N), block_mask=built["stripes"])()
    lanes = torch.ones(4, 4, dtype=torch.int32)
    raises(_call(ops["gated"], (B, HQ, 4, M, N), block_mask=built["gated"], period=48,
                 lanes=lanes, cap=3.0), "block_mask", "built for heads_kv=2",
           "call has heads_kv=4")


def test_block_mask_of_another_spec_or_type_or_device(ops, built, monkeypatch):
    op, other = ops["tablemask"], ops["stripes"]
    forbid_launches(monkeypatch, op, other)
    keep = built["keep"]
    raises(_call(op, block_mask=built["stripes"], keep=keep), "block_mask",
           "stripes.block_mask", "another spec", "tablemask.block_mask")
    raises(_call(other, block_mask=built["stripes"].classes), "block_mask must be a BlockMask",
           "stripes.block_mask(...)", "got Tensor")
    raises(_call(other, block_mask="dense"), "block_mask must be a BlockMask", "got str")
    bm = built["stripes"]
    elsewhere = dataclasses.replace(bm, classes=bm.classes.to("meta"), rows=bm.rows.to("meta"),
                                    cols=bm.cols.to("meta"))
    raises(_call(other, block_mask=elsewhere), "block_mask is on meta", "q is on cpu")
    with pytest.raises(Launched):  # the valid calls pass validation
        _call(other, block_mask=bm)()
    with pytest.raises(Launched):
        _call(op, block_mask=built["tablemask"], keep=keep)()


def test_block_mask_of_other_params(ops, built, monkeypatch):
    """Tensors: the very object, unmodified since (version counter); scalars: the same value."""
    op, gated = ops["tablemask"], ops["gated"]
    keep = built["keep"].clone()
    bm = op.block_mask(B, HQ, M, N, heads_kv=HKV, block=64, keep=keep)
    forbid_launches(monkeypatch, op, gated)
    with pytest.raises(Launched):
        _call(op, block_mask=bm, keep=keep)()
    raises(_call(op, block_mask=bm, keep=keep.clone()), "block_mask", "another param keep",
           "the keep this call passes")
    keep[0, 0, 0] = 1 - keep[0, 0, 0]  # in place
    raises(_call(op, block_mask=bm, keep=keep), "block_mask", "param keep", "modified since")

    bm = built["gated"]
    with pytest.raises(Launched):  # cap is not the block mask's: any value goes
        _call(gated, block_mask=bm, period=48, lanes=LANES, cap=3.0)()
    raises(_call(gated, block_mask=bm, period=40, lanes=LANES, cap=3.0), "block_mask",
           "another param period", "the period this call passes")
    raises(_call(gated, block_mask=bm, period=torch.tensor(48, dtype=torch.int32), lanes=LANES,
                 cap=3.0), "another param period")
    raises(_call(gated, block_mask=bm, period=48, lanes=LANES.clone(), cap=3.0),
           "another param lanes")


def test_block_mask_of_a_modified_inference_tensor(ops):
    op = ops["tablemask"]
    with torch.inference_mode():
        keep = torch.zeros(1, 8, 8, dtype=torch.int32)
        keep[:, 0, 0] = 1  # only block (0, 0) of 64 x 64 keeps anything
        bm = op.block_mask(1, 1, 128, 128, block=64, keep=keep)
        keep.fill_(1)  # in place: now every causal element is kept
        q, k, v = make_qkv(1, 1, 1, 128, 128, seed=9)
        # without the ValueError, rows 64..127 come back fully masked (out 0, error ~0.7)
        raises(lambda: op(q, k, v, block_mask=bm, keep=keep), "param keep", "modified since")
        # a Python number where the inference tensor was: the same error, not an AttributeError
        raises(lambda: op(q, k, v, block_mask=bm, keep=1), "param keep")


@pytest.mark.parametrize("block", [96, 32, 0, -64, 2048, (64, 96), (128, 32), (64,), (64, 64, 64),
                                   "64", 64.0, True, (64, True), {64: 64}])
def test_bad_block(ops, monkeypatch, block):
    op = ops["stripes"]
    forbid_launches(monkeypatch, op)
    raises(lambda: op.block_mask(B, HQ, M, N, heads_kv=HKV, block=block), "block must be a power "
           "of two", "multiple of the kernels' largest tile", f"got {block!r}")


def test_defaults(ops):
    """block 128 x 128 (the interpreter's tiles are at most 64), heads_kv = heads, the params'
    device (else the CPU here)."""
    bm = ops["stripes"].block_mask(1, 2, 10, 300)
    assert bm.block == (128, 128) and tuple(bm.classes.shape) == (1, 1, 1, 3)
    assert bm.shapes.heads_kv == 2 and bm.classes.device == torch.device("cpu")
    keep = table((2, 8, 8), 0.5, 17)
    bm = ops["tablemask"].block_mask(1, 2, 10, 300, device="cpu", keep=keep)
    assert bm.classes.device == keep.device and bm.rows.device == bm.cols.device == keep.device


def test_bad_device(ops, monkeypatch):
    op = ops["stripes"]
    forbid_launches(monkeypatch, op)
    raises(lambda: op.block_mask(B, HQ, M, N, heads_kv=HKV, device="meta"), "got meta")
    raises(lambda: op.block_mask(B, HQ, M, N, heads_kv=HKV, device="gpu"), "device must be",
           "'gpu'")
    if not torch.cuda.is_available():
        raises(lambda: op.block_mask(B, HQ, M, N, heads_kv=HKV, device="cuda"),
               "device cuda does not exist")


@pytest.mark.parametrize("change, fragments", [
    (dict(batch=0), ["batch must be an int >= 1", "got 0"]),
    (dict(batch=True), ["batch must be an int >= 1", "got True"]),
    (dict(heads=0), ["heads must be an int >= 1", "got 0"]),
    (dict(heads_kv=0), ["heads_kv must be an int >= 1", "got 0"]),
    (dict(heads=3), ["heads must be a multiple of heads_kv", "heads=3", "heads_kv=2"]),
    (dict(q_len=-1), ["q_len must be an int >= 0", "got -1"]),
    (dict(kv_len=2.0), ["kv_len must be an int >= 0", "got 2.0"]),
    (dict(kv_len=2**29 + 1), ["kv_len is 536870913", "at most 536870912"]),
])
def test_bad_shapes(ops, monkeypatch, change, fragments):
    op = ops["stripes"]
    forbid_launches(monkeypatch, op)
    args = dict(batch=B, heads=HQ, q_len=M, kv_len=N, heads_kv=HKV, block=64)
    args.update(change)
    raises(lambda: op.block_mask(args.pop("batch"), args.pop("heads"), args.pop("q_len"),
                                 args.pop("kv_len"), **args), "stripes", *fragments)


def test_bad_params(ops, monkeypatch):
    """Only the params the mask reads, each valid for the shapes; hkv needs heads_kv."""
    op, gated = ops["tablemask"], ops["gated"]
    forbid_launches(monkeypatch, op, gated)
    keep = table((HQ, 8, 8), 0.5, 16)

    def build(o, **kw):
        return lambda: o.block_mask(B, HQ, M, N, heads_kv=HKV, block=64, **kw)

    raises(build(op), "missing param keep: i32[H, 8, 8]")
    raises(build(op, keep=keep, foo=1), "unexpected param foo", "takes: keep")
    raises(build(op, keep=table((3, 8, 8), 0.5, 16)), "param keep", "shape [4, 8, 8]", "[3, 8, 8]")
    raises(build(gated, period=48, lanes=LANES, cap=20.0), "unexpected param cap",
           "takes: lanes, period")
    raises(lambda: gated.block_mask(B, HQ, M, N, block=64, period=48, lanes=LANES),
           "the mask reads hkv", "heads_kv")
    with pytest.raises(Launched):
        build(gated, period=48, lanes=LANES)()


def test_trace_tiles_tiles_must_divide_the_blocks(ops, built, monkeypatch):
    op = ops["stripes"]
    forbid_launches(monkeypatch, op)
    q, k, v = make_qkv(B, HQ, HKV, M, N, seed=0)
    for block_m, block_n in ((128, 64), (64, 128), (128, 128)):
        raises(lambda: op.trace_tiles(q, k, v, block_m=block_m, block_n=block_n,
                                      block_mask=built["stripes"]),
               "block_m and block_n must divide", "(64, 64)", f"got {block_m} and {block_n}")
    with pytest.raises(Launched):
        op.trace_tiles(q, k, v, block_m=32, block_n=64, block_mask=built["stripes"])

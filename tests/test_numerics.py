"""The numerics matrix: forward and backward kernels of every example against the float64
reference, over FlashAttention's test lengths, every head dim the ops accept in steps that matter
(16, 32, 64, 80, 96, 128, 192, 256: powers of two and padded ones), GQA 1:1, 2:1 and 8:1, fp32
and fp16; plus inputs scaled x100 (no overflow, fp16 too) and fully masked rows (zero output, -inf
LSE, zero gradients, no NaN), through the Triton interpreter on a CPU-only machine.

Comparison rule: test_forward.py's (``check_op`` for out and LSE, ``_check_grads`` for dq, dk,
dv and `grad` params): fp32 within 1e-4 relative to the float64 golden; fp16 within 2x the error
of the reference evaluated in fp16 itself, plus 1e-3.

test_forward.py and test_backward.py sweep lengths 1..239 at head dims 16, 64, 80 and 128; this
file adds FlashAttention's lengths (1 x 239, 3 x 799, 113 x 203, 239 x 1, 1023 x 1024), head
dims 32, 96, 192 and 256, 2:1 GQA, and 8:1 GQA and fp16 in the backward.

The default run is a covering subset, not the cross product (about 24 cases per direction):
a greedy all-pairs design over (spec, lengths, head dim, GQA, dtype) covering every pair of
values of spec x dtype, head dim x dtype, head dim x GQA, lengths x GQA, lengths x dtype and
GQA x dtype, so every spec, length pair (but 1023 x 1024, full matrix only), head dim, GQA ratio
and dtype occurs; spec x lengths is test_forward.py's job (every example on four shapes). The
forward and the backward use two such designs (ties broken differently), batch 1.

``ATTNGEN_FULL_MATRIX=1`` runs the full cross product (every spec x lengths x head dims x GQA x
dtypes, forward and backward; hours on two cores: 1023 x 1024 dominates), the x100 cases (the
default run leaves them to test_forward.py's x100 forwards) and the fully-masked cases in both
dtypes.

gemma2_local only accepts head dim 256 and llama4_chunked only bf16/fp16 (the interpreter cannot
run bf16), so their cases are restricted to those.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import pytest
import torch

import attngen
from attngen import runtime  # noqa: F401  (before triton: selects the interpreter with no GPU)
from attngen.reference import mask_grid
from attngen.testing import max_rel_error, random_params
from test_forward import (DEVICE, DTYPES, F64, FP16_FLOOR, FP32_TOL, NEG_INF, _assert_rows_empty,
                          _check_grads, _lse_err, _seed, check_op, make_qkv)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES_DIR.glob("*.attn"))
FULL_MATRIX = os.environ.get("ATTNGEN_FULL_MATRIX") == "1"

# FlashAttention's test lengths (q_len, kv_len); the last one only in the full matrix
LENGTHS = [(1, 1), (1, 239), (3, 799), (113, 203), (239, 1), (1023, 1024)]
BIG_LENGTHS = [(1023, 1024)]
HEAD_DIMS = [16, 32, 64, 80, 96, 128, 192, 256]
GQA = {"1:1": (2, 2), "2:1": (4, 2), "8:1": (8, 1)}  # name -> (Hq, Hkv)
DIRECTIONS = ["fwd", "bwd"]

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]


@functools.cache
def _load(spec: str) -> attngen.AttentionOp:
    return attngen.load(spec if "{" in spec else EXAMPLES_DIR / f"{spec}.attn")


# ---- the cases ---------------------------------------------------------------------------------

FACTORS = ("spec", "lengths", "head_dim", "gqa", "dtype")
# the pairs of factors whose every pair of values the default designs cover; spec x lengths and
# spec x head dim are left to test_forward.py's shapes (every example on four shapes), lengths x
# head dim to the full matrix
PAIRS = [("spec", "dtype"), ("head_dim", "dtype"), ("head_dim", "gqa"), ("lengths", "gqa"),
         ("lengths", "dtype"), ("gqa", "dtype")]


def accepts(case: dict) -> bool:
    """Whether the spec accepts the case's head dim and dtype (in the interpreter)."""
    if case["spec"] == "gemma2_local" and case["head_dim"] != 256:
        return False
    if case["spec"] == "llama4_chunked" and case["dtype"] != "fp16":
        return False
    return True


def _all_cases(lengths) -> list[dict]:
    values = (EXAMPLE_NAMES, lengths, HEAD_DIMS, list(GQA), list(DTYPES))
    return [c for c in (dict(zip(FACTORS, vals)) for vals in itertools.product(*values))
            if accepts(c)]


def _cost(case: dict) -> int:
    """The interpreter's time goes by tile (64 x 64 there), whatever the tile's work."""
    (m, n), (hq, _) = case["lengths"], GQA[case["gqa"]]
    return hq * -(-m // 64) * -(-n // 64) * (256 + case["head_dim"])


def _pairs(case: dict) -> set:
    return {(a, case[a], b, case[b]) for a, b in PAIRS}


# how much interpreter cost (``_cost``) one more use of an already used value is worth: the
# greedy design trades spread for cost at this rate: a quarter cheaper than spreading first and
# only then looking at cost, about as diverse (spec x lengths: 19 distinct pairs per direction
# instead of 20, 30 across both as before; spec x head dim: 22-23 instead of 17-19)
SPREAD_WEIGHT = 2000


@functools.cache
def covering_cases(direction: str) -> tuple[dict, ...]:
    """A greedy all-pairs design over the default lengths: each step takes the case that covers
    the most uncovered pairs, then the best trade of spread (values used least so far) against
    interpreter cost; the backward's design breaks the remaining ties from the other end."""
    candidates = _all_cases([mn for mn in LENGTHS if mn not in BIG_LENGTHS])
    if direction == "bwd":
        candidates.reverse()
    todo = set().union(*map(_pairs, candidates))
    used: dict = {}
    chosen = []
    while todo:
        best = max(candidates, key=lambda c: (
            len(_pairs(c) & todo),
            -SPREAD_WEIGHT * sum(used.get((f, c[f]), 0) for f in FACTORS) - _cost(c)))
        chosen.append(best)
        todo -= _pairs(best)
        for f in FACTORS:
            used[(f, best[f])] = used.get((f, best[f]), 0) + 1
    return tuple(chosen)


def _case_id(c: dict) -> str:
    (m, n), (hq, hkv) = c["lengths"], GQA[c["gqa"]]
    return f"{c['spec']}-{c['dtype']}-M{m}-N{n}-H{hq}x{hkv}-D{c['head_dim']}"


def _params(cases) -> list:
    return [pytest.param(c["spec"], c["dtype"], *c["lengths"], *GQA[c["gqa"]], c["head_dim"],
                         id=_case_id(c)) for c in cases]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_default_design_covers_every_pair(direction):
    cases = covering_cases(direction)
    every = _all_cases([mn for mn in LENGTHS if mn not in BIG_LENGTHS])
    assert set().union(*map(_pairs, cases)) == set().union(*map(_pairs, every))
    for factor, values in zip(FACTORS, (EXAMPLE_NAMES, LENGTHS[:-1], HEAD_DIMS, GQA, DTYPES)):
        assert {c[factor] for c in cases} == set(values), factor
    assert len(cases) < len(every) // 10  # a covering subset, not the cross product


# ---- forward and backward against the float64 golden -----------------------------------------


def _inputs(name, dtype_name, m, n, hq, hkv, d, *, scale_inputs=1.0, b=1):
    """The op and random inputs; one batch row by default (the interpreter's time grows with it;
    test_forward.py and test_backward.py run two)."""
    op = _load(name)
    seed = _seed("numerics", name, dtype_name, m, n, hq, hkv, d, scale_inputs)
    q, k, v = make_qkv(b, hq, hkv, m, n, d, DTYPES[dtype_name], seed=seed,
                       scale_inputs=scale_inputs)
    params = random_params(op.spec, b, hq, hkv, m, n, DEVICE, torch.Generator().manual_seed(seed))
    return op, q, k, v, params


def _grad_param(op) -> str | None:
    names = [p.name for p in op.spec.params if p.grad]
    assert len(names) <= 1, names  # _check_grads differentiates one param
    return names[0] if names else None


def check_forward(name, dtype_name, m, n, hq, hkv, d):
    op, q, k, v, params = _inputs(name, dtype_name, m, n, hq, hkv, d)
    check_op(op, q, k, v, params)


def check_backward(name, dtype_name, m, n, hq, hkv, d):
    op, q, k, v, params = _inputs(name, dtype_name, m, n, hq, hkv, d)
    dq, _, _, *_ = _check_grads(op, q, k, v, params, _grad_param(op))
    _, gold_lse = op.reference(*(t.to(F64) for t in (q, k, v)), return_lse=True, **params)
    empty = gold_lse == NEG_INF  # rows that see no key get exactly no gradient
    assert torch.equal(dq[empty], torch.zeros_like(dq[empty]))


@pytest.mark.parametrize("name, dtype_name, m, n, hq, hkv, d", _params(covering_cases("fwd")))
def test_forward(name, dtype_name, m, n, hq, hkv, d):
    check_forward(name, dtype_name, m, n, hq, hkv, d)


@pytest.mark.parametrize("name, dtype_name, m, n, hq, hkv, d", _params(covering_cases("bwd")))
def test_backward(name, dtype_name, m, n, hq, hkv, d):
    check_backward(name, dtype_name, m, n, hq, hkv, d)


# ---- the full cross product (opt-in) ---------------------------------------------------------

if FULL_MATRIX:
    _FULL = _params(_all_cases(LENGTHS))
else:
    _FULL = [pytest.param(
        None, None, 0, 0, 0, 0, 0, id="full-matrix",
        marks=pytest.mark.skip(reason=f"the full cross product ({len(_all_cases(LENGTHS))} cases "
                                      f"per direction, hours in the interpreter) runs only with "
                                      f"ATTNGEN_FULL_MATRIX=1"))]


@pytest.mark.slow
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name, dtype_name, m, n, hq, hkv, d", _FULL)
def test_full_matrix(direction, name, dtype_name, m, n, hq, hkv, d):
    (check_forward if direction == "fwd" else check_backward)(name, dtype_name, m, n, hq, hkv, d)


# ---- inputs x100: scores of ~1e4, far past exp's range without the running max ----------------

# (spec, head dim): test_forward.py runs the x100 forward of llama, alibi and gemma2_local; here
# every spec, forward and backward, both dtypes, with ATTNGEN_FULL_MATRIX=1 (CI time)
LARGE = [(name, 256 if name == "gemma2_local" else [32, 96, 192][j % 3])
         for j, name in enumerate(EXAMPLE_NAMES)]


def _large_cases(full=FULL_MATRIX):
    out = []
    for j, (name, d) in enumerate(LARGE):
        dtypes = [t for t in DTYPES if accepts({"spec": name, "head_dim": d, "dtype": t})]
        for dtype_name in (dtypes if full else [dtypes[j % len(dtypes)]]):
            out.append(pytest.param(name, dtype_name, d, id=f"{name}-{dtype_name}-D{d}"))
    return out


def test_large_cases_meet_both_dtypes():
    assert {c.values[1] for c in _large_cases(full=False)} == set(DTYPES)
    assert sorted(c.values[0] for c in _large_cases(full=False)) == EXAMPLE_NAMES


def _grads(fn, q, k, v, params, grad_param, w_out, w_lse):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    params = dict(params)
    if grad_param is not None:
        params[grad_param] = params[grad_param].detach().clone().requires_grad_()
        leaves.append(params[grad_param])
    out, lse = fn(*leaves[:3], return_lse=True, **params)
    lse = lse.to(F64)
    loss = (out.to(F64) * w_out).sum() + (lse.masked_fill(torch.isinf(lse), 0.0) * w_lse).sum()
    return [out, lse, *torch.autograd.grad(loss, leaves)]


@pytest.mark.skipif(not FULL_MATRIX, reason="x100 forward and backward of every spec (about 35 s) "
                    "runs with ATTNGEN_FULL_MATRIX=1; test_forward.py covers x100 forwards by default")
@pytest.mark.parametrize("name, dtype_name, d", _large_cases())
def test_large_inputs_do_not_overflow(name, dtype_name, d):
    """Out, LSE and gradients finite and as close to the golden as the fp32 reference on the
    same (rounded) inputs, which is the fair comparator: the softmax is nearly one-hot, so score
    rounding is amplified for every implementation, and the fp16 reference itself overflows
    (it computes q @ k^T in fp16)."""
    m, n, hq, hkv = 113, 203, 2, 1
    op, q, k, v, params = _inputs(name, dtype_name, m, n, hq, hkv, d, scale_inputs=100.0)
    grad_param = _grad_param(op)
    g = torch.Generator().manual_seed(7)
    w_out = torch.randn(q.shape, generator=g, dtype=F64).to(DEVICE)
    w_lse = torch.randn(q.shape[:3], generator=g, dtype=F64).to(DEVICE)
    got = _grads(op, q, k, v, params, grad_param, w_out, w_lse)
    gold = _grads(op.reference, *(t.to(F64) for t in (q, k, v)), params, grad_param, w_out, w_lse)
    fp32 = _grads(op.reference, *(t.float() for t in (q, k, v)), params, grad_param, w_out, w_lse)
    names = ["out", "lse", "dq", "dk", "dv", f"d{grad_param}"]
    floor = FP32_TOL if dtype_name == "fp32" else FP16_FLOOR
    # The backward recomputes P = exp(score - lse) from the LSE saved in fp32, whose rounding at
    # |lse| ~ 1e4 (~1e-3) scales a whole row of P: FlashAttention's design, and the gradients'
    # error floor here, where the fp32 reference normalises each row exactly
    lse_rounding = gold[1][torch.isfinite(gold[1])].abs().max().item() * 2.0**-23
    for what, x, ref, comparator in zip(names, got, gold, fp32):
        assert torch.isfinite(x).all(), f"{what} has NaN or inf"
        err = _lse_err(x, ref) if what == "lse" else max_rel_error(x, ref)
        ref_err = _lse_err(comparator, ref) if what == "lse" else max_rel_error(comparator, ref)
        bound = 2 * ref_err + floor + (2 * lse_rounding if what.startswith("d") else 0.0)
        assert err <= bound, (f"{dtype_name} {what}: kernel error {err:.3g} > 2 x fp32 reference "
                              f"error {ref_err:.3g} + {bound - 2 * ref_err:.3g}")


# ---- fully masked rows: zero output, -inf LSE, zero gradients, no NaN -------------------------

MASKED_ROWS = {
    # every third row sees no key, in the middle of tiles
    "drop_rows": "attention drop_rows { drop q % 3 == 0 }",
    # the same through the score: rows whose every score is -inf
    "neginf_rows": "attention neginf_rows { score where(q % 4 == 1, -inf, score) }",
    # q_len > kv_len with causal: the first q_len - kv_len rows sit at negative positions
    "causal_q_longer": "llama",
    # and with a grad param (ALiBi slopes: per-program sums that must skip the empty rows)
    "alibi_q_longer": "alibi",
    # every row, and keys no row sees
    "no_row": "attention no_row { mask kv < 0 }",
    "odd_keys_unseen": "attention odd_keys_unseen { mask kv % 2 == 0 & q % 5 != 2 }",
}
# (M, N, Hq, Hkv, D) per case: q_len > kv_len across a tile boundary for the causal ones
MASKED_SHAPES = {"causal_q_longer": (239, 1, 8, 1, 96), "alibi_q_longer": (113, 40, 4, 2, 32)}
MASKED_DEFAULT_SHAPE = (70, 57, 4, 2, 64)
NEG_INF_SCALES = (1.0, 100.0)


def _masked_cases(full=FULL_MATRIX):
    """Each case in both dtypes and at both input scales (full), or one dtype and scale each,
    alternating."""
    out = []
    for j, key in enumerate(MASKED_ROWS):
        combos = list(itertools.product(DTYPES, NEG_INF_SCALES))
        for dtype_name, scale in (combos if full else [combos[j % len(combos)]]):
            out.append(pytest.param(key, dtype_name, scale, id=f"{key}-{dtype_name}-x{scale:g}"))
    return out


def test_masked_cases_meet_both_dtypes_and_scales():
    cases = [c.values for c in _masked_cases(full=False)]
    assert {c[1] for c in cases} == set(DTYPES) and {c[2] for c in cases} == set(NEG_INF_SCALES)


@pytest.mark.parametrize("key, dtype_name, scale_inputs", _masked_cases())
def test_fully_masked_rows(key, dtype_name, scale_inputs):
    m, n, hq, hkv, d = MASKED_SHAPES.get(key, MASKED_DEFAULT_SHAPE)
    op, q, k, v, params = _inputs(MASKED_ROWS[key], dtype_name, m, n, hq, hkv, d,
                                  scale_inputs=scale_inputs, b=2)
    shapes = runtime.Shapes(q.shape[0], hq, hkv, m, n, d)
    keep = mask_grid(op.spec, shapes, **params)  # [B, Hq, M, N]
    gold_out, gold_lse = op.reference(*(t.to(F64) for t in (q, k, v)), return_lse=True, **params)
    empty = gold_lse == NEG_INF
    if key == "neginf_rows":
        assert torch.equal(empty[0, 0], (torch.arange(m) + n - m) % 4 == 1)
    else:
        assert torch.equal(empty, ~keep.any(-1))
    assert empty.any()

    out, lse = op(q, k, v, return_lse=True, **params)
    _assert_rows_empty(out, lse, empty)
    if scale_inputs == 1.0:  # x100: the fp16 reference overflows (test_large_inputs above)
        check_op(op, q, k, v, params)
    grad_param = _grad_param(op)
    if scale_inputs == 1.0:
        got = _check_grads(op, q, k, v, params, grad_param)
    else:
        g = torch.Generator().manual_seed(7)
        w_out = torch.randn(q.shape, generator=g, dtype=F64).to(DEVICE)
        w_lse = torch.randn(q.shape[:3], generator=g, dtype=F64).to(DEVICE)
        got = _grads(op, q, k, v, params, grad_param, w_out, w_lse)[2:]
    for grad in got:
        assert not torch.isnan(grad).any() and torch.isfinite(grad).all()
    dq, dk, dv = got[:3]
    assert torch.equal(dq[empty], torch.zeros_like(dq[empty])), "an empty row has a gradient"
    # keys no query row of the kv head's group sees get exactly no gradient
    group = hq // hkv
    unseen = ~keep.view(q.shape[0], hkv, group, m, n).any(3).any(2)  # [B, Hkv, N]
    assert torch.equal(dk[unseen], torch.zeros_like(dk[unseen]))
    assert torch.equal(dv[unseen], torch.zeros_like(dv[unseen]))
    if key in ("no_row", "odd_keys_unseen"):
        assert unseen.any()

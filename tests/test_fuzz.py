"""Spec fuzzing: mutated spec texts only ever give ``SpecError`` with a position, never another
exception; random valid specs build and their kernels match the reference (below).

The default run: the front-end properties (630 hypothesis examples, a few seconds on two cores)
and 10 valid specs built and run (about 30 s, below);
``ATTNGEN_FULL_MATRIX=1`` changes nothing here."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attngen

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.attn"))
TEXTS = [p.read_text(encoding="utf-8") for p in EXAMPLES]
TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|\d+\.?\d*(?:[eE][-+]?\d+)?|\*\*|//|<=|>=|==|!=|.",
                   re.S)
FRAGMENTS = ["causal", "window(", ")", "(", "[", "]", "{", "}", ",", "score", "mask", "param",
             "99999999999999999999", "1e999", "-", "!", "&", "|", "**", "//", "%", "q", "kv",
             "inf", "let x =", "grad", "f32[H]", "i32[B, KV]", "blocks fwd(m=", "tune", "\x00",
             "é", "ｑ", ";", "#", "\n"]


def _check_only_spec_errors(text: str) -> None:
    try:
        attngen.parse_and_check(text)
    except attngen.SpecError as err:
        for e in err.errors:
            assert e.line >= 1 and e.column >= 1, (e.line, e.column, e.message)
            assert e.message
        str(err)  # the report renders


mutation = st.tuples(
    st.sampled_from(["delete", "duplicate", "swap", "insert", "replace"]),
    st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=10_000),
    st.sampled_from(FRAGMENTS))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TEXTS), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_examples_give_only_spec_errors(text, mutations):
    tokens = TOKEN.findall(text)
    for kind, i, j, fragment in mutations:
        if not tokens:
            break
        i, j = i % len(tokens), j % len(tokens)
        if kind == "delete":
            del tokens[i]
        elif kind == "duplicate":
            tokens.insert(i, tokens[i])
        elif kind == "swap":
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == "insert":
            tokens.insert(i, fragment)
        else:
            tokens[i] = fragment
    _check_only_spec_errors("".join(tokens))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_gives_only_spec_errors(text):
    _check_only_spec_errors(text)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["(", "-", "!", "abs("]))
def test_deep_nesting_gives_a_spec_error(depth, opener):
    closer = ")" if opener.endswith("(") else ""
    expr = opener * depth + "score" + closer * depth
    _check_only_spec_errors(f"attention a {{ score {expr} }}")


# ---- valid specs: they build, and their kernels match the reference -------------------------
#
# A strategy for random VALID specs (score expressions over score, positions, heads and params:
# ALiBi-like slopes, a relative-position bias table read at clamp(kv - q, ...), soft caps,
# min/max/where/abs...; masks from causal, windows, chunks, prefixes, documents, arbitrary
# integer comparisons, &, |, !, drop), each loaded through attngen.load (render, cache, import)
# and run forward and backward through the Triton interpreter on a small fp32 shape, against the
# float64 reference. Small fixed tiles (16 or 32) make 1..40 positions span several tiles, so
# the mask analysis's EMPTY/PARTIAL/FULL tiles all occur. Every example renders and imports a new
# module (about a second): CI runs VALID_EXAMPLES of them (about 30 s); set
# ATTNGEN_FUZZ_EXAMPLES=N to run N with a random seed.

import os  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import Phase, note  # noqa: E402

from attngen import runtime  # noqa: E402,F401  (before triton: the interpreter with no GPU)

VALID_EXAMPLES = int(os.environ.get("ATTNGEN_FUZZ_EXAMPLES", "10"))
VALID_SETTINGS = settings(
    max_examples=VALID_EXAMPLES, deadline=None,
    derandomize="ATTNGEN_FUZZ_EXAMPLES" not in os.environ,
    # no shrinking: each step would render a new module; the failing spec is printed instead
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
# fp32 kernels against the float64 golden: max |kernel - golden| / max |golden| at most 2x the
# fp32 reference's own error plus 1e-4 (FlexAttention's rule; some derivatives, e.g. of a soft cap
# by its cap, tanh(u) - u * sech(u)^2 at small u, cancel in fp32 for every implementation)
FUZZ_TOL = 1e-4
# A param's gradient sums dS * d(score')/d(param) over every (row, key), and dS sums to 0 along
# each row: where d(score')/d(param) barely varies along a row (a soft cap's cap) the sum cancels,
# and the kernels' dS = P * (dP - Delta), Delta from the fp32 output (FlashAttention 2), carries
# its rounding into what is left, where the reference differentiates the softmax exactly
PARAM_GRAD_TOL = 5e-3

# Params a generated spec may use: declaration and a valid value for (B, Hq, Hkv, M, N, gen).
PARAMS = {
    "slopes": ("f32[H]", lambda B, H, Hkv, M, N, g: torch.rand(H, generator=g) * 0.5 + 0.01),
    "bias": ("f32[17]", lambda B, H, Hkv, M, N, g: torch.randn(17, generator=g)),
    "hbias": ("f32[H, 9]", lambda B, H, Hkv, M, N, g: torch.randn(H, 9, generator=g)),
    "qbias": ("f32[B, Q]", lambda B, H, Hkv, M, N, g: torch.randn(B, M, generator=g)),
    "cap": ("f32", lambda B, H, Hkv, M, N, g: torch.rand((), generator=g) * 20 + 1),
    "prefix": ("i32[B]", lambda B, H, Hkv, M, N, g: torch.randint(0, N + 3, (B,), generator=g,
                                                                  dtype=torch.int32)),
    "doc": ("i32[B, KV]", lambda B, H, Hkv, M, N, g: torch.sort(torch.randint(
        0, 4, (B, N), generator=g, dtype=torch.int32), dim=-1).values),
    "wsize": ("i32", lambda B, H, Hkv, M, N, g: torch.randint(0, 12, (), generator=g,
                                                              dtype=torch.int32)),
    "keep": ("bool[HKV, KV]", lambda B, H, Hkv, M, N, g: torch.rand(Hkv, N, generator=g) < 0.8),
}
FLOAT_PARAMS = ("slopes", "bias", "hbias", "qbias", "cap")


class _SpecBuilder:
    """Draws expression text, recording the params it reads."""

    def __init__(self, draw):
        self.draw, self.used = draw, set()

    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def small(self, lo=0, hi=9) -> int:
        return self.draw(st.integers(lo, hi))

    def literal(self) -> str:
        return self.pick(["0.5", "2.0", "-1.25", "0.1", "3.0", "-0.75", "1e-1"])

    # ints: positions, heads, lengths; products only by small literals (int32 in the kernels)
    def int_expr(self, depth: int) -> str:
        leaves = ["q", "kv", "h", "hkv", "b", "q_len", "kv_len", str(self.small()), "kv - q",
                  "q - kv"]
        if depth <= 0 or self.draw(st.booleans()):
            return self.pick(leaves)
        a, b = self.int_expr(depth - 1), self.int_expr(depth - 1)
        form = self.pick(["+", "-", "*", "//", "%", "abs", "min", "max", "clamp"])
        if form in ("+", "-"):
            return f"({a} {form} {b})"
        if form == "*":
            return f"({a} * {self.small(-3, 3)})"
        if form in ("//", "%"):
            return f"({a} {form} {self.small(1, 7)})"
        if form == "abs":
            return f"abs({a})"
        if form in ("min", "max"):
            return f"{form}({a}, {b})"
        lo = self.small(-5, 5)
        return f"clamp({a}, {lo}, {lo + self.small(0, 9)})"

    def float_expr(self, depth: int, with_score: bool) -> str:
        positions = self.int_expr(1)
        leaves = [self.literal(), f"{self.literal()} * {positions}"]
        if with_score:
            leaves += ["score"] * 3
        if depth <= 0 or self.draw(st.integers(0, 3)) == 0:
            leaf = self.pick(leaves + ["param"])
            return self.param_read() if leaf == "param" else leaf
        sub = lambda: self.float_expr(depth - 1, with_score)  # noqa: E731
        form = self.pick(["+", "-", "*lit", "/lit", "tanh", "sigmoid", "sin", "cos", "abs",
                          "min", "max", "clamp", "where", "softcap", "expneg", "log1p", "sqrt1",
                          "square"])
        if form in ("+", "-"):
            return f"({sub()} {form} {sub()})"
        if form == "*lit":
            return f"{self.literal()} * {sub()}"
        if form == "/lit":
            return f"{sub()} / {self.pick(['2.0', '3.5', '0.5'])}"
        if form in ("tanh", "sigmoid", "sin", "cos", "abs"):
            return f"{form}({sub()})"
        if form in ("min", "max"):
            return f"{form}({sub()}, {sub()})"
        if form == "clamp":
            return f"clamp({sub()}, -1.5, {self.pick(['0.5', '2.0'])})"
        if form == "where":
            return f"where({self.int_compare()}, {sub()}, {sub()})"
        if form == "softcap":
            cap = self.pick(["30.0", "5.0", "cap"])
            if cap == "cap":
                self.used.add("cap")
            return f"{cap} * tanh({sub()} / {cap})"
        if form == "expneg":
            return f"exp(-abs({sub()}))"
        if form == "log1p":
            return f"log(1.0 + abs({sub()}))"
        if form == "sqrt1":
            return f"sqrt(abs({sub()}) + 1.0)"
        return f"({sub()}) ** 2"

    def param_read(self) -> str:
        name = self.pick(FLOAT_PARAMS)
        self.used.add(name)
        return {"slopes": "slopes[h] * (kv - q)", "bias": "bias[clamp(kv - q + 8, 0, 16)]",
                "hbias": "hbias[h, clamp(q - kv, 0, 8)]", "qbias": "qbias[b, q - kv_len + q_len]",
                "cap": "cap"}[name]

    def int_compare(self) -> str:
        return f"{self.int_expr(2)} {self.pick(['<', '<=', '>', '>=', '==', '!='])} " \
               f"{self.int_expr(2)}"

    def mask_atom(self) -> str:
        form = self.pick(["causal", "window2", "window1", "chunk", "prefix_lit", "lower", "upper",
                          "prefix_param", "document", "compare", "keep", "window_param"])
        if form == "causal":
            return "causal"
        if form == "window2":
            return f"window({self.small(0, 12)}, {self.small(0, 12)})"
        if form == "window1":
            return f"window({self.small(0, 12)})"
        if form == "chunk":
            return f"chunk({self.small(1, 20)})"
        if form == "prefix_lit":
            return f"kv < {self.small(0, 30)}"
        if form == "lower":
            return f"kv >= q - {self.small(0, 20)}"
        if form == "upper":
            return f"q - kv <= {self.small(-5, 20)}"
        if form == "prefix_param":
            self.used.add("prefix")
            return "kv < prefix[b]"
        if form == "document":
            self.used.add("doc")
            return "document(doc)"
        if form == "keep":
            self.used.add("keep")
            return "keep[hkv, kv]"
        if form == "window_param":
            self.used.add("wsize")
            return "window(wsize, 0)"
        return self.int_compare()

    def mask_expr(self, depth: int) -> str:
        if depth <= 0 or self.draw(st.booleans()):
            return self.mask_atom()
        form = self.pick(["&", "|", "!"])
        if form == "!":
            return f"!({self.mask_expr(depth - 1)})"
        return f"({self.mask_expr(depth - 1)} {form} {self.mask_expr(depth - 1)})"


@st.composite
def valid_specs(draw):
    """(spec text, names of its params, names of its grad params)."""
    builder = _SpecBuilder(draw)
    lines = []
    if draw(st.integers(0, 4)):
        lines.append(f"score {builder.float_expr(draw(st.integers(1, 3)), with_score=True)}")
    for _ in range(draw(st.integers(0, 2))):
        lines.append(f"{builder.pick(['mask', 'mask', 'drop'])} {builder.mask_expr(2)}")
    if draw(st.booleans()):
        m, n = builder.pick([16, 32]), builder.pick([16, 32])
        bm, bn = builder.pick([16, 32]), builder.pick([16, 32])
        lines.append(f"blocks fwd(m={m}, n={n}), bwd(m={bm}, n={bn})")
    grads = {p for p in builder.used if p in FLOAT_PARAMS and draw(st.booleans())}
    decls = [f"param {p}: {PARAMS[p][0]}{' grad' if p in grads else ''}"
             for p in sorted(builder.used)]
    text = "attention fuzzed {\n" + "".join(f"    {s}\n" for s in decls + lines) + "}\n"
    return text, sorted(builder.used), sorted(grads)


def _rel(x: torch.Tensor, gold: torch.Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    return ((x.double() - gold).abs().max() / max(gold.abs().max().item(), 1e-6)).item()


def check_valid_spec(text, used, grads, q_len, kv_len, seed=0):
    """Build the spec and compare its kernels' out, LSE and gradients (q, k, v, grad params) with
    the float64 reference's, on B=1, Hq=2, Hkv=1, D=16, fp32."""
    B, H, Hkv, D = 1, 2, 1, 16
    op = attngen.load(text)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, q_len, D, generator=g)
    k, v = (torch.randn(B, Hkv, kv_len, D, generator=g) for _ in range(2))
    params = {p: PARAMS[p][1](B, H, Hkv, q_len, kv_len, g) for p in used}
    d_out = torch.randn(B, H, q_len, D, generator=g, dtype=torch.float64)
    d_lse = torch.randn(B, H, q_len, generator=g, dtype=torch.float64)
    results = []
    for dtype in (torch.float32, torch.float64, torch.float32):  # kernel, golden, fp32 reference
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        ps = {p: (t.detach().clone().requires_grad_() if p in grads else t)
              for p, t in params.items()}
        fn = op if not results else op.reference
        out, lse = fn(*leaves, return_lse=True, **ps)
        finite_lse = lse.double().masked_fill(torch.isinf(lse), 0.0)
        loss = (out.double() * d_out).sum() + (finite_lse * d_lse).sum()
        wrt = [*leaves, *(ps[p] for p in grads)]
        # a score that does not read `score` leaves q out of the reference's graph
        results.append([out.detach(), lse.detach(), *(
            torch.zeros_like(x) if d is None else d
            for x, d in zip(wrt, torch.autograd.grad(loss, wrt, allow_unused=True)))])
    kernel, golden, fp32 = results
    out, lse, gold_lse = kernel[0], kernel[1], golden[1]
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), "NaN in out or lse"
    assert torch.equal(lse == float("-inf"), gold_lse == float("-inf")), "-inf LSE pattern"
    finite = torch.isfinite(gold_lse)
    for i, name in enumerate(["out", "lse", "dq", "dk", "dv", *(f"d{p}" for p in grads)]):
        x, gold, ref = kernel[i], golden[i], fp32[i]
        if name == "lse":
            x, gold, ref = x[finite], gold[finite], ref[finite]
        assert not torch.isnan(x).any(), f"{name}: NaN"
        err, ref_err = _rel(x, gold), _rel(ref, gold)
        tol = PARAM_GRAD_TOL if i >= 5 else FUZZ_TOL
        assert err <= 2 * ref_err + tol, (
            f"{name}: relative error {err:.3g} > 2 x the fp32 reference's {ref_err:.3g} + {tol}")


@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@VALID_SETTINGS
@given(spec=valid_specs(), q_len=st.integers(1, 40), kv_len=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_valid_specs_build_and_match_the_reference(spec, q_len, kv_len, seed):
    text, used, grads = spec
    note(f"spec:\n{text}q_len={q_len} kv_len={kv_len} seed={seed}")
    check_valid_spec(text, used, grads, q_len, kv_len, seed)

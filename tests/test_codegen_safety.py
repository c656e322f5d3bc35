"""Code-generation safety: what a spec puts into the generated Python is only validated tokens.

A spec's names become Python names (the attention: the op function ``NAME`` and its kernels
``NAME_fwd``, ...; a param: the kernel arguments ``p_NAME``, ``p_NAME_stride0``, ... and a keyword
argument of the op), its literals become Triton constants and its comments are copied into the
module's header. Each hostile spec below either fails with a ``SpecError`` at the offending
line and column, or builds and runs correctly (kernels against the float64 reference, through the
Triton interpreter without a GPU). The last tests render a module and check, on its syntax tree,
that the checker's lists of reserved names cover every name the templates use.

Cases marked ``xfail(strict=True)`` document library bugs; they must keep failing until the bug
is fixed (then drop the mark).
"""

from __future__ import annotations

import ast
import re

import pytest
import torch

import attngen
from attngen import SpecError, checker
from attngen import runtime  # before triton: with no GPU this selects the Triton interpreter
from attngen.render import render
from attngen.testing import max_rel_error
from test_spec_errors import as_params, check_error, spec, xfail  # the spec-error suite's helpers

pytestmark = [
    # the Triton interpreter's own noise
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

DEVICE = torch.device("cuda" if torch.cuda.is_available() and not runtime.interpreting()
                      else "cpu")
F64 = torch.float64
TOL = 1e-4  # max |kernel - golden| / max |golden|, fp32 kernels against the float64 reference


# ---- hostile specs that must fail with a SpecError ----------------------------------------------

LONG = "n" * (checker.MAX_NAME_LENGTH + 1)
DIGITS_40 = "1234567890" * 4
DIGITS_5000 = "9" * 5000

# (id, spec text, line, column, a substring of the message); `^NN` marks the expected column
REJECTED = [
    # attention names: the op is a global of its module, so it must not shadow one the module
    # (or its kernels) use; `dict`, `zip`, `range` and `float` once built and broke at call time
    ("attention_dunder_import", spec("attention __import__ {", "}"), 1, 1, "'_'-prefixed"),
    ("attention_os", spec("attention os {", "}"), 1, 1, "a name the generated module uses"),
    ("attention_torch", spec("attention torch {", "}"), 1, 1, "a name the generated module uses"),
    ("attention_tl", spec("attention tl {", "}"), 1, 1, "a name the generated module uses"),
    ("attention_runtime", spec("attention runtime {", "}"), 1, 1, "the generated module uses"),
    ("attention_INF", spec("attention INF {", "}"), 1, 1, "a name the generated module uses"),
    ("attention_print", spec("attention print {", "}"), 1, 1, "a Python builtin"),
    ("attention_len", spec("attention len {", "}"), 1, 1, "a Python builtin"),
    ("attention_dict", spec("attention dict {", "}"), 1, 1, "a Python builtin"),
    ("attention_zip", spec("attention zip {", "}"), 1, 1, "a Python builtin"),
    ("attention_range", spec("attention range {", "}"), 1, 1, "a Python builtin"),
    ("attention_float", spec("attention float {", "}"), 1, 1, "a Python builtin"),
    ("attention_keyword", spec("# a comment", "attention class {", "}"), 2, 1, "Python keyword"),
    # a name becomes a file name (NAME-<hash>/NAME.py): 300 characters failed with OSError
    ("attention_too_long", spec(f"attention {LONG} {{", "}"), 1, 1, "65 characters long"),
    # params: op(q, k, v, *, scale, ..., **params) takes them as keyword arguments
    ("param_dunder_import", spec("attention a {", "    param __import__: f32", "}"),  # ^11
     2, 11, "starts with '_'"),
    ("param_self", spec("attention a {", "    param self: f32", "}"), 2, 11, "argument of"),
    ("param_scale", spec("attention a {", "    param scale: f32", "}"), 2, 11, "argument of"),
    ("param_kernel", spec("attention a {", "    param kernel: f32", "}"), 2, 11, "trace_tiles"),
    ("param_q", spec("attention a {", "    param q: f32", "}"), 2, 11, "reserved"),
    ("param_keyword", spec("attention a {", "    param lambda: f32", "}"), 2, 11, "reserved"),
    # t_stride0 and the stride argument of t were both p_t_stride0: a SyntaxError on import
    ("param_named_like_a_stride",
     spec("attention a {",
          "    param t: f32[H]",
          "    param t_stride0: f32",      # 't_stride0' ^11
          "    score score + t[h] * t_stride0",
          "}"),
     3, 11, "stride argument"),
    ("param_too_long", spec("attention a {", f"    param {LONG}: f32", "}"), 2, 11,
     "65 characters long"),
    ("let_dunder", spec("attention a {", "    let __builtins__ = 1.0", "}"), 2, 9,
     "starts with '_'"),
    ("let_too_long", spec("attention a {", f"    let {LONG} = 1.0", "}"), 2, 9,
     "65 characters long"),
    # unicode look-alikes: names are ASCII, so the lexer stops at the first foreign letter
    ("cyrillic_a_in_attention_name", spec("attention \u0430libi {", "}"),  # ^11
     1, 11, "unexpected character '\u0430'"),
    ("cyrillic_o_in_param_name", spec("attention a {", "    param sl\u043epes: f32[H]", "}"),
     2, 13, "unexpected character '\u043e'"),
    ("greek_omicron_in_score", spec("attention a {", "    score sc\u03bfre * 2.0", "}"),
     2, 13, "unexpected character '\u03bf'"),
    ("fullwidth_attention_name", spec("attention \uff41\uff4c\uff49\uff42\uff49 {", "}"),
     1, 11, "unexpected character '\uff41'"),
    ("fullwidth_digits", spec("attention a {", "    mask window(\uff11\uff12)", "}"),  # ^17
     2, 17, "unexpected character '\uff11'"),
    ("kelvin_sign_in_name", spec("attention a {", "    param \u212a: f32", "}"), 2, 11,
     "unexpected character"),
    # integer literals: kernels compute positions in int32
    ("window_20_digits", spec("attention a {", "    mask window(99999999999999999999)", "}"),
     2, 17, "does not fit in 32 bits"),
    ("int_40_digits_in_score",
     spec("attention a {", f"    score score + {DIGITS_40}", "}"),  # ^19
     2, 19, "does not fit in 32 bits"),
    ("dimension_40_digits", spec("attention a {", f"    param t: f32[{DIGITS_40}]", "}"),  # ^18
     2, 18, "must be in 1..2147483647"),
    ("dimension_5000_digits", spec("attention a {", f"    param t: f32[{DIGITS_5000}]", "}"),
     2, 18, "must be in 1..2147483647"),
    # q + 2147483647 wrapped around in the kernel: every key masked, the reference kept them
    ("window_right_past_int32_headroom",
     spec("attention a {", "    mask window(0, 2147483647)", "}"),  # ^20
     2, 20, f"at most {checker.MAX_WINDOW}"),
    ("window_left_past_int32_headroom",
     spec("attention a {", "    mask causal & window(2147483647)", "}"),  # ^26
     2, 26, f"at most {checker.MAX_WINDOW}"),
    # float literals: the score is fp32; 1e300 and 1e-300 built and gave NaN
    ("float_1e999", spec("attention a {", "    score score * 1e999", "}"), 2, 19, "out of range"),
    ("float_1e300", spec("attention a {", "    score score * 1e300", "}"), 2, 19,
     "does not fit in fp32"),
    ("float_40_digits", spec("attention a {", f"    score score * {DIGITS_40}.5", "}"), 2, 19,
     "does not fit in fp32"),
    ("float_negative_past_fp32", spec("attention a {", "    score score * -4e38", "}"), 2, 20,
     "does not fit in fp32"),
    ("float_below_fp32_normals", spec("attention a {", "    score score + 1e-300", "}"), 2, 19,
     "does not fit in fp32"),
    # comments are copied into the generated module: a NUL made it unimportable
    ("nul_in_comment", spec("attention a {", "    mask causal  # a\x00b", "}"),  # ^21
     2, 21, "U+0000"),
    ("escape_in_comment", spec("attention a {  # \x1b[2J", "}"), 1, 18, "U+001B"),
    ("bidi_override_in_comment",
     spec("attention a {", "    mask causal  # \u202e}{ sdrawkcab", "}"),  # ^20
     2, 20, "RIGHT-TO-LEFT OVERRIDE"),
]

# int() refuses texts of more than 4300 digits: the parser counts such tokens as out of range
REJECTED += [
    pytest.param("int_5000_digits_in_mask",
                 spec("attention a {", f"    mask window({DIGITS_5000})", "}"),
                 2, 17, "does not fit in 32 bits"),
    pytest.param("head_dim_5000_digits", spec("attention a {", f"    head_dim {DIGITS_5000}", "}"),
                 2, 14, "out of range"),
    pytest.param("knob_5000_digits",
                 spec("attention a {", f"    blocks fwd(m={DIGITS_5000})", "}"),
                 2, 16, "out of range"),
]


@pytest.mark.parametrize("name, source, line, column, fragment", list(as_params(REJECTED)))
def test_hostile_spec_is_rejected(name, source, line, column, fragment):
    err = check_error(source)
    assert (err.line, err.column) == (line, column), err.message
    assert fragment in err.message, err.message
    assert len(err.message) < 400  # a long name or literal is not echoed in full
    report = str(err)
    assert f"<spec>:{line}:{column}: error:" in report and "^" in report  # caret under the column


# ---- hostile specs that must build and run correctly --------------------------------------------

# Kernel locals and module names as param names: a param only reaches the kernels as p_NAME
# (and p_NAME_stride<i>) and the op as a keyword argument, so none of these can collide.
TEMPLATE_LOCALS_AS_PARAMS = spec(
    "attention s {                      # the kernels' score tile is `s`",
    "    param tl: f32[H] grad",
    "    param torch: f32",
    "    param os: i32[B]",
    "    param q_pos: f32",
    "    param acc: f32[H, 4]",
    "    param print: f32",
    "    param p: f32",
    "    param lo: i32",
    "    param LOG2E: f32",
    "    let keep = kv <= q + os[b] & kv >= lo",
    "    let INF = 0.5                      # a let is inlined: no name reaches the module",
    "    score score * q_pos + tl[h] * (kv - q) * INF + acc[h, 1] - torch * print + p * LOG2E",
    "    mask keep",
    "}")
LONGEST = "n" * checker.MAX_NAME_LENGTH
LONGEST_NAMES = spec(
    f"attention a{LONGEST[1:]} {{",
    f"    param {LONGEST}: f32[H] grad",
    f"    let z{LONGEST[1:]} = {LONGEST}[h]",
    f"    score score + z{LONGEST[1:]} * (kv - q)",
    "    mask causal",
    "}")
# \r, a line separator and non-ASCII letters in comments are copied into the module's header
# without breaking it; literals at the edges of what the checker accepts build and compute
EDGE_LITERALS = spec(
    "attention self {",
    "    # r\u00e9sum\u00e9 \u2014 \u00fcber \u2028 line separator \r carriage return",
    "    score score + 1.2e-38 * 3.0e38 * 0.1 * (kv - q) + 2147483647 * 0.0",
    f"    mask window({checker.MAX_WINDOW}, 1) & kv <= q + 1",
    "}")


def _template_locals_params(b, hq):
    g = torch.Generator().manual_seed(1)
    return {"tl": torch.rand(hq, generator=g), "torch": 0.25,
            "os": torch.arange(b, dtype=torch.int32) * 2, "q_pos": 0.75,
            "acc": torch.randn(hq, 4, generator=g), "print": 2.0, "p": -0.5, "lo": 1,
            "LOG2E": 0.125}


ACCEPTED = {
    "template_locals_as_params": (TEMPLATE_LOCALS_AS_PARAMS, _template_locals_params, "tl"),
    "longest_names": (LONGEST_NAMES, lambda b, hq: {LONGEST: torch.rand(hq) * 0.5}, LONGEST),
    "edge_literals_and_comments": (EDGE_LITERALS, lambda b, hq: {}, None),
}


@pytest.mark.parametrize("which", list(ACCEPTED))
def test_hostile_spec_builds_and_runs(which):
    text, make_params, grad_param = ACCEPTED[which]
    op = attngen.load(text)
    b, hq, hkv, m, n, d = 2, 4, 2, 5, 7, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, length, d, generator=g).to(DEVICE)
               for h, length in ((hq, m), (hkv, n), (hkv, n)))
    params = {name: (t.to(DEVICE) if isinstance(t, torch.Tensor) else t)
              for name, t in make_params(b, hq).items()}
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    golden_leaves = [t.detach().to(F64).requires_grad_() for t in (q, k, v)]
    kernel_params, golden_params = dict(params), dict(params)
    if grad_param is not None:
        kernel_params[grad_param] = params[grad_param].clone().requires_grad_()
        golden_params[grad_param] = params[grad_param].clone().requires_grad_()
        leaves.append(kernel_params[grad_param])
        golden_leaves.append(golden_params[grad_param])

    out, lse = op(*leaves[:3], return_lse=True, **kernel_params)
    gold, gold_lse = op.reference(*golden_leaves[:3], return_lse=True, **golden_params)
    assert max_rel_error(out, gold, floor=1e-6) <= TOL
    finite = torch.isfinite(gold_lse.detach().cpu())
    assert torch.equal(torch.isfinite(lse.detach().cpu()), finite)
    assert max_rel_error(lse.cpu()[finite], gold_lse.cpu()[finite], floor=1e-6) <= TOL

    weights = torch.randn(out.shape, generator=g, dtype=F64).to(DEVICE)
    grads = torch.autograd.grad((out * weights.to(out.dtype)).sum(), leaves)
    golden = torch.autograd.grad((gold * weights).sum(), golden_leaves)
    for got, want in zip(grads, golden):
        assert max_rel_error(got, want, floor=1e-6) <= TOL


def test_position_arithmetic_does_not_wrap():
    op = attngen.load("attention wrap { mask q * 1000000000 >= kv * 1000000000 }")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, length, 16, generator=g).to(DEVICE) for length in (5, 7, 7))
    gold = op.reference(q.to(F64), k.to(F64), v.to(F64))
    assert max_rel_error(op(q, k, v), gold, floor=1e-6) <= TOL


# ---- the checker's reserved names against a rendered module ------------------------------------

ATTENTION = "zzop"
RENDERED_SPEC = spec(
    f"attention {ATTENTION} {{",
    "    param zzslope: f32[H] grad",
    "    param zzdoc: i32[B, KV]",
    "    param zzscalar: f32",
    "    score score * zzscalar + zzslope[h] * (kv - q)",
    "    mask causal & document(zzdoc)",
    "}")
PARAMS = ("zzslope", "zzdoc", "zzscalar")


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    (attention,) = attngen.parse_and_check(RENDERED_SPEC)
    return ast.parse(render(attention))


def _identifiers(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.keyword) and node.arg:
            out.add(node.arg)
        elif isinstance(node, ast.alias):
            out.add(node.asname or node.name.split(".")[0])
    return out


def _module_globals(tree: ast.Module) -> set[str]:
    out = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            out.update(a.asname or a.name.split(".")[0] for a in node.names)
    return out


def _rejected_as(what: str, name: str) -> bool:
    text = f"attention {name} {{ }}" if what == "attention" else \
        f"attention a {{ param {name}: f32 }}"
    try:
        attngen.parse_and_check(text)
    except SpecError:
        return True
    return False


def test_no_module_global_can_be_shadowed_by_an_attention(module_tree):
    """Every global the module defines or imports is an attention name the checker rejects,
    also through the names derived from it (NAME_fwd, _NAME_bwd_dq_tiles, ...)."""
    derived = {n for n in _identifiers(module_tree) if ATTENTION in n}
    patterns = {re.escape(n).replace(ATTENTION, "([A-Za-z][A-Za-z0-9_]*)") for n in derived}
    for name in _module_globals(module_tree) - derived:
        assert name.startswith("_") or name in checker.MODULE_GLOBALS, (
            f"generated modules define {name!r}: add it to checker.MODULE_GLOBALS")
        assert _rejected_as("attention", name), name
        for pattern in patterns:
            match = re.fullmatch(pattern, name)
            if match:  # e.g. a global `foo_fwd` would be shadowed by the kernel of attention foo
                assert _rejected_as("attention", match.group(1)), (name, pattern)


def test_every_builtin_is_rejected_as_an_attention_name():
    for name in ("print", "len", "dict", "zip", "range", "float", "tuple", "isinstance", "max"):
        assert _rejected_as("attention", name), name


def test_params_reach_kernels_only_as_p_prefixed_names(module_tree):
    """No template name starts with p_, so a param's p_NAME cannot collide with a kernel local."""
    allowed = re.compile(rf"p_({'|'.join(PARAMS)})(_stride[0-9]+)?")
    clashes = {n for n in _identifiers(module_tree)
               if n.startswith("p_") and not allowed.fullmatch(n)}
    assert not clashes, f"template names that a param p_NAME could collide with: {clashes}"


def test_keyword_arguments_next_to_params_are_reserved(module_tree):
    """Public functions taking **params (the op, trace_tiles): their own keyword arguments
    cannot be param names, or the param could never be passed."""
    functions = [node for node in module_tree.body if isinstance(node, ast.FunctionDef)
                 and not node.name.startswith("_") and node.args.kwarg is not None]
    assert any(f.name == ATTENTION for f in functions)
    for function in functions:
        for arg in [*function.args.args, *function.args.kwonlyargs]:
            assert _rejected_as("param", arg.arg), (
                f"{function.name}() takes {arg.arg!r} next to **params: add it to "
                f"checker.OP_ARGUMENTS")

"""Malformed specs: every one must raise ``attngen.SpecError`` at the right line and column.

Each case is (id, spec text, expected line, expected column, a substring of the message).
Lines and columns are 1-based and were worked out by hand from the spec text; the column is
that of the offending token (for an ill-typed binary expression: its operator, where the
expression node sits). Specs span several lines so that line numbers above 1 are exercised.

Cases marked ``xfail(strict=True)`` document library bugs; they must keep failing until the
bug is fixed (then drop the mark).
"""

from __future__ import annotations

import pytest

import attngen
from attngen import SpecError


def spec(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


def check_error(source: str, path: str | None = None) -> SpecError:
    """The SpecError that ``source`` raises; any other outcome fails the test."""
    try:
        result = attngen.parse_and_check(source, path)
    except SpecError as err:
        return err
    except Exception as err:  # noqa: BLE001 - the point is to fail on anything but SpecError
        pytest.fail(f"expected SpecError, got {type(err).__name__}: {err}")
    pytest.fail(f"expected SpecError, but the spec checked fine: {[a.name for a in result]}")


# Columns in the comments: `^NN` is the column of the offending token on that line.
CASES = [
    # ---- syntax ------------------------------------------------------------------------------
    ("missing_open_brace",
     spec("attention a",
          "    mask causal",          # 'mask' ^5
          "}"),
     2, 5, "expected '{'"),
    ("missing_operand_before_brace",
     spec("attention a {",
          "    score score +",
          "}"),                       # '}' ^1
     3, 1, "unexpected '}'"),
    ("missing_operand_after_comma",
     spec("attention a {",
          "    score min(score, )",   # ')' ^22
          "}"),
     2, 22, "unexpected ')'"),
    ("stray_at",
     spec("attention a {",
          "    dtype bf16",
          "    mask q @ kv",          # '@' ^12
          "}"),
     3, 12, "unexpected character '@'"),
    ("stray_unicode_le",
     spec("attention a {",
          "    mask kv ≤ q",          # '≤' ^13
          "}"),
     2, 13, "unexpected character '≤'"),
    ("unterminated_paren",
     spec("attention a {",
          "    score (score * 2",
          "}"),                       # '}' ^1
     3, 1, "expected ')'"),
    ("missing_colon_in_param",
     spec("attention a {",
          "    param x f32",          # 'f32' ^13
          "}"),
     2, 13, "expected ':'"),
    ("stray_closing_brace",
     spec("attention a {",
          "}",
          "}"),                       # ^1
     3, 1, "unexpected '}'"),
    ("missing_brace_before_next_attention",
     spec("attention a {",
          "    mask causal",
          "",
          "attention b {",            # 'attention' ^1
          "}"),
     4, 1, "unexpected 'attention'"),
    ("empty_file", "", 1, 1, "no attention in this file"),
    ("comment_only_file", spec("# nothing here", "", "   "), 1, 1, "no attention in this file"),

    # ---- names and calls ---------------------------------------------------------------------
    ("unknown_name",
     spec("attention a {",
          "    param s: f32",
          "    score score * scale",  # 'scale' ^19
          "}"),
     3, 19, "unknown name 'scale'"),
    ("unknown_function",
     spec("attention a {",
          "",
          "    score softcap(score)",  # 'softcap' ^11
          "}"),
     3, 11, "unknown function 'softcap'"),
    ("arity_exp",
     spec("attention a {",
          "    score exp(1, 2) * score",  # 'exp' ^11
          "}"),
     2, 11, "exp() takes 1 argument, got 2"),
    ("arity_clamp",
     spec("attention a {",
          "    let x = kv - q",
          "    score score + clamp(x, 1)",  # 'clamp' ^19
          "}"),
     3, 19, "clamp() takes 3 arguments, got 2"),
    ("arity_window",
     spec("attention a {",
          "    mask causal &",
          "         window()",      # 'window' ^10
          "}"),
     3, 10, "window() takes 1 or 2 arguments, got 0"),
    ("arity_min",
     spec("attention a {",
          "    score score",
          "        + min(1)",       # 'min' ^11
          "}"),
     3, 11, "min() takes at least 2 arguments, got 1"),
    ("function_used_as_name",
     spec("attention a {",
          "    score score * exp",  # 'exp' ^19
          "}"),
     2, 19, "call it as exp(...)"),
    ("param_called_as_function",
     spec("attention a {",
          "    param s: f32",
          "    score score * s(h)",  # 's' ^19
          "}"),
     3, 19, "'s' is not a function"),
    ("causal_called_as_function",
     spec("attention a {",
          "    mask causal()",      # 'causal' ^10
          "}"),
     2, 10, "'causal' is not a function"),

    # ---- types -------------------------------------------------------------------------------
    ("bool_where_float",
     spec("attention a {",
          "    score q < kv",       # '<' ^13
          "}"),
     2, 13, "'score' expects a float expression, got bool"),
    ("int_where_bool",
     spec("attention a {",
          "    mask kv - q",        # '-' ^13
          "}"),
     2, 13, "'mask' expects a bool expression, got int"),
    ("amp_on_ints",
     spec("attention a {",
          "    mask causal &",
          "        q & kv",         # 'q' ^9
          "}"),
     3, 9, "'&' expects bool, got int"),
    ("bang_on_number",
     spec("attention a {",
          "    mask causal",
          "    drop !kv",           # 'kv' ^11
          "}"),
     3, 11, "'!' expects bool, got int"),
    ("unary_minus_on_bool",
     spec("attention a {",
          "    mask -causal",       # 'causal' ^11
          "}"),
     2, 11, "unary '-' expects a number, got bool"),
    ("compare_bool_with_int",
     spec("attention a {",
          "    mask (kv <= q) == 1",  # '==' ^20
          "}"),
     2, 20, "cannot compare bool with int"),
    ("less_than_on_bools",
     spec("attention a {",
          "    mask causal < true",  # '<' ^17
          "}"),
     2, 17, "'<' needs numbers, got bool"),
    ("where_branch_mismatch",
     spec("attention a {",
          "    score where(q < kv, 1, true)",  # 'where' ^11
          "}"),
     2, 11, "where() branches must both be numbers or both bool"),
    ("window_float_size",
     spec("attention a {",
          "    mask window(2.5)",   # '2.5' ^17
          "}"),
     2, 17, "window() takes int sizes, got float"),
    ("chunk_zero_size",
     spec("attention a {",
          "    mask chunk(0)",      # '0' ^16
          "}"),
     2, 16, "chunk() size must be positive"),

    # ---- params and indexing -----------------------------------------------------------------
    ("index_scalar_param",
     spec("attention a {",
          "    param s: f32",
          "    score score * s[h]",  # 's' ^19
          "}"),
     3, 19, "param 's' is a scalar and cannot be indexed"),
    ("index_position_name",
     spec("attention a {",
          "    score score + q[0]",  # 'q' ^19
          "}"),
     2, 19, "'q' is not a tensor param"),
    ("too_many_subscripts",
     spec("attention a {",
          "    param slopes: f32[H]",
          "    score score + slopes[b, h]",  # 'slopes' ^19
          "}"),
     3, 19, "has 1 dimension [H], indexed with 2 subscripts"),
    ("too_few_subscripts",
     spec("attention a {",
          "    param table: f32[H, 257]",
          "    score score + table[h]",  # 'table' ^19
          "}"),
     3, 19, "has 2 dimensions [H, 257], indexed with 1 subscript"),
    ("float_index",
     spec("attention a {",
          "    param table: f32[H, 257]",
          "    score score + table[h, 0.5]",  # '0.5' ^28
          "}"),
     3, 28, "index of 'table' must be an int, got float"),
    ("tensor_param_without_index",
     spec("attention a {",
          "    param slopes: f32[H]",
          "    score score + slopes * (kv - q)",  # 'slopes' ^19
          "}"),
     3, 19, "index it as slopes[...]"),
    ("unknown_param_type",
     spec("attention a {",
          "    param x: f64",       # 'f64' ^14
          "}"),
     2, 14, "unknown param type 'f64'"),
    ("unknown_dim_name",
     spec("attention a {",
          "    param t: f32[H, N]",  # 'N' ^21
          "}"),
     2, 21, "unknown dimension 'N'"),
    ("zero_dim",
     spec("attention a {",
          "    param t: f32[0]",    # '0' ^18
          "}"),
     2, 18, "dimension 0 must be in 1.."),
    ("grad_on_int_param",
     spec("attention a {",
          "    param doc: i32[B, KV] grad",  # 'grad' ^27
          "}"),
     2, 27, "cannot take a gradient"),
    ("document_on_float_param",
     spec("attention a {",
          "    param doc: f32[B, KV]",
          "    mask document(doc)",  # 'doc' ^19
          "}"),
     3, 19, "integer param of shape [B, KV]"),

    # ---- duplicates and reserved names -------------------------------------------------------
    ("score_twice",
     spec("attention a {",
          "    score score * 2",
          "    mask causal",
          "    score score",        # 'score' ^5
          "}"),
     4, 5, "duplicate 'score' statement (first given at line 2)"),
    ("dtype_twice",
     spec("attention a {",
          "    dtype bf16",
          "    dtype fp16",         # ^5
          "}"),
     3, 5, "duplicate 'dtype' statement (first given at line 2)"),
    ("duplicate_param",
     spec("attention a {",
          "    param s: f32",
          "    param s: f16",       # 's' ^11
          "}"),
     3, 11, "'s' is already defined"),
    ("let_shadows_param",
     spec("attention a {",
          "    param s: f32",
          "    let s = 1",          # 's' ^9
          "}"),
     3, 9, "'s' is already defined"),
    ("duplicate_attention",
     spec("attention a {",
          "}",
          "attention a {",        # the duplicate block, at its keyword ^1
          "}"),
     3, 1, "duplicate attention 'a' (first defined at line 1)"),
    ("reserved_param_q",
     spec("attention a {",
          "    param q: i32",       # 'q' ^11
          "}"),
     2, 11, "param name 'q' is reserved"),
    ("reserved_param_exp",
     spec("attention a {",
          "    param exp: f32",     # 'exp' ^11
          "}"),
     2, 11, "param name 'exp' is reserved"),
    ("reserved_param_score",
     spec("attention a {",
          "    param score: f32",   # 'score' ^11
          "}"),
     2, 11, "'score' is a reserved word"),
    ("reserved_let_causal",
     spec("attention a {",
          "    let causal = kv <= q",  # 'causal' ^9
          "}"),
     2, 9, "let name 'causal' is reserved"),
    ("python_keyword_param",
     spec("attention a {",
          "    param lambda: f32",  # 'lambda' ^11
          "}"),
     2, 11, "param name 'lambda' is reserved"),
    ("underscore_param",
     spec("attention a {",
          "    param _bias: f32",   # '_bias' ^11
          "}"),
     2, 11, "starts with '_'"),
    ("underscore_let",
     spec("attention a {",
          "    mask causal",
          "    let _t = 1",         # '_t' ^9
          "}"),
     3, 9, "starts with '_'"),
    ("underscore_attention",
     spec("# leading comment",
          "attention _a {",       # ^1
          "}"),
     2, 1, "attention name '_a' is not usable as a Python name"),

    # ---- dtype, head_dim, kernels, blocks, tune ----------------------------------------------
    ("unknown_dtype",
     spec("attention a {",
          "    dtype bf16, fp8",    # 'fp8' ^17
          "}"),
     2, 17, "unknown dtype 'fp8'"),
    ("unknown_kernel",
     spec("attention a {",
          "    kernels fwd, backward",  # 'backward' ^18
          "}"),
     2, 18, "unknown kernel 'backward'"),
    ("kernel_listed_twice",
     spec("attention a {",
          "    kernels fwd, fwd",   # second 'fwd' ^18
          "}"),
     2, 18, "kernel 'fwd' is listed twice"),
    ("bwd_without_fwd",
     spec("attention a {",
          "    mask causal",
          "    kernels bwd, decode",  # 'kernels' ^5
          "}"),
     3, 5, "kernel 'bwd' needs 'fwd'"),
    ("head_dim_out_of_range",
     spec("attention a {",
          "    head_dim 64, 512",   # '512' ^18
          "}"),
     2, 18, "head_dim 512 is out of range"),
    ("head_dim_not_multiple_of_8",
     spec("attention a {",
          "    head_dim 100",       # '100' ^14
          "}"),
     2, 14, "head_dim 100 is not a multiple of 8"),
    ("blocks_knob_out_of_range",
     spec("attention a {",
          "    blocks fwd(m=100, n=64)",  # 'm' ^16
          "}"),
     2, 16, "m=100 is out of range"),
    ("list_in_blocks",
     spec("attention a {",
          "    blocks fwd(m=64, n=[64, 128])",  # 'n' ^22
          "}"),
     2, 22, "use 'tune' for a search space"),
    ("unknown_knob",
     spec("attention a {",
          "    tune fwd(m=[64], k=[2])",  # 'k' ^22
          "}"),
     2, 22, "unknown knob 'k'"),
    ("knob_given_twice",
     spec("attention a {",
          "    blocks fwd(m=64, m=128)",  # second 'm' ^22
          "}"),
     2, 22, "knob 'm' is given twice"),
    ("configured_in_blocks_and_tune",
     spec("attention a {",
          "    blocks fwd(m=64)",
          "    tune fwd(m=[64, 128])",  # 'fwd' ^10
          "}"),
     3, 10, "kernel 'fwd' is configured twice"),
    ("configured_kernel_not_in_kernels",
     spec("attention a {",
          "    kernels fwd",
          "    blocks decode(n=64)",  # 'decode' ^12
          "}"),
     3, 12, "'decode' is configured but 'kernels' lists only fwd"),
    ("decode_with_m_knob",
     spec("attention a {",
          "    blocks decode(n=64,",
          "                  m=64)",  # 'm' ^19
          "}"),
     3, 19, "decode has no 'm' knob"),

    # ---- score in masks, literals, division --------------------------------------------------
    ("score_in_mask",
     spec("attention a {",
          "    mask causal",
          "    mask score > 0",     # 'score' ^10
          "}"),
     3, 10, "masks cannot depend on the score"),
    ("let_using_score_in_mask",
     spec("attention a {",
          "    let s = score * 2",
          "    mask s > 0",         # 's' ^10
          "}"),
     3, 10, "let 's' uses 'score'"),
    ("let_using_score_in_drop",
     spec("attention a {",
          "    let s = score * 2",
          "    let t = s + 1",
          "    drop t > 0",         # 't' ^10
          "}"),
     4, 10, "let 't' uses 'score'"),
    ("int_literal_too_big",
     spec("attention a {",
          "    mask kv <",
          "        1099511627776",  # 2**40 ^9
          "}"),
     3, 9, "does not fit in 32 bits"),
    ("float_literal_overflow",
     spec("attention a {",
          "    score score * 1e999",  # '1e999' ^19
          "}"),
     2, 19, "float literal 1e999 is out of range"),
    ("division_by_literal_zero",
     spec("attention a {",
          "    score score / 0",    # '0' ^19
          "}"),
     2, 19, "division by zero in '/'"),
    ("floor_division_by_float_zero",
     spec("attention a {",
          "    mask q // 0.0 == kv",  # '0.0' ^15
          "}"),
     2, 15, "division by zero in '//'"),

    # ---- library bugs (see the reasons) ------------------------------------------------------
    pytest.param(
        "missing_close_brace_at_eof",
        spec("attention a {",
             "    mask causal",
             "    score score * 2"),  # the file ends just past '2' ^19, so at ^20
        3, 20, "unexpected end of file"),
    pytest.param(
        "statement_keyword_glued_to_name",
        spec("attention a {",
             "    maskcausal",         # ^5
             "}"),
        2, 5, "maskcausal"),
    pytest.param(
        "attention_keyword_glued_to_name",
        spec("# comment",
             "attentiona {",          # ^1
             "}"),
        2, 1, "attentiona"),
    pytest.param(
        "param_keyword_glued_to_name",
        spec("attention a {",
             "    paramx: f32",        # ^5
             "}"),
        2, 5, "paramx"),
    pytest.param(
        "kernels_keyword_glued_to_name",
        spec("attention a {",
             "    kernelsfwd",         # ^5
             "}"),
        2, 5, "kernelsfwd"),
    pytest.param(
        "misspelled_statement",
        spec("attention a {",
             "    masks causal",       # 'masks' ^5
             "}"),
        2, 5, "masks"),
    pytest.param(
        "word_starting_with_grad",
        spec("attention a {",
             "    param x: f32 gradient",  # 'gradient' ^18
             "}"),
        2, 18, "gradient"),
    pytest.param(
        "missing_operand_before_next_statement",
        spec("attention a {",
             "    score score *",
             "    mask causal",        # 'mask' ^5
             "}"),
        3, 5, "unexpected 'mask'"),
    pytest.param(
        "chained_comparison_second_operator",
        spec("attention a {",
             "    mask q < kv < true",  # second '<' ^17
             "}"),
        2, 17, "cannot compare int with bool"),
    pytest.param(
        "reserved_param_k",
        spec("attention a {",
             "    param k: f32",       # 'k' ^11
             "}"),
        2, 11, "'k'"),
    pytest.param(
        "reserved_param_v",
        spec("attention a {",
             "    param v: f32",       # 'v' ^11
             "}"),
        2, 11, "'v'"),
    pytest.param(
        "reserved_param_self",
        spec("attention a {",
             "    param self: f32",    # 'self' ^11
             "}"),
        2, 11, "'self'"),
    pytest.param(
        "reserved_param_scale",
        spec("attention a {",
             "    param scale: f32",   # 'scale' ^11
             "}"),
        2, 11, "'scale'"),
    pytest.param(
        "huge_dimension",
        spec("attention a {",
             "    param t: f32[H, 99999999999999999999]",  # ^21
             "}"),
        2, 21, "99999999999999999999"),
    pytest.param(
        "document_on_bool_param",
        spec("attention a {",
             "    param doc: bool[B, KV]",
             "    mask document(doc)",  # 'doc' ^19
             "}"),
        3, 19, "integer param"),
]


def as_params(cases):
    """pytest params of (name, source, line, column, fragment) cases, with ids."""
    for case in cases:
        if hasattr(case, "marks"):  # already a pytest.param, with marks
            yield pytest.param(*case.values, marks=case.marks, id=case.values[0])
        else:
            yield pytest.param(*case, id=case[0])


@pytest.mark.parametrize("name, source, line, column, fragment", list(as_params(CASES)))
def test_spec_error(name, source, line, column, fragment):
    err = check_error(source)
    assert isinstance(err, SpecError)
    assert isinstance(err, ValueError)  # SpecError is documented as a ValueError
    assert (err.line, err.column) == (line, column), err.message
    assert fragment in err.message
    assert err.errors[0] is err
    for e in err.errors:
        assert isinstance(e, SpecError)
        assert e.line >= 1 and e.column >= 1


def test_case_table_is_large_and_ids_unique():
    ids = [p.id for p in as_params(CASES)]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 35


def test_missing_close_brace_is_spec_error_at_last_line():
    err = check_error(spec("attention a {", "    mask causal", "    score score * 2"))
    assert "end of file" in err.message
    assert err.line == 3


@pytest.mark.parametrize("source", [
    spec("attention a {", "    mask causal"),
    spec("attention a {", "    mask causal", "", "attention b {", "}"),
], ids=["at_eof", "before_next_attention"])
def test_missing_close_brace_mentions_brace(source):
    err = check_error(source)
    assert "'}'" in err.message


def test_nonprintable_character_quoted_once():
    err = check_error(spec("attention a {", "    mask kv \x00 q", "}"))
    assert (err.line, err.column) == (2, 13)
    assert err.message == "unexpected character '\\x00'"


def test_tab_counts_as_one_column_and_caret_lines_up():
    err = check_error("attention a {\n\tmask\tfoo\n}\n", "t.attn")
    assert (err.line, err.column) == (2, 7)
    lines = str(err).splitlines()
    assert lines[0].startswith("t.attn:2:7: error: unknown name 'foo'")
    assert lines[2].index("^") == lines[1].index("foo")


def test_crlf_line_endings():
    err = check_error("attention a {\r\n    mask foo\r\n}\r\n")
    assert (err.line, err.column) == (2, 10)


def test_drop_type_error_hint_is_not_about_mask():
    err = check_error(spec("attention a {", "    drop kv - q", "}"))
    assert (err.line, err.column) == (2, 13)
    assert "'drop' expects a bool expression, got int" in err.message
    assert "mask keeps" not in err.message


def test_broken_let_does_not_cascade_into_unknown_name():
    err = check_error(spec("attention a {", "    let a = foo(1)", "    score score + a", "}"))
    assert (err.line, err.column) == (2, 13)
    assert "unknown function 'foo'" in err.message
    assert not any("unknown name 'a'" in e.message for e in err.errors)


# ---- several errors ------------------------------------------------------------------------

def test_all_errors_reported_in_source_order():
    source = spec(
        "attention a {",
        "    param s: f64",             # 2:14 unknown param type
        "    let t = foo(q)",           # 3:13 unknown function
        "    score score * 2",
        "    mask kv - q",              # 5:13 mask expects bool
        "    score score",              # 6:5  duplicate score
        "    dtype fp8",                # 7:11 unknown dtype
        "}",
        "attention b {",
        "    head_dim 20",              # 10:14 not a multiple of 8
        "    mask score > 0",           # 11:10 score in mask
        "}",
        "attention a {",                # 13:1 duplicate attention
        "}",
    )
    err = check_error(source)
    got = [(e.line, e.column) for e in err.errors]
    assert got == [(2, 14), (3, 13), (5, 13), (6, 5), (7, 11), (10, 14), (11, 10), (13, 1)]
    assert (err.line, err.column) == (2, 14)
    fragments = ["unknown param type 'f64'", "unknown function 'foo'", "'mask' expects a bool",
                 "duplicate 'score'", "unknown dtype 'fp8'", "not a multiple of 8",
                 "masks cannot depend on the score", "duplicate attention 'a'"]
    for e, fragment in zip(err.errors, fragments):
        assert fragment in e.message
    assert all(isinstance(e, SpecError) for e in err.errors)
    # str() renders every error, in order
    text = str(err)
    positions = [text.index(f"<spec>:{line}:{col}: error:") for line, col in got]
    assert positions == sorted(positions)


def test_kernel_config_errors_in_source_order():
    source = spec(
        "attention a {",
        "    kernels fwd",
        "    blocks bwd(m=64)",        # 3:12 bwd not in kernels
        "    mask foo",                # 4:10 unknown name
        "}",
    )
    err = check_error(source)
    assert [(e.line, e.column) for e in err.errors] == [(3, 12), (4, 10)]


# ---- rendering -----------------------------------------------------------------------------

def test_str_has_path_line_col_source_and_caret():
    source = spec("attention a {", "    dtype bf16", "    mask q @ kv", "}")
    err = check_error(source, "specs/bad.attn")
    assert err.path == "specs/bad.attn"
    lines = str(err).splitlines()
    assert lines[0] == "specs/bad.attn:3:12: error: unexpected character '@'"
    assert lines[1].strip() == "mask q @ kv"
    assert lines[1].endswith("    mask q @ kv")
    assert lines[2].strip() == "^"
    assert lines[2].index("^") == lines[1].index("@")
    assert len(lines) == 3


def test_str_of_checker_error_points_at_token():
    source = spec("attention a {", "    param table: f32[H, 257]",
                  "    score score + table[h, 0.5]", "}")
    err = check_error(source, "t5.attn")
    lines = str(err).splitlines()
    assert lines[0].startswith("t5.attn:3:28: error: index of 'table' must be an int")
    assert lines[2].index("^") == lines[1].index("0.5")


def test_str_without_path_uses_placeholder():
    err = check_error(spec("attention a {", "    mask foo", "}"))
    assert str(err).startswith("<spec>:2:10: error: unknown name 'foo'")


def test_str_renders_every_error_with_caret():
    source = spec("attention a {", "    mask foo", "    score bar", "}")
    err = check_error(source, "x.attn")
    lines = str(err).splitlines()
    assert len(lines) == 6
    assert lines[0].startswith("x.attn:2:10: error:")
    assert lines[2].index("^") == lines[1].index("foo")
    assert lines[3].startswith("x.attn:3:11: error:")
    assert lines[5].index("^") == lines[4].index("bar")


def test_str_of_empty_file_error():
    err = check_error("", "empty.attn")
    assert str(err).splitlines()[0] == (
        "empty.attn:1:1: error: no attention in this file; expected 'attention NAME { ... }'")


# ---- robustness ------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [
    "attention",
    "attention a",
    "attention a {",
    "attention a { mask",
    "attention a { param",
    "attention a { param x:",
    "attention a { param x: f32[",
    "attention a { blocks fwd(m=",
    "attention a { tune fwd(m=[",
    "attention a { tune fwd(m=[])}",
    "attention a { score score ** }",
    "attention a { head_dim }",
    "attention a { dtype }",
    "{}",
    "attention a { mask q < < kv }",
    "attention a { mask 1.2.3 }",
    "attention 1a { }",
    "attention a { mask \"causal\" }",
    "attention a { let = 1 }",
])
def test_truncated_and_garbled_specs_raise_spec_error(source):
    err = check_error(source)
    assert err.line >= 1 and err.column >= 1
    assert str(err)


def test_deep_expressions_raise_only_spec_error():
    bad = []
    for n in range(150, 800, 40):
        for tail in (" + 1", " ** 1", " & true"):
            head = "    mask q < kv" if "&" in tail else "    score score"
            source = spec("attention a {", head + tail * n, "}")
            try:
                attngen.parse_and_check(source)
            except SpecError:
                pass
            except BaseException as err:  # noqa: BLE001
                bad.append((tail, n, type(err).__name__))
    assert not bad, sorted({(tail, name) for tail, _, name in bad})

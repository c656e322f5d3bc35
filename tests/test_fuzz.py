"""Spec fuzzing: mutated spec texts only ever give ``SpecError`` with a position, never another
exception (the front end's half of the reliability work; kernels are covered elsewhere).

The default run is the whole file (630 hypothesis examples, a few seconds on two cores);
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

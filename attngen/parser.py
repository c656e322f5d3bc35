"""Parse stage: spec text → lark tree → IR (``ir.SpecFile``), every node with its line and column."""

from __future__ import annotations

import math
from functools import cache

import lark
from lark import Lark, Token, Transformer, v_args

from . import ir
from .errors import SpecError
from .resources import grammar_path

# How terminals read in "expected ..." messages.
_TERMINAL_TEXT = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "CMP_OP": "a comparison",
    "PLUS": "'+'", "MINUS": "'-'", "MUL_OP": "'*', '/', '//' or '%'", "POW_OP": "'**'",
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "SEMICOLON": "';'", "BANG": "'!'",
    "AMP": "'&'", "BAR": "'|'", "GRAD": "'grad'", "$END": "end of file",
}


@cache
def _parser() -> Lark:
    # The basic lexer takes the longest match among all terminals, so `maskcausal` is one name
    # rather than the keyword `mask` glued to `causal`; keywords are reserved words everywhere.
    return Lark(grammar_path().read_text(), parser="lalr", lexer="basic",
                propagate_positions=True, maybe_placeholders=True)


def _describe(name: str, parser: Lark) -> str:
    if name in _TERMINAL_TEXT:
        return _TERMINAL_TEXT[name]
    term = next((t for t in parser.terminals if t.name == name), None)
    if term is not None and term.pattern.type == "str":
        return f"'{term.pattern.value}'"
    return name.lower()


_OPERATORS = {"PLUS", "MINUS", "MUL_OP", "POW_OP", "CMP_OP", "AMP", "BAR"}


def _expected(names: set[str], parser: Lark) -> str:
    """A short, ordered list: closing brackets first, operators folded into 'an operator'."""
    names = set(names)
    texts = [_describe(n, parser) for n in ("RBRACE", "RPAR", "RSQB") if n in names]
    if names & _OPERATORS:
        texts.append("an operator")
    texts += sorted({_describe(n, parser) for n in names - _OPERATORS - {"RBRACE", "RPAR", "RSQB"}})
    if len(texts) > 10:
        texts = texts[:10] + ["..."]
    return ", ".join(texts)


def _end_position(source: str, parser: Lark) -> tuple[int, int]:
    """Just past the last token: where a missing '}' or operand belongs."""
    last = None
    try:
        for last in parser.lex(source):
            pass
    except lark.exceptions.LarkError:
        pass
    if last is None:
        return 1, 1
    return last.end_line, last.end_column


def _token_text(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    return f"'{token.value}'"


def _syntax_error(err: lark.exceptions.UnexpectedInput, parser: Lark, source: str) -> SpecError:
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = f"'{err.char}'" if err.char.isprintable() else repr(err.char)
        return SpecError(f"unexpected character {char}", err.line, err.column)
    if isinstance(err, lark.exceptions.UnexpectedToken):
        token = err.token
        expected = _expected(set(err.expected), parser)
        if token.type == "$END":
            line, column = _end_position(source, parser)
        else:
            line, column = token.line, token.column
        if set(err.expected) == {"NAME"} and str(token.value).isidentifier():
            return SpecError(f"'{token.value}' is a reserved word of the language; expected a "
                             f"name", line, column)
        return SpecError(f"unexpected {_token_text(token)}; expected {expected}", line, column)
    if isinstance(err, lark.exceptions.UnexpectedEOF):
        return SpecError(f"unexpected end of file; expected {_expected(set(err.expected), parser)}",
                         err.line, err.column)
    return SpecError(str(err), getattr(err, "line", 1), getattr(err, "column", 1))


def _pos(meta_or_token) -> dict:
    return {"line": meta_or_token.line, "column": meta_or_token.column}


def _int(token: str) -> int:
    """An integer token's value; texts too long for int() (over 4300 digits) count as 10**100,
    which every range check refuses."""
    return int(token) if len(token) <= 100 else 10**100


@v_args(meta=True)
class _ToIR(Transformer):
    """lark tree → IR nodes. Rules and terminals map one to one onto methods."""

    def __init__(self, source: str):
        super().__init__()
        self._source = source

    # -- literals and names ------------------------------------------------------------------
    def int_lit(self, meta, children):
        (tok,) = children
        value = _int(tok)
        if value > 2**31 - 1:
            shown = tok if len(tok) <= 24 else f"{tok[:12]}...({len(tok)} digits)"
            raise SpecError(f"integer literal {shown} does not fit in 32 bits (at most {2**31 - 1})",
                            tok.line, tok.column)
        return ir.IntLit(value, **_pos(tok))

    def float_lit(self, meta, children):
        (tok,) = children
        value = float(tok)
        if math.isinf(value):
            raise SpecError(f"float literal {tok} is out of range (write inf for infinity)",
                            tok.line, tok.column)
        return ir.FloatLit(value, **_pos(tok))

    def name(self, meta, children):
        (tok,) = children
        return ir.Name(str(tok), **_pos(tok))

    def score_ref(self, meta, children):
        return ir.Name("score", **_pos(meta))

    # -- operators -------------------------------------------------------------------------
    def binary(self, meta, children):
        left, op, right = children
        return ir.Binary(str(op), left, right, **_pos(op))

    def neg(self, meta, children):
        op, operand = children
        return ir.Unary("-", operand, **_pos(op))

    def not_(self, meta, children):
        op, operand = children
        return ir.Unary("!", operand, **_pos(op))

    def compare(self, meta, children):
        operands, ops = children[0::2], children[1::2]
        return ir.Compare(tuple(str(o) for o in ops), tuple(operands),
                          tuple((o.line, o.column) for o in ops), **_pos(ops[0]))

    def call(self, meta, children):
        func, *args = children
        args = tuple(a for a in args if a is not None)
        return ir.Call(str(func), args, **_pos(func))

    def index(self, meta, children):
        param, *indices = children
        return ir.Index(str(param), tuple(indices), **_pos(param))

    # -- statements ------------------------------------------------------------------------
    def _names(self, kind, meta, tokens):
        return ir.Statement(kind, tuple(ir.Ident(str(t), **_pos(t)) for t in tokens), **_pos(meta))

    def dtype_stmt(self, meta, children):
        return self._names("dtype", meta, children)

    def kernels_stmt(self, meta, children):
        return self._names("kernels", meta, children)

    def head_dim_stmt(self, meta, children):
        return ir.Statement("head_dim", tuple(ir.Knob("head_dim", (_int(t),), False, **_pos(t))
                                              for t in children), **_pos(meta))

    def dims(self, meta, children):
        return tuple(children)

    def param_stmt(self, meta, children):
        name, dtype, dims, grad = children
        dims = tuple(ir.Ident(str(d), **_pos(d)) for d in (dims or ()))
        return ir.Statement("param", (ir.Ident(str(name), **_pos(name)),
                                      ir.Ident(str(dtype), **_pos(dtype)), dims,
                                      ir.Ident("grad", **_pos(grad)) if grad else None),
                            **_pos(meta))

    def let_stmt(self, meta, children):
        name, expr = children
        return ir.Statement("let", (ir.Ident(str(name), **_pos(name)), expr), **_pos(meta))

    def score_stmt(self, meta, children):
        return ir.Statement("score", (children[0],), **_pos(meta))

    def mask_stmt(self, meta, children):
        return ir.Statement("mask", (children[0],), **_pos(meta))

    def drop_stmt(self, meta, children):
        return ir.Statement("drop", (children[0],), **_pos(meta))

    def blocks_stmt(self, meta, children):
        return ir.Statement("blocks", tuple(children), **_pos(meta))

    def tune_stmt(self, meta, children):
        return ir.Statement("tune", tuple(children), **_pos(meta))

    def empty_stmt(self, meta, children):
        return None

    def config(self, meta, children):
        kernel, *knobs = children
        return ir.KernelConfig(str(kernel), tuple(k for k in knobs if k is not None),
                               **_pos(kernel))

    def knob(self, meta, children):
        name, value = children
        if isinstance(value, Token):
            return ir.Knob(str(name), (_int(value),), False, **_pos(name))
        return ir.Knob(str(name), value, True, **_pos(name))

    def int_list(self, meta, children):
        return tuple(_int(t) for t in children)

    def attention(self, meta, children):
        name, *stmts = children
        text = self._source[meta.start_pos:meta.end_pos]
        return ir.AttentionDecl(str(name), tuple(s for s in stmts if s is not None), text,
                                **_pos(meta))

    def start(self, meta, children):
        return tuple(children)


MAX_DEPTH = 100  # nesting levels of one expression; deeper trees would exhaust Python's stack


def _check_depth(tree: lark.Tree) -> None:
    """Reject absurdly nested expressions up front, iteratively, at their deepest point."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            meta = node.meta
            raise SpecError(f"expression nested too deeply (more than {MAX_DEPTH} levels); "
                            f"split it with let", getattr(meta, "line", 1),
                            getattr(meta, "column", 1))
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))


def parse(source: str, path: str | None = None) -> ir.SpecFile:
    """Parse spec text into IR statements (unchecked). Raises ``SpecError`` at a line and column."""
    parser = _parser()
    try:
        tree = parser.parse(source)
        _check_depth(tree)
        attentions = _ToIR(source).transform(tree)
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, parser, source).attach(source, path) from None
    except SpecError as err:
        raise err.attach(source, path) from None
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, SpecError):
            raise err.orig_exc.attach(source, path) from None
        raise
    return ir.SpecFile(attentions, source, path, line=1, column=1)

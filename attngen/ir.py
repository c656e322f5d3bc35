"""The IR: frozen dataclasses for specs, built by the parser and completed by the checker.

Expressions carry their source position (``line``, ``column``) and, once checked, their type
``ty``: one of ``"int"``, ``"float"``, ``"bool"``. The checker returns an ``Attention`` whose
``score`` and ``mask`` are *core* expressions: lets are inlined, mask builtins (``causal``,
``window``, ``chunk``, ``document``, ``all``, ``none``) and comparison chains are expanded, and
``drop`` lines are folded into ``mask``. Later stages (reference, lowering) see only core nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

INT, FLOAT, BOOL = "int", "float", "bool"


@dataclass(frozen=True)
class Node:
    line: int = field(default=0, kw_only=True, compare=False)
    column: int = field(default=0, kw_only=True, compare=False)


@dataclass(frozen=True)
class ExprNode(Node):
    ty: str | None = field(default=None, kw_only=True, compare=False)


@dataclass(frozen=True)
class IntLit(ExprNode):
    value: int


@dataclass(frozen=True)
class FloatLit(ExprNode):
    value: float


@dataclass(frozen=True)
class BoolLit(ExprNode):
    value: bool


@dataclass(frozen=True)
class Name(ExprNode):
    """A position builtin (b, h, hkv, q, kv, q_len, kv_len), a scalar param, a let or ``score``."""

    id: str


@dataclass(frozen=True)
class Unary(ExprNode):
    op: str  # "-" or "!"
    operand: Expr


@dataclass(frozen=True)
class Binary(ExprNode):
    op: str  # + - * / // % ** & | and, in core IR, < <= > >= == !=
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Compare(ExprNode):
    """A (possibly chained) comparison as written; the checker turns it into Binary nodes."""

    ops: tuple[str, ...]
    operands: tuple[Expr, ...]
    op_positions: tuple[tuple[int, int], ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Call(ExprNode):
    """A builtin function call. In core IR also ``float(x)``, the checker's int → float cast."""

    func: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Index(ExprNode):
    """``param[i, j, ...]``: a read of a tensor param."""

    param: str
    indices: tuple[Expr, ...]


Expr = Union[IntLit, FloatLit, BoolLit, Name, Unary, Binary, Compare, Call, Index]

COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
ARITHMETIC = ("+", "-", "*", "/", "//", "%", "**")
LOGICAL = ("&", "|")


# ---- statements (parser output) ----------------------------------------------------------------


@dataclass(frozen=True)
class Ident(Node):
    """A name in statement position (a dtype, a kernel, a knob), kept with its position."""

    text: str


@dataclass(frozen=True)
class Knob(Node):
    name: str
    values: tuple[int, ...]
    is_list: bool


@dataclass(frozen=True)
class KernelConfig(Node):
    kernel: str
    knobs: tuple[Knob, ...]

    def get(self, name: str) -> tuple[int, ...] | None:
        for knob in self.knobs:
            if knob.name == name:
                return knob.values
        return None


@dataclass(frozen=True)
class Statement(Node):
    """One statement of an attention block; ``kind`` is its keyword."""

    kind: str
    args: tuple = ()


@dataclass(frozen=True)
class AttentionDecl(Node):
    name: str
    statements: tuple[Statement, ...]
    source: str  # the text of this block, as written


@dataclass(frozen=True)
class SpecFile(Node):
    attentions: tuple[AttentionDecl, ...]
    source: str
    path: str | None = None


# ---- checked IR ---------------------------------------------------------------------------------

PARAM_DTYPES = {"f32": FLOAT, "f16": FLOAT, "bf16": FLOAT, "i32": INT, "i64": INT, "bool": BOOL}
DIM_NAMES = ("B", "H", "HKV", "Q", "KV")


@dataclass(frozen=True)
class Param(Node):
    name: str
    dtype: str  # a key of PARAM_DTYPES
    dims: tuple[str | int, ...]  # () for a scalar
    grad: bool = False

    @property
    def ty(self) -> str:
        return PARAM_DTYPES[self.dtype]

    @property
    def is_scalar(self) -> bool:
        return not self.dims

    def signature(self) -> str:
        dims = f"[{', '.join(map(str, self.dims))}]" if self.dims else ""
        return f"{self.name}: {self.dtype}{dims}{' grad' if self.grad else ''}"


@dataclass(frozen=True)
class Attention(Node):
    name: str
    dtypes: tuple[str, ...]
    head_dims: tuple[int, ...] | None  # None: any head dim in 16..256
    params: tuple[Param, ...]
    score: Expr  # core IR, type float
    mask: Expr  # core IR, type bool; True keeps the (q, kv) pair
    score_text: str  # the statements as written, for summaries and generated headers
    mask_text: str
    blocks: tuple[KernelConfig, ...]
    tune: tuple[KernelConfig, ...]
    kernels: tuple[str, ...]
    source: str

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def canonical(self) -> str:
        """A text that changes exactly when the meaning of the attention changes (for hashing)."""
        lines = [
            f"attention {self.name}",
            f"dtype {', '.join(self.dtypes)}",
            f"head_dim {', '.join(map(str, self.head_dims)) if self.head_dims else 'any'}",
            *(f"param {p.signature()}" for p in self.params),
            f"score {unparse(self.score)}",
            f"mask {unparse(self.mask)}",
            *(f"blocks {format_config(c)}" for c in self.blocks),
            *(f"tune {format_config(c)}" for c in self.tune),
            f"kernels {', '.join(self.kernels)}",
        ]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        parts = [self.name]
        if self.params:
            parts.append("params " + ", ".join(p.signature() for p in self.params))
        parts.append(f"score {self.score_text}")
        parts.append(f"mask {self.mask_text}")
        parts.append(f"dtype {'/'.join(self.dtypes)}")
        parts.append(f"head_dim {','.join(map(str, self.head_dims)) if self.head_dims else '16..256'}")
        parts.append(f"kernels {','.join(self.kernels)}")
        return "; ".join(parts)


def format_config(config: KernelConfig) -> str:
    knobs = ", ".join(
        f"{k.name}=[{', '.join(map(str, k.values))}]" if k.is_list else f"{k.name}={k.values[0]}"
        for k in config.knobs
    )
    return f"{config.kernel}({knobs})"


# ---- unparsing ------------------------------------------------------------------------------------

# Binding strength, loosest first, as in the grammar.
_PRECEDENCE = {"|": 1, "&": 2, "!": 3, **{op: 4 for op in COMPARISONS}, "+": 5, "-": 5,
               "*": 6, "/": 6, "//": 6, "%": 6, "neg": 7, "**": 8}
_ATOM = 9


def _prec(e: Expr) -> int:
    if isinstance(e, Binary):
        return _PRECEDENCE[e.op]
    if isinstance(e, Compare):
        return _PRECEDENCE["<"]
    if isinstance(e, Unary):
        return _PRECEDENCE["!" if e.op == "!" else "neg"]
    if isinstance(e, IntLit | FloatLit) and e.value < 0:
        return _PRECEDENCE["neg"]
    return _ATOM


def _wrap(e: Expr, min_prec: int) -> str:
    text = unparse(e)
    return f"({text})" if _prec(e) < min_prec else text


def format_float(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(float(value))
    return text if any(c in text for c in ".en") else text + ".0"


def unparse(e: Expr) -> str:
    """Spec-syntax text of an expression, with the fewest parentheses that keep its meaning."""
    if isinstance(e, IntLit):
        return str(e.value)
    if isinstance(e, FloatLit):
        return format_float(e.value)
    if isinstance(e, BoolLit):
        return "true" if e.value else "false"
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Unary):
        p = _prec(e)
        return f"{e.op}{_wrap(e.operand, p)}"
    if isinstance(e, Binary):
        p = _PRECEDENCE[e.op]
        if e.op == "**":  # right-associative
            return f"{_wrap(e.left, p + 1)} ** {_wrap(e.right, _PRECEDENCE['neg'])}"
        if e.op in COMPARISONS:  # comparisons do not nest without parentheses
            return f"{_wrap(e.left, p + 1)} {e.op} {_wrap(e.right, p + 1)}"
        return f"{_wrap(e.left, p)} {e.op} {_wrap(e.right, p + 1)}"
    if isinstance(e, Compare):
        p = _PRECEDENCE["<"]
        out = _wrap(e.operands[0], p + 1)
        for op, operand in zip(e.ops, e.operands[1:]):
            out += f" {op} {_wrap(operand, p + 1)}"
        return out
    if isinstance(e, Call):
        return f"{e.func}({', '.join(unparse(a) for a in e.args)})"
    if isinstance(e, Index):
        return f"{e.param}[{', '.join(unparse(i) for i in e.indices)}]"
    raise TypeError(f"not an expression node: {e!r}")


def children(e: Expr) -> tuple:
    """The direct subexpressions of a node."""
    if isinstance(e, Unary):
        return (e.operand,)
    if isinstance(e, Binary):
        return (e.left, e.right)
    if isinstance(e, Compare):
        return e.operands
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Index):
        return e.indices
    return ()


def walk(e: Expr):
    """Every node of an expression, parents before children."""
    yield e
    for child in children(e):
        yield from walk(child)

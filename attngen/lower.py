"""Lower stage: checked IR → Triton expression text and the facts templates need.

Inside a kernel tile the expression names are bound as follows (see templates/fwd.py.jinja):

    score   s                   fp32 [BLOCK_M, BLOCK_N], (q·k) * scale
    q       q_pos[:, None]      int32 [BLOCK_M, 1], absolute query positions
    kv      kv_pos[None, :]     int32 [1, BLOCK_N], key positions
    b h hkv off_b off_h off_hkv program scalars
    q_len kv_len                runtime ints
    PARAM   p_PARAM             a scalar param, or a pointer with strides p_PARAM_stride<i>

Integer ``//`` and ``%`` follow Python's floor semantics through ``_floor_div``/``_floor_mod``
(Triton's truncate toward zero). Lowering never imports torch or triton.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ir
from .ir import BOOL, FLOAT, INT

NAMES = {"score": "s", "q": "q_pos[:, None]", "kv": "kv_pos[None, :]", "b": "off_b",
         "h": "off_h", "hkv": "off_hkv", "q_len": "q_len", "kv_len": "kv_len"}
DIM_SIZES = {"B": "batch", "H": "heads_q", "HKV": "heads_kv", "Q": "q_len", "KV": "kv_len"}
# Index expressions known to lie inside a dimension, so their loads need no bounds mask.
_IN_RANGE = {("b", "B"), ("h", "H"), ("hkv", "HKV"), ("hkv", "H")}
_FLOAT_FUNCS = {"exp": "tl.exp", "exp2": "tl.exp2", "log": "tl.log", "log2": "tl.log2",
                "sqrt": "tl.sqrt", "rsqrt": "tl.rsqrt", "sin": "tl.sin", "cos": "tl.cos",
                "sigmoid": "tl.sigmoid", "tanh": "_tanh"}
_TL_TYPE = {INT: "tl.int32", FLOAT: "tl.float32", BOOL: "tl.int1"}


@dataclass(frozen=True)
class KernelParam:
    """A kernel argument that carries a spec param: ``p_NAME`` and, for tensors, its strides."""

    name: str
    dtype: str
    ndim: int
    grad: bool

    @property
    def arg(self) -> str:
        return f"p_{self.name}"

    @property
    def stride_args(self) -> tuple[str, ...]:
        return tuple(f"p_{self.name}_stride{i}" for i in range(self.ndim))


@dataclass(frozen=True)
class Lowered:
    """What the templates need from one attention."""

    score: str  # Triton expression for the modified score, fp32
    mask: str | None  # Triton expression, True keeps; None when the mask keeps everything
    score_is_identity: bool  # score == score: fold log2(e) into the scale
    score_uses_score: bool
    params: tuple[KernelParam, ...]
    causal_upper: bool  # the mask implies kv <= q: keys past the tile's last query are skipped
    window_left: int | None  # the mask implies q - window_left <= kv: earlier keys are skipped
    mask_exact: bool  # the mask is exactly those bounds: tiles inside them need no mask math


def _is_atom(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and not (ch.isalnum() or ch in "_."):
            return False
    return True


def _p(text: str) -> str:
    return text if _is_atom(text) else f"({text})"


class _Lowerer:
    def __init__(self, attention: ir.Attention):
        self.attention = attention

    def cast(self, e: ir.Expr, ty: str) -> str:
        text = self(e)
        if e.ty == ty:
            return text
        if isinstance(e, ir.IntLit) and ty == FLOAT:
            return ir.format_float(float(e.value))
        return f"{_p(text)}.to({_TL_TYPE[ty]})"

    def __call__(self, e: ir.Expr) -> str:
        if isinstance(e, ir.IntLit):
            return str(e.value) if e.value >= 0 else f"({e.value})"
        if isinstance(e, ir.FloatLit):
            if e.value in (float("inf"), float("-inf")):
                return "INF" if e.value > 0 else "(-INF)"
            text = ir.format_float(e.value)
            return text if e.value >= 0 else f"({text})"
        if isinstance(e, ir.BoolLit):
            return "True" if e.value else "False"
        if isinstance(e, ir.Name):
            if e.id in NAMES:
                return NAMES[e.id]
            return f"p_{e.id}"
        if isinstance(e, ir.Unary):
            if e.op == "!":
                return f"{_p(self(e.operand))} == 0"
            return f"-{_p(self(e.operand))}"
        if isinstance(e, ir.Binary):
            return self.binary(e)
        if isinstance(e, ir.Call):
            return self.call(e)
        if isinstance(e, ir.Index):
            return self.index(e)
        raise TypeError(f"not a core expression: {e!r}")

    def binary(self, e: ir.Binary) -> str:
        if e.op in ("&", "|") or e.op in ir.COMPARISONS:
            if e.op in ir.COMPARISONS and e.left.ty != e.right.ty and BOOL not in (e.left.ty,
                                                                                   e.right.ty):
                a, b = self.cast(e.left, FLOAT), self.cast(e.right, FLOAT)
            else:
                a, b = self(e.left), self(e.right)
            return f"{_p(a)} {e.op} {_p(b)}"
        if e.op == "**" and isinstance(e.right, ir.IntLit) and 0 <= e.right.value <= 4:
            base = _p(self.cast(e.left, e.ty))
            return " * ".join([base] * e.right.value) if e.right.value else (
                "1" if e.ty == INT else "1.0")
        a, b = self.cast(e.left, e.ty), self.cast(e.right, e.ty)
        if e.op == "**":
            return f"libdevice.pow({a}, {b})"
        if e.op == "//":
            return f"_floor_div({a}, {b})" if e.ty == INT else f"tl.floor({_p(a)} / {_p(b)})"
        if e.op == "%":
            return f"_floor_mod({a}, {b})" if e.ty == INT else \
                f"{_p(a)} - {_p(b)} * tl.floor({_p(a)} / {_p(b)})"
        return f"{_p(a)} {e.op} {_p(b)}"

    def call(self, e: ir.Call) -> str:
        f = e.func
        if f in _FLOAT_FUNCS:
            return f"{_FLOAT_FUNCS[f]}({self.cast(e.args[0], FLOAT)})"
        if f == "float":
            return self.cast(e.args[0], FLOAT)
        if f == "abs":
            return f"tl.abs({self(e.args[0])})"
        if f in ("floor", "ceil"):
            (x,) = e.args
            if x.ty == INT:
                return self(x)
            return f"tl.{f}({self(x)}).to(tl.int32)"
        if f == "where":
            cond, a, b = e.args
            return f"tl.where({self(cond)}, {self.cast(a, e.ty)}, {self.cast(b, e.ty)})"
        args = [self.cast(a, e.ty) for a in e.args]
        if f in ("min", "max"):
            out = args[0]
            for a in args[1:]:
                out = f"tl.{f}imum({out}, {a})"
            return out
        if f == "clamp":
            x, lo, hi = args
            return f"tl.minimum(tl.maximum({x}, {lo}), {hi})"
        raise TypeError(f"unknown function {f!r}")

    def index(self, e: ir.Index) -> str:
        """A masked load: an index outside the param's extent reads 0 (false), as in the reference."""
        param = self.attention.param(e.param)
        offsets, checks = [], []
        for axis, (index, dim) in enumerate(zip(e.indices, param.dims)):
            text = self(index)
            offsets.append(f"{_p(text)} * p_{e.param}_stride{axis}")
            if not _provably_in_range(index, dim):
                size = DIM_SIZES[dim] if isinstance(dim, str) else str(dim)
                checks.append(f"({_p(text)} >= 0) & ({_p(text)} < {size})")
        address = f"p_{e.param} + " + " + ".join(offsets)
        if not checks:
            return f"tl.load({address})"
        return f"tl.load({address}, mask={' & '.join(checks)}, other=0)"


def _provably_in_range(index: ir.Expr, dim: str | int) -> bool:
    if isinstance(index, ir.Name):
        return (index.id, dim) in _IN_RANGE
    if isinstance(index, ir.IntLit) and isinstance(dim, int):
        return 0 <= index.value < dim
    if isinstance(index, ir.Call) and index.func == "clamp" and isinstance(dim, int):
        _, lo, hi = index.args
        return isinstance(lo, ir.IntLit) and isinstance(hi, ir.IntLit) and 0 <= lo.value \
            and hi.value < dim
    return False


def _conjuncts(e: ir.Expr):
    if isinstance(e, ir.Binary) and e.op == "&":
        yield from _conjuncts(e.left)
        yield from _conjuncts(e.right)
    else:
        yield e


def _is_name(e: ir.Expr, name: str) -> bool:
    return isinstance(e, ir.Name) and e.id == name


def _key_range(mask: ir.Expr) -> tuple[bool, int | None, bool]:
    """Key bounds the mask implies for every query, read off its top-level conjuncts.

    ``kv <= q`` bounds keys above; ``q - n <= kv`` (n a literal) bounds them below. Returns
    (upper, left, exact): exact when the mask says nothing beyond these bounds (``kv <= q + n``
    with n >= 0 adds nothing to ``kv <= q``), so tiles inside the bounds are FULL. The general
    tile classification (any affine form, document masks) belongs to the sparsity analysis.
    """
    upper, left = False, None
    leftover = []
    for c in _conjuncts(mask):
        if isinstance(c, ir.BoolLit) and c.value:
            continue
        if isinstance(c, ir.Binary) and c.op == "<=":
            if _is_name(c.left, "kv") and _is_name(c.right, "q"):
                upper = True
                continue
            if _is_name(c.right, "kv") and isinstance(c.left, ir.Binary) and c.left.op == "-" \
                    and _is_name(c.left.left, "q") and isinstance(c.left.right, ir.IntLit):
                n = c.left.right.value
                left = n if left is None else min(left, n)
                continue
        leftover.append(c)
    exact = all(_is_name(c.left, "kv") and isinstance(c.right, ir.Binary) and c.right.op == "+"
                and _is_name(c.right.left, "q") and isinstance(c.right.right, ir.IntLit)
                and c.right.right.value >= 0
                for c in leftover if isinstance(c, ir.Binary) and c.op == "<=") \
        and all(isinstance(c, ir.Binary) and c.op == "<=" for c in leftover) \
        and (upper or not leftover)
    return upper, left, exact


def lower(attention: ir.Attention) -> Lowered:
    lowerer = _Lowerer(attention)
    score_uses_score = any(_is_name(n, "score") for n in ir.walk(attention.score))
    score = lowerer.cast(attention.score, FLOAT)
    keeps_all = isinstance(attention.mask, ir.BoolLit) and attention.mask.value
    mask = None if keeps_all else lowerer(attention.mask)
    params = tuple(KernelParam(p.name, p.dtype, len(p.dims), p.grad) for p in attention.params)
    upper, left, exact = _key_range(attention.mask)
    return Lowered(score=score, mask=mask, score_is_identity=_is_name(attention.score, "score"),
                   score_uses_score=score_uses_score, params=params, causal_upper=upper,
                   window_left=left, mask_exact=exact)

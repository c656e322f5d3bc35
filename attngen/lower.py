"""Lower stage: checked IR → Triton expression text and the facts templates need.

Inside a kernel tile the expression names are bound as follows (see templates/fwd.py.jinja):

    score   s                   fp32 [BLOCK_M, BLOCK_N], (q·k) * scale
    q       q_pos[:, None]      int32 [BLOCK_M, 1], absolute query positions
    kv      kv_pos[None, :]     int32 [1, BLOCK_N], key positions
    b h hkv off_b off_h off_hkv program scalars
    q_len kv_len                runtime ints
    PARAM   p_PARAM             a pointer (a 0-d tensor for scalars), with strides p_PARAM_stride<i>

Integer ``//`` and ``%`` follow Python's floor semantics through ``_floor_div``/``_floor_mod``
(Triton's truncate toward zero). Lowering never imports torch or triton.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import derive, ir
from .ir import BOOL, FLOAT, INT

NAMES = {"score": "s", "q": "q_pos[:, None]", "kv": "kv_pos[None, :]", "b": "off_b",
         "h": "off_h", "hkv": "off_hkv", "q_len": "q_len", "kv_len": "kv_len"}
# The dK/dV kernel holds tiles transposed: keys along rows, queries along columns.
NAMES_TRANSPOSED = {**NAMES, "q": "q_pos[None, :]", "kv": "kv_pos[:, None]"}
# A param read once per diagonal of a dQ tile (see GradTerm.diagonal_offset): a query position
# and a vector of key positions, one per diagonal
NAMES_DIAGONAL = {**NAMES, "q": "diag_q", "kv": "diag_kv"}
DIM_SIZES = {"B": "batch", "H": "heads_q", "HKV": "heads_kv", "Q": "q_len", "KV": "kv_len"}
# Index expressions known to lie inside a dimension, so their loads need no bounds mask.
_IN_RANGE = {("b", "B"), ("h", "H"), ("hkv", "HKV"), ("hkv", "H")}
_FLOAT_FUNCS = {"exp": "tl.exp", "exp2": "tl.exp2", "log": "tl.log", "log2": "tl.log2",
                "sqrt": "tl.sqrt", "rsqrt": "tl.rsqrt", "sin": "tl.sin", "cos": "tl.cos",
                "sigmoid": "tl.sigmoid"}
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
class GradTerm:
    """One read of a ``grad`` param in the score: its gradient is sum(dS' * deriv) at offset."""

    param: str
    slot: int  # numbering of the terms, for kernel argument names G0, G1, ...
    deriv: str  # Triton: d score' / d (this read), tile-shaped or scalar
    deriv_text: str  # the same in spec syntax, shown in the generated module
    read_text: str  # the read itself in spec syntax, e.g. slopes[h]
    offset: str  # Triton: flat element offset into the contiguous param
    valid: str | None  # Triton: in-bounds check, None when provably in range
    varying: bool  # the offset differs across the tile (needs atomics), else one per program
    # the offset and its check at (diag_q, diag_kv) when the read depends on q and kv only
    # through kv - q (a relative position): constant along a tile's diagonals, so the dQ kernel
    # sums each diagonal and adds it with one atomic; None otherwise
    diagonal_offset: str | None = None
    diagonal_valid: str | None = None


@dataclass(frozen=True)
class Lowered:
    """What the templates need from one attention."""

    score: str  # Triton expression for the modified score, fp32
    mask: str | None  # Triton expression, True keeps; None when the mask keeps everything
    score_is_identity: bool  # score == score: fold log2(e) into the scale
    score_uses_score: bool
    params: tuple[KernelParam, ...]
    score_t: str  # the score hook for transposed tiles (the dK/dV kernel)
    mask_t: str | None
    score_grad: str | None  # Triton: d score' / d score; None when it is the constant 1
    score_grad_t: str | None
    score_grad_text: str  # d score' / d score in spec syntax
    grad_terms: tuple[GradTerm, ...]


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


# Integer ranges: kernels compute in int32 unless a result can leave it (then int64). Lengths are
# at most POSITION_LIMIT (runtime.check_inputs refuses longer), so kv < LIMIT and q = i + kv_len -
# q_len lies in (-LIMIT, LIMIT): sums and differences of a few positions stay in int32.
POSITION_LIMIT = 2**29  # = runtime.POSITION_LIMIT (the runtime imports no compiler stage)
INT32 = (-(2**31), 2**31 - 1)
_NAME_RANGES = {"q": (1 - POSITION_LIMIT, POSITION_LIMIT - 1), "kv": (0, POSITION_LIMIT - 1),
                "q_len": (0, POSITION_LIMIT), "kv_len": (0, POSITION_LIMIT),
                "b": (0, INT32[1]), "h": (0, INT32[1]), "hkv": (0, INT32[1])}
_DTYPE_RANGES = {"i32": INT32, "i64": (-(2**63), 2**63 - 1), "bool": (0, 1)}


def _fits_int32(r: tuple[int, int]) -> bool:
    return INT32[0] <= r[0] and r[1] <= INT32[1]


def _hull(*ranges: tuple[int, int]) -> tuple[int, int]:
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _p(text: str) -> str:
    return text if _is_atom(text) else f"({text})"


class Lowerer:
    def __init__(self, attention: ir.Attention, names: dict[str, str] = NAMES):
        self.attention = attention
        self.names = names

    def int_range(self, e: ir.Expr) -> tuple[int, int]:
        """Bounds of an integer expression's value over every valid call (unbounded math)."""
        if isinstance(e, ir.IntLit):
            return e.value, e.value
        if isinstance(e, ir.BoolLit) or e.ty == BOOL:
            return 0, 1
        if isinstance(e, ir.Name):
            if e.id in _NAME_RANGES:
                return _NAME_RANGES[e.id]
            return _DTYPE_RANGES.get(self.attention.param(e.id).dtype, INT32)
        if isinstance(e, ir.Index):
            return _DTYPE_RANGES.get(self.attention.param(e.param).dtype, INT32)
        if isinstance(e, ir.Unary):
            lo, hi = self.int_range(e.operand)
            return (-hi, -lo) if e.op == "-" else (0, 1)
        if isinstance(e, ir.Binary) and e.ty == INT:
            a, b = self.int_range(e.left), self.int_range(e.right)
            if e.op == "+":
                return a[0] + b[0], a[1] + b[1]
            if e.op == "-":
                return a[0] - b[1], a[1] - b[0]
            if e.op == "*":
                corners = [x * y for x in a for y in b]
                return min(corners), max(corners)
            if e.op == "**":
                return self._power_ranges(a, int(e.right.value))[-1]
            if e.op == "//":
                if b[0] > 0 or b[1] < 0:
                    corners = [x // y for x in a for y in b]
                    return min(corners), max(corners)
                big = max(abs(a[0]), abs(a[1]))
                return -big, big
            if e.op == "%":
                big = max(abs(b[0]), abs(b[1]))
                return -big, big
        if isinstance(e, ir.Call) and e.ty == INT:
            if e.func in ("floor", "ceil"):
                return self.int_range(e.args[0]) if e.args[0].ty == INT else INT32
            if e.func == "abs":
                lo, hi = self.int_range(e.args[0])
                return (0 if lo <= 0 <= hi else min(abs(lo), abs(hi))), max(abs(lo), abs(hi))
            args = e.args[1:] if e.func == "where" else e.args
            return _hull(*(self.int_range(a) for a in args))
        return INT32

    @staticmethod
    def _power_ranges(base: tuple[int, int], n: int) -> list[tuple[int, int]]:
        """Ranges of base, base*base, ... base**n (the products the kernel computes in turn)."""
        out = [(1, 1)]
        for _ in range(n):
            corners = [x * y for x in out[-1] for y in base]
            out.append((min(corners), max(corners)))
        return out

    def wide(self, e: ir.Expr) -> bool:
        """Whether the kernel holds this integer in int64: its range leaves int32, or it is
        read from an i64 param."""
        return e.ty == INT and not _fits_int32(self.int_range(e))

    def widened(self, e: ir.Expr) -> str:
        """``e`` in int64 (a Python-int literal is left as it is: Triton widens it)."""
        text = self(e)
        if isinstance(e, ir.IntLit) or not any(isinstance(n, ir.Name | ir.Index)
                                               for n in ir.walk(e)):
            return text
        return f"{_p(text)}.to(tl.int64)"

    def cast(self, e: ir.Expr, ty: str) -> str:
        text = self(e)
        if e.ty == ty:
            return text
        if isinstance(e, ir.IntLit) and ty == FLOAT:
            return ir.format_float(float(e.value))
        if ty == FLOAT and not any(isinstance(n, ir.Name | ir.Index) for n in ir.walk(e)):
            return f"{_p(text)} * 1.0"  # literals only: a Python int, which has no .to()
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
            if e.id in self.names:
                return self.names[e.id]
            return f"tl.load(p_{e.id})"  # scalar params arrive as 0-d tensors: no host sync
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
        if e.op == "**" and isinstance(e.right, ir.IntLit | ir.FloatLit) and (
                e.ty == INT or e.right.value in (0, 1, 2, 3, 4)):
            # integer powers (the checker makes `int ** literal >= 0` an int): multiplications
            base = _p(self.cast(e.left, e.ty))
            n = int(e.right.value)
            if e.ty == INT and not all(map(_fits_int32, self._power_ranges(
                    self.int_range(e.left), n))) and not self.wide(e.left):
                base = _p(self.widened(e.left))
            return " * ".join([base] * n) if n else ("1" if e.ty == INT else "1.0")
        a, b = self.cast(e.left, e.ty), self.cast(e.right, e.ty)
        if e.ty == INT and self.wide(e) and not (self.wide(e.left) or self.wide(e.right)):
            # int32 operands whose result can leave int32: compute in int64
            if any(isinstance(n, ir.Name | ir.Index) for n in ir.walk(e.left)):
                a = self.widened(e.left)
            else:
                b = self.widened(e.right)
        if e.op == "**":
            return f"_pow({a}, {b})"
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
        if f == "tanh":  # the kernel's PRECISION picks the hardware approximation or libdevice
            return f"_tanh({self.cast(e.args[0], FLOAT)}, PRECISION)"
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

    def index_parts(self, e: ir.Index, strides: list[str]) -> tuple[str, str | None]:
        """(element offset, in-bounds check or None) of ``param[indices]`` for given strides."""
        param = self.attention.param(e.param)
        offsets, checks = [], []
        for index, dim, stride in zip(e.indices, param.dims, strides):
            text = self(index)
            offsets.append(f"{_p(text)} * {stride}" if stride != "1" else _p(text))
            if not _provably_in_range(index, dim):
                checks.append(f"({_p(text)} >= 0) & ({_p(text)} < {_dim_size(dim)})")
        return " + ".join(offsets), (" & ".join(checks) or None)

    def index(self, e: ir.Index) -> str:
        """A masked load: an index outside the param's extent reads 0 (false), as in the reference.
        Tile-shaped reads (the index varies with q and kv, or with the score) go through the
        module's `_gather`, which Triton's pipeliner leaves alone."""
        strides = [f"p_{e.param}_stride{axis}" for axis in range(len(e.indices))]
        offset, check = self.index_parts(e, strides)
        if is_tile_read(e):
            return f"_gather(p_{e.param}, {offset}, {check})"
        address = f"p_{e.param} + {offset}"
        if check is None:
            return f"tl.load({address})"
        return f"tl.load({address}, mask={check}, other=0)"


def is_tile_read(e: ir.Index) -> bool:
    """A param read whose address varies over a whole tile (with q and kv, or with the score)."""
    names = {n.id for i in e.indices for n in ir.walk(i) if isinstance(n, ir.Name)}
    return {"q", "kv"} <= names or "score" in names


def _dim_size(dim: str | int) -> str:
    return DIM_SIZES[dim] if isinstance(dim, str) else str(dim)


def contiguous_strides(dims: tuple) -> list[str]:
    """Triton text of the strides of a contiguous tensor with these dims."""
    strides, acc = [], []
    for dim in reversed(dims):
        strides.append(" * ".join(acc) if acc else "1")
        acc.insert(0, _dim_size(dim))
    return list(reversed(strides))


def _provably_in_range(index: ir.Expr, dim: str | int) -> bool:
    if isinstance(index, ir.Name):
        return (index.id, dim) in _IN_RANGE
    if isinstance(index, ir.IntLit) and isinstance(dim, int):
        return 0 <= index.value < dim
    if isinstance(index, ir.Call) and index.func == "clamp" and isinstance(dim, int):
        _, lo, hi = index.args
        # clamp(x, lo, hi) = min(max(x, lo), hi) lies in [min(lo, hi), hi]
        return isinstance(lo, ir.IntLit) and isinstance(hi, ir.IntLit) \
            and 0 <= min(lo.value, hi.value) and hi.value < dim
    return False


def _is_name(e: ir.Expr, name: str) -> bool:
    return isinstance(e, ir.Name) and e.id == name


def reads_only_the_difference(e: ir.Expr) -> bool:
    """e reads q and kv only as ``kv - q`` or ``q - kv``, and not the score: e is constant
    along the diagonals of a tile. (Conservative: ``kv + 1 - q`` does not count.)"""
    if isinstance(e, ir.Binary) and e.op == "-" and \
            {getattr(e.left, "id", None), getattr(e.right, "id", None)} == {"q", "kv"}:
        return True
    if isinstance(e, ir.Name):
        return e.id not in ("q", "kv", "score")
    return all(reads_only_the_difference(c) for c in ir.children(e))


def _grad_terms(attention: ir.Attention, lowerer: Lowerer) -> tuple[GradTerm, ...]:
    grad_params = {p.name for p in attention.params if p.grad}
    diagonal = Lowerer(attention, NAMES_DIAGONAL)
    terms = []
    for slot, node in enumerate(derive.param_occurrences(attention.score, grad_params)):
        deriv = derive.derivative(attention.score, lambda n, node=node: n is node)
        diagonal_parts = (None, None)
        if isinstance(node, ir.Index):
            param = attention.param(node.param)
            strides = contiguous_strides(param.dims)
            offset, valid = lowerer.index_parts(node, strides)
            varying = any(_is_name(n, "q") or _is_name(n, "kv") or _is_name(n, "score")
                          for i in node.indices for n in ir.walk(i))
            if varying and all(reads_only_the_difference(i) for i in node.indices):
                diagonal_parts = diagonal.index_parts(node, strides)
            name = node.param
        else:
            offset, valid, varying, name = "0", None, False, node.id
        terms.append(GradTerm(name, slot, lowerer.cast(deriv, FLOAT), ir.unparse(deriv),
                              ir.unparse(node), offset, valid, varying, *diagonal_parts))
    return tuple(terms)


def lower(attention: ir.Attention) -> Lowered:
    lowerer = Lowerer(attention)
    transposed = Lowerer(attention, NAMES_TRANSPOSED)
    score_uses_score = any(_is_name(n, "score") for n in ir.walk(attention.score))
    score = lowerer.cast(attention.score, FLOAT)
    score_t = transposed.cast(attention.score, FLOAT)
    if not score_uses_score:  # constant along q or kv (or both): give it the tile's shape
        score, score_t = (f"tl.zeros_like(s) + {_p(text)}" for text in (score, score_t))
    keeps_all = isinstance(attention.mask, ir.BoolLit) and attention.mask.value
    mask = None if keeps_all else lowerer(attention.mask)
    score_grad = derive.score_derivative(attention.score)
    grad_is_one = isinstance(score_grad, ir.FloatLit) and score_grad.value == 1.0
    params = tuple(KernelParam(p.name, p.dtype, len(p.dims), p.grad) for p in attention.params)
    return Lowered(score=score, mask=mask, score_is_identity=_is_name(attention.score, "score"),
                   score_uses_score=score_uses_score, params=params,
                   score_t=score_t,
                   mask_t=None if keeps_all else transposed(attention.mask),
                   score_grad=None if grad_is_one else lowerer.cast(score_grad, FLOAT),
                   score_grad_t=None if grad_is_one else transposed.cast(score_grad, FLOAT),
                   score_grad_text=ir.unparse(score_grad),
                   grad_terms=_grad_terms(attention, lowerer))

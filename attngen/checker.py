"""Check stage: IR statements → checked ``ir.Attention`` (names, types, arity, shapes, ranges).

Errors are collected per statement and raised together as one ``SpecError``. The result is in
core form (see ``ir``): lets inlined, mask builtins and comparison chains expanded, every
expression node typed.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re
import unicodedata
from dataclasses import replace

from . import ir
from .errors import SpecError
from .ir import BOOL, FLOAT, INT

DTYPES = ("bf16", "fp16", "fp32")
KERNELS = ("fwd", "bwd", "decode")
HEAD_DIM_RANGE = (16, 256)

# Expression names every attention can use, with their types.
POSITIONS = {"b": INT, "h": INT, "hkv": INT, "q": INT, "kv": INT, "q_len": INT, "kv_len": INT}
CONSTANTS = {"true": ir.BoolLit(True, ty=BOOL), "false": ir.BoolLit(False, ty=BOOL),
             "inf": ir.FloatLit(math.inf, ty=FLOAT), "all": ir.BoolLit(True, ty=BOOL),
             "none": ir.BoolLit(False, ty=BOOL)}
FLOAT_FUNCTIONS = ("exp", "exp2", "log", "log2", "sqrt", "rsqrt", "tanh", "sigmoid", "sin", "cos")
# name → (min args, max args or None for any number)
FUNCTIONS = {**{f: (1, 1) for f in FLOAT_FUNCTIONS}, "abs": (1, 1), "floor": (1, 1),
             "ceil": (1, 1), "min": (2, None), "max": (2, None), "clamp": (3, 3),
             "where": (3, 3)}
MASK_BUILTINS = {"causal": None, "window": (1, 2), "chunk": (1, 1), "document": (1, 1)}
# Names of the op's own arguments, op(q, k, v, *, scale, return_lse, deterministic, block_mask,
# **params), and of its module's trace_tiles(q, k, v, *, kernel="fwd", block_m=16, block_n=16,
# block_mask, **params), decode and block_mask(batch, heads, q_len, kv_len, *, heads_kv, block,
# device, **params)
OP_ARGUMENTS = {"k", "v", "scale", "return_lse", "deterministic", "self", "params", "kernel",
                "block_m", "block_n", "k_cache", "v_cache", "kv_len", "page_table", "num_splits",
                "block_mask", "batch", "heads", "heads_kv", "block", "device"}
# Globals of a generated module, which an attention (its op function) must not shadow, and
# modules it imports (a generated NAME.py must not shadow one of them either)
MODULE_GLOBALS = {"torch", "triton", "tl", "libdevice", "runtime", "NAME", "SPEC", "SPEC_HASH",
                  "PARAMS", "DTYPES", "HEAD_DIMS", "INF", "LOG2E", "LN2", "BIG", "FWD_FLAGS",
                  "BWD_FLAGS", "DOCUMENTS", "GRAD_TERMS", "trace_tiles", "trace_decode_tiles",
                  "tuning", "attngen", "os", "block_mask", "MASK_READS", "TILE_LOADS",
                  "ROW_PAD"}
# Python's builtins: the generated module and its kernels call some (dict, zip, range, float)
PYTHON_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))
RESERVED = set(POSITIONS) | set(CONSTANTS) | set(FUNCTIONS) | set(MASK_BUILTINS) | {"score"}
# Names become file names (NAME-<hash>/NAME.py in the cache) and kernel names
MAX_NAME_LENGTH = 64
# Params reach kernels as p_NAME with strides p_NAME_stride0, ...: a param named like a stride
# (t_stride0 next to t) would give two kernel arguments one name
_STRIDE_LIKE = re.compile(r".*_stride[0-9]+")
# window() sizes: positions are int32 in the kernels and q +- size must not wrap around
MAX_WINDOW = 2**30
# Float literals must be normal fp32 numbers: the kernels compute the score in fp32, and Triton
# would make any other literal an fp64 constant (or fp32 would round it to inf or 0)
FP32_MAX = (2 - 2**-23) * 2.0**127
FP32_MIN_NORMAL = 2.0**-126
# Characters not allowed even in comments, which are copied into the generated module: control
# characters (NUL makes the module unimportable), surrogates (not encodable) and bidirectional
# overrides (text that reads differently from how it runs)
_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff"
                                r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

# Knobs of `blocks` / `tune`, with their allowed values.
_POW2 = (16, 32, 64, 128, 256)
KNOBS = {
    "m": _POW2,  # query rows per tile
    "n": _POW2,  # keys per tile
    "warps": (1, 2, 4, 8, 16),
    "stages": (1, 2, 3, 4, 5, 6, 7, 8),
}


def _fmt_type(ty: str) -> str:
    return {INT: "int", FLOAT: "float", BOOL: "bool"}[ty]


def _promote(a: str, b: str) -> str:
    return INT if a == INT and b == INT else FLOAT


class _Poisoned(Exception):
    """A use of a let whose definition already failed: its error is reported once, there."""


class _AttentionChecker:
    def __init__(self, decl: ir.AttentionDecl):
        self.decl = decl
        self.errors: list[SpecError] = []
        self.params: dict[str, ir.Param] = {}
        self.lets: dict[str, ir.Expr] = {}
        self.let_uses_score: set[str] = set()

    def error(self, node: ir.Node, message: str) -> None:
        self.errors.append(SpecError(message, node.line, node.column))

    # ---- statements ----------------------------------------------------------------------
    def run(self) -> ir.Attention | None:
        decl = self.decl
        seen: dict[str, ir.Statement] = {}
        dtypes, head_dims, kernels = DTYPES, None, KERNELS
        scores, masks, drops = [], [], []
        blocks: list[ir.KernelConfig] = []
        tune: list[ir.KernelConfig] = []
        for stmt in decl.statements:
            once = stmt.kind in ("dtype", "head_dim", "score", "kernels")
            if once and stmt.kind in seen:
                first = seen[stmt.kind]
                self.error(stmt, f"duplicate '{stmt.kind}' statement (first given at line "
                                 f"{first.line}); give it once")
                continue
            seen.setdefault(stmt.kind, stmt)
            try:
                if stmt.kind == "dtype":
                    dtypes = self._names(stmt, DTYPES, "dtype")
                elif stmt.kind == "kernels":
                    kernels = self._names(stmt, KERNELS, "kernel")
                elif stmt.kind == "head_dim":
                    head_dims = self._head_dims(stmt)
                elif stmt.kind == "param":
                    self._param(stmt)
                elif stmt.kind == "let":
                    self._let(stmt)
                elif stmt.kind == "score":
                    scores.append(self._expr_stmt(stmt, FLOAT, allow_score=True))
                elif stmt.kind == "mask":
                    masks.append(self._expr_stmt(stmt, BOOL))
                elif stmt.kind == "drop":
                    drops.append(self._expr_stmt(stmt, BOOL))
                elif stmt.kind == "blocks":
                    blocks.extend(self._configs(stmt, is_tune=False))
                elif stmt.kind == "tune":
                    tune.extend(self._configs(stmt, is_tune=True))
            except SpecError as err:
                self.errors.append(err)
                if stmt.kind == "let":
                    self.lets[stmt.args[0].text] = None
            except _Poisoned:
                pass
            except RecursionError:
                self.error(stmt, "expression nested too deeply; split it with let")
        self._check_kernel_configs(blocks, tune, kernels)
        if self.errors:
            return None

        score = scores[0] if scores else ir.Name("score", ty=FLOAT)
        keep = [m for m in masks] + [_not(d) for d in drops]
        mask = keep[0] if keep else ir.BoolLit(True, ty=BOOL)
        for term in keep[1:]:
            mask = ir.Binary("&", mask, term, ty=BOOL, line=term.line, column=term.column)
        mask_texts = [ir.unparse(s.args[0]) for s in decl.statements if s.kind == "mask"]
        mask_texts += [f"!({ir.unparse(s.args[0])})" for s in decl.statements if s.kind == "drop"]
        score_text = next((ir.unparse(s.args[0]) for s in decl.statements if s.kind == "score"),
                          "score")
        return ir.Attention(
            decl.name, tuple(dtypes), head_dims, tuple(self.params.values()), score, mask,
            score_text, " & ".join(mask_texts) or "all", tuple(blocks), tuple(tune),
            tuple(kernels), decl.source, line=decl.line, column=decl.column)

    def _names(self, stmt, allowed, what) -> tuple[str, ...]:
        out: list[str] = []
        for ident in stmt.args:
            if ident.text not in allowed:
                raise SpecError(f"unknown {what} '{ident.text}'; expected one of "
                                f"{', '.join(allowed)}", ident.line, ident.column)
            if ident.text in out:
                raise SpecError(f"{what} '{ident.text}' is listed twice", ident.line, ident.column)
            out.append(ident.text)
        if what == "kernel" and "bwd" in out and "fwd" not in out:
            raise SpecError("kernel 'bwd' needs 'fwd' (the backward recomputes from the forward's "
                            "saved LSE); add fwd to kernels", stmt.line, stmt.column)
        return tuple(out)

    def _head_dims(self, stmt) -> tuple[int, ...]:
        out: list[int] = []
        lo, hi = HEAD_DIM_RANGE
        for knob in stmt.args:
            (value,) = knob.values
            if not lo <= value <= hi:
                raise SpecError(f"head_dim {value} is out of range; expected {lo}..{hi}",
                                knob.line, knob.column)
            if value % 8:
                raise SpecError(f"head_dim {value} is not a multiple of 8 (needed for 16-byte "
                                f"aligned rows)", knob.line, knob.column)
            if value in out:
                raise SpecError(f"head_dim {value} is listed twice", knob.line, knob.column)
            out.append(value)
        return tuple(out)

    def _check_name_free(self, ident: ir.Ident, what: str) -> None:
        name = ident.text
        _check_name_length(name, what, ident)
        if name in RESERVED or keyword.iskeyword(name):
            raise SpecError(f"{what} name '{name}' is reserved (a builtin of the language); "
                            f"choose another name", ident.line, ident.column)
        if name in OP_ARGUMENTS:
            raise SpecError(f"{what} name '{name}' is an argument of the generated op "
                            f"op(q, k, v, *, scale, return_lse, deterministic, block_mask, "
                            f"**params) or of its module's trace_tiles, decode or block_mask; "
                            f"choose another name", ident.line, ident.column)
        if name.startswith("_"):
            raise SpecError(f"{what} name '{name}' starts with '_', which is reserved for "
                            f"generated code; choose another name", ident.line, ident.column)
        if what == "param" and _STRIDE_LIKE.fullmatch(name):
            raise SpecError(f"param name '{name}' ends like a stride argument of the kernels "
                            f"(a tensor param t is passed as p_t, p_t_stride0, ...); choose "
                            f"another name", ident.line, ident.column)
        if name in self.params or name in self.lets:
            raise SpecError(f"'{name}' is already defined in this attention", ident.line,
                            ident.column)

    def _param(self, stmt) -> None:
        name, dtype, dims, grad = stmt.args
        self._check_name_free(name, "param")
        if dtype.text not in ir.PARAM_DTYPES:
            raise SpecError(f"unknown param type '{dtype.text}'; expected one of "
                            f"{', '.join(ir.PARAM_DTYPES)}", dtype.line, dtype.column)
        out_dims: list[str | int] = []
        for dim in dims:
            if dim.text.isdigit():
                digits = dim.text.lstrip("0") or "0"  # int() refuses texts over 4300 digits
                if len(digits) > 10 or not 1 <= int(digits) <= 2**31 - 1:
                    shown = dim.text if len(dim.text) <= 40 else f"{dim.text[:20]}..."
                    raise SpecError(f"dimension {shown} must be in 1..{2**31 - 1}", dim.line,
                                    dim.column)
                out_dims.append(int(digits))
            elif dim.text in ir.DIM_NAMES:
                out_dims.append(dim.text)
            else:
                raise SpecError(f"unknown dimension '{dim.text}'; expected one of "
                                f"{', '.join(ir.DIM_NAMES)} or a positive integer", dim.line,
                                dim.column)
        if grad is not None and ir.PARAM_DTYPES[dtype.text] != FLOAT:
            raise SpecError(f"param '{name.text}' has type {dtype.text}, which cannot take a "
                            f"gradient; 'grad' needs f32, f16 or bf16", grad.line, grad.column)
        self.params[name.text] = ir.Param(name.text, dtype.text, tuple(out_dims),
                                          grad is not None, line=name.line, column=name.column)

    def _let(self, stmt) -> None:
        name, expr = stmt.args
        self._check_name_free(name, "let")
        self._uses_score = False
        checked = self.expr(expr, allow_score=True)
        self.lets[name.text] = checked
        if self._uses_score:
            self.let_uses_score.add(name.text)

    def _expr_stmt(self, stmt, want: str, allow_score: bool = False) -> ir.Expr:
        (expr,) = stmt.args
        checked = self.expr(expr, allow_score=allow_score)
        if want == FLOAT and checked.ty == INT:
            return _cast_float(checked)
        if checked.ty != want:
            hint = {"mask": " (mask keeps where it is true: compare, e.g. kv <= q)",
                    "drop": " (drop discards where it is true: compare, e.g. kv > q)"}.get(stmt.kind, "")
            raise SpecError(f"'{stmt.kind}' expects a {_fmt_type(want)} expression, got "
                            f"{_fmt_type(checked.ty)}{hint}", expr.line, expr.column)
        return checked

    def _configs(self, stmt, is_tune: bool) -> list[ir.KernelConfig]:
        out = []
        for config in stmt.args:
            if config.kernel not in KERNELS:
                raise SpecError(f"unknown kernel '{config.kernel}' in {stmt.kind}; expected one of "
                                f"{', '.join(KERNELS)}", config.line, config.column)
            seen: set[str] = set()
            for knob in config.knobs:
                if knob.name not in KNOBS:
                    raise SpecError(f"unknown knob '{knob.name}' for {config.kernel}; expected one "
                                    f"of {', '.join(KNOBS)}", knob.line, knob.column)
                if knob.name in seen:
                    raise SpecError(f"knob '{knob.name}' is given twice", knob.line, knob.column)
                seen.add(knob.name)
                if knob.is_list and not is_tune:
                    raise SpecError(f"'blocks' takes one value per knob, got a list for "
                                    f"'{knob.name}'; use 'tune' for a search space",
                                    knob.line, knob.column)
                if not knob.values:
                    raise SpecError(f"knob '{knob.name}' has an empty list", knob.line, knob.column)
                for value in knob.values:
                    if value not in KNOBS[knob.name]:
                        raise SpecError(f"{knob.name}={value} is out of range; expected one of "
                                        f"{', '.join(map(str, KNOBS[knob.name]))}", knob.line,
                                        knob.column)
            if config.kernel == "decode" and "m" in seen:
                knob = next(k for k in config.knobs if k.name == "m")
                raise SpecError("decode has no 'm' knob: its query tile holds the query heads "
                                "that share a kv head", knob.line, knob.column)
            out.append(config)
        return out

    def _check_kernel_configs(self, blocks, tune, kernels) -> None:
        given: dict[str, ir.KernelConfig] = {}
        for config in [*blocks, *tune]:
            if config.kernel in given:
                self.error(config, f"kernel '{config.kernel}' is configured twice (blocks and "
                                   f"tune together, or twice); configure it once")
            given[config.kernel] = config
            if config.kernel not in kernels:
                self.error(config, f"'{config.kernel}' is configured but 'kernels' lists only "
                                   f"{', '.join(kernels)}")

    # ---- expressions -----------------------------------------------------------------------
    def expr(self, e: ir.Expr, allow_score: bool) -> ir.Expr:
        """Type-check ``e`` and return it in core form, every node typed."""
        method = getattr(self, f"_e_{type(e).__name__}")
        return method(e, allow_score)

    def _e_IntLit(self, e, allow_score):
        return replace(e, ty=INT)

    def _e_FloatLit(self, e, allow_score):
        if abs(e.value) > FP32_MAX or 0 < abs(e.value) < FP32_MIN_NORMAL:
            raise SpecError(f"float literal {ir.format_float(e.value)} does not fit in fp32, in "
                            f"which the kernels compute the score (magnitudes "
                            f"{FP32_MIN_NORMAL:.4g} to {FP32_MAX:.4g}, or 0); write 0.0 or inf "
                            f"if that is what is meant", e.line, e.column)
        return replace(e, ty=FLOAT)

    def _e_BoolLit(self, e, allow_score):
        return replace(e, ty=BOOL)

    def _e_Name(self, e, allow_score):
        name = e.id
        if name == "score":
            if not allow_score:
                raise SpecError("'score' is only available in the score statement (and lets it "
                                "uses); masks cannot depend on the score", e.line, e.column)
            self._uses_score = True
            return replace(e, ty=FLOAT)
        if name in POSITIONS:
            return replace(e, ty=POSITIONS[name])
        if name in CONSTANTS:
            return replace(CONSTANTS[name], line=e.line, column=e.column)
        if name == "causal":
            return self._causal(e)
        if name in self.lets:
            if self.lets[name] is None:
                raise _Poisoned(name)
            if name in self.let_uses_score:
                if not allow_score:
                    raise SpecError(f"let '{name}' uses 'score', so it can only be used in the "
                                    f"score statement", e.line, e.column)
                self._uses_score = True
            return self.lets[name]
        if name in self.params:
            param = self.params[name]
            if not param.is_scalar:
                raise SpecError(f"param '{name}' is a tensor of shape "
                                f"[{', '.join(map(str, param.dims))}]; index it as "
                                f"{name}[{', '.join('...' for _ in param.dims)}]", e.line, e.column)
            return replace(e, ty=param.ty)
        if name in FUNCTIONS or name in MASK_BUILTINS:
            raise SpecError(f"'{name}' is a function; call it as {name}(...)", e.line, e.column)
        raise SpecError(f"unknown name '{name}'; expected a param, a let, one of "
                        f"{', '.join(POSITIONS)}, or a builtin", e.line, e.column)

    def _operand(self, e, allow_score, want: str, what: str) -> ir.Expr:
        checked = self.expr(e, allow_score)
        if want == "number" and checked.ty == BOOL:
            raise SpecError(f"{what} expects a number, got bool", e.line, e.column)
        if want == BOOL and checked.ty != BOOL:
            raise SpecError(f"{what} expects bool, got {_fmt_type(checked.ty)} (compare it, e.g. "
                            f"x > 0)", e.line, e.column)
        return checked

    def _e_Unary(self, e, allow_score):
        if e.op == "!":
            operand = self._operand(e.operand, allow_score, BOOL, "'!'")
            return replace(e, operand=operand, ty=BOOL)
        operand = self._operand(e.operand, allow_score, "number", "unary '-'")
        if isinstance(operand, ir.IntLit | ir.FloatLit):  # fold literals: -1 is a literal
            return replace(operand, value=-operand.value, line=e.line, column=e.column)
        return replace(e, operand=operand, ty=operand.ty)

    def _e_Binary(self, e, allow_score):
        if e.op in ir.LOGICAL:
            left = self._operand(e.left, allow_score, BOOL, f"'{e.op}'")
            right = self._operand(e.right, allow_score, BOOL, f"'{e.op}'")
            return replace(e, left=left, right=right, ty=BOOL)
        left = self._operand(e.left, allow_score, "number", f"'{e.op}'")
        right = self._operand(e.right, allow_score, "number", f"'{e.op}'")
        if e.op == "/":
            ty = FLOAT
        elif e.op == "**":
            exact = left.ty == INT and isinstance(right, ir.IntLit) and right.value >= 0
            ty = INT if exact else FLOAT
        else:
            ty = _promote(left.ty, right.ty)
        if e.op in ("//", "%", "/") and isinstance(right, ir.IntLit | ir.FloatLit) \
                and right.value == 0:
            raise SpecError(f"division by zero in '{e.op}'", e.right.line, e.right.column)
        return replace(e, left=left, right=right, ty=ty)

    def _compare(self, op, left, right, node) -> ir.Expr:
        if (left.ty == BOOL) != (right.ty == BOOL):
            raise SpecError(f"cannot compare {_fmt_type(left.ty)} with {_fmt_type(right.ty)}",
                            node.line, node.column)
        if left.ty == BOOL and op not in ("==", "!="):
            raise SpecError(f"'{op}' needs numbers, got bool; only == and != compare bools",
                            node.line, node.column)
        return ir.Binary(op, left, right, ty=BOOL, line=node.line, column=node.column)

    def _e_Compare(self, e, allow_score):
        operands = [self.expr(o, allow_score) for o in e.operands]
        positions = e.op_positions or ((e.line, e.column),) * len(e.ops)
        out = None
        for op, left, right, (line, column) in zip(e.ops, operands, operands[1:], positions):
            term = self._compare(op, left, right, ir.Name(op, line=line, column=column))
            out = term if out is None else ir.Binary("&", out, term, ty=BOOL, line=e.line,
                                                     column=e.column)
        return out

    def _arity(self, e, lo, hi) -> None:
        n = len(e.args)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} or {hi}")
            raise SpecError(f"{e.func}() takes {want} argument{'s' if want != '1' else ''}, got {n}",
                            e.line, e.column)

    def _e_Call(self, e, allow_score):
        if e.func in MASK_BUILTINS:
            return self._mask_builtin(e, allow_score)
        if e.func not in FUNCTIONS:
            if e.func in self.params or e.func in self.lets or e.func in POSITIONS \
                    or e.func in CONSTANTS:
                raise SpecError(f"'{e.func}' is not a function (use [...] to index a param)",
                                e.line, e.column)
            raise SpecError(f"unknown function '{e.func}'; expected one of "
                            f"{', '.join([*FUNCTIONS, *MASK_BUILTINS])}", e.line, e.column)
        self._arity(e, *FUNCTIONS[e.func])
        if e.func == "where":
            cond = self._operand(e.args[0], allow_score, BOOL, "where()'s condition")
            a, b = (self.expr(x, allow_score) for x in e.args[1:])
            if (a.ty == BOOL) != (b.ty == BOOL):
                raise SpecError(f"where() branches must both be numbers or both bool, got "
                                f"{_fmt_type(a.ty)} and {_fmt_type(b.ty)}", e.line, e.column)
            ty = BOOL if a.ty == BOOL else _promote(a.ty, b.ty)
            return replace(e, args=(cond, a, b), ty=ty)
        args = tuple(self._operand(a, allow_score, "number", f"{e.func}()") for a in e.args)
        if e.func in FLOAT_FUNCTIONS:
            ty = FLOAT
        elif e.func in ("floor", "ceil"):
            ty = INT
        elif e.func == "abs":
            ty = args[0].ty
        else:  # min, max, clamp
            ty = INT if all(a.ty == INT for a in args) else FLOAT
        return replace(e, args=args, ty=ty)

    def _e_Index(self, e, allow_score):
        param = self.params.get(e.param)
        if param is None:
            if e.param in RESERVED or e.param in self.lets:
                raise SpecError(f"'{e.param}' is not a tensor param and cannot be indexed",
                                e.line, e.column)
            raise SpecError(f"unknown param '{e.param}'; declare it with 'param {e.param}: "
                            f"TYPE[DIMS]'", e.line, e.column)
        if param.is_scalar:
            raise SpecError(f"param '{e.param}' is a scalar and cannot be indexed", e.line,
                            e.column)
        if len(e.indices) != len(param.dims):
            raise SpecError(f"param '{e.param}' has {len(param.dims)} dimension"
                            f"{'s' if len(param.dims) != 1 else ''} "
                            f"[{', '.join(map(str, param.dims))}], indexed with "
                            f"{len(e.indices)} subscript{'s' if len(e.indices) != 1 else ''}",
                            e.line, e.column)
        indices = []
        for i in e.indices:
            checked = self.expr(i, allow_score)
            if checked.ty != INT:
                raise SpecError(f"index of '{e.param}' must be an int, got {_fmt_type(checked.ty)} "
                                f"(use floor() to convert)", i.line, i.column)
            indices.append(checked)
        return replace(e, indices=tuple(indices), ty=param.ty)

    # ---- mask builtins, expanded into core expressions -------------------------------------
    def _causal(self, e) -> ir.Expr:
        pos = {"line": e.line, "column": e.column}
        return ir.Binary("<=", ir.Name("kv", ty=INT, **pos), ir.Name("q", ty=INT, **pos), ty=BOOL,
                         **pos)

    def _mask_builtin(self, e, allow_score) -> ir.Expr:
        if e.func == "causal":
            raise SpecError("'causal' is not a function; write causal", e.line, e.column)
        self._arity(e, *MASK_BUILTINS[e.func])
        pos = {"line": e.line, "column": e.column}
        q, kv = ir.Name("q", ty=INT, **pos), ir.Name("kv", ty=INT, **pos)
        if e.func == "document":
            (arg,) = e.args
            param = self.params.get(arg.id) if isinstance(arg, ir.Name) else None
            if param is None or len(param.dims) != 2 or param.ty != INT:
                raise SpecError("document() takes the name of an integer param of shape [B, KV] "
                                "(the document id of every position)", arg.line, arg.column)
            b = ir.Name("b", ty=INT, **pos)
            return ir.Binary("==", ir.Index(arg.id, (b, q), ty=param.ty, **pos),
                             ir.Index(arg.id, (b, kv), ty=param.ty, **pos), ty=BOOL, **pos)
        args = [self._operand(a, allow_score, "number", f"{e.func}()") for a in e.args]
        for a, raw in zip(args, e.args):
            if a.ty != INT:
                raise SpecError(f"{e.func}() takes int sizes, got {_fmt_type(a.ty)}", raw.line,
                                raw.column)
            if isinstance(a, ir.IntLit) and a.value < (1 if e.func == "chunk" else 0):
                raise SpecError(f"{e.func}() size must be {'positive' if e.func == 'chunk' else 'non-negative'}, "
                                f"got {a.value}", raw.line, raw.column)
            if e.func == "window" and isinstance(a, ir.IntLit) and a.value > MAX_WINDOW:
                raise SpecError(f"window() size {a.value} is too large; expected at most "
                                f"{MAX_WINDOW} (positions are int32 in the kernels, and q +- size "
                                f"must not overflow; a window as long as the sequences is "
                                f"already no bound)", raw.line, raw.column)
        if e.func == "chunk":
            (n,) = args
            div = lambda x: ir.Binary("//", x, n, ty=INT, **pos)  # noqa: E731
            return ir.Binary("==", div(q), div(kv), ty=BOOL, **pos)
        left, right = (args[0], args[0]) if len(args) == 1 else args
        lo = ir.Binary("<=", ir.Binary("-", q, left, ty=INT, **pos), kv, ty=BOOL, **pos)
        hi = ir.Binary("<=", kv, ir.Binary("+", q, right, ty=INT, **pos), ty=BOOL, **pos)
        return ir.Binary("&", lo, hi, ty=BOOL, **pos)


def _check_name_length(name: str, what: str, node: ir.Node) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(f"{what} name '{name[:16]}...' is {len(name)} characters long; expected "
                        f"at most {MAX_NAME_LENGTH}", node.line, node.column)


def _check_attention_name(decl: ir.AttentionDecl) -> None:
    """The op's name is a global of its generated module, and the module's file name."""
    name = decl.name
    _check_name_length(name, "attention", decl)
    if keyword.iskeyword(name):
        why = "a Python keyword"
    elif name.startswith("_"):
        why = "'_'-prefixed names are reserved for generated code"
    elif name in PYTHON_BUILTINS:
        why = "a Python builtin, which the generated module uses"
    elif name in MODULE_GLOBALS:
        why = "a name the generated module uses"
    else:
        return
    raise SpecError(f"attention name '{name}' is not usable as a Python name ({why}); choose "
                    f"another", decl.line, decl.column)


def _check_characters(source: str) -> None:
    """The first character that must not reach the generated module (see _UNSAFE_CHARACTERS)."""
    found = _UNSAFE_CHARACTERS.search(source)
    if found is None:
        return
    char, at = found.group(), found.start()
    name = unicodedata.name(char, "a control character")
    raise SpecError(f"character U+{ord(char):04X} ({name}) is not allowed in a spec, not even in "
                    f"a comment (comments are copied into the generated module); remove it",
                    source.count("\n", 0, at) + 1, at - source.rfind("\n", 0, at))


def _not(e: ir.Expr) -> ir.Expr:
    return ir.Unary("!", e, ty=BOOL, line=e.line, column=e.column)


def _cast_float(e: ir.Expr) -> ir.Expr:
    if isinstance(e, ir.IntLit):
        return ir.FloatLit(float(e.value), ty=FLOAT, line=e.line, column=e.column)
    return ir.Call("float", (e,), ty=FLOAT, line=e.line, column=e.column)


def check(spec: ir.SpecFile) -> list[ir.Attention]:
    """Check every attention of a parsed file; raise one ``SpecError`` listing all errors."""
    errors: list[SpecError] = []
    out: list[ir.Attention] = []
    names: dict[str, ir.AttentionDecl] = {}
    if not spec.attentions:
        errors.append(SpecError("no attention in this file; expected 'attention NAME { ... }'",
                                1, 1))
    try:
        _check_characters(spec.source)
    except SpecError as err:
        errors.append(err)
    for decl in spec.attentions:
        if decl.name in names:
            errors.append(SpecError(f"duplicate attention '{decl.name}' (first defined at line "
                                    f"{names[decl.name].line})", decl.line, decl.column))
            continue
        try:
            _check_attention_name(decl)
        except SpecError as err:
            errors.append(err)
            continue
        names[decl.name] = decl
        checker = _AttentionChecker(decl)
        attention = checker.run()
        errors.extend(checker.errors)
        if attention is not None:
            out.append(attention)
    if errors:
        errors.sort(key=lambda err: (err.line, err.column))
        raise SpecError.group(errors).attach(spec.source, spec.path)
    return out

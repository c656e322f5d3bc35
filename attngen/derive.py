"""Symbolic derivatives of core-IR score expressions (for the backward kernels).

``derivative(expr, is_target)`` returns d(expr)/d(target) as a float core-IR expression, where
``is_target`` picks the node differentiated against: ``score`` itself, or one occurrence of a
float param. Rules follow torch autograd exactly where functions are not smooth, so kernels and
the reference agree: ``min``/``max`` split ties in half, ``abs`` has derivative 0 at 0, and
piecewise-constant operations (``//``, ``floor``, ``ceil``, comparisons, ints) have derivative 0.
Results are simplified (0 and 1 folded) so the generated module shows readable formulas.
"""

from __future__ import annotations

import math
from typing import Callable

from . import ir
from .ir import BOOL, FLOAT, INT

ZERO = ir.FloatLit(0.0, ty=FLOAT)
ONE = ir.FloatLit(1.0, ty=FLOAT)


def _lit(value: float) -> ir.Expr:
    return ir.FloatLit(float(value), ty=FLOAT)


def _is_lit(e: ir.Expr, value: float | None = None) -> bool:
    return isinstance(e, ir.FloatLit | ir.IntLit) and (value is None or e.value == value)


def _float(e: ir.Expr) -> ir.Expr:
    if e.ty == FLOAT:
        return e
    if isinstance(e, ir.IntLit):
        return _lit(e.value)
    return ir.Call("float", (e,), ty=FLOAT)


def add(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    if _is_lit(a, 0):
        return _float(b)
    if _is_lit(b, 0):
        return _float(a)
    if _is_lit(a) and _is_lit(b):
        return _lit(a.value + b.value)
    return ir.Binary("+", _float(a), _float(b), ty=FLOAT)


def neg(a: ir.Expr) -> ir.Expr:
    if _is_lit(a):
        return _lit(-a.value)
    return ir.Unary("-", _float(a), ty=FLOAT)


def sub(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    if _is_lit(b, 0):
        return _float(a)
    if _is_lit(a, 0):
        return neg(b)
    if _is_lit(a) and _is_lit(b):
        return _lit(a.value - b.value)
    return ir.Binary("-", _float(a), _float(b), ty=FLOAT)


def mul(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    if _is_lit(a, 0) or _is_lit(b, 0):
        return ZERO
    if _is_lit(a, 1):
        return _float(b)
    if _is_lit(b, 1):
        return _float(a)
    if _is_lit(a) and _is_lit(b):
        return _lit(a.value * b.value)
    return ir.Binary("*", _float(a), _float(b), ty=FLOAT)


def div(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    if _is_lit(a, 0):
        return ZERO
    if _is_lit(b, 1):
        return _float(a)
    return ir.Binary("/", _float(a), _float(b), ty=FLOAT)


def call(func: str, *args: ir.Expr) -> ir.Expr:
    return ir.Call(func, tuple(_float(a) for a in args), ty=FLOAT)


def where(cond: ir.Expr, a: ir.Expr, b: ir.Expr) -> ir.Expr:
    if _is_lit(a, 0) and _is_lit(b, 0):
        return ZERO
    return ir.Call("where", (cond, _float(a), _float(b)), ty=FLOAT)


def _cmp(op: str, a: ir.Expr, b: ir.Expr) -> ir.Expr:
    return ir.Binary(op, a, b, ty=BOOL)


def _minmax(op: str, a: ir.Expr, b: ir.Expr, da: ir.Expr, db: ir.Expr) -> ir.Expr:
    """d min(a, b) / d max(a, b), ties split in half as torch.minimum / torch.maximum do."""
    wins = "<" if op == "min" else ">"
    tie = mul(_lit(0.5), add(da, db))
    return where(_cmp(wins, a, b), da, where(_cmp("==", a, b), tie, db))


def _pairwise(op: str, args: tuple[ir.Expr, ...]) -> ir.Expr:
    out = args[0]
    for a in args[1:]:
        out = ir.Call(op, (out, a), ty=FLOAT if FLOAT in (out.ty, a.ty) else INT)
    return out


def derivative(e: ir.Expr, is_target: Callable[[ir.Expr], bool]) -> ir.Expr:
    """d e / d target, as a simplified float expression."""
    d = lambda x: derivative(x, is_target)  # noqa: E731
    if is_target(e):
        return ONE
    if e.ty != FLOAT:  # ints and bools are piecewise constant
        return ZERO
    if isinstance(e, ir.FloatLit | ir.Name | ir.Index):
        return ZERO
    if isinstance(e, ir.Unary):  # float negation
        return neg(d(e.operand))
    if isinstance(e, ir.Binary):
        a, b = e.left, e.right
        if e.op == "+":
            return add(d(a), d(b))
        if e.op == "-":
            return sub(d(a), d(b))
        if e.op == "*":
            return add(mul(d(a), b), mul(a, d(b)))
        if e.op == "/":
            return sub(div(d(a), b), div(mul(a, d(b)), mul(b, b)))
        if e.op == "//":
            return ZERO
        if e.op == "%":  # a - b * floor(a / b)
            return sub(d(a), mul(d(b), ir.Call("floor", (div(a, b),), ty=INT)))
        if e.op == "**":
            da, db = d(a), d(b)
            if _is_lit(b):
                power = mul(_lit(b.value), ir.Binary("**", _float(a), _lit(b.value - 1), ty=FLOAT))
                return mul(power, da)
            # torch's pow backward: 0 for the base when b == 0, for the exponent when a == 0 <= b
            base_grad = where(_cmp("==", b, ZERO), ZERO,
                              mul(b, ir.Binary("**", _float(a), sub(b, ONE), ty=FLOAT)))
            exp_grad = where(ir.Binary("&", _cmp("==", a, ZERO), _cmp(">=", b, ZERO), ty=BOOL),
                             ZERO, mul(e, call("log", a)))
            return add(mul(base_grad, da), mul(exp_grad, db))
        raise TypeError(f"no derivative rule for operator {e.op!r}")
    if isinstance(e, ir.Call):
        return _call_derivative(e, d)
    raise TypeError(f"not a core expression: {e!r}")


def _call_derivative(e: ir.Call, d) -> ir.Expr:
    f, args = e.func, e.args
    if f in ("floor", "ceil"):
        return ZERO
    if f == "float":
        return d(args[0]) if args[0].ty == FLOAT else ZERO
    if f == "where":
        cond, a, b = args
        return where(cond, d(a), d(b))
    if f in ("min", "max"):
        if len(args) > 2:
            return d(_pairwise(f, args))
        a, b = args
        return _minmax(f, a, b, d(a), d(b))
    if f == "clamp":  # min(max(x, lo), hi), as the reference computes it
        x, lo, hi = args
        return d(ir.Call("min", (ir.Call("max", (x, lo), ty=e.ty), hi), ty=e.ty))
    (a,) = args
    da = d(a)
    if _is_lit(da, 0):
        return ZERO
    if f == "abs":
        return where(_cmp(">", a, ZERO), da, where(_cmp("<", a, ZERO), neg(da), ZERO))
    outer = {
        "exp": lambda: call("exp", a),
        "exp2": lambda: mul(call("exp2", a), _lit(math.log(2.0))),
        "log": lambda: div(ONE, a),
        "log2": lambda: div(ONE, mul(a, _lit(math.log(2.0)))),
        "sqrt": lambda: div(_lit(0.5), call("sqrt", a)),
        "rsqrt": lambda: div(mul(_lit(-0.5), call("rsqrt", a)), a),
        "tanh": lambda: sub(ONE, mul(call("tanh", a), call("tanh", a))),
        "sigmoid": lambda: mul(call("sigmoid", a), sub(ONE, call("sigmoid", a))),
        "sin": lambda: call("cos", a),
        "cos": lambda: neg(call("sin", a)),
    }
    if f not in outer:
        raise TypeError(f"no derivative rule for {f}()")
    return mul(outer[f](), da)


def score_derivative(score: ir.Expr) -> ir.Expr:
    """d score' / d score."""
    return derivative(score, lambda n: isinstance(n, ir.Name) and n.id == "score")


def param_occurrences(score: ir.Expr, grad_params: set[str]) -> list[ir.Expr]:
    """Distinct nodes of ``score`` that read a param marked ``grad`` (Index or scalar Name)."""
    seen: dict[int, ir.Expr] = {}
    for node in ir.walk(score):
        name = node.param if isinstance(node, ir.Index) else \
            node.id if isinstance(node, ir.Name) else None
        if name in grad_params and id(node) not in seen:
            seen[id(node)] = node
    return list(seen.values())

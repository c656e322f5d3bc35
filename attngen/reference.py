"""The eager reference: a spec evaluated densely in PyTorch, the oracle for every kernel test.

It materialises the [B, H, q_len, kv_len] score matrix and computes in the inputs' dtype (pass
float64 for a golden result). Written to be obviously correct, not fast; differentiable through
torch autograd (q, k, v and float params).
"""

from __future__ import annotations

import torch

from . import ir
from .ir import BOOL, FLOAT, INT
from .runtime import ParamSpec, Shapes, check_inputs, check_params, default_scale

_UNARY_FLOAT = {"exp": torch.exp, "exp2": torch.exp2, "log": torch.log, "log2": torch.log2,
                "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "tanh": torch.tanh,
                "sigmoid": torch.sigmoid, "sin": torch.sin, "cos": torch.cos}
_COMPARE = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq,
            "!=": torch.ne}


class _Evaluator:
    """Evaluates a core-IR expression over the broadcast grid [B, H, M, N] with torch ops."""

    def __init__(self, env: dict[str, torch.Tensor], params: dict[str, torch.Tensor],
                 dtype: torch.dtype, device: torch.device):
        self.env, self.params, self.dtype, self.device = env, params, dtype, device

    def as_ty(self, x: torch.Tensor, ty: str) -> torch.Tensor:
        want = {FLOAT: self.dtype, INT: torch.int64, BOOL: torch.bool}[ty]
        return x if x.dtype == want else x.to(want)

    def const(self, value, ty: str) -> torch.Tensor:
        dtype = {FLOAT: self.dtype, INT: torch.int64, BOOL: torch.bool}[ty]
        return torch.tensor(value, dtype=dtype, device=self.device)

    def __call__(self, e: ir.Expr) -> torch.Tensor:
        if isinstance(e, ir.IntLit | ir.FloatLit | ir.BoolLit):
            return self.const(e.value, e.ty)
        if isinstance(e, ir.Name):
            return self.as_ty(self.env[e.id], e.ty)
        if isinstance(e, ir.Unary):
            x = self(e.operand)
            return torch.logical_not(x) if e.op == "!" else -x
        if isinstance(e, ir.Binary):
            return self.binary(e)
        if isinstance(e, ir.Call):
            return self.call(e)
        if isinstance(e, ir.Index):
            return self.index(e)
        raise TypeError(f"not a core expression: {e!r}")

    def binary(self, e: ir.Binary) -> torch.Tensor:
        a, b = self(e.left), self(e.right)
        if e.op == "&":
            return torch.logical_and(a, b)
        if e.op == "|":
            return torch.logical_or(a, b)
        if e.op in _COMPARE:
            if a.dtype != b.dtype:
                a, b = self.as_ty(a, FLOAT), self.as_ty(b, FLOAT)
            return _COMPARE[e.op](a, b)
        # arithmetic runs in the node's type: int, or float in the inputs' dtype
        a, b = self.as_ty(a, e.ty), self.as_ty(b, e.ty)
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if e.op == "/":
            return a / b
        if e.op == "//":  # Python's floor division, also for negative operands
            return torch.div(a, b, rounding_mode="floor")
        if e.op == "%":  # Python's modulo: the result takes the divisor's sign
            return torch.remainder(a, b)
        if e.op == "**":
            return torch.pow(a, b)
        raise TypeError(f"unknown operator {e.op!r}")

    def call(self, e: ir.Call) -> torch.Tensor:
        args = [self(a) for a in e.args]
        if e.func in _UNARY_FLOAT:
            return _UNARY_FLOAT[e.func](self.as_ty(args[0], FLOAT))
        if e.func == "float":
            return self.as_ty(args[0], FLOAT)
        if e.func == "abs":
            return torch.abs(args[0])
        if e.func in ("floor", "ceil"):
            x = args[0]
            if x.dtype == torch.int64:
                return x
            return (torch.floor(x) if e.func == "floor" else torch.ceil(x)).to(torch.int64)
        if e.func == "where":
            cond, a, b = args
            return torch.where(cond, self.as_ty(a, e.ty), self.as_ty(b, e.ty))
        args = [self.as_ty(a, e.ty) for a in args]
        if e.func == "min":
            out = args[0]
            for a in args[1:]:
                out = torch.minimum(out, a)
            return out
        if e.func == "max":
            out = args[0]
            for a in args[1:]:
                out = torch.maximum(out, a)
            return out
        if e.func == "clamp":
            x, lo, hi = args
            return torch.minimum(torch.maximum(x, lo), hi)
        raise TypeError(f"unknown function {e.func!r}")

    def index(self, e: ir.Index) -> torch.Tensor:
        """``param[i, ...]``; an index outside the param's extent reads 0 (false for bool)."""
        table = self.params[e.param]
        indices = [self(i) for i in e.indices]
        valid = None
        clamped = []
        for i, size in zip(indices, table.shape):
            ok = (i >= 0) & (i < size)
            valid = ok if valid is None else valid & ok
            clamped.append(i.clamp(0, size - 1))
        value = table[tuple(clamped)]
        value = torch.where(valid, value, torch.zeros((), dtype=value.dtype, device=value.device))
        return self.as_ty(value, e.ty)


def _environment(shapes: Shapes, tensors: dict, device) -> dict:
    B, H, M, N = shapes.batch, shapes.heads_q, shapes.q_len, shapes.kv_len
    heads = torch.arange(H, device=device).view(1, H, 1, 1)
    env = {
        "b": torch.arange(B, device=device).view(B, 1, 1, 1),
        "h": heads,
        "hkv": heads // shapes.group,
        # bottom-right alignment: query row i sits at absolute position i + kv_len - q_len
        "q": torch.arange(M, device=device).view(1, 1, M, 1) + (N - M),
        "kv": torch.arange(N, device=device).view(1, 1, 1, N),
        "q_len": torch.tensor(M, device=device),
        "kv_len": torch.tensor(N, device=device),
    }
    env.update({name: t for name, t in tensors.items() if t.ndim == 0})
    return env


def mask_grid(attention: ir.Attention, shapes: Shapes, **params) -> torch.Tensor:
    """The spec's mask evaluated densely: bool [B, Hq, q_len, kv_len], true keeps."""
    specs = [ParamSpec(p.name, p.dtype, p.dims, p.grad) for p in attention.params]
    some = next(iter(params.values()), None)
    device = some.device if isinstance(some, torch.Tensor) else torch.device("cpu")
    tensors = check_params(f"{attention.name}.mask_grid", specs, params, shapes, device)
    env = _environment(shapes, tensors, device)
    keep = _Evaluator(env, tensors, torch.float64, device)(attention.mask)
    return keep.expand(shapes.batch, shapes.heads_q, shapes.q_len, shapes.kv_len)


def reference(attention: ir.Attention, q, k, v, *, scale=None, return_lse=False, **params):
    """Dense evaluation of ``attention``: softmax over keys of score' where the mask keeps.

    Returns ``out`` [B, Hq, M, D] (and ``lse`` [B, Hq, M], natural log, when ``return_lse``).
    A row whose every key is masked gives zeros and an LSE of -inf.
    """
    op = f"{attention.name}.reference"
    shapes: Shapes = check_inputs(op, q, k, v, dtypes=None, head_dims=attention.head_dims,
                                  require_contiguous_last_dim=False)
    specs = [ParamSpec(p.name, p.dtype, p.dims, p.grad) for p in attention.params]
    tensors = check_params(op, specs, params, shapes, q.device)
    dtype, device = q.dtype, q.device
    B, H, M, N = shapes.batch, shapes.heads_q, shapes.q_len, shapes.kv_len

    k_full = k.repeat_interleave(shapes.group, dim=1)
    v_full = v.repeat_interleave(shapes.group, dim=1)
    score = torch.matmul(q, k_full.transpose(-1, -2)) * default_scale(scale, shapes.head_dim)

    env = _environment(shapes, tensors, device)
    env["score"] = score
    keep = _Evaluator(env, tensors, dtype, device)(attention.mask).expand(B, H, M, N)
    # The score is evaluated only where the mask keeps: a score expression that is not finite at
    # masked entries (score / (q - kv) under kv < q) then cannot leak NaN into gradients.
    kept_env = {name: t.expand(B, H, M, N)[keep] if t.ndim == 4 else t for name, t in env.items()}
    kept = _Evaluator(kept_env, tensors, dtype, device)(attention.score)
    modified = score.new_full((B, H, M, N), -torch.inf).index_put(
        (keep,), kept.expand(int(keep.sum())))
    if N == 0:  # no keys: one masked stand-in key keeps the graph connected to q, k, v
        modified = torch.cat([modified, modified.new_full((B, H, M, 1), -torch.inf)], dim=-1)
        v_full = torch.cat([v_full, v_full.new_zeros(B, H, 1, v.shape[-1])], dim=-2)

    # softmax with fully masked rows giving zeros instead of NaN; the row max is a constant
    # shift, so detaching it changes no gradient
    row_max = modified.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    weights = torch.exp(modified - row_max)
    row_sum = weights.sum(dim=-1, keepdim=True)
    empty = row_sum == 0
    probs = weights / torch.where(empty, torch.ones_like(row_sum), row_sum)
    out = torch.matmul(probs, v_full)
    if not return_lse:
        return out
    lse = torch.where(empty, torch.full_like(row_sum, -torch.inf),
                      row_max + torch.log(torch.where(empty, torch.ones_like(row_sum), row_sum)))
    return out, lse.squeeze(-1)

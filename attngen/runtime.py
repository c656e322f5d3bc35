"""Runtime support for generated modules and the reference: input validation and shapes.

Imported by generated modules, so it depends only on torch (never on the parser or checker).
Every error names the argument, what was expected and what was received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}
SPEC_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ParamSpec:
    """A param as declared in the spec: ``dims`` holds B, H, HKV, Q, KV or integers."""

    name: str
    dtype: str
    dims: tuple
    grad: bool = False


@dataclass(frozen=True)
class Shapes:
    batch: int
    heads_q: int
    heads_kv: int
    q_len: int
    kv_len: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.heads_q // self.heads_kv

    def dim(self, name: str | int) -> int:
        if isinstance(name, int):
            return name
        return {"B": self.batch, "H": self.heads_q, "HKV": self.heads_kv, "Q": self.q_len,
                "KV": self.kv_len}[name]


def _fail(op: str, message: str) -> None:
    raise ValueError(f"{op}: {message}")


def check_inputs(op: str, q: Any, k: Any, v: Any, *, dtypes: Sequence[str] | None,
                 head_dims: Sequence[int] | None, require_contiguous_last_dim: bool) -> Shapes:
    """Validate q, k, v ([B, H, N, D] each) and return their shapes.

    ``dtypes`` None accepts any floating dtype (the reference); otherwise the spec's list.
    """
    for arg, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            _fail(op, f"{arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            _fail(op, f"{arg} must have 4 dimensions [batch, heads, seq_len, head_dim], got "
                      f"{t.ndim} (shape {tuple(t.shape)})")
        if not t.is_floating_point():
            _fail(op, f"{arg} must be a floating-point tensor, got {t.dtype}")
        if require_contiguous_last_dim and t.stride(-1) != 1 and t.shape[-1] > 1:
            _fail(op, f"{arg} must be contiguous in its last dimension (stride 1), got strides "
                      f"{tuple(t.stride())}; call .contiguous()")
    if not (q.dtype == k.dtype == v.dtype):
        _fail(op, f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if dtypes is not None:
        allowed = [SPEC_DTYPES[d] for d in dtypes]
        if q.dtype not in allowed:
            _fail(op, f"q has dtype {q.dtype}; this attention is built for "
                      f"{', '.join(map(str, allowed))} (the spec's 'dtype' statement)")
    if not (q.device == k.device == v.device):
        _fail(op, f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Hq, M, D = q.shape
    if k.shape != v.shape:
        _fail(op, f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    Bk, Hkv, N, Dk = k.shape
    if Bk != B:
        _fail(op, f"k has batch {Bk} but q has batch {B}; they must agree")
    if Dk != D:
        _fail(op, f"k has head_dim {Dk} but q has head_dim {D}; they must agree")
    if Hkv == 0 or Hq % Hkv:
        _fail(op, f"q's {Hq} heads must be a multiple of k's {Hkv} heads (grouped-query "
                  f"attention shares each kv head among Hq/Hkv query heads)")
    if head_dims is not None and D not in head_dims:
        _fail(op, f"head_dim {D} is not one the spec allows ({', '.join(map(str, head_dims))})")
    if head_dims is None and not 16 <= D <= 256:
        _fail(op, f"head_dim must be in 16..256, got {D}")
    return Shapes(B, Hq, Hkv, M, N, D)


def check_params(op: str, specs: Sequence[ParamSpec], given: dict[str, Any], shapes: Shapes,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Validate call-time params against their declarations; return them as tensors on device."""
    declared = {p.name for p in specs}
    extra = sorted(set(given) - declared)
    if extra:
        expected = ", ".join(sorted(declared)) or "none"
        _fail(op, f"unexpected param{'s' if len(extra) > 1 else ''} {', '.join(extra)}; this "
                  f"attention takes: {expected}")
    missing = [p.name for p in specs if p.name not in given]
    if missing:
        sigs = ", ".join(f"{p.name}: {p.dtype}[{', '.join(map(str, p.dims))}]" if p.dims
                         else f"{p.name}: {p.dtype}" for p in specs if p.name in missing)
        _fail(op, f"missing param{'s' if len(missing) > 1 else ''} {sigs}")
    out: dict[str, torch.Tensor] = {}
    for p in specs:
        value = given[p.name]
        want_dtype = TORCH_DTYPES[p.dtype]
        want_shape = tuple(shapes.dim(d) for d in p.dims)
        if not isinstance(value, torch.Tensor):
            if p.dims:
                _fail(op, f"param {p.name} must be a tensor of shape {list(want_shape)} "
                          f"({', '.join(map(str, p.dims))}), got {type(value).__name__}")
            if isinstance(value, bool) != (p.dtype == "bool") or \
                    not isinstance(value, int | float | bool) or \
                    (p.dtype in ("i32", "i64") and not isinstance(value, int)):
                _fail(op, f"param {p.name} must be a {p.dtype} scalar, got {value!r}")
            value = torch.tensor(value, dtype=want_dtype, device=device)
        if tuple(value.shape) != want_shape:
            _fail(op, f"param {p.name} must have shape {list(want_shape)} "
                      f"([{', '.join(map(str, p.dims))}]), got {list(value.shape)}")
        if value.dtype != want_dtype:
            _fail(op, f"param {p.name} must have dtype {want_dtype} (declared {p.dtype}), got "
                      f"{value.dtype}")
        if value.device != device:
            _fail(op, f"param {p.name} is on {value.device} but q is on {device}")
        out[p.name] = value
    return out


def default_scale(scale: float | None, head_dim: int) -> float:
    return head_dim ** -0.5 if scale is None else float(scale)

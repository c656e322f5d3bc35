"""Runtime support for generated modules and the reference: input validation and shapes.

Imported by generated modules, so it depends only on torch (never on the parser or checker).
Every error names the argument, what was expected and what was received.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import itertools
import math
import numbers
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import torch

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}
SPEC_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Longest q_len / kv_len / cache capacity: the kernels' int32 position arithmetic is widened to
# int64 exactly where positions below this can leave int32 (attngen.lower's range analysis).
POSITION_LIMIT = 2**29


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


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _listing(names: Sequence[str]) -> str:
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _check_tensors(op: str, q: Any, k: Any, v: Any, *, dtypes: Sequence[str] | None,
                   require_contiguous_last_dim: bool, names=("q", "k", "v"),
                   layouts=("[batch, heads, seq_len, head_dim]",) * 3) -> None:
    """Type, rank, dtype, device and layout of q, k, v (``names`` as the caller's arguments)."""
    for arg, t, layout in zip(names, (q, k, v), layouts):
        if not isinstance(t, torch.Tensor):
            _fail(op, f"{arg} must be a torch.Tensor {layout}, got {type(t).__name__}")
        if t.ndim != 4:
            _fail(op, f"{arg} must have 4 dimensions {layout}, got {t.ndim} (shape {_shape(t)})")
        if not t.is_floating_point():
            _fail(op, f"{arg} must be a floating-point tensor, got {t.dtype}")
        if require_contiguous_last_dim and t.stride(-1) != 1 and t.shape[-1] > 1:
            _fail(op, f"{arg} must be contiguous in its last dimension (stride 1), got strides "
                      f"{tuple(t.stride())}; call .contiguous()")
    for arg, t in zip(names[1:], (k, v)):
        if t.dtype != q.dtype:
            _fail(op, f"{arg} has dtype {t.dtype} but q has dtype {q.dtype}; {_listing(names)} "
                      f"must share one dtype")
    if dtypes is not None:
        allowed = [SPEC_DTYPES[d] for d in dtypes]
        if q.dtype not in allowed:
            _fail(op, f"q has dtype {q.dtype}; this attention is built for "
                      f"{', '.join(map(str, allowed))} (the spec's 'dtype' statement)")
    for arg, t in zip(names[1:], (k, v)):
        if t.device != q.device:
            _fail(op, f"{arg} is on device {t.device} but q is on {q.device}; "
                      f"{_listing(names)} must be on one device")


def _check_head_dim(op: str, D: int, head_dims: Sequence[int] | None) -> None:
    if head_dims is not None and D not in head_dims:
        _fail(op, f"q has head_dim {D}; the spec allows {', '.join(map(str, head_dims))} (its "
                  f"'head_dim' statement)")
    if head_dims is None and not 16 <= D <= 256:
        _fail(op, f"q has head_dim {D}; expected 16..256")


def check_inputs(op: str, q: Any, k: Any, v: Any, *, dtypes: Sequence[str] | None,
                 head_dims: Sequence[int] | None, require_contiguous_last_dim: bool) -> Shapes:
    """Validate q, k, v ([B, H, N, D] each) and return their shapes.

    ``dtypes`` None accepts any floating dtype (the reference); otherwise the spec's list.
    """
    _check_tensors(op, q, k, v, dtypes=dtypes,
                   require_contiguous_last_dim=require_contiguous_last_dim)
    B, Hq, M, D = q.shape
    Bk, Hkv, N, Dk = k.shape
    if Bk != B:
        _fail(op, f"k has batch {Bk} but q has batch {B}; they must agree")
    if Dk != D:
        _fail(op, f"k has head_dim {Dk} but q has head_dim {D}; they must agree")
    if k.shape != v.shape:
        _fail(op, f"v has shape {_shape(v)} but k has shape {_shape(k)}; k and v must have the "
                  f"same shape [batch, kv_heads, kv_len, head_dim]")
    if Hkv == 0:
        _fail(op, f"k must have at least one head, got shape {_shape(k)}")
    if Hq % Hkv:
        _fail(op, f"q's {Hq} heads must be a multiple of k's {Hkv} heads (grouped-query "
                  f"attention shares each kv head among Hq/Hkv query heads)")
    _check_head_dim(op, D, head_dims)
    _check_lengths(op, M, N, "kv_len")
    return Shapes(B, Hq, Hkv, M, N, D)


def _check_lengths(op: str, q_len: int, kv_len: int, what: str) -> None:
    for name, n in (("q_len", q_len), (what, kv_len)):
        if n > POSITION_LIMIT:
            _fail(op, f"{name} is {n}; at most {POSITION_LIMIT} (2**29) positions are supported "
                      f"(the kernels compute positions in int32)")


def _check_index_tensor(op: str, arg: str, t: Any, layout: str, shape: tuple,
                        device: torch.device) -> torch.Tensor:
    """An integer tensor argument (kv_len, page_table) as contiguous int32."""
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{arg} must be an int32 torch.Tensor {layout}, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        _fail(op, f"{arg} must be an int32 (or int64) tensor {layout}, got {t.dtype}")
    if tuple(t.shape) != shape:
        _fail(op, f"{arg} must have shape {list(shape)} {layout}, got {list(t.shape)}")
    if t.device != device:
        _fail(op, f"{arg} must be on q's device {device}, got {t.device}")
    return t.to(torch.int32).contiguous()


def check_decode_inputs(op: str, q: Any, k_cache: Any, v_cache: Any, kv_len: Any,
                        page_table: Any, *, dtypes: Sequence[str] | None,
                        head_dims: Sequence[int] | None):
    """Validate a decode call; return (shapes, kv_len, page_table, page_size).

    Caches are contiguous [B, Hkv, capacity, D] (page_table None, page_size 0) or paged
    [num_pages, Hkv, page_size, D] with page_table [B, max_pages] (capacity max_pages *
    page_size). ``shapes.kv_len`` is the capacity: the extent of params declared over KV.
    kv_len [B] (None: the capacity) and the pages it uses are checked against the cache with
    one host sync, skipped while a CUDA graph is captured or torch.compile traces (the kernels
    then clamp kv_len to the capacity).
    """
    paged = page_table is not None
    cache = "[num_pages, kv_heads, page_size, head_dim]" if paged else \
        "[batch, kv_heads, capacity, head_dim]"
    _check_tensors(op, q, k_cache, v_cache, dtypes=dtypes, require_contiguous_last_dim=True,
                   names=("q", "k_cache", "v_cache"),
                   layouts=("[batch, heads, q_len, head_dim]", cache, cache))
    B, Hq, M, D = q.shape
    P, Hkv, L, Dk = k_cache.shape
    if Dk != D:
        _fail(op, f"k_cache has head_dim {Dk} but q has head_dim {D}; they must agree")
    if k_cache.shape != v_cache.shape:
        _fail(op, f"v_cache has shape {_shape(v_cache)} but k_cache has shape {_shape(k_cache)}; "
                  f"they must have the same shape {cache}")
    if Hkv == 0 or Hq % Hkv:
        _fail(op, f"q's {Hq} heads must be a multiple of k_cache's {Hkv} heads (grouped-query "
                  f"attention shares each kv head among Hq/Hkv query heads)")
    _check_head_dim(op, D, head_dims)
    if paged:
        if L == 0:
            _fail(op, f"k_cache must have pages of at least one token, got shape {_shape(k_cache)}")
        table = "[batch, max_pages] of physical page numbers"
        if not isinstance(page_table, torch.Tensor) or page_table.ndim != 2:
            got = f"shape {list(page_table.shape)}" if isinstance(page_table, torch.Tensor) \
                else type(page_table).__name__
            _fail(op, f"page_table must be an int32 tensor {table}, got {got}")
        page_table = _check_index_tensor(op, "page_table", page_table, table,
                                         (B, page_table.shape[1]), q.device)
        capacity, page_size = page_table.shape[1] * L, L
    else:
        if P != B:
            _fail(op, f"k_cache has batch {P} but q has batch {B}; a contiguous cache is {cache} "
                      f"(pass page_table= for a paged cache)")
        capacity, page_size = L, 0
    _check_lengths(op, q.shape[2], capacity, "the cache capacity")
    if kv_len is None:
        kv_len = torch.full((B,), capacity, dtype=torch.int32, device=q.device)
    else:
        kv_len = _check_index_tensor(op, "kv_len", kv_len, "[batch] of valid cache lengths",
                                     (B,), q.device)
        checkable = not torch.compiler.is_compiling() and not (
            q.is_cuda and torch.cuda.is_current_stream_capturing())
        if B and checkable:
            used = torch.zeros((), dtype=torch.bool, device=q.device)
            if paged:
                pages = torch.arange(page_table.shape[1], device=q.device)
                in_use = pages[None, :] * page_size < kv_len[:, None]
                used = (in_use & ((page_table < 0) | (page_table >= P))).any()
            low, high, bad = torch.stack([kv_len.min(), kv_len.max(), used.int()]).tolist()
            if low < 0 or high > capacity:
                _fail(op, f"kv_len must lie in 0..{capacity} (the cache's capacity), got values "
                          f"from {low} to {high}")
            if bad:
                _fail(op, f"page_table must hold page numbers in 0..{P - 1} (k_cache has {P} "
                          f"pages) wherever kv_len reaches, got {page_table.tolist()}")
    return Shapes(B, Hq, Hkv, M, capacity, D), kv_len, page_table, page_size


def check_no_grad(op: str, tensors: dict) -> None:
    """Decode kernels have no backward: refuse inputs that would silently get no gradient."""
    if torch.is_grad_enabled():
        wanting = [n for n, t in tensors.items() if isinstance(t, torch.Tensor) and t.requires_grad]
        if wanting:
            _fail(op, f"decode has no backward, but {', '.join(wanting)} require grad; call it "
                      f"under torch.no_grad() (or use the op itself for training)")


def decode_block_m(rows: int) -> int:
    """Tile rows of the decode kernel for ``rows`` = query heads per kv head x q_len."""
    return max(16, min(64, 1 << max(rows - 1, 0).bit_length()))


def decode_splits(shapes: Shapes, device: torch.device, num_splits: int | None) -> int:
    """Key splits per (batch, kv head, row block): enough programs to fill the GPU about four
    times over, at least 256 keys each; ``num_splits`` overrides (1..256)."""
    rows = shapes.group * shapes.q_len
    programs = shapes.batch * shapes.heads_kv * -(-rows // decode_block_m(rows))
    capacity = shapes.kv_len
    if num_splits is not None:
        if isinstance(num_splits, bool) or not isinstance(num_splits, int) \
                or not 1 <= num_splits <= 256:
            raise ValueError(f"num_splits must be an int in 1..256 (None picks one), got "
                             f"{num_splits!r}")
        return num_splits
    if device.type != "cuda" or programs == 0:
        return 1
    sms = _device_properties(device.index or 0)["multiprocessor_count"]
    return max(1, min(-(-4 * sms // programs), -(-capacity // 256), 256))


def _scalar_param(op: str, p: ParamSpec, value: Any, device: torch.device) -> torch.Tensor:
    """A Python number given for a scalar param, as a 0-d tensor of its declared dtype."""
    want_dtype = TORCH_DTYPES[p.dtype]
    if p.dtype == "bool":
        ok = isinstance(value, bool)
    elif p.dtype in ("i32", "i64"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        kind = {"bool": "a bool", "i32": "an int", "i64": "an int"}.get(p.dtype, "a float")
        _fail(op, f"param {p.name} must be a {p.dtype} scalar ({kind} or a 0-d tensor), got "
                  f"{type(value).__name__} {value!r}")
    if p.dtype in ("i32", "i64"):  # any value of the dtype: the kernels widen where sums can wrap
        info = torch.iinfo(want_dtype)
        if not info.min <= value <= info.max:
            _fail(op, f"param {p.name} must be a {p.dtype} scalar in {info.min}..{info.max}, got "
                      f"{value}")
    elif p.dtype != "bool":
        limit = torch.finfo(want_dtype).max
        if abs(value) > limit and value not in (math.inf, -math.inf):
            _fail(op, f"param {p.name} must be a {p.dtype} scalar of magnitude at most "
                      f"{limit:.4g} (or inf), got {value!r}")
    return torch.tensor(value, dtype=want_dtype, device=device)


def check_params(op: str, specs: Sequence[ParamSpec], given: dict[str, Any], shapes: Shapes,
                 device: torch.device, device_of: str = "q's device") -> dict[str, torch.Tensor]:
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
            value = _scalar_param(op, p, value, device)
        if tuple(value.shape) != want_shape:
            _fail(op, f"param {p.name} must have shape {list(want_shape)} "
                      f"([{', '.join(map(str, p.dims))}]), got {list(value.shape)}")
        if value.dtype != want_dtype:
            _fail(op, f"param {p.name} must have dtype {want_dtype} (declared {p.dtype}), got "
                      f"{value.dtype}")
        if value.device != device:
            _fail(op, f"param {p.name} must be on {device_of} {device}, got {value.device}")
        out[p.name] = value
    return out


def check_block_mask_shapes(op: str, batch: Any, heads: Any, heads_kv: Any, q_len: Any,
                            kv_len: Any) -> Shapes:
    """The shapes a block mask is built for (head_dim 0: it does not matter)."""
    given = dict(batch=batch, heads=heads, heads_kv=heads if heads_kv is None else heads_kv,
                 q_len=q_len, kv_len=kv_len)
    for name, value in given.items():
        least = 0 if name.endswith("len") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            _fail(op, f"block_mask: {name} must be an int >= {least}, got {value!r}")
    if given["heads"] % given["heads_kv"]:
        _fail(op, f"block_mask: heads must be a multiple of heads_kv, got heads={heads} and "
                  f"heads_kv={heads_kv}")
    _check_lengths(op, q_len, kv_len, "kv_len")
    return Shapes(batch, given["heads"], given["heads_kv"], q_len, kv_len, 0)


MAX_SPARSE_BLOCK = 1024  # rows or keys per block: the classes kernel holds 16 x keys elements


def sparse_block_sizes(op: str, block: Any, configs: Sequence) -> tuple[int, int]:
    """A block mask's (rows, keys) per block: every tile of the kernels (configs) must divide
    them, so that each tile lies in one block; default 128 each, or the largest tile."""
    largest = tuple(max(c.kwargs.get(key, 16) for c in configs) for key in ("BLOCK_M", "BLOCK_N"))
    if block is None:
        return max(128, largest[0]), max(128, largest[1])
    sizes = (block, block) if isinstance(block, int) else block
    ok = isinstance(sizes, (tuple, list)) and len(sizes) == 2 and all(
        isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_SPARSE_BLOCK
        and n & (n - 1) == 0 and n % tile == 0 for n, tile in zip(sizes, largest))
    if not ok:
        _fail(op, f"block_mask: block must be a power of two up to {MAX_SPARSE_BLOCK} (or a "
                  f"pair: rows, keys) that is a multiple of the kernels' largest tile, "
                  f"{largest[0]} rows x {largest[1]} keys; got {block!r}")
    return tuple(sizes)


def check_block_mask_device(op: str, device: Any) -> torch.device:
    """block_mask's device argument as a torch.device that exists."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        _fail(op, f"block_mask: device must be a torch.device or a name such as 'cuda' or "
                  f"'cpu', got {device!r}")
    if device.type == "cuda" and (not torch.cuda.is_available() or (
            device.index is not None and device.index >= torch.cuda.device_count())):
        _fail(op, f"block_mask: device {device} does not exist on this machine "
                  f"({torch.cuda.device_count()} CUDA devices)")
    return device


def check_block_mask_size(op: str, shape: Sequence[int]) -> None:
    """The kernels index a block mask's lists (batch, heads, blocks, 2, 1 + blocks) with int32
    offsets."""
    batch, heads, rows, cols = shape
    if batch * heads * 2 * max(rows * (cols + 1), cols * (rows + 1)) >= 2**31:
        _fail(op, f"block_mask: {rows} x {cols} blocks for {batch} x {heads} (batch, heads) need "
                  f"lists past 2**31 entries; use larger blocks")


def _block_lists(classes: torch.Tensor) -> torch.Tensor:
    """Per row of block classes [..., blocks]: [..., 2, 1 + blocks] int32 holding, for PARTIAL
    and for FULL, the count of such blocks, then their indices in increasing order."""
    hit = torch.stack((classes == 1, classes == 2), dim=-2)
    order = torch.argsort(hit.to(torch.int16), dim=-1, descending=True, stable=True)
    counts = hit.sum(-1, dtype=torch.int32).unsqueeze(-1)
    return torch.cat((counts, order.to(torch.int32)), dim=-1).contiguous()


def _version(value: Any) -> int | None:
    return TensorMemo._version_of(value) if isinstance(value, torch.Tensor) else None


def _snapshot(value: Any) -> torch.Tensor | None:
    """A copy of a tensor whose in-place changes its version cannot reveal (an inference
    tensor has no version counter), to compare contents with at each call."""
    if isinstance(value, torch.Tensor) and _version(value) is None:
        return value.clone()
    return None


@dataclass(frozen=True, eq=False)
class BlockMask:
    """The mask of one op classified per block for one set of shapes (``op.block_mask``):
    ``classes`` int8 [B or 1, Hq or 1, q blocks, kv blocks] (0 EMPTY, 1 PARTIAL, 2 FULL; batch
    and heads are 1 when the mask does not depend on them), ``rows`` the key blocks per query
    block (`_block_lists`) and ``cols`` the query blocks per key block, for the backward."""

    op: str
    spec_hash: str
    classes: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    shapes: Shapes
    block: tuple[int, int]
    params: dict  # the mask params it was built from, with their tensors' versions
    versions: dict
    snapshots: dict  # copies of those without a version (inference tensors)
    reads: tuple  # what the mask reads (the module's MASK_READS)

    @classmethod
    def from_classes(cls, op: str, spec_hash: str, classes: torch.Tensor, shapes: Shapes,
                     block: tuple[int, int], params: dict, reads: Sequence[str]) -> BlockMask:
        return cls(op, spec_hash, classes, _block_lists(classes),
                   _block_lists(classes.transpose(-1, -2)), shapes, block, dict(params),
                   {name: _version(value) for name, value in params.items()},
                   {name: _snapshot(value) for name, value in params.items()}, tuple(reads))

    @property
    def density(self) -> float:
        """The fraction of blocks the kernels visit (PARTIAL or FULL)."""
        return (self.classes != 0).float().mean().item() if self.classes.numel() else 0.0

    def __repr__(self) -> str:
        s = self.shapes
        return (f"BlockMask({self.op}, batch={s.batch}, heads={s.heads_q}, q_len={s.q_len}, "
                f"kv_len={s.kv_len}, block={self.block}, classes={list(self.classes.shape)}, "
                f"density={self.density:.3f})")


def check_block_mask(op: str, block_mask: Any, spec_hash: str, shapes: Shapes,
                     device: torch.device, params: dict) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """A call's block_mask against the call; returns the kernels' lists and block sizes (none
    and (0, 0) without a block mask)."""
    if block_mask is None:
        return [], (0, 0)
    if not isinstance(block_mask, BlockMask):
        _fail(op, f"block_mask must be a BlockMask from {op}.block_mask(...), got "
                  f"{type(block_mask).__name__}")
    if spec_hash != block_mask.spec_hash:
        _fail(op, f"block_mask was built by {block_mask.op}.block_mask (another spec); build it "
                  f"with {op}.block_mask")
    mine, theirs = block_mask.shapes, shapes
    for name, have, want in (("batch", mine.batch, theirs.batch),
                             ("heads", mine.heads_q, theirs.heads_q),
                             ("heads_kv", mine.heads_kv, theirs.heads_kv),
                             ("q_len", mine.q_len, theirs.q_len),
                             ("kv_len", mine.kv_len, theirs.kv_len)):
        if name == "heads_kv" and "hkv" not in block_mask.reads:
            continue  # the classes do not depend on it
        if have != want:
            _fail(op, f"block_mask was built for {name}={have}, but this call has {name}={want}; "
                      f"build one for these shapes")
    if block_mask.classes.device != device:
        _fail(op, f"block_mask is on {block_mask.classes.device}, but q is on {device}")
    if torch.compiler.is_compiling():  # traced: tensors are proxies, versions are not values
        return [block_mask.rows, block_mask.cols], block_mask.block
    for name, built in block_mask.params.items():
        given = params.get(name)
        snapshot = block_mask.snapshots[name]
        if isinstance(built, torch.Tensor) and snapshot is not None:
            # no version to compare (inference tensor): compare contents, except while a CUDA
            # graph is captured (no host sync there): then the same object must do
            same = given is built and ((given.is_cuda and torch.cuda.is_current_stream_capturing())
                                       or torch.equal(given, snapshot))
        elif isinstance(built, torch.Tensor):
            same = given is built and _version(given) == block_mask.versions[name]
        else:
            same = not isinstance(given, torch.Tensor) and given == built
        if not same:
            _fail(op, f"block_mask was built from another param {name} (or the tensor was "
                      f"modified since); build it from the {name} this call passes")
    return [block_mask.rows, block_mask.cols], block_mask.block


def sparse_args(lists: torch.Tensor | None, shapes: Shapes, dummy: torch.Tensor) -> list:
    """Kernel arguments for block-mask lists [B or 1, Hq or 1, blocks, 2, 1 + blocks]: the
    tensor and its batch, head, block and class strides (0 along broadcast dims)."""
    if lists is None:
        return [dummy, 0, 0, 0, 0]
    lists = lists.expand(shapes.batch, shapes.heads_q, *lists.shape[2:])
    return [lists, *lists.stride()[:4]]


def sparse_flags(block: Sequence[int]) -> dict:
    """Constexpr flags of a kernel launch with (block given) or without a block mask."""
    return dict(BLOCK_SPARSE=bool(block), SPARSE_M=block[0] if block else 16,
                SPARSE_N=block[1] if block else 16)


FP32_TINY = 1.1754943508222875e-38  # the smallest normal float32: below it a scale is 0 on the GPU


def check_scale(scale: Any) -> float:
    """The softmax scale as a float: a finite number >= 0 (0 gives uniform weights)."""
    number = isinstance(scale, numbers.Real) and not isinstance(scale, bool)
    one_element = isinstance(scale, torch.Tensor) and scale.numel() == 1 \
        and scale.is_floating_point()
    try:
        value = float(scale) if number or one_element else None
    except OverflowError:  # an int past float's range
        value = math.inf
    if value is None or not math.isfinite(value) or value < 0:
        received = f"{type(scale).__name__} {scale!r}" if value is None else repr(scale)
        raise ValueError(f"scale must be a finite number >= 0 (None for 1/sqrt(head_dim)), got "
                         f"{received}")
    return value


def default_scale(scale: float | None, head_dim: int) -> float:
    return head_dim ** -0.5 if scale is None else check_scale(scale)


# ---- kernels: devices, the interpreter, autotuning ------------------------------------------------


# Default search spaces: (BLOCK_M, BLOCK_N, num_warps, num_stages), the first also the untuned
# default. From sweeps (bf16, D 128: benchmarks/sweep.py, exp A/B runs in benchmarks/results/):
# the forward peaks at 128x128 tiles, 8 warps, 3 stages (64x64 on short loops: 8 documents).
# The backward's two kernels get their own spaces (both read BLOCK_M as the query tile and
# BLOCK_N as the key tile): dK/dV holds BLOCK_N keys and steps over 32-64 queries (64x64, 4 warps
# on an H200 for causal and documents; 128-row query steps spill: 3-10x slower); dQ holds 64-128
# queries and steps over 32-64 keys.
DEFAULT_SPACES = {
    "fwd": ((128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (128, 64, 4, 2),
            (64, 32, 4, 2)),
    "bwd_dkdv": ((64, 64, 4, 2), (32, 64, 4, 2), (64, 128, 8, 2), (32, 128, 8, 2), (64, 64, 8, 3),
                 (32, 64, 4, 3)),
    "bwd_dq": ((128, 64, 8, 3), (64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 8, 2), (128, 32, 8, 2),
               (64, 64, 4, 3)),
    # decode streams K and V: deep pipelines over 64-128 keys; its BLOCK_M (the query heads of a
    # kv head times q_len) is fixed by the call, so the m entry is unused
    "decode": ((0, 64, 4, 3), (0, 128, 4, 3), (0, 64, 4, 4), (0, 128, 8, 3), (0, 32, 4, 4),
               (0, 64, 2, 3)),
}
# Head dims past 128 run at BLOCK_D 256, which doubles the accumulators (dK and dV: BLOCK_N x 256
# fp32 each). Timed on an H200 (gemma2_local, B=2 H=8 N=8192 D=256 bf16, benchmarks/ab.py;
# results 2026-11-30-h200-wide-spaces.md): dK/dV 32x32/4w 4.06 ms and 32x64/8w 4.53 against 6.42
# for the best of the spaces above (the 64-key config goes first: 32 keys are below a warpgroup
# MMA's 64 rows, and AUTOTUNE=0 and aot keep wgmma); dQ 128x32/8w/3s 1.24 against 1.41; the
# forward's best stays 64x64/4w/3s (1.06; the 8-warp 64-row tiles that ptxas liked took 1.6-1.8).
WIDE_BLOCK_D = 256
WIDE_SPACES = {
    "fwd": ((64, 64, 4, 3), (64, 32, 4, 2), (128, 32, 8, 2), (64, 32, 4, 3)),
    "bwd_dkdv": ((32, 64, 8, 2), (32, 32, 4, 2), (16, 32, 4, 2), (16, 64, 8, 2)),
    "bwd_dq": ((128, 32, 8, 3), (128, 32, 8, 2), (64, 32, 4, 3)),
}
_DEFAULT_KNOBS = {"m": 128, "n": 64, "warps": 4, "stages": 2}
# The interpreter runs tiles as numpy arrays: one mid-sized config keeps it quick.
_INTERPRET_MAX_BLOCK = 64


class TensorMemo:
    """A value computed from a tensor, kept while the same tensor object comes back unmodified
    (its version counter unchanged: no in-place write since); e.g. the document runs that every
    layer of a model would otherwise rebuild from the same ids."""

    def __init__(self):
        self._ref, self._version, self.value = None, None, None

    @staticmethod
    def _version_of(tensor: torch.Tensor) -> int | None:
        try:
            return tensor._version
        except RuntimeError:  # inference tensors carry no version: never reuse
            return None

    def get(self, tensor: torch.Tensor):
        version = self._version_of(tensor)
        if self._ref is not None and self._ref() is tensor and version is not None \
                and version == self._version:
            return self.value
        return None

    def put(self, tensor: torch.Tensor, value) -> None:
        self._ref, self._version, self.value = weakref.ref(tensor), self._version_of(tensor), value


def interpreting() -> bool:
    """Whether ``triton.jit`` currently builds interpreted (CPU) kernels."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Host-side integer helpers for launches: triton.cdiv and triton.next_power_of_2 are constexpr
# functions, a few microseconds per host call through Triton's call machinery; a forward and
# backward makes about ten such calls.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, as triton.next_power_of_2 (0 for 0)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def length_bucket(n: int) -> int:
    """Autotuning key for a sequence length: its power-of-two bucket, so 1000 and 1024 share."""
    return 1 << max(4, (max(n, 1) - 1).bit_length())


# TMA (Hopper's tensor memory accelerator) loads of the tiles a kernel streams (the forward's
# and dQ's K and V, dK/dV's Q and dO) and of the forward's own query tile and dQ's own query and
# dO tiles. Host-side descriptors over [B, H, N, D], whose box is the launched config's tile
# (tma_block_shapes, the pre-hook of every config of these kernels): the descriptor argument's
# name -> the block along its rows. Timed on an H200 (benchmarks/ab.py, results
# 2026-11-30-h200-tma.md): forward causal 8k 1.19 -> 1.03 ms, full 4k 1.14 -> 1.03 ms at the best
# config; descriptors built on the device per program cost more than they saved on short tiles.
# The query tiles (2026-12-01-h200-q-tma.md): up to 9% off the forward (8 documents), 1-5% off
# dQ on short sequences, nothing either way at 8k.
TMA_BOXES = {"KDesc": "BLOCK_N", "VDesc": "BLOCK_N", "QDesc": "BLOCK_M", "DODesc": "BLOCK_M"}


@functools.lru_cache(maxsize=None)
def _has_tma(device_index: int) -> bool:
    """Hopper (sm_90), where the TMA loads were measured; not ROCm, not yet Blackwell (triton
    3.6.0's driver lacks a fix for small non-dense tensors there)."""
    return torch.version.hip is None and torch.cuda.get_device_capability(device_index)[0] == 9


_TMA_STRIDE_LIMIT = 1 << 40  # bytes: a TMA descriptor's strides stay below 2**40
_TensorDescriptor = None  # triton.tools.tensor_descriptor.TensorDescriptor, imported on first use


def tma_descriptors(*tensors: torch.Tensor) -> tuple | None:
    """TMA descriptors of the tensors (each [B, H, N, D]; boxes of [1, 1, 16, 16] until a
    config's pre-hook sets them), or None where TMA cannot load them: a GPU other than Hopper,
    ``ATTNGEN_TMA=0``, an empty tensor, a base address, a stride or a row (D elements) not a
    multiple of 16 bytes, a last dim not contiguous, a stride of 0 (an expanded dim) or of 2**40
    bytes or more. A size-1 dim's stride is never used and is described as the dense one. CPU
    tensors (the interpreter) get descriptors too, so the CPU tests run the same loads as Hopper.
    About 3 us for one tensor and 2 us per further one on a 2-core CI machine (a training step
    builds 9: forward 3, dK/dV 2, dQ 4): no dataclass checks, no import per call."""
    if os.environ.get("ATTNGEN_TMA") == "0":
        return None
    first = tensors[0]
    if first.is_cuda and not _has_tma(first.get_device()):
        return None
    descriptor = _descriptor_type()
    descriptors = []
    for t in tensors:
        shape, strides, size = list(t.shape), list(t.stride()), t.element_size()
        if t.data_ptr() % 16 or strides[-1] != 1 or 0 in shape or shape[-1] * size % 16:
            return None
        for i in range(len(shape) - 2, -1, -1):
            if shape[i] == 1:
                strides[i] = strides[i + 1] * shape[i + 1]
            elif strides[i] == 0 or strides[i] * size % 16 \
                    or strides[i] * size >= _TMA_STRIDE_LIMIT:
                return None
        d = descriptor.__new__(descriptor)  # checked above
        d.__dict__.update(base=t, shape=shape, strides=strides, block_shape=[1, 1, 16, 16],
                          padding="zero")
        descriptors.append(d)
    return tuple(descriptors)


def dense_gradient(grad_out: torch.Tensor) -> torch.Tensor:
    """The output's gradient as the backward reads it: unit-stride rows, and no expanded dim (the
    gradient of ``out.sum(2)`` has stride 0 along the queries, which TMA cannot describe: one
    copy keeps the backward's tiles on TMA). Anything else is read in place."""
    if grad_out.stride(-1) != 1 or any(s == 0 and n > 1 for n, s in zip(grad_out.shape,
                                                                         grad_out.stride())):
        return grad_out.contiguous()
    return grad_out


def _tma_box(meta: dict, name: str) -> list[int]:
    """The box of descriptor ``name`` for a launch's flags and config blocks ``meta``."""
    return [1, 1, meta[TMA_BOXES[name]], meta["BLOCK_D"]]


def set_tma_boxes(kernel, args: Sequence, meta: dict) -> None:
    """tma_block_shapes for a launch past the autotuner (``kernel``: the autotuned kernel; meta:
    its flags and the config's blocks), without building the argument dict."""
    if meta.get("TMA"):
        index = _arg_index(kernel)
        for name in TMA_BOXES:
            if name in index:
                args[index[name]].block_shape = _tma_box(meta, name)


def tma_block_shapes(nargs: dict) -> None:
    """Config pre-hook of the kernels that take TMA descriptors: each descriptor's box is the
    config's tile, [1, 1, BLOCK_N or BLOCK_M (TMA_BOXES), BLOCK_D] (nothing to do when the
    tensors come as pointers)."""
    if nargs.get("TMA"):
        for name in TMA_BOXES:
            if name in nargs:
                nargs[name].block_shape = _tma_box(nargs, name)


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products; tf32 would lose precision users did not ask to lose
    return "ieee" if dtype == torch.float32 else "tf32"


def autotune_configs(kernel: str, fixed: dict | None, space: dict | None, *,
                     interpret: bool) -> list:
    """``triton.Config``s from a spec's ``blocks`` (fixed) or ``tune`` (space) or the default."""
    import triton

    if fixed is not None:
        knobs = [{**_DEFAULT_KNOBS, **fixed}]
    elif space is not None:
        names = list(_DEFAULT_KNOBS)
        values = [space.get(n, [_DEFAULT_KNOBS[n]]) for n in names]
        knobs = [dict(zip(names, combo)) for combo in itertools.product(*values)]
    else:
        knobs = [dict(zip(_DEFAULT_KNOBS, c)) for c in DEFAULT_SPACES[kernel]]
    wide = [] if fixed is not None or space is not None or interpret else \
        [dict(zip(_DEFAULT_KNOBS, c)) for c in WIDE_SPACES.get(kernel, ())]
    if interpret:
        first = knobs[0]
        knobs = [{**first, "m": min(first["m"], _INTERPRET_MAX_BLOCK),
                  "n": min(first["n"], _INTERPRET_MAX_BLOCK)}]
    elif os.environ.get("ATTNGEN_AUTOTUNE", "1") == "0":  # quick start: the first config only
        knobs, wide = knobs[:1], wide[:1]
    blocks = (lambda k: {"BLOCK_N": k["n"]}) if kernel == "decode" else \
        (lambda k: {"BLOCK_M": k["m"], "BLOCK_N": k["n"]})
    configs = [triton.Config(blocks(k), num_warps=k["warps"], num_stages=k["stages"])
               for k in knobs]
    if wide:  # default spaces: each config says which head dims it is for (for_head_dim)
        for c in configs:
            c.attngen_wide = False
        for k in wide:
            c = triton.Config(blocks(k), num_warps=k["warps"], num_stages=k["stages"])
            c.attngen_wide = True
            configs.append(c)
    if not interpret and len(configs) == 1 and configs[0].num_stages > 1:
        # A lone config skips pruning, where known compiler crashes are avoided: give it an
        # unpipelined twin, and pruning keeps exactly one of the two (fix_known_compiler_issues).
        twin = triton.Config(dict(configs[0].kwargs), num_warps=configs[0].num_warps,
                             num_stages=1)
        twin.attngen_stage_twin = True
        configs.append(twin)
    if kernel in ("fwd", "bwd_dkdv", "bwd_dq"):  # they take TMA descriptors
        for c in configs:
            c.pre_hook = tma_block_shapes
    return configs


def config_like(config, blocks: dict | None = None, num_stages: int | None = None,
                num_warps: int | None = None):
    """A copy of a ``triton.Config`` with other blocks, stages or warps, keeping its pre-hook
    (the training kernels' sets their TMA boxes: without it a launch fails to compile, its box
    too small)."""
    import triton

    return triton.Config(dict(config.kwargs if blocks is None else blocks),
                         num_warps=config.num_warps if num_warps is None else num_warps,
                         num_stages=config.num_stages if num_stages is None else num_stages,
                         pre_hook=config.pre_hook)


_DEVICE_PROPERTIES: dict[int, dict] = {}


def _device_properties(device_index: int) -> dict:
    if device_index not in _DEVICE_PROPERTIES:
        import triton

        utils = triton.runtime.driver.active.utils
        _DEVICE_PROPERTIES[device_index] = utils.get_device_properties(device_index)
    return _DEVICE_PROPERTIES[device_index]


def _shared_memory_limit(device_index: int) -> int:
    return _device_properties(device_index)["max_shared_mem"]


def for_head_dim(configs: list, block_d: int) -> list:
    """The default configs meant for this (padded) head dim: the wide space's at BLOCK_D >=
    WIDE_BLOCK_D, the others below; configs a spec chose (untagged) all stay."""
    wide = block_d >= WIDE_BLOCK_D
    return [c for c in configs if getattr(c, "attngen_wide", wide) == wide] or configs


def fix_known_compiler_issues(configs: list, block_d: int) -> list:
    """Move configs away from known toolchain crashes (keeping their order, without repeats).

    ptxas of triton 3.6 segfaults on software-pipelined loops over 16-wide head dims (seen on
    sm_90 with 2 stages in the causal forward and 3 stages in a chunked mask's dQ kernel): such
    configs run unpipelined (1 stage); at D=16 the loads are tiny and pipelining gains little.
    """
    crash_prone = block_d <= 16
    if any(getattr(c, "attngen_stage_twin", False) for c in configs):
        configs = [c for c in configs if getattr(c, "attngen_stage_twin", False) == crash_prone]
    out = []
    for c in configs:
        if crash_prone and c.num_stages > 1:
            c = config_like(c, num_stages=1)
        if all((c.kwargs, c.num_warps, c.num_stages) != (o.kwargs, o.num_warps, o.num_stages)
               for o in out):
            out.append(c)
    return out


# Shared memory per block on the targets `attngen compile` knows (the runtime asks the device)
SHARED_MEMORY_LIMITS = {90: 232448, 89: 101376, 86: 101376, 80: 166912}


def fit_shared_memory(configs: list, block_d: int, elem: int, limit: int,
                      tile_loads: int = 0, block_m: int | None = None,
                      kernel: str = "fwd") -> list:
    """The configs whose tiles fit in ``limit`` bytes of shared memory, in order; if none does,
    the smallest shrunk (fewer stages first, then fewer keys) until it fits.

    Estimate, in the inputs' dtype (elem bytes): the tiles a program holds plus ``num_stages``
    buffers of the tiles its loop streams: the forward and decode hold Q and stream K and V,
    dK/dV (``kernel`` "dkdv") holds K and V and streams Q and dO (and fp32 LSE and Delta rows),
    dQ ("dq") holds Q and dO and streams K and V; plus, in dQ, 32 bytes per query row per
    tile-shaped param read in the score or mask (``tile_loads``: a bias table indexed by q and
    kv; those reads bypass shared memory, see the generated modules' `_gather`). ``block_m``:
    the query rows of configs without a BLOCK_M (decode fixes it per call).
    """
    configs = fix_known_compiler_issues(for_head_dim(configs, block_d), block_d)

    def estimate(c):
        m, n, stages = c.kwargs.get("BLOCK_M", block_m or 16), c.kwargs["BLOCK_N"], max(c.num_stages, 1)
        held, streamed = {"dkdv": (2 * n, 2 * m), "dq": (2 * m, 2 * n)}.get(kernel, (m, 2 * n))
        rows = 2 * stages * m * 4 if kernel == "dkdv" else 0  # LSE and Delta
        # dQ: 32 more bytes per query row and tile load (measured on sm_90 for t5_bias)
        scratch = tile_loads * 32 * m if kernel == "dq" else 0
        return (held + stages * streamed) * block_d * elem + rows + scratch

    kept = [c for c in configs if estimate(c) <= limit]
    if kept:
        return kept
    smallest = min(configs, key=estimate)
    blocks, stages = dict(smallest.kwargs), smallest.num_stages
    shrunk = config_like(smallest)
    while estimate(shrunk) > limit and (stages > 1 or blocks["BLOCK_N"] > 16):
        if stages > 1:
            stages -= 1
        else:
            blocks["BLOCK_N"] //= 2
        shrunk = config_like(smallest, blocks, stages)
    return [shrunk]


def shared_memory_pruner(tile_loads: int, kernel: str = "fwd"):
    """A kernel's ``early_config_prune``: drop configs whose tiles cannot fit in the device's
    shared memory (``fit_shared_memory``: kernel fwd, dkdv or dq), before compiling any."""

    def prune(configs, named_args, **kwargs):
        q = named_args["Q"]
        if not q.is_cuda:
            return configs
        return fit_shared_memory(configs, kwargs.get("BLOCK_D", named_args.get("BLOCK_D")),
                                 q.element_size(), _shared_memory_limit(q.device.index or 0),
                                 tile_loads, kwargs.get("BLOCK_M"), kernel)

    return prune


# Private copies of an atomically accumulated param gradient: the dQ programs that run together
# add into different copies (program index modulo the count), which the host sums. A relative
# bias table has a few hundred entries per head, which every query tile of the head hits at
# once: one copy put all of them on the same addresses (t5_bias dQ on an H200, B=2 H=16 N=8192
# D=128: 21.5 ms with one copy; see benchmarks/results/2026-11-30-h200-relbias.md).
GRAD_COPIES = 256
GRAD_COPIES_ELEMENTS = 2**22  # 16 MiB of fp32 per gradient at most


def grad_copies(numels: list[int]) -> int:
    """How many copies of the atomically accumulated param gradients (``numels``: their sizes)."""
    return max(1, min([GRAD_COPIES] + [GRAD_COPIES_ELEMENTS // max(n, 1) for n in numels]))


def check_deterministic(op: str, grad_terms, specs, tensors) -> None:
    """deterministic=True cannot hold for atomically accumulated param gradients: refuse early."""
    declared = {p.name: p for p in specs}
    for name, varying in grad_terms:
        if varying and declared[name].grad and tensors[name].requires_grad:
            raise NotImplementedError(
                f"NYI: {op}: deterministic=True with a gradient for param {name}, which the score "
                f"reads at positions that vary over a tile (accumulated with atomics); pass "
                f"{name} without requires_grad, or deterministic=False")


def check_kernel_device(op: str, device: torch.device, interpreted: bool,
                        dtype: torch.dtype | None = None, what: str = "q, k and v") -> None:
    """CPU tensors need kernels built by the Triton interpreter, which is chosen at import, and
    a dtype the interpreter computes correctly (its bf16 arithmetic is wrong: refuse it).
    ``what``: the arguments that name the device, for the messages."""
    if device.type not in ("cuda", "cpu"):
        _fail(op, f"{what} must be on a CUDA device or the CPU (through the Triton "
                  f"interpreter), got {device}")
    if device.type == "cpu" and not interpreted:
        _fail(op, f"CPU tensors run through the Triton interpreter, but this process imported "
                  f"triton for the GPU; set TRITON_INTERPRET=1 before importing torch and "
                  f"triton, or move {what} and the params to a CUDA device")
    if device.type == "cpu" and dtype == torch.bfloat16:
        _fail(op, "bf16 tensors on the CPU: the Triton interpreter, which runs CPU calls, "
                  "computes bf16 wrongly; expected torch.float32 or torch.float16 on the CPU "
                  "(or bf16 on a CUDA device), got torch.bfloat16")


def plain_eager(t: torch.Tensor) -> bool:
    """Whether an op may call its implementation directly rather than through its torch.library
    op: plain tensors, no torch.compile/export tracing, no dispatch mode (fake tensors, ...)."""
    return type(t) is torch.Tensor and not torch.compiler.is_compiling() \
        and torch._C._len_torch_dispatch_stack() == 0


def _arg_index(kernel) -> dict[str, int]:
    """An autotuned kernel's argument name -> position (kept on the kernel)."""
    index = getattr(kernel, "attngen_arg_index", None)
    if index is None:
        index = kernel.attngen_arg_index = {name: i for i, name in enumerate(kernel.arg_names)}
    return index


# Launches past triton's JITFunction.run: after a kernel's first launch with some arguments, the
# compiled kernel and its launcher are kept per "call key" and called directly. Timed on the H200
# machine's CPU (results 2026-11-30-h200-host.md): run's binder (~40 native specialisations),
# its cache key and checks were ~60 of the ~80 us of host time per launch.
FAST_LAUNCH = os.environ.get("ATTNGEN_FAST_LAUNCH", "1") != "0"
# plans call the C launcher behind triton's (_Direct); ATTNGEN_DIRECT_LAUNCH=0: its Python wrapper
DIRECT_LAUNCH = os.environ.get("ATTNGEN_DIRECT_LAUNCH", "1") != "0"
_PLAN_LIMIT = 64  # call keys kept per kernel, oldest dropped first


@dataclass(frozen=True)
class _Plan:
    """A compiled kernel for one call key: its launcher, the constexpr values after the
    positional arguments, and what chose its config (the autotuner's key and choice)."""

    launcher: Any
    function: Any
    packed_metadata: Any
    compiled: Any
    tail: tuple
    meta: dict
    tune_key: tuple | None  # None: a kernel with one config, or not autotuned
    config: Any
    direct: _Direct | None = None  # the launcher's C entry point, where it can be called


@dataclass(frozen=True)
class _Direct:
    """How to call the C function behind triton 3.6's CUDA launcher (``CudaLauncher.launch``)
    for one plan, skipping its Python wrappers: ``CudaLauncher.__call__`` (scratch buffers: none
    for these kernels) and the loop over every argument that expands TMA descriptors
    (``wrap_handle_tensordesc``). Tensor arguments (``pointers``, their positions) go as their
    addresses, which the C launcher takes as they are instead of calling ``data_ptr`` and
    ``cuPointerGetAttribute`` (the op checked their device before); each descriptor
    (``descriptors``: position, swizzle, element size, CUDA dtype, box) is filled here as
    triton's ``make_tensordesc_arg`` fills it."""

    launch: Any
    cooperative: bool
    pdl: bool
    pointers: tuple
    descriptors: tuple
    fill: Any


def _direct_launch(launcher: Any, args: Sequence, tail: tuple, fill: Any = None) -> _Direct | None:
    """A plan's ``_Direct`` from its compiled kernel's launcher (``compiled.run``) and the
    arguments of the launch that made the plan, or None where the launcher is not triton 3.6's
    ``CudaLauncher`` as known (another triton, scratch buffers, a descriptor lowered to
    pointers): the plan then calls the launcher itself. ``fill``: ``fill_tma_descriptor`` (the
    active driver's by default)."""
    try:
        from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST, _BASE_ARGS_FORMAT_LEN
    except ImportError:
        return None
    launch = getattr(launcher, "launch", None)
    scratch = getattr(launcher, "global_scratch_size", 1), getattr(launcher, "profile_scratch_size", 1)
    if _BASE_ARGS_FORMAT_LEN != 13 or launch is None or any(scratch):
        return None
    descriptors = ()
    code = getattr(launch, "__code__", None)
    if code is not None:  # wrap_handle_tensordesc's `inner`, over the C launch
        cells = dict(zip(code.co_freevars, (c.cell_contents for c in launch.__closure__ or ())))
        if not {"launcher", "tensordesc_indices", "tensordesc_meta"} <= set(cells):
            return None
        launch, indices, metas = cells["launcher"], cells["tensordesc_indices"], cells["tensordesc_meta"]
        indices = sorted(indices)
        if not metas or len(metas) != len(indices) or any(
                m is None or m.get("fp4_padded") for m in metas):
            return None
        descriptors = tuple((i, m["swizzle"], m["elem_size"], TMA_DTYPE_DEVICE_TO_HOST[m["elem_type"]],
                             m["block_size"]) for i, m in zip(indices, metas))
    elif not callable(launch):
        return None
    full = (*args, *tail)
    if any(i >= len(full) or type(full[i]) is not _descriptor_type() for i, *_ in descriptors):
        return None
    if fill is None:
        fill = _triton_runtime()[1].active.utils.fill_tma_descriptor
    pointers = tuple(i for i, a in enumerate(full) if isinstance(a, torch.Tensor))
    cooperative = getattr(launcher, "launch_cooperative_grid", None)
    pdl = getattr(launcher, "launch_pdl", None)
    if cooperative is None or pdl is None:
        return None
    return _Direct(launch, bool(cooperative), bool(pdl), pointers, descriptors, fill)


def _launch_direct(direct: _Direct, grid: tuple[int, int, int], stream: int, plan: _Plan,
                   metadata, enter, leave, args: Sequence) -> None:
    """``plan``'s launch through ``direct`` (see ``_Direct``): the C launcher's arguments as
    ``CudaLauncher.__call__`` and ``wrap_handle_tensordesc`` would pass them."""
    full = [*args, *plan.tail]
    for i in direct.pointers:
        full[i] = full[i].data_ptr()
    out = [*grid, stream, plan.function, direct.cooperative, direct.pdl, None, None,
           plan.packed_metadata, metadata, enter, leave]
    start = 0
    for i, swizzle, size, dtype, box in direct.descriptors:
        out += full[start:i]
        d = full[i]
        out.append(direct.fill(d.base.data_ptr(), swizzle, size, dtype, box, d.shape, d.strides,
                               1 if d.padding == "nan" else 0))
        out += d.shape
        out += d.strides
        start = i + 1
    out += full[start:]
    direct.launch(*out)


def _descriptor_type():
    """triton.tools.tensor_descriptor.TensorDescriptor, imported on first use."""
    global _TensorDescriptor
    if _TensorDescriptor is None:
        from triton.tools.tensor_descriptor import TensorDescriptor

        _TensorDescriptor = TensorDescriptor
    return _TensorDescriptor


def _call_key(args: Sequence) -> tuple | None:
    """What triton 3.6 specialises a compiled kernel on, or finer, for these arguments: an int
    as 1 (a constant) or by divisibility by 16 and range (i32, i64, u64), a float or bool by
    type, a tensor by dtype and 16-byte alignment, a TMA descriptor by its base's dtype (its box
    comes from the config, part of the plan; the launcher reads the box from the compiled
    kernel, not from the argument, so boxes are not set on this path). The autotuner's key
    arguments are added by value by the caller. None for an argument of any other type: such
    launches go through triton."""
    key = []
    for a in args:
        t = type(a)
        if t is int:
            key.append(1 if a == 1 else (a % 16 == 0, -0x80000000 <= a <= 0x7FFFFFFF,
                                         a <= 0x7FFFFFFFFFFFFFFF))
        elif a is None:
            key.append(None)
        elif isinstance(a, torch.Tensor):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        elif t is float or t is bool:
            key.append(t)
        elif t is _TensorDescriptor:
            key.append((t, a.base.dtype))
        else:
            return None
    return tuple(key)


def _by_value(kernel, args: Sequence) -> tuple:
    """The values of an autotuned kernel's key arguments among ``args`` (the length buckets):
    the config a plan was made with holds for these values only."""
    positions = getattr(kernel, "attngen_key_positions", None)
    if positions is None:
        index = _arg_index(kernel) if hasattr(kernel, "configs") else {}
        positions = kernel.attngen_key_positions = tuple(
            index[name] for name in getattr(kernel, "keys", ()) if name in index)
    return tuple(args[i] for i in positions if i < len(args))


def _tune_key(kernel, args: Sequence, flags: dict) -> tuple | None:
    """The autotuner's cache key of a launch (triton 3.6 ``Autotuner.run``): the values of its
    ``key`` arguments among those passed, then the dtype of every passed argument that has
    one, positional arguments first. None for a kernel with a single config (no key)."""
    if len(kernel.configs) == 1:
        return None
    index = _arg_index(kernel)
    key = []
    for name in kernel.keys:
        i = index.get(name)
        if i is not None and i < len(args):
            key.append(args[i])
        elif i is not None and name in flags:
            key.append(flags[name])
    key += [str(a.dtype) for a in args if hasattr(a, "dtype")]
    key += [str(v.dtype) for k, v in flags.items() if k in index and hasattr(v, "dtype")]
    return tuple(key)


def tuned_config(kernel, args: Sequence, flags: dict):
    """The config ``kernel`` (a ``triton.autotune``d kernel) chose for a launch with these
    arguments, or None while it has not chosen (its first launch in this length bucket, which
    benchmarks)."""
    key = _tune_key(kernel, args, flags)
    return kernel.configs[0] if key is None else kernel.cache.get(key)


_TRITON_RUNTIME = None  # (triton.knobs, triton.runtime.driver): imported on first use


def _triton_runtime():
    """(triton.knobs, triton.runtime.driver), imported once (an import statement costs about a
    microsecond per launch on the GPU machines' CPUs)."""
    global _TRITON_RUNTIME
    if _TRITON_RUNTIME is None:
        from triton import knobs
        from triton.runtime import driver

        _TRITON_RUNTIME = (knobs, driver)
    return _TRITON_RUNTIME


def _current_device() -> int:
    return _triton_runtime()[1].active.get_current_device()


def _current_stream(device: int):
    return _triton_runtime()[1].active.get_current_stream(device)


def _plans(kernel) -> dict:
    plans = getattr(kernel, "attngen_plans", None)
    if plans is None:
        plans = kernel.attngen_plans = {}
    return plans


def launch(kernel, grid, args: list, flags: dict) -> None:
    """``kernel[grid](*args, **flags)`` for a kernel, autotuned (``triton.autotune``) or not.
    Once the autotuner has chosen a config for the call's key, that config's compiled kernel is
    launched directly: the first such launch goes through triton's ``JITFunction.run`` (which
    compiles or finds the kernel for the arguments' specialisation) and keeps it as a plan under
    the call key (the device, triton's debug and instrumentation settings, the flags, the
    autotuner's key arguments by value, ``_call_key``); later launches with that key call its
    launcher, skipping run's binder, cache key and checks (``forward`` of 8 documents, 147-180
    -> 111 us of host time per call on the H200 machine). A plan is used only while the
    autotuner still holds the config it was made with (re-tuning drops it); never under the
    interpreter, on ROCm (whose compiler also specialises on buffer sizes) or with run hooks.
    (A single config counts as chosen while it is the kernel's only one: ``_still_chosen``.)
    A grid function gets the flags and the config's values (as every generated grid reads)."""
    fast = FAST_LAUNCH and _plans_allowed()
    if fast:
        knobs = _triton_runtime()[0]
        device, arg_key = _current_device(), _call_key(args)
        key = (device, knobs.runtime.debug, knobs.compilation.instrumentation_mode,
               *flags.values(), *_by_value(kernel, args), arg_key)
        plans = _plans(kernel)
        plan = plans.get(key)
        if plan is not None and _still_chosen(kernel, plan):
            _run_plan(kernel, plan, grid, args, device)
            return
        fast = arg_key is not None
    if hasattr(kernel, "configs"):  # autotuned
        jit, tune_key = kernel.fn, _tune_key(kernel, args, flags)
        config = kernel.configs[0] if tune_key is None else kernel.cache.get(tune_key)
        if config is None:
            kernel[grid](*args, **flags)  # autotunes
            return
        meta = {**flags, **config.all_kwargs()}
        if config.pre_hook is tma_block_shapes:  # as the autotuner would run it
            set_tma_boxes(kernel, args, meta)
        elif config.pre_hook is not None:
            config.pre_hook({**dict(zip(kernel.arg_names, args)), **meta})
        kernel.best_config = config  # as the autotuner's run sets it
    else:
        jit, tune_key, config, meta = kernel, None, None, dict(flags)
    compiled = jit.run(*args, grid=grid, warmup=False, **meta)
    if fast and compiled is not None and not hasattr(compiled, "result") \
            and not jit.pre_run_hooks \
            and getattr(config, "pre_hook", None) in (None, tma_block_shapes):
        if len(plans) >= _PLAN_LIMIT:
            del plans[next(iter(plans))]  # the oldest
        params = jit.params[len(args):]
        tail = tuple(meta[p.name] if p.name in meta else p.default for p in params)
        plans[key] = _Plan(compiled.run, compiled.function, compiled.packed_metadata, compiled,
                           tail, meta, tune_key, config,
                           _direct_launch(compiled.run, args, tail) if DIRECT_LAUNCH else None)


def _still_chosen(kernel, plan: _Plan) -> bool:
    """Whether the config a plan was made with is still the one a launch would take: the
    autotuner's choice for the call's key, or a single-config kernel's config (which a caller
    may swap, as benchmarks/ab.py does); plain kernels have no config."""
    if plan.config is None:
        return True
    if plan.tune_key is None:
        return kernel.configs[0] is plan.config
    return kernel.cache.get(plan.tune_key) is plan.config


def _plans_allowed() -> bool:
    return not interpreting() and torch.version.hip is None


def _hooked(hook) -> bool:
    """Whether a launch hook of triton's knobs does anything (3.6: an empty HookChain)."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _run_plan(kernel, plan: _Plan, grid, args: Sequence, device: int) -> None:
    """Launch a plan's compiled kernel (what ``JITFunction.run`` ends with)."""
    knobs = _triton_runtime()[0]
    stream = _current_stream(device)
    grid = grid(plan.meta) if callable(grid) else grid
    dims = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    if _hooked(enter) or _hooked(leave):  # a profiler's hooks (proton): as run passes them
        metadata = plan.compiled.launch_metadata(grid, stream, *args, *plan.tail)
    else:
        metadata = enter = leave = None
    if plan.config is not None:
        kernel.best_config = plan.config  # as the autotuner's run sets it
    if plan.direct is not None:
        _launch_direct(plan.direct, dims, stream, plan, metadata, enter, leave, args)
        return
    plan.launcher(*dims, stream, plan.function, plan.packed_metadata, metadata, enter, leave,
                  *args, *plan.tail)


def on_device(device: torch.device):
    """A context for launches on ``device``: Triton launches on the current CUDA device (and its
    stream), so tensors on another GPU need it made current; nothing to do otherwise."""
    if device.type == "cuda" and device.index is not None \
            and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def on_first_tensors_device(fn):
    """Runs ``fn(t, ...)`` with ``on_device(t.device)``: the launchers, which take q first."""

    @functools.wraps(fn)
    def wrapper(first, *args, **kwargs):
        with on_device(first.device):
            return fn(first, *args, **kwargs)

    return wrapper


_TUNING = None  # attngen.tuning, imported on a GPU's first launch


def seed_tuning(kernel, spec_hash: str, device_index: int) -> None:
    """Before a kernel's first launch on a device: its configs from the tuning tables (loaded
    on a GPU's first launch only: CPU-only use never imports them)."""
    global _TUNING
    if _TUNING is None:
        from . import tuning

        _TUNING = tuning
    _TUNING.seed(kernel, spec_hash, device_index)


def registered_op(qualified: str):
    """The torch.library op ``namespace::name`` (its default overload)."""
    namespace, name = qualified.split("::")
    return getattr(getattr(torch.ops, namespace), name).default


def free_op_name(namespace: str, base: str) -> str:
    """``namespace::base``, or ``base_2``, ``base_3``, ... if an op of that name exists."""
    ops = getattr(torch.ops, namespace)
    name, n = base, 1
    while hasattr(ops, name):
        n += 1
        name = f"{base}_{n}"
    return f"{namespace}::{name}"


def schema_tag(*functions) -> str:
    """A short hash of the signatures of a module's torch.library op functions, for the ops'
    names: torch.compile's on-disk caches call ops by name, so a graph compiled against an
    earlier schema of the same spec's ops (before an upgrade) must not find these."""
    text = "\n".join(f"{fn.__name__}{inspect.signature(fn)}" for fn in functions)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _default_to_interpreter() -> None:
    """With no GPU, Triton can only interpret: choose that before triton is first imported."""
    if "triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ \
            and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


_default_to_interpreter()

"""Helpers for testing ops against their reference: random valid params, error metrics.

Used by the test suite and the GPU check script; the comparison rule is FlexAttention's: a
kernel passes when its error against a float64 golden is at most 1.1× the error of the eager
reference run in the kernel's dtype, plus a small absolute floor.
"""

from __future__ import annotations

import torch

from . import ir
from .runtime import TORCH_DTYPES


def random_params(attention: ir.Attention, batch: int, heads_q: int, heads_kv: int, q_len: int,
                  kv_len: int, device, generator: torch.Generator | None = None) -> dict:
    """Valid random values for every param: float tables ~N(0, 1) (slopes in (0, 1)), integer
    [B, KV] params as sorted document ids, other integer params in [0, kv_len]."""
    sizes = {"B": batch, "H": heads_q, "HKV": heads_kv, "Q": q_len, "KV": kv_len}
    out = {}
    for p in attention.params:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in p.dims)
        dtype = TORCH_DTYPES[p.dtype]
        if p.ty == ir.FLOAT:
            value = torch.rand(shape, generator=generator) if p.dims == ("H",) else \
                torch.randn(shape, generator=generator)
        elif p.ty == ir.BOOL:
            value = torch.rand(shape, generator=generator) < 0.5
        elif p.dims == ("B", "KV"):
            value = torch.sort(torch.randint(0, 4, shape, generator=generator), dim=-1).values
        else:
            value = torch.randint(0, kv_len + 1, shape, generator=generator)
        out[p.name] = value.to(dtype=dtype, device=device)
    return out


def mean_abs_error(x: torch.Tensor, golden: torch.Tensor) -> float:
    """Mean |x - golden| over entries where the golden is finite; inf patterns must agree."""
    x, golden = x.double(), golden.double()
    finite = torch.isfinite(golden)
    if not torch.equal(torch.isfinite(x), finite) or not torch.equal(x[~finite], golden[~finite]):
        return float("inf")
    if not finite.any():
        return 0.0
    return (x[finite] - golden[finite]).abs().mean().item()


def max_rel_error(x: torch.Tensor, golden: torch.Tensor, *, floor: float = 1e-30) -> float:
    """max |x - golden| / max |golden| (at least floor), in float64 on the CPU; 0 when empty."""
    if x.numel() == 0:
        return 0.0
    x, golden = x.detach().double().cpu(), golden.detach().double().cpu()
    return ((x - golden).abs().max() / max(golden.abs().max().item(), floor)).item()


def within_rule(kernel_err: float, reference_err: float, *, factor: float = 1.1,
                floor: float = 1e-5) -> bool:
    return kernel_err <= factor * reference_err + floor


EMPTY, PARTIAL, FULL = 0, 1, 2  # tile classes, as the kernels' trace_tiles reports them


def tile_classes(keep: torch.Tensor, block_m: int, block_n: int, *, transposed: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force tile classes of a dense mask ``keep`` [B, H, M, N] (true keeps).

    Returns (nonempty, full) as bool [B, H, cdiv(M, block_m), cdiv(N, block_n)]: ``nonempty``
    where some in-bounds element is kept (the tiles a kernel must visit), ``full`` where every
    in-bounds element is kept and the tile lies inside the sequence along the loop's axis (keys
    for the forward and dQ kernels, queries for the dK/dV kernel, ``transposed``): the tiles a
    kernel may run with no mask math and no bounds checks.
    """
    B, H, M, N = keep.shape
    tm, tn = -(-M // block_m), -(-N // block_n)
    padded = torch.ones(B, H, tm * block_m, tn * block_n, dtype=torch.bool)
    padded[:, :, :M, :N] = keep.cpu()
    inside = torch.zeros_like(padded)
    inside[:, :, :M, :N] = True
    padded_kept = padded & inside
    tiles = lambda t: t.view(B, H, tm, block_m, tn, block_n)  # noqa: E731
    nonempty = tiles(padded_kept).any(5).any(3)
    full = tiles(padded).all(5).all(3)
    rows_inside = torch.arange(tm) * block_m + block_m <= M
    cols_inside = torch.arange(tn) * block_n + block_n <= N
    full &= (rows_inside[:, None] if transposed else cols_inside[None, :])
    return nonempty, full & nonempty


def paged_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, page_size: int,
                generator: torch.Generator | None = None, spare_pages: int = 3):
    """The contiguous caches [B, Hkv, C, D] as a paged cache in shuffled physical pages.

    Returns (k_pages, v_pages, page_table): pages [B * cdiv(C, page_size) + spare_pages, Hkv,
    page_size, D] (spare pages hold noise no sequence reads) and page_table int32 [B, pages].
    """
    B, Hkv, C, D = k_cache.shape
    per_seq = -(-C // page_size)
    total = B * per_seq + spare_pages
    order = torch.randperm(total, generator=generator)[: B * per_seq].view(B, per_seq)
    pages = []
    for cache in (k_cache, v_cache):
        padded = torch.randn(B, Hkv, per_seq * page_size, D, generator=generator).to(cache)
        padded[:, :, :C] = cache
        paged = torch.randn(total, Hkv, page_size, D, generator=generator).to(cache)
        paged[order.flatten()] = (padded.view(B, Hkv, per_seq, page_size, D)
                                  .permute(0, 2, 1, 3, 4).reshape(B * per_seq, Hkv, page_size, D))
        pages.append(paged)
    return pages[0], pages[1], order.to(device=k_cache.device, dtype=torch.int32)


def decode_reference(attention: ir.Attention, q, k_cache, v_cache, *, kv_len=None,
                     page_table=None, scale=None, **params):
    """The spec's eager reference for a decode call, one sequence at a time: its first kv_len[b]
    keys (gathered from the pages), params cut to the sequence (B) and its keys (KV). Returns
    (out, lse) in the inputs' dtype."""
    from .reference import reference

    B, Hq, M, D = q.shape
    if page_table is not None:
        pages = page_table.long()
        k_cache, v_cache = (c[pages].permute(0, 2, 1, 3, 4).flatten(2, 3) for c in (k_cache, v_cache))
    capacity = k_cache.shape[2]
    lengths = [capacity] * B if kv_len is None else [int(n) for n in kv_len]
    outs, lses = [], []
    for b, n in enumerate(lengths):
        cut = {}
        for p in attention.params:
            value = params[p.name]
            if isinstance(value, torch.Tensor) and p.dims:
                value = value[tuple(slice(b, b + 1) if d == "B" else slice(0, n) if d == "KV"
                                    else slice(None) for d in p.dims)]
            cut[p.name] = value
        out, lse = reference(attention, q[b:b + 1], k_cache[b:b + 1, :, :n],
                             v_cache[b:b + 1, :, :n], scale=scale, return_lse=True, **cut)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)

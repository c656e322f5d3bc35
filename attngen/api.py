"""The Python API: load a spec file (or text) and get its attention ops."""

from __future__ import annotations

from pathlib import Path

from . import ir
from .checker import check
from .parser import parse


def parse_and_check(source: str, path: str | None = None) -> list[ir.Attention]:
    """Parse and check spec text; raise ``SpecError`` (with every error found) when invalid."""
    return check(parse(source, path))


def read_spec(path_or_text: str | Path) -> tuple[str, str | None]:
    """Spec text and its path: a ``Path`` or a string without '{' names a file."""
    if isinstance(path_or_text, Path) or "{" not in str(path_or_text):
        path = Path(path_or_text)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"spec file not found: {path}") from None
    return str(path_or_text), None


class AttentionOp:
    """One attention of a spec, built: ``op(q, k, v, **params)`` runs its Triton kernels and
    ``op.reference(q, k, v, **params)`` evaluates the spec eagerly (the test oracle).

    ``op.module`` is the generated module (from the on-disk cache), ``op.module_path`` its file.
    """

    def __init__(self, attention: ir.Attention, source_name: str):
        from .cache import import_module, module_path

        self.spec = attention
        self.name = attention.name
        self.module_path = module_path(attention, source_name)
        self.module = import_module(self.module_path, attention.name)
        self._fn = getattr(self.module, attention.name)

    def __call__(self, q, k, v, *, scale=None, return_lse=False, **params):
        return self._fn(q, k, v, scale=scale, return_lse=return_lse, **params)

    def reference(self, q, k, v, *, scale=None, return_lse=False, **params):
        """Dense PyTorch evaluation of the spec in the inputs' dtype (float64 for a golden)."""
        from .reference import reference

        return reference(self.spec, q, k, v, scale=scale, return_lse=return_lse, **params)

    def trace_tiles(self, q, k, v, *, kernel="fwd", block_m=16, block_n=16, **params):
        """Debugging: the tiles ``kernel`` (fwd, dq, dkdv) visits with these block sizes, int8
        [B, Hq, query tiles, key tiles]: 0 skipped (EMPTY), 1 PARTIAL, 2 FULL (no mask math)."""
        return self.module.trace_tiles(q, k, v, kernel=kernel, block_m=block_m, block_n=block_n,
                                       **params)

    def block_mask(self, batch, heads, q_len, kv_len, *, heads_kv=None, block=None, device=None,
                   **params):
        """The mask classified per block (rows x keys, default 128 x 128) for calls of these
        shapes, computed on the device by a generated kernel; pass it as ``block_mask=`` to skip
        EMPTY blocks and the mask math of FULL ones where the static analysis cannot (masks read
        from tables, arbitrary expressions). ``params``: the mask's params, as the calls pass
        them. Reuse it across layers; build a new one when the shapes or those params change."""
        return self.module.block_mask(batch, heads, q_len, kv_len, heads_kv=heads_kv, block=block,
                                      device=device, **params)

    def decode(self, q, k_cache, v_cache, *, kv_len=None, page_table=None, scale=None,
               return_lse=False, num_splits=None, **params):
        """Attention of a few new queries against a KV cache (inference; no backward).

        q [B, Hq, q_len, D]; caches [B, Hkv, capacity, D], or paged [num_pages, Hkv, page_size,
        D] with ``page_table`` int32 [B, max_pages]; ``kv_len`` int32 [B] valid keys per sequence
        (default: the capacity). Positions are bottom-right per sequence, as in training.
        """
        return getattr(self._decode_module(), f"{self.name}_decode")(
            q, k_cache, v_cache, kv_len=kv_len, page_table=page_table, scale=scale,
            return_lse=return_lse, num_splits=num_splits, **params)

    def trace_decode_tiles(self, q, k_cache, v_cache, *, kv_len=None, page_table=None,
                           block_n=16, num_splits=None, **params):
        """Debugging: the key tiles the decode kernel visits with this block_n, int8 [B, Hkv,
        row blocks, key tiles]: 0 skipped (EMPTY), 1 PARTIAL, 2 FULL (no mask math)."""
        return self._decode_module().trace_decode_tiles(
            q, k_cache, v_cache, kv_len=kv_len, page_table=page_table, block_n=block_n,
            num_splits=num_splits, **params)

    def _decode_module(self):
        if "decode" not in self.spec.kernels:
            raise NotImplementedError(f"{self.name}: the spec's `kernels` statement leaves out "
                                      f"decode; add it to get decode kernels")
        return self.module

    def __repr__(self) -> str:
        return f"<attngen op {self.spec.summary()}>"


def load(path_or_text: str | Path, name: str | None = None) -> AttentionOp:
    """The attention of a spec file or text: the only one, or the one called ``name``."""
    source, path = read_spec(path_or_text)
    attentions = parse_and_check(source, path)
    source_name = Path(path).name if path else "<text>"
    if name is None:
        if len(attentions) > 1:
            names = ", ".join(a.name for a in attentions)
            raise ValueError(f"{path or 'the spec'} defines {len(attentions)} attentions "
                             f"({names}); pass name= to choose one")
        return AttentionOp(attentions[0], source_name)
    for attention in attentions:
        if attention.name == name:
            return AttentionOp(attention, source_name)
    names = ", ".join(a.name for a in attentions)
    raise ValueError(f"no attention named {name!r} in {path or 'the spec'}; it defines {names}")


def document_ids(cu_seqlens, length: int | None = None):
    """Document ids for a ``document(ids)`` mask from cumulative sequence lengths, as
    FlashAttention's varlen functions take them.

    ``cu_seqlens``: int tensor [num_docs + 1] (or [B, num_docs + 1] for a batch), starting at 0
    and never decreasing. Returns int32 ids [length] (or [B, length]): position p holds the index
    of the document it falls in; positions past the last document (padding) get id num_docs, so
    ids never decrease and the kernels classify tiles exactly. ``length`` defaults to the last
    cumulative length (the largest one for a batch).
    """
    import torch

    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype.is_floating_point \
            or cu_seqlens.dtype == torch.bool or cu_seqlens.ndim not in (1, 2) \
            or cu_seqlens.shape[-1] < 1:
        got = (f"{cu_seqlens.dtype} tensor of shape {list(cu_seqlens.shape)}"
               if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__)
        raise ValueError(f"document_ids: cu_seqlens must be an integer tensor [num_docs + 1] or "
                         f"[B, num_docs + 1], got {got}")
    if bool((cu_seqlens[..., 0] != 0).any()) or bool((cu_seqlens.diff(dim=-1) < 0).any()):
        raise ValueError(f"document_ids: cu_seqlens must start at 0 and never decrease, got "
                         f"{cu_seqlens.tolist()}")
    total = int(cu_seqlens[..., -1].max())
    length = total if length is None else length
    if length < total:
        raise ValueError(f"document_ids: length must cover every document ({total} tokens), "
                         f"got {length}")
    positions = torch.arange(length, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    ends = cu_seqlens[..., 1:].contiguous()
    if ends.ndim == 2:
        positions = positions.expand(ends.shape[0], length).contiguous()
    return torch.searchsorted(ends, positions, right=True).to(torch.int32)

"""Render stage: checked IR → the source text of one generated module (pure; no torch, no GPU).

Templates are Triton source with named holes (``score_hook``, ``mask_hook``) and constexpr flags;
they load from the package's ``templates/`` through a ``StrictUndefined`` Jinja environment. The
result is formatted with black, so rebuilding a spec reproduces its module byte for byte.
"""

from __future__ import annotations

import hashlib
from functools import cache

import black
import jinja2

from . import ir
from .lower import NAMES_TRANSPOSED, Lowerer, is_tile_read, lower
from .sparsity import analyse
from .resources import templates_dir

VERSION = "0.1.0"
LINE_LENGTH = 100


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = repr
    return env


def spec_hash(attention: ir.Attention) -> str:
    return hashlib.sha256(attention.canonical().encode()).hexdigest()


def _knobs(configs: tuple[ir.KernelConfig, ...], kernel: str, as_list: bool) -> dict | None:
    for config in configs:
        if config.kernel == kernel:
            return {k.name: (list(k.values) if as_list else k.values[0]) for k in config.knobs}
    return None


def render(attention: ir.Attention, source_name: str = "<spec>") -> str:
    """The generated Python module for one attention, formatted."""
    low = lower(attention)
    sparsity = analyse(attention)
    # what a tile whose key range decides the document conjuncts still tests (sparsity.decided)
    mask_decided = None if sparsity.undecided is None else Lowerer(attention)(sparsity.undecided)
    mask_decided_t = None if sparsity.undecided is None else \
        Lowerer(attention, NAMES_TRANSPOSED)(sparsity.undecided)  # the dK/dV kernel's
    mask_names = {n.param if isinstance(n, ir.Index) else n.id for n in ir.walk(attention.mask)
                  if isinstance(n, (ir.Name, ir.Index))}
    params = [
        {"name": p.name, "dtype": p.dtype, "dims": p.dims, "grad": p.grad, "arg": k.arg,
         "stride_args": k.stride_args, "ndim": k.ndim}
        for p, k in zip(attention.params, low.params)
    ]
    mask_params = [p for p in params if p["name"] in mask_names]
    tile_loads = sum(1 for root in (attention.score, attention.mask) for n in ir.walk(root)
                     if isinstance(n, ir.Index) and is_tile_read(n))
    context = {
        "version": VERSION,
        "name": attention.name,
        "source_name": source_name,
        "spec_text": attention.source + "\n",
        "spec_lines": attention.source.splitlines(),
        "spec_hash": spec_hash(attention),
        "params": params,
        "param_signature": ", ".join(p.signature() for p in attention.params) or "none",
        "mask_params": mask_params,
        "mask_param_signature": ", ".join(p.signature() for p in attention.params
                                          if p.name in mask_names) or "none",
        "tile_loads": tile_loads,
        "mask_reads": tuple(sorted(mask_names & ({"b", "h", "hkv"} | {p.name for p in attention.params}))),
        "dtypes": attention.dtypes,
        "head_dims": attention.head_dims,
        "score_text": attention.score_text,
        "mask_text": attention.mask_text,
        "score_hook": low.score,
        "mask_hook": low.mask if low.mask is not None else "True",
        "mask_hook_decided": mask_decided,  # None: no conjunct can be decided per tile
        "mask_hook_decided_t": mask_decided_t,
        "has_mask": low.mask is not None,
        "score_is_identity": low.score_is_identity,
        # the forward's tile loop: one loop over PARTIAL and FULL tiles where the score is plain
        # (8 documents 8% faster on an H200), the PARTIAL and FULL loops otherwise: with a score
        # hook the mask's branch sits between the scaled score and the exponent, so ptxas cannot
        # fuse them into FMAs (sm_90 SASS of the T5 loop: 64 more FADD, 64 fewer FFMA per thread
        # and tile) and the forwards ran 4-19% slower (ALiBi, the T5 table)
        "one_loop": low.score_is_identity,
        "key_range": sparsity.key_range,
        "row_runs": sparsity.row_runs,
        "key_runs": sparsity.key_runs,
        "query_range": sparsity.query_range,
        "documents": sparsity.documents,
        "fwd_fixed": _knobs(attention.blocks, "fwd", as_list=False),
        "fwd_space": _knobs(attention.tune, "fwd", as_list=True),
        "bwd_fixed": _knobs(attention.blocks, "bwd", as_list=False),
        "bwd_space": _knobs(attention.tune, "bwd", as_list=True),
        "score_hook_t": low.score_t,
        "mask_hook_t": low.mask_t if low.mask_t is not None else "True",
        "score_grad_hook": low.score_grad or "1.0",
        "score_grad_hook_t": low.score_grad_t or "1.0",
        "score_grad_is_one": low.score_grad is None,
        "score_grad_text": low.score_grad_text,
        "grad_terms": low.grad_terms,
        # dQ kernels: (name suffix, param-gradient terms); `_frozen` for calls that need none
        "dq_variants": [("", low.grad_terms)] + ([("_frozen", [])] if low.grad_terms else []),
        # both dQ kernels take the count of the atomically accumulated gradients' copies
        "grad_copies": any(t.varying for t in low.grad_terms),
        "has_bwd": "bwd" in attention.kernels,
        "has_decode": "decode" in attention.kernels,
        "mask_uses_head": any(isinstance(n, ir.Name) and n.id == "h" for n in ir.walk(attention.mask)),
        "decode_fixed": _knobs(attention.blocks, "decode", as_list=False),
        "decode_space": _knobs(attention.tune, "decode", as_list=True),
    }
    text = _environment().get_template("module.py.jinja").render(**context)
    return black.format_str(text, mode=black.Mode(line_length=LINE_LENGTH))

"""Ahead-of-time compilation of generated kernels for a GPU target, on any machine.

``triton.compile`` builds PTX and a cubin for e.g. sm_90 without a GPU, so CI proves every
kernel compiles for Hopper (and uses wgmma) before it ever reaches one. The generated module
must be imported with TRITON_INTERPRET unset or 0 (interpreted kernels cannot be compiled);
``attngen compile`` arranges that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}


@dataclass(frozen=True)
class CompiledKernel:
    kernel: str
    dtype: str
    head_dim: int
    arch: int
    config: str
    shared_memory: int  # bytes, as the compiler laid it out
    uses_wgmma: bool  # Hopper warpgroup MMA instructions in the PTX
    cubin_bytes: int


def _fwd_signature(module, fn, dtype: torch.dtype) -> dict[str, str]:
    """Types of the forward kernel's arguments, following the generated launch order."""
    elem = _TRITON_TYPES[dtype]
    params = {p.name: p for p in module.PARAMS}
    sig: dict[str, str] = {}
    for name in fn.arg_names:
        if name in ("Q", "K", "V", "Out"):
            sig[name] = f"*{elem}"
        elif name == "Lse":
            sig[name] = "*fp32"
        elif name == "scale":
            sig[name] = "fp32"
        elif name.startswith("p_") and name[2:] in params:
            sig[name] = f"*{_TRITON_TYPES[_torch_dtype(params[name[2:]].dtype)]}"
        else:  # strides, sizes, buckets: 32-bit integers
            sig[name] = "i32"
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            sig[name] = "constexpr"
    return sig


def _torch_dtype(spec_dtype: str) -> torch.dtype:
    from .runtime import TORCH_DTYPES

    return TORCH_DTYPES[spec_dtype]


def compile_fwd(module, dtype: torch.dtype, head_dim: int, arch: int = 90,
                config_index: int = 0) -> CompiledKernel:
    """Compile a generated module's forward kernel for ``sm_<arch>`` with one autotune config."""
    autotuner = getattr(module, f"{module.NAME}_fwd")
    fn = autotuner.fn
    config = autotuner.configs[config_index]
    constants = {
        "HEAD_DIM": head_dim,
        "BLOCK_D": triton.next_power_of_2(head_dim),
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
        **module.FWD_FLAGS,
        **config.kwargs,
    }
    # 16-byte alignment of every pointer, as torch allocations guarantee
    sig = _fwd_signature(module, fn, dtype)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if sig[n].startswith("*")}
    src = ASTSource(fn, sig, constexprs=constants, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": config.num_warps,
                                       "num_stages": config.num_stages})
    ptx = compiled.asm["ptx"]
    meta = compiled.metadata
    return CompiledKernel(
        kernel=fn.__name__, dtype=_TRITON_TYPES[dtype], head_dim=head_dim, arch=arch,
        config=f"m={config.kwargs['BLOCK_M']} n={config.kwargs['BLOCK_N']} "
               f"warps={config.num_warps} stages={config.num_stages}",
        shared_memory=meta.shared, uses_wgmma="wgmma" in ptx,
        cubin_bytes=len(compiled.asm.get("cubin", b"")))

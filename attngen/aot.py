"""Ahead-of-time compilation of generated kernels for a GPU target, on any machine.

``triton.compile`` builds PTX and a cubin for e.g. sm_90 without a GPU, so CI proves every
kernel compiles for Hopper (and uses wgmma) before it ever reaches one. Arguments are
specialised as a launch on contiguous tensors would be (pointers and, when the head dim is a
multiple of 16, strides divisible by 16), and configs go through the same pruning as at run
time. The generated module must be imported with TRITON_INTERPRET unset or 0 (interpreted
kernels cannot be compiled); ``attngen compile`` arranges that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .runtime import (SHARED_MEMORY_LIMITS, TMA_BOXES, TORCH_DTYPES, fit_shared_memory,
                      for_head_dim, sparse_flags)

_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}
_INPUT_POINTERS = {"Q", "K", "V", "Out", "DO", "DQ", "DK", "DV"}  # the inputs' dtype
_FP32_POINTERS = {"Lse", "Lse2", "Delta", "DLse", "Part", "PartLse"}  # and param-gradient buffers G<i>


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
    registers: int | None = None  # per thread (ptxas -v; with resources=True)
    spill_bytes: int | None = None  # stored to local memory per thread (ptxas -v)


def ptxas_resources(ptx: str, arch: int) -> tuple[int, int]:
    """Registers per thread and spill-store bytes of a kernel, from ``ptxas -v`` (Triton's own
    ptxas) on its PTX: register pressure is visible without a GPU."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/kernel.ptx"
        with open(src, "w", encoding="utf-8") as f:
            f.write(ptx)
        log = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}",
                              src, "-o", f"{tmp}/kernel.cubin"],
                             capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    if registers is None:
        raise RuntimeError(f"ptxas -v reported no register count:\n{log[-2000:]}")
    return int(registers.group(1)), int(spills.group(1)) if spills else 0


def _signature(module, fn, dtype: torch.dtype, head_dim: int,
               constants: dict) -> tuple[dict, dict]:
    """Argument types and specialisation attributes of a generated kernel (``constants``: its
    constexprs; with TMA, KDesc, VDesc, QDesc, DODesc are descriptors of tile-sized boxes)."""
    params = {p.name: p for p in module.PARAMS}
    sig: dict[str, str] = {}
    attrs = {}
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            sig[name] = "constexpr"
        elif name in TMA_BOXES:  # a descriptor, or None (constexpr) without TMA
            sig[name] = (f"tensordesc<{_TRITON_TYPES[dtype]}[1, 1, "
                         f"{constants[TMA_BOXES[name]]}, {constants['BLOCK_D']}]>"
                         if constants.get("TMA") else "constexpr")
            continue
        elif name in _INPUT_POINTERS:
            sig[name] = f"*{_TRITON_TYPES[dtype]}"
        elif name in _FP32_POINTERS or (name.startswith("G") and name[1:].isdigit()):
            sig[name] = "*fp32"
        elif name.startswith("p_") and name[2:] in params:
            sig[name] = f"*{_TRITON_TYPES[TORCH_DTYPES[params[name[2:]].dtype]]}"
        elif name in ("Trace", "Classes"):
            sig[name] = "*i8"
        elif name.startswith(("doc_runs_", "doc_sorted_")) or name in (
                "Runs", "Sorted", "KvLen", "PageTable", "SparseRows", "SparseCols"):
            sig[name] = "*i32"
        elif name == "Ids":  # the document runs kernel reads a document table
            sig[name] = f"*{_TRITON_TYPES[TORCH_DTYPES[params[module.DOCUMENTS[0]].dtype]]}"
        elif name == "scale":
            sig[name] = "fp32"
        else:  # strides, sizes, buckets
            sig[name] = "i32"
        aligned = sig[name].startswith("*") or (name.startswith("stride") and head_dim % 16 == 0)
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


BLOCK_SPARSE = "_block_sparse"  # a kernel name's suffix: its variant that reads a block mask
FROZEN = "_frozen"  # a dQ kernel name's suffix: its variant without param-gradient terms
GROUPS = ("fwd", "bwd", "decode", "block_mask")


def expects_wgmma(kernel: str) -> bool:
    """Whether an fp16/bf16 kernel compiled for sm_90 must use wgmma: the forward and backward
    kernels. The preprocess, document-runs, block-classes and decode-combine kernels have no
    matrix product; decode's tiles of 16-64 query rows are below a warpgroup MMA's 64 and use
    mma.sync (it is memory-bound)."""
    return "preprocess" not in kernel and kernel != "_document_runs" and "_decode" not in kernel \
        and not kernel.endswith("_block_classes")


def kernels_of(module, which: tuple[str, ...] = GROUPS) -> list[str]:
    """Names of the generated kernels of a module, in pipeline order (``which``: fwd, bwd,
    decode, block_mask; a group the spec does not build is skipped). The block_mask group is
    the block-classes kernel and the variants of the forward and backward kernels that read a
    block mask's lists (named with the suffix _block_sparse). Specs with param gradients have a
    second dQ kernel, ``_frozen``, for calls whose params need none."""
    names = []
    has_bwd = hasattr(module, f"{module.NAME}_bwd_dq")
    frozen = hasattr(module, f"{module.NAME}_bwd_dq{FROZEN}")
    if "fwd" in which:
        names += ["_document_runs"] if module.DOCUMENTS else []
        names.append(f"{module.NAME}_fwd")
    if "bwd" in which and has_bwd:
        names += [f"_{module.NAME}_bwd_preprocess", f"{module.NAME}_bwd_dkdv",
                  f"{module.NAME}_bwd_dq"]
        names += [f"{module.NAME}_bwd_dq{FROZEN}"] if frozen else []
    if "decode" in which and hasattr(module, f"{module.NAME}_decode_kernel"):
        names += [f"{module.NAME}_decode_kernel", f"_{module.NAME}_decode_combine"]
    if "block_mask" in which:
        names += [f"_{module.NAME}_block_classes", f"{module.NAME}_fwd{BLOCK_SPARSE}"]
        if has_bwd:
            names += [f"{module.NAME}_bwd_dkdv{BLOCK_SPARSE}", f"{module.NAME}_bwd_dq{BLOCK_SPARSE}"]
            names += [f"{module.NAME}_bwd_dq{FROZEN}{BLOCK_SPARSE}"] if frozen else []
    return names


def compile_kernel(module, kernel: str, dtype: torch.dtype, head_dim: int, arch: int = 90,
                   config_index: int = 0, resources: bool = False) -> CompiledKernel:
    """Compile one generated kernel for ``sm_<arch>`` with one of its autotune configs
    (``resources``: also its registers and spills, from ptxas)."""
    variant = BLOCK_SPARSE if kernel.endswith(BLOCK_SPARSE) else ""
    kernel = kernel[:len(kernel) - len(variant)]
    obj = getattr(module, kernel)
    block_d = triton.next_power_of_2(head_dim)
    constants = {"HEAD_DIM": head_dim, "BLOCK_D": block_d}
    if isinstance(obj, triton.runtime.Autotuner):
        fn = obj.fn
        # the config the runtime would launch: of the configs for this head dim, the first from
        # config_index on whose tiles fit
        decode_m = 16 if kernel.endswith("_decode_kernel") else None
        role = "dkdv" if kernel.endswith("_bwd_dkdv") else "dq" if "_bwd_dq" in kernel \
            else "fwd"
        configs = for_head_dim(obj.configs, block_d)[config_index:]
        config = fit_shared_memory(configs, block_d, dtype.itemsize,
                                   SHARED_MEMORY_LIMITS.get(arch, SHARED_MEMORY_LIMITS[90]),
                                   module.TILE_LOADS, decode_m, role)[0]
        flags = module.BWD_FLAGS if "_bwd_" in kernel else module.FWD_FLAGS
        if kernel.endswith("_bwd_dkdv"):  # the variant looping over query heads (GQA)
            flags = dict(flags, GQA=True)
        if not kernel.endswith("_decode_kernel"):  # a block mask of 128 x 128 blocks, or none
            flags = dict(flags, **sparse_flags((128, 128) if variant else ()))
        if "TMA" in fn.arg_names:  # streamed tiles come by TMA on Hopper (runtime.tma_descriptors)
            tma = arch == 90 and os.environ.get("ATTNGEN_TMA") != "0"
            flags = dict(flags, TMA=tma)
            if not tma:
                flags.update({name: None for name in TMA_BOXES if name in fn.arg_names})
        if kernel.endswith("_decode_kernel"):  # the paged variant, one token of 4:1 GQA
            flags = dict(flags, PAGED=True, BLOCK_M=16)
        constants.update(PRECISION="ieee" if dtype == torch.float32 else "tf32", **flags,
                         **config.kwargs)
        num_warps, num_stages = config.num_warps, config.num_stages
        label = (f"m={constants['BLOCK_M']} n={constants['BLOCK_N']} "
                 f"warps={num_warps} stages={num_stages}")
    elif kernel == "_document_runs":  # metadata of document masks: fixed launch
        fn = obj
        constants = {"BLOCK": 1024}
        num_warps, num_stages, label = 4, 1, "block=1024"
    elif kernel.endswith("_block_classes"):  # a block mask's classes: fixed launch
        fn = obj
        constants = {"SPARSE_M": 128, "SPARSE_N": 128, "CHUNK_M": 16}
        num_warps, num_stages, label = 4, 1, "block=128x128"
    elif kernel.endswith("_decode_combine"):  # merges the splits' partial outputs
        fn = obj
        constants.update(BLOCK_S=16)
        num_warps, num_stages, label = 4, 1, "splits=16"
    else:  # the backward's preprocess kernel: fixed launch
        fn = obj
        constants.update(HAS_DLSE=True, BLOCK_M=64)
        num_warps, num_stages, label = 4, 1, "m=64"
    sig, attrs = _signature(module, fn, dtype, head_dim, constants)
    compiled = triton.compile(ASTSource(fn, sig, constexprs=constants, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = compiled.asm["ptx"]
    registers, spill_bytes = ptxas_resources(ptx, arch) if resources else (None, None)
    return CompiledKernel(
        kernel=fn.__name__ + variant, dtype=_TRITON_TYPES[dtype], head_dim=head_dim, arch=arch,
        config=label, shared_memory=compiled.metadata.shared, uses_wgmma="wgmma" in ptx,
        cubin_bytes=len(compiled.asm.get("cubin", b"")), registers=registers,
        spill_bytes=spill_bytes)

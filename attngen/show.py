"""What ``attngen show`` prints: a spec's generated source (whole, or one kernel group) and a
picture of its mask.

The source is exactly what ``attngen build`` writes (``render``); a kernel group is cut out of it
with ``ast``. The mask comes from the reference evaluation (``reference.mask_grid``), the same
oracle the kernels are tested against, drawn as unicode blocks (downsampled to the terminal
width) or written as a PNG. Only the mask picture imports torch.
"""

from __future__ import annotations

import ast
import itertools
import math
import struct
import zlib
from dataclasses import dataclass

from . import ir

KERNEL_GROUPS = ("fwd", "bwd", "decode", "all")


# ---- source ------------------------------------------------------------------------------------


def _is_triton_function(node: ast.AST) -> bool:
    """A top-level function decorated with ``triton.jit`` (possibly under ``triton.autotune``)."""
    if not isinstance(node, ast.FunctionDef):
        return False
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                and target.value.id == "triton" and target.attr == "jit":
            return True
    return False


def _in_group(name: str, group: str, module_name: str) -> bool:
    if group == "all":
        return True
    # launched before the forward: document runs, a block mask's classes
    if group == "fwd" and name in ("_document_runs", f"_{module_name}_block_classes"):
        return True
    return group in name.removeprefix("_").removeprefix(module_name).split("_")


def kernel_source(source: str, group: str, module_name: str) -> str:
    """The Triton functions of one kernel group (fwd, bwd, decode, all) of a generated module,
    with the ``@triton.jit`` helpers they call, in module order.

    A group is the kernels whose names carry it (``llama_fwd``, ``_llama_fwd_tiles``,
    ``llama_bwd_dq``, ``llama_decode_kernel``, ...). Raises ``LookupError`` when the module has
    none (e.g. a spec whose ``kernels`` statement leaves the group out).
    """
    if group not in KERNEL_GROUPS:
        raise ValueError(f"kernel group must be one of {', '.join(KERNEL_GROUPS)}, got {group!r}")
    tree = ast.parse(source)
    functions = {node.name: node for node in tree.body if _is_triton_function(node)}
    wanted = {name for name in functions if _in_group(name, group, module_name)}
    if not wanted:
        have = sorted({g for g in KERNEL_GROUPS[:-1] for name in functions
                       if _in_group(name, g, module_name)})
        raise LookupError(f"{module_name} has no {group} kernels (it has: "
                          f"{', '.join(have) or 'none'}); the spec's `kernels` statement decides "
                          f"which are built")
    pending = list(wanted)
    while pending:  # the jit helpers the chosen kernels call, transitively
        for node in ast.walk(functions[pending.pop()]):
            if isinstance(node, ast.Name) and node.id in functions and node.id not in wanted:
                wanted.add(node.id)
                pending.append(node.id)
    lines = source.splitlines()
    pieces = []
    for name, node in functions.items():
        if name in wanted:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            pieces.append("\n".join(lines[start - 1:node.end_lineno]))
    return "\n\n\n".join(pieces) + "\n"


# ---- mask params -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamValue:
    value: object  # what mask_grid takes: a tensor or a Python number
    note: str  # how it was chosen, for the picture's caption


def mask_params(attention: ir.Attention) -> set[str]:
    """Names of the params the mask reads."""
    used = set()
    for node in ir.walk(attention.mask):
        if isinstance(node, ir.Index):
            used.add(node.param)
        elif isinstance(node, ir.Name):
            used.add(node.id)
    return used & {p.name for p in attention.params}


def _document_tables(attention: ir.Attention) -> set[str]:
    from .sparsity import analyse

    return set(analyse(attention).documents)


def _number(param: ir.Param, text: str):
    text = text.strip()
    try:
        if param.dtype == "bool":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if param.dtype.startswith(("i", "u")):
            return int(text)
        return float(text)
    except ValueError:
        raise ValueError(f"--param {param.name}: expected a value of type {param.dtype}, got "
                         f"{text!r}") from None


def _document_lengths(total: int) -> list[int]:
    """Three documents of uneven lengths (3/8, 1/4, the rest) filling ``total`` tokens."""
    first, second = max(1, total * 3 // 8), max(1, total // 4)
    lengths = [n for n in (first, second, total - first - second) if n > 0]
    return lengths if sum(lengths) == total else [total]


def resolve_params(attention: ir.Attention, shapes, given: dict[str, str]) -> dict[str, ParamValue]:
    """Values for every param of ``attention`` over ``shapes``, for drawing its mask.

    ``given`` maps names to ``--param`` texts: a number fills the param (a scalar, or every
    element of a tensor), a comma list gives every element, and a document table (read by
    ``document(ids)``) takes document lengths (``10,20,34``; padding after them gets its own id).
    Params the mask reads get defaults where one makes sense: a document table three uneven
    documents, an integer (a window size, a prefix length) kv_len // 4. Params it does not read
    are zeros. A mask param with no sensible default raises ``ValueError`` naming it.
    """
    import torch

    from .api import document_ids
    from .runtime import TORCH_DTYPES

    declared = {p.name: p for p in attention.params}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"--param {unknown[0]}: {attention.name} has no such param (it takes: "
                         f"{', '.join(declared) or 'none'})")
    used, tables = mask_params(attention), _document_tables(attention)
    out = {}
    for p in attention.params:
        shape = tuple(shapes.dim(d) for d in p.dims)
        dtype = TORCH_DTYPES[p.dtype]
        text = given.get(p.name)
        if p.name in tables and (text is not None or p.name in used):
            if text is None:
                lengths, note = _document_lengths(shapes.kv_len), "default"
            else:
                try:
                    lengths = [int(n) for n in text.split(",")]
                except ValueError:
                    raise ValueError(f"--param {p.name}: expected document lengths like "
                                     f"10,20,34, got {text!r}") from None
                note = "given"
                if any(n < 0 for n in lengths) or sum(lengths) > shapes.kv_len:
                    raise ValueError(f"--param {p.name}: document lengths must be >= 0 and add "
                                     f"up to at most kv_len {shapes.kv_len}, got {text!r}")
            cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)
            ids = document_ids(cu, shapes.kv_len).to(dtype)
            value = ids.expand(*shape).contiguous()
            out[p.name] = ParamValue(value, f"{p.name} = documents of "
                                            f"{', '.join(map(str, lengths))} tokens ({note})")
            continue
        if text is not None:
            numbers = [_number(p, part) for part in text.split(",")]
            count = math.prod(shape)
            if len(numbers) not in (1, count):
                raise ValueError(f"--param {p.name}: expected 1 or {count} values for shape "
                                 f"{list(shape)}, got {len(numbers)}")
            if not p.dims:
                value = numbers[0]
            elif len(numbers) == 1:
                value = torch.full(shape, numbers[0], dtype=dtype)
            else:
                value = torch.tensor(numbers, dtype=dtype).reshape(shape)
            out[p.name] = ParamValue(value, f"{p.name} = {text} (given)")
            continue
        if p.name not in used:
            value = torch.zeros(shape, dtype=dtype) if p.dims else _zero(p)
            out[p.name] = ParamValue(value, "")
            continue
        positional = any(d in ("Q", "KV") for d in p.dims)
        if p.dtype.startswith("i") and not positional:
            default = max(1, shapes.kv_len // 4)
            value = torch.full(shape, default, dtype=dtype) if p.dims else default
            out[p.name] = ParamValue(value, f"{p.name} = {default} (default: kv_len // 4)")
            continue
        raise ValueError(f"the mask reads param {p.signature()}, which has no default; pass "
                         f"--param {p.name}=VALUE (a number fills it, or a comma list of "
                         f"{math.prod(shape) if p.dims else 1} values)")
    return out


def _zero(p: ir.Param):
    return False if p.dtype == "bool" else (0 if p.dtype.startswith("i") else 0.0)


def mask_grid(attention: ir.Attention, q_len: int, kv_len: int, given: dict[str, str],
              head: int = 0):
    """(bool [q_len, kv_len] for batch 0 and query head ``head``, the params' notes)."""
    from .reference import mask_grid as reference_mask_grid
    from .runtime import Shapes

    shapes = Shapes(batch=1, heads_q=head + 1, heads_kv=head + 1, q_len=q_len, kv_len=kv_len,
                    head_dim=64)
    params = resolve_params(attention, shapes, given)
    grid = reference_mask_grid(attention, shapes, **{k: v.value for k, v in params.items()})
    return grid[0, head], [v.note for v in params.values() if v.note]


# ---- pictures ----------------------------------------------------------------------------------

KEPT, PARTLY, MASKED = "█", "▒", "·"
ASCII_CELLS = {KEPT: "#", PARTLY: "+", MASKED: "."}


def draw(grid, max_width: int = 80, ascii_only: bool = False) -> tuple[list[str], int]:
    """Lines picturing a bool [q_len, kv_len] mask: a row per query, two characters per key
    (square cells); when kv_len does not fit ``max_width`` each cell covers an s x s block
    (``▒`` where the block is partly kept). Returns the lines (each led by its first query's
    row index) and s."""
    import torch

    rows, cols = grid.shape
    label = len(str(max(rows - 1, 0)))
    fit = max(1, (max_width - label - 1) // 2)
    step = max(1, math.ceil(cols / fit))
    cells_r, cells_c = math.ceil(rows / step), math.ceil(cols / step)

    def block_sums(t):  # per step x step block, zero-padded at the far edges
        padded = torch.zeros(cells_r * step, cells_c * step, dtype=torch.int64)
        padded[:rows, :cols] = t
        return padded.view(cells_r, step, cells_c, step).sum(dim=(1, 3))

    kept, size = block_sums(grid.to(torch.int64)), block_sums(torch.ones(rows, cols))
    chars = (ASCII_CELLS[KEPT], ASCII_CELLS[PARTLY], ASCII_CELLS[MASKED]) if ascii_only \
        else (KEPT, PARTLY, MASKED)
    ruler = [" "] * (label + 1 + 2 * cells_c)
    for c in range(0, cells_c, 8 if step == 1 else 4):  # key indices above every few cells
        text = str(c * step)
        at = label + 1 + 2 * c
        if at + len(text) <= len(ruler) and all(ch == " " for ch in ruler[at - 1:at + len(text)]):
            ruler[at:at + len(text)] = text
    lines = ["".join(ruler).rstrip()]
    for r in range(cells_r):
        row = "".join(
            (chars[0] if k == n else chars[2] if k == 0 else chars[1]) * 2
            for k, n in zip(kept[r].tolist(), size[r].tolist()))
        lines.append(f"{r * step:>{label}} {row}")
    return lines, step


def write_png(path, grid, min_size: int = 512) -> tuple[int, int]:
    """Write a bool [rows, cols] mask as a PNG (kept dark, masked light), each entry a square of
    pixels so the picture is at least ``min_size`` wide where possible. Returns (width, height)."""
    import torch

    rows, cols = grid.shape
    scale = max(1, min_size // max(rows, cols, 1))
    kept = torch.tensor([40, 70, 140], dtype=torch.uint8)
    masked = torch.tensor([240, 240, 240], dtype=torch.uint8)
    pixels = torch.where(grid.bool()[..., None], kept, masked)
    pixels = pixels.repeat_interleave(scale, 0).repeat_interleave(scale, 1).contiguous()
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].numpy().tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return width, height

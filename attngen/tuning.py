"""Persistent tuning: the autotuner's choices kept per GPU, read before any autotuning.

A table is ``<dir>/<gpu>.json`` (``gpu``: the device name as a slug, e.g.
``nvidia-h100-80gb-hbm3``) holding one entry per (kernel, spec hash, autotuning key):

    {"format": 1, "gpu": "NVIDIA H100 80GB HBM3",
     "entries": [{"kernel": "llama_fwd", "spec_hash": "...", "code": "...",
                  "key": [4096, 4096, 128, "torch.bfloat16", ...],
                  "config": {"kwargs": {"BLOCK_M": 128, "BLOCK_N": 64}, "num_warps": 4, "num_stages": 3},
                  "ms": 0.41, "triton": "3.6.0", "date": "2026-11-22"}]}

The key is Triton's own autotuning key (the length buckets, the head dim and the dtypes of the
tensor arguments), so an entry applies to exactly the calls that autotuning would have timed.
Before a kernel's first launch on a device, the runtime copies the matching entries into its
autotuner's cache (``seed``): those calls launch at once, others still autotune. An entry
applies only to the spec it was tuned for (same hash) and to the kernel code it was timed with
(``code``: ``code_hash``, over the source of the kernel and of the Triton functions it calls),
so a change to a kernel's templates retires its old entries instead of pinning configs chosen
for other code, and leaves the other kernels' entries alone; a stale or foreign entry is ignored.

Directories read, first match wins: ``$ATTNGEN_TUNING_DIR`` (``os.pathsep``-separated), the
cache root's ``tuning/`` (where ``attngen tune`` writes by default), and the tables shipped
with attngen (the repository's ``tuning/``). ``attngen tune --out DIR`` writes elsewhere, e.g. a
directory every rank of a job reads through ``ATTNGEN_TUNING_DIR``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import tempfile
import warnings
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterable

FORMAT = 1
FROZEN_DQ = "_bwd_dq_frozen"  # the dQ kernel without param-gradient terms (render's dq_variants)


def gpu_slug(name: str) -> str:
    """A device name as a file name: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def default_dir() -> Path:
    """Where ``attngen tune`` writes unless told otherwise: the cache root's ``tuning/`` (the
    root as ``attngen.cache`` names it, without importing the compiler stages it loads)."""
    root = os.environ.get("ATTNGEN_CACHE_DIR") or Path.home() / ".cache" / "attngen"
    return Path(root) / "tuning"


def search_dirs() -> list[Path]:
    dirs = [Path(d) for d in os.environ.get("ATTNGEN_TUNING_DIR", "").split(os.pathsep) if d]
    dirs.append(default_dir())
    try:
        from .resources import data_dir

        dirs.append(data_dir("tuning"))
    except FileNotFoundError:  # an install without shipped tables
        pass
    return dirs


def read_table(path: Path) -> list[dict]:
    """A table's entries; an unreadable or malformed table warns and counts as empty."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        entries = document["entries"]
        if document.get("format") != FORMAT or not isinstance(entries, list):
            raise ValueError(f"expected format {FORMAT} with a list of entries")
        for e in entries:
            if not (isinstance(e.get("kernel"), str) and _is_key(e.get("key"))
                    and isinstance(e.get("spec_hash"), _OPTIONAL_STR)
                    and isinstance(e.get("code"), _OPTIONAL_STR)
                    and isinstance(e.get("config", {}).get("kwargs"), dict)):
                raise ValueError(f"malformed entry {str(e)[:120]}: expected a kernel name, a key "
                                 "of numbers, strings and lists of them, a spec_hash string, "
                                 "a code string (or none) and config.kwargs")
        return entries
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        warnings.warn(f"attngen: ignoring tuning table {path}: {err}", stacklevel=2)
        return []


@cache
def _entries_for_gpu(gpu_name: str) -> dict[tuple, dict]:
    """(kernel, spec hash, code, key) -> entry over every table for this GPU, earlier dirs
    first (the code is part of the lookup, so a stale entry in an earlier directory does not
    hide a current one in a later)."""
    found: dict[tuple, dict] = {}
    for directory in search_dirs():
        for e in read_table(directory / f"{gpu_slug(gpu_name)}.json"):
            kernel, spec_hash, key = _entry_id(e)
            found.setdefault((kernel, spec_hash, e.get("code"), key), e)
    return found


def _entry_id(entry: dict) -> tuple:
    return entry["kernel"], entry.get("spec_hash"), _hashable(entry["key"])


_SCALARS = (str, int, float, bool, type(None))
_OPTIONAL_STR = (str, type(None))  # an entry without a spec hash or code matches nothing


def _is_key(key: Any) -> bool:
    """Whether ``key`` is an autotuning key as JSON: a list of scalars and of lists of scalars
    (Triton's tuples), the shapes ``_hashable`` turns into a dict key."""
    return isinstance(key, list) and all(
        isinstance(k, _SCALARS) or (isinstance(k, list) and all(isinstance(x, _SCALARS) for x in k))
        for k in key)


def _hashable(key: Iterable) -> tuple:
    return tuple(tuple(k) if isinstance(k, list) else k for k in key)


def _config(entry: dict, pre_hook=None):
    """A table entry's ``triton.Config``, with the kernel's config pre-hook (the training
    kernels' sets their TMA boxes)."""
    import triton

    c = entry["config"]
    return triton.Config(dict(c["kwargs"]), num_warps=c.get("num_warps", 4),
                         num_stages=c.get("num_stages", 3), num_ctas=c.get("num_ctas", 1),
                         maxnreg=c.get("maxnreg"), pre_hook=pre_hook)


_SEEDED: set[tuple[int, int]] = set()  # (id(kernel), device index) already seeded
_TRITON_SOURCES: dict[int, tuple[dict, dict]] = {}  # id(module globals) -> (globals, sources)
# (id(module globals), kernel name) -> (the globals, hash)
_CODE_HASHES: dict[tuple[int, str], tuple[dict, str]] = {}
_NAME = re.compile(r"[A-Za-z_]\w*")


def _triton_sources(namespace: dict) -> dict[str, str]:
    """name -> source of every Triton function (autotuned kernels, jitted kernels and helpers)
    defined in a module's globals."""
    import triton

    cached = _TRITON_SOURCES.get(id(namespace))
    if cached is None or cached[0] is not namespace:
        jitted = (triton.runtime.JITFunction, *_interpreted_types())
        sources = {}
        for attr, obj in namespace.items():
            if isinstance(obj, triton.runtime.Autotuner):
                sources[attr] = inspect.getsource(obj.base_fn)
            elif isinstance(obj, jitted):
                sources[attr] = inspect.getsource(obj.fn)
        cached = _TRITON_SOURCES[id(namespace)] = (namespace, sources)
    return cached[1]


def code_hash(kernel: Any) -> str:
    """sha256 (16 hex digits) of the source of ``kernel`` and of every Triton function it calls,
    directly or through others (names of its module's Triton functions in their sources): what
    a table entry was timed with. Headers, docstrings, module constants, launchers and the other
    kernels do not count: a template change that touches only the dK/dV kernel keeps the forward's
    and dQ's entries valid."""
    namespace = kernel.base_fn.__globals__  # also for modules never put in sys.modules
    sources = _triton_sources(namespace)
    name = kernel.base_fn.__name__
    key = (id(namespace), name)
    cached = _CODE_HASHES.get(key)
    if cached is None or cached[0] is not namespace:
        reached, todo = set(), [name]
        while todo:
            attr = todo.pop()
            if attr in reached or attr not in sources:
                continue
            reached.add(attr)
            todo += _NAME.findall(sources[attr])
        digest = hashlib.sha256()
        for attr in sorted(reached):
            digest.update(f"{attr}\n{sources[attr]}".encode())
        cached = _CODE_HASHES[key] = (namespace, digest.hexdigest()[:16])
    return cached[1]


def _interpreted_types() -> tuple:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return ()
    return (InterpretedFunction,)


def seed(kernel: Any, spec_hash: str, device_index: int) -> None:
    """Copy the table entries of this kernel, spec and GPU into its autotuner's cache (once per
    kernel and device; a set lookup afterwards). Kernels with a single config skip."""
    token = (id(kernel), device_index)
    if token in _SEEDED:
        return
    _SEEDED.add(token)
    configs = getattr(kernel, "configs", None)
    if configs is None or len(configs) < 2:
        return
    import torch

    name, code = kernel.base_fn.__name__, code_hash(kernel)
    for (kernel_name, entry_hash, entry_code, key), entry in _entries_for_gpu(
            torch.cuda.get_device_name(device_index)).items():
        if (kernel_name, entry_hash, entry_code) == (name, spec_hash, code):
            kernel.cache.setdefault(key, _config(entry, configs[0].pre_hook))


def forget() -> None:
    """Drop what was read (tables changed on disk, or a test points the search elsewhere)."""
    _entries_for_gpu.cache_clear()
    _SEEDED.clear()
    _CODE_HASHES.clear()
    _TRITON_SOURCES.clear()


# ---- writing tables ---------------------------------------------------------------------------


def entries_of(kernel: Any, spec_hash: str) -> list[dict]:
    """The autotuner's current choices of ``kernel`` as table entries."""
    import triton

    out = []
    timings = getattr(kernel, "configs_timings", None) or {}
    for key, config in kernel.cache.items():
        ms = timings.get(config)
        out.append(dict(
            kernel=kernel.base_fn.__name__, spec_hash=spec_hash, code=code_hash(kernel),
            key=list(key),
            config=dict(kwargs=dict(config.kwargs), num_warps=config.num_warps,
                        num_stages=config.num_stages, num_ctas=config.num_ctas,
                        maxnreg=config.maxnreg),
            ms=None if ms is None else round(float(ms[0] if isinstance(ms, list) else ms), 5),
            triton=triton.__version__, date=str(date.today())))
    return out


def write_entries(directory: Path, gpu_name: str, entries: list[dict]) -> Path:
    """Merge ``entries`` into ``directory/<gpu>.json`` (new entries replace same-id ones), under a
    file lock and by atomic rename, so ranks writing at once never tear the table."""
    from filelock import FileLock

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{gpu_slug(gpu_name)}.json"
    with FileLock(str(path) + ".lock"):
        merged = {_entry_id(e): e for e in read_table(path)}
        merged.update({_entry_id(e): e for e in entries})
        ordered = sorted(merged.values(), key=lambda e: (e["kernel"], str(e["key"])))
        document = {"format": FORMAT, "gpu": gpu_name, "entries": ordered}
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    forget()
    return path


def kernels_of(module: Any) -> list[Any]:
    """The autotuned kernels of a generated module (forward, backward, decode)."""
    name = module.NAME
    names = (f"{name}_fwd", f"{name}_bwd_dkdv", f"{name}_bwd_dq", f"{name}{FROZEN_DQ}",
             f"{name}_decode_kernel")
    return [getattr(module, n) for n in names if hasattr(module, n)]


def _config_id(config: Any) -> tuple:
    """What makes a config itself (pruners may hand the autotuner copies of the objects)."""
    return (tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages,
            config.num_ctas, config.maxnreg)


def _median_ms(timing: Any) -> float:
    """A timing as the autotuner keeps it (``[median, p20, p80]`` from do_bench) -> the median."""
    return float(timing[0] if isinstance(timing, (list, tuple)) else timing)


def _timed_pass(kernels: list[Any], run: Callable[[], None], reverse: bool) -> dict[int, tuple]:
    """One autotuning pass: every kernel's choices forgotten (and, if ``reverse``, its configs
    timed in reverse order), then ``run()`` makes the calls. Returns, per kernel (by id) that
    timed one key in the pass, ``(key, {config id: (config, median ms)})``."""
    saved = [kernel.configs for kernel in kernels]
    for kernel in kernels:
        kernel.cache.clear()
        kernel.configs_timings = None
        if reverse:
            kernel.configs = list(reversed(kernel.configs))
    try:
        run()
    finally:
        for kernel, configs in zip(kernels, saved):
            kernel.configs = configs
    timed = {}
    for kernel in kernels:
        timings = getattr(kernel, "configs_timings", None) or {}
        if len(kernel.cache) == 1 and timings:  # one key (two: only the last one's timings)
            (key,) = kernel.cache
            timed[id(kernel)] = key, {_config_id(c): (c, _median_ms(t)) for c, t in timings.items()}
    return timed


def _settle(kernels: list[Any], passes: list[dict[int, tuple]]) -> None:
    """Each kernel's choice from passes that timed its configs in opposite orders: the config
    with the least mean median over the passes that timed it for the same key (a clock that
    drifts during a pass favours the configs timed early; the reversed pass cancels that). The
    choice and its mean go into the autotuner's cache and timings, where ``entries_of`` reads
    them; a kernel the passes did not time alike keeps the last pass's choice."""
    for kernel in kernels:
        runs = [p[id(kernel)] for p in passes if id(kernel) in p]
        if len(runs) < 2 or len({key for key, _ in runs}) != 1:
            continue
        common = set.intersection(*(set(timings) for _, timings in runs))
        if not common:
            continue
        mean = {c: sum(timings[c][1] for _, timings in runs) / len(runs) for c in common}
        best = min(mean, key=mean.get)
        key, timings = runs[-1]
        config = timings[best][0]
        kernel.cache.clear()
        kernel.cache[key] = config
        kernel.configs_timings = {config: [mean[best]]}


def tune(op: Any, shapes: list[tuple[int, int, int, int, int]], *, dtype, kernels: Iterable[str],
         step: Callable[[str], None] = lambda _: None) -> list[dict]:
    """Autotune ``op`` (an ``AttentionOp``) on the current GPU at each (B, Hq, Hkv, N, D):
    forward (q_len = kv_len = N), backward, and decode (one query against N keys), as
    ``kernels`` asks. The backward runs with the params marked ``grad`` requiring a gradient and
    (where the spec has a dQ kernel without their terms, for frozen params) without. Fresh
    timings: the table is not consulted. Each shape is timed twice, the configs in opposite
    orders, and each kernel takes the config with the least mean time (``_settle``). Returns the
    chosen entries."""
    import torch

    from .testing import random_params

    if os.environ.get("ATTNGEN_AUTOTUNE", "1") == "0":
        raise RuntimeError("attngen tune: ATTNGEN_AUTOTUNE=0 limits every kernel to one config; "
                           "unset it to tune")
    module = op.module
    tuned = kernels_of(module)
    device = torch.device("cuda", torch.cuda.current_device())
    for kernel in tuned:
        _SEEDED.add((id(kernel), device.index))  # tune afresh: no seeding from existing tables
    kernels = set(kernels)
    generator = torch.Generator().manual_seed(0)
    chosen: dict[tuple, dict] = {}
    for B, Hq, Hkv, N, D in shapes:
        params = random_params(op.spec, B, Hq, Hkv, N, N, device, generator)
        grad_params = {p.name for p in op.spec.params if p.grad}
        frozen = hasattr(module, f"{module.NAME}{FROZEN_DQ}")
        q, k, v = (torch.randn(B, h, N, D, device=device, dtype=dtype)
                   for h in (Hq, Hkv, Hkv))

        def calls() -> None:
            if "fwd" in kernels or "bwd" in kernels:
                step(f"{op.name} fwd{' + bwd' if 'bwd' in kernels else ''} B={B} Hq={Hq} "
                     f"Hkv={Hkv} N={N} D={D}")
                for learnt in (True, False) if "bwd" in kernels and frozen else (True,):
                    with torch.enable_grad():
                        leaves = [x.detach().requires_grad_("bwd" in kernels) for x in (q, k, v)]
                        these = {n: t.detach().requires_grad_(learnt and n in grad_params
                                                               and "bwd" in kernels)
                                 for n, t in params.items()}
                        out = op(*leaves, **these)
                        if "bwd" in kernels:
                            out.backward(torch.randn_like(out))
            if "decode" in kernels and "decode" in op.spec.kernels:
                step(f"{op.name} decode B={B} Hq={Hq} Hkv={Hkv} L={N} D={D}")
                op.decode(q[:, :, -1:], k, v, **params)
            torch.cuda.synchronize()

        _settle(tuned, [_timed_pass(tuned, calls, reverse) for reverse in (False, True)])
        for kernel in tuned:  # the autotuner keeps timings of its latest key only: collect now
            for e in entries_of(kernel, module.SPEC_HASH):
                chosen.setdefault(_entry_id(e), e)
    return list(chosen.values())

"""``attngen compile``: every example's kernels compile for a GPU target without a GPU, and
the fp16/bf16 kernels for sm_90 use Hopper's wgmma.

Runs the CLI in subprocesses with TRITON_INTERPRET=0 (compiled, not interpreted, kernels), a
private Triton cache per command, so timings are those of a cold CI run, and the session's
private attngen cache (conftest.py: a spec another module or command rendered is not rendered
again; rendering is not what this module times). Compiling is
single-threaded and slow, so every compile command of this module starts at once,
ATTNGEN_COMPILE_JOBS at a time (default: the CPU count, at most 4); the sweep runs as one command
per spec (the same command on a subset of the files: the same output lines and exit status).

Default run (about two minutes on two cores; the full matrix about five):

* the sm_90 sweep ``attngen compile examples/*.attn --arch 90 --dtype bf16 --head-dim 128``
  (a spec's own head dim where it has one): every kernel of every example -- forward, the
  backward's preprocess / dK-dV / dQ, decode and its combine, packed_docs'
  ``_document_runs``, the block-classes kernel and the forward and backward variants that read
  a block mask -- compiles, and every kernel with a matrix product uses wgmma (decode's 16-row
  tiles use mma.sync);
* fp16 on sm_90 with wgmma: every kernel of ``llama`` at D=80 (a head dim that is not a power
  of two) and an inline spec with an integer power (forward, D=64);
* D=16 (every kernel of ``llama4_chunked``, bf16), fp32 (llama forward, D=32, no wgmma needed)
  and sm_80 (llama forward, bf16 and fp16, D=64, no wgmma);
* sm_90 without TMA (``ATTNGEN_TMA=0``, the fallback to pointer loads): llama's training kernels
  at D=64, with wgmma;
* tile-shaped reads of 16-bit, 64-bit and bool params (`_gather`'s inline PTX; t5_bias in the
  sweep covers 32-bit): an inline spec's forward and decode kernels, bf16, D=64.

``ATTNGEN_FULL_MATRIX=1`` runs the sweep for ``--dtype bf16,fp16`` (fp16 for every kernel of
every example as well) and the fp32 forward at D=64 too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import attngen
from attngen import runtime  # noqa: F401  before triton (selects the interpreter on CPU machines)

pytest.importorskip("triton.backends.nvidia",
                    reason="Triton's NVIDIA backend is needed to compile for sm_80 / sm_90")

from attngen.aot import expects_wgmma  # noqa: E402
from attngen.render import render  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PATHS = sorted((REPO / "examples").glob("*.attn"))
EXAMPLE_ARGS = [f"examples/{p.name}" for p in EXAMPLE_PATHS]
COMMAND_LIMIT_S = 900
JOBS = int(os.environ.get("ATTNGEN_COMPILE_JOBS") or min(os.cpu_count() or 1, 4))
FULL_MATRIX = os.environ.get("ATTNGEN_FULL_MATRIX") == "1"
# fp16 has every kernel of llama compiled for sm_90 below ("d80"); the full matrix adds it here
SWEEP_DTYPES = ("bf16", "fp16") if FULL_MATRIX else ("bf16",)
SWEEP = ("--arch", "90", "--dtype", ",".join(SWEEP_DTYPES),
         "--head-dim", "128")  # the spec's own if it has one
# fp32 (ieee dot products, no tensor cores) compiles slowly, about twice as long at D=64 as at 32
FP32_DIMS = (32, 64) if FULL_MATRIX else (32,)
INT_POW_SPEC = "attention ipow {\n    score score + 0.001 * (kv - q) ** 5\n}\n"
GATHER_SPEC = ("attention gathers {\n    param a: f16[H, 64, 64]\n    param c: i64[64, 64]\n"
               "    param d: bool[64, 64]\n    score score + a[h, q, kv] + 0.001 * c[q, kv]\n"
               "    mask d[q, kv]\n}\n")

LINE = re.compile(
    r"^(?P<path>\S+): (?P<kernel>\w+) (?P<dtype>bf16|fp16|fp32) D=(?P<d>\d+) sm_(?P<arch>\d+) "
    r"\[(?P<config>[^\]]*)\]: smem (?P<smem>\d+) B, cubin (?P<cubin>\d+) B, "
    r"wgmma (?P<wgmma>yes|NO)(, regs (?P<regs>\d+), spills (?P<spills>\d+) B)?"
    r"(?P<missing>  <- expected wgmma)?$")


def _compile(tmp: Path, attngen_cache: Path, *args: str, timeout: int = COMMAND_LIMIT_S,
             extra_env: dict | None = None):
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(TRITON_INTERPRET="0", ATTNGEN_CACHE_DIR=str(attngen_cache),
               TRITON_CACHE_DIR=str(tmp / "triton-cache"), **(extra_env or {}))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "attngen.cli", "compile", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    lines = [m.groupdict() for m in map(LINE.match, proc.stdout.splitlines()) if m]
    return proc, lines, elapsed


def _log(proc) -> str:
    return f"[rc {proc.returncode}]\n{proc.stdout}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, attngen_cache_dir):
    """Every compile command of this module, started together; name -> (proc, lines, seconds)."""
    tmp = tmp_path_factory.mktemp("compile")
    (tmp / "ipow.attn").write_text(INT_POW_SPEC, encoding="utf-8")
    (tmp / "gathers.attn").write_text(GATHER_SPEC, encoding="utf-8")
    commands = {  # the slowest first
        "fp32": ("examples/llama.attn", "--arch", "90", "--dtype", "fp32", "--head-dim",
                 ",".join(map(str, FP32_DIMS)), "--kernels", "fwd"),
        **{f"sweep:{a}": (a, *SWEEP) for a in sorted(
            EXAMPLE_ARGS, key=lambda a: "gemma2_local" not in a)},
        "sm80": ("examples/llama.attn", "--arch", "80", "--dtype", "bf16,fp16", "--head-dim",
                 "64", "--kernels", "fwd"),
        # 16-wide head dims once crashed ptxas in pipelined loops (runtime runs them unpipelined)
        "d16": ("examples/llama4_chunked.attn", "--dtype", "bf16", "--head-dim", "16",
                "--kernels", "fwd,bwd,decode"),
        "d80": ("examples/llama.attn", "--dtype", "fp16", "--head-dim", "80",
                "--kernels", "fwd,bwd,decode"),
        "ipow": (str(tmp / "ipow.attn"), "--dtype", "fp16", "--head-dim", "64", "--kernels",
                 "fwd", "--resources"),
        "gathers": (str(tmp / "gathers.attn"), "--dtype", "bf16", "--head-dim", "64",
                    "--kernels", "fwd,decode"),
        # register pressure of the kernels the benchmarks time (causal, D=128, bf16)
        "spills": ("examples/llama.attn", "--dtype", "bf16", "--head-dim", "128", "--kernels",
                   "fwd,bwd", "--resources"),
        # Hopper's fallback from TMA to pointer loads (misaligned tensors, ATTNGEN_TMA=0)
        "no_tma": ("examples/llama.attn", "--dtype", "bf16", "--head-dim", "64", "--kernels",
                   "fwd,bwd"),
    }
    envs = {"no_tma": {"ATTNGEN_TMA": "0"}}
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        futures = {name: pool.submit(_compile, tmp / re.sub(r"\W", "_", name),
                                     attngen_cache_dir, *args, extra_env=envs.get(name))
                   for name, args in commands.items()}
        results = {name: f.result() for name, f in futures.items()}
    wall = time.perf_counter() - start
    sweep = [r for name, r in results.items() if name.startswith("sweep:")]
    print(f"\nattngen compile, {JOBS} jobs: all commands {wall:.1f} s wall; sm_90 sweep "
          f"{sum(len(r[1]) for r in sweep)} kernels of {len(sweep)} specs in "
          f"{sum(r[2] for r in sweep):.1f} s of compile commands; " +
          ", ".join(f"{n} {r[2]:.1f} s" for n, r in results.items()))
    return results


@pytest.fixture(scope="module")
def sm90_sweep(runs):
    """The sweep's output as if one command: (exit status, stdout, stderr, kernel lines)."""
    parts = [runs[f"sweep:{a}"] for a in EXAMPLE_ARGS]
    status = max(p.returncode for p, _, _ in parts)
    return (status, "".join(p.stdout for p, _, _ in parts),
            "".join(p.stderr for p, _, _ in parts), [ln for _, lines, _ in parts for ln in lines])


def test_sm90_sweep_succeeds(sm90_sweep):
    status, stdout, stderr, lines = sm90_sweep
    assert status == 0, f"[rc {status}]\n{stdout}\n{stderr[-4000:]}"
    assert "FAILED" not in stderr and "FAILED" not in stdout
    assert len(lines) == len(stdout.splitlines()), stdout  # every line is a kernel
    assert not [ln for ln in lines if ln["missing"]]


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_sm90_each_example_uses_wgmma(sm90_sweep, path):
    lines = sm90_sweep[3]
    # one attention per example, so every line of the file is its kernel (_document_runs is
    # shared by name across specs and does not carry the attention's name)
    (attention,) = attngen.parse_and_check(path.read_text(encoding="utf-8"), str(path))
    fwd = f"{attention.name}_fwd"
    mine = [ln for ln in lines if ln["path"] == f"examples/{path.name}"]
    dims = set(attention.head_dims or (128,))
    kernels = {ln["kernel"] for ln in mine}
    # every kernel the spec asks for, by name: the forward, the backward's three kernels (and
    # the dQ without param terms where the spec has param gradients), and
    # the document-runs scan of a document() mask
    expected = {fwd}
    if "bwd" in attention.kernels:
        expected |= {f"_{attention.name}_bwd_preprocess", f"{attention.name}_bwd_dkdv",
                     f"{attention.name}_bwd_dq"}
        if any(p.grad for p in attention.params):  # dQ without the param terms (frozen params)
            expected.add(f"{attention.name}_bwd_dq_frozen")
    if "document(" in attention.source:
        expected.add("_document_runs")
    if "decode" in attention.kernels:
        expected |= {f"{attention.name}_decode_kernel", f"_{attention.name}_decode_combine"}
    # the block-classes kernel and the variants reading a block mask's lists
    expected |= {f"_{attention.name}_block_classes", f"{attention.name}_fwd_block_sparse"}
    if "bwd" in attention.kernels:
        expected |= {f"{attention.name}_bwd_dkdv_block_sparse", f"{attention.name}_bwd_dq_block_sparse"}
        if any(p.grad for p in attention.params):
            expected.add(f"{attention.name}_bwd_dq_frozen_block_sparse")
    assert kernels == expected
    for dtype in SWEEP_DTYPES:
        assert dtype in attention.dtypes
        for d in dims:
            got = [ln for ln in mine if ln["dtype"] == dtype and int(ln["d"]) == d]
            # every kernel of the module, once, for each dtype and head dim
            assert sorted(ln["kernel"] for ln in got) == sorted(kernels), (dtype, d, got)
            for ln in got:
                assert ln["arch"] == "90"
                assert int(ln["smem"]) > 0 and int(ln["cubin"]) > 0
                if expects_wgmma(ln["kernel"]):
                    assert ln["wgmma"] == "yes", f"{ln['kernel']} {dtype} D={d}: no wgmma"
    assert {ln["dtype"] for ln in mine} == set(SWEEP_DTYPES)
    assert {int(ln["d"]) for ln in mine} == dims


def test_wide_head_dims_compile_the_wide_space(sm90_sweep):
    """gemma2_local (D=256) compiles the first config of runtime.WIDE_SPACES for each kernel,
    not the D<=128 spaces, which spill kilobytes per thread there."""
    lines = [ln for ln in sm90_sweep[3] if ln["path"] == "examples/gemma2_local.attn"]
    for kernel, space in (("fwd", "fwd"), ("bwd_dkdv", "bwd_dkdv"), ("bwd_dq", "bwd_dq")):
        m, n, warps, stages = runtime.WIDE_SPACES[space][0]
        (line,) = [ln for ln in lines if ln["kernel"] == f"gemma2_local_{kernel}"]
        assert line["config"] == f"m={m} n={n} warps={warps} stages={stages}", line


def test_default_spaces_split_by_head_dim(monkeypatch):
    monkeypatch.setenv("ATTNGEN_AUTOTUNE", "1")
    configs = runtime.autotune_configs("bwd_dkdv", None, None, interpret=False)
    narrow, wide = runtime.DEFAULT_SPACES["bwd_dkdv"], runtime.WIDE_SPACES["bwd_dkdv"]
    assert len(configs) == len(narrow) + len(wide)
    knobs = lambda cs: [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                        for c in cs]  # noqa: E731
    assert knobs(runtime.for_head_dim(configs, 128)) == list(narrow)
    assert knobs(runtime.for_head_dim(configs, 256)) == list(wide)
    # a spec's own space is kept whole at every head dim
    spec_space = runtime.autotune_configs("bwd_dkdv", None, {"m": [32, 64]}, interpret=False)
    assert runtime.for_head_dim(spec_space, 256) == spec_space
    # quick start (no autotuning): the first of each
    monkeypatch.setenv("ATTNGEN_AUTOTUNE", "0")
    quick = runtime.autotune_configs("bwd_dkdv", None, None, interpret=False)
    assert knobs(quick) == [narrow[0], wide[0]]


def _fwd_lines(lines, name="llama"):
    return [(ln["dtype"], int(ln["d"]), ln["arch"], ln["wgmma"]) for ln in lines
            if ln["kernel"] == f"{name}_fwd"]


def test_fp32_compile(runs):
    # the forward only, at one head dim by default: fp32 kernels compile slowly
    proc, lines, elapsed = runs["fp32"]
    print(f"\nllama fp32 D={FP32_DIMS} sm_90 ({len(lines)} kernels): {elapsed:.1f} s")
    assert proc.returncode == 0, _log(proc)
    assert [f[:3] for f in _fwd_lines(lines)] == [("fp32", d, "90") for d in FP32_DIMS]
    assert all(ln["dtype"] == "fp32" and int(ln["d"]) in FP32_DIMS for ln in lines)
    assert not [ln for ln in lines if ln["missing"]]  # wgmma is not required for fp32


def test_sm90_pointer_loads_compile(runs):
    """Without TMA (ATTNGEN_TMA=0: the runtime's fallback for tensors TMA cannot describe) the
    sm_90 training kernels still compile, with wgmma."""
    proc, lines, _ = runs["no_tma"]
    assert proc.returncode == 0, _log(proc)
    assert sorted(ln["kernel"] for ln in lines) == sorted(
        ["llama_fwd", "_llama_bwd_preprocess", "llama_bwd_dkdv", "llama_bwd_dq"])
    assert all(ln["wgmma"] == "yes" for ln in lines if expects_wgmma(ln["kernel"]))


def test_sm80_compile(runs):
    proc, lines, elapsed = runs["sm80"]
    print(f"\nllama bf16,fp16 D=64 sm_80 ({len(lines)} kernels): {elapsed:.1f} s")
    assert proc.returncode == 0, _log(proc)
    assert _fwd_lines(lines) == [("bf16", 64, "80", "NO"), ("fp16", 64, "80", "NO")]
    for ln in lines:
        assert ln["arch"] == "80"
        assert ln["wgmma"] == "NO" and not ln["missing"]  # Ampere has no wgmma


def test_head_dim_not_a_power_of_two(runs):
    proc, lines, _ = runs["d80"]
    assert proc.returncode == 0, _log(proc)
    assert _fwd_lines(lines) == [("fp16", 80, "90", "yes")]
    # fp16 on sm_90 for every kernel (the default sweep compiles bf16 only)
    assert sorted(ln["kernel"] for ln in lines) == sorted(
        ["llama_fwd", "_llama_bwd_preprocess", "llama_bwd_dkdv", "llama_bwd_dq",
         "llama_decode_kernel", "_llama_decode_combine"])
    assert all(ln["dtype"] == "fp16" and ln["arch"] == "90" for ln in lines)
    assert all(ln["wgmma"] == "yes" for ln in lines if expects_wgmma(ln["kernel"]))


def test_integer_power_compiles(runs):
    proc, lines, _ = runs["ipow"]
    assert proc.returncode == 0, _log(proc)
    assert _fwd_lines(lines, "ipow") == [("fp16", 64, "90", "yes")]
    # --resources: ptxas's register count (a Hopper thread has at most 255) and spill bytes
    (line,) = lines
    assert 0 < int(line["regs"]) <= 255 and int(line["spills"]) >= 0


def test_tile_shaped_reads_of_every_param_width_compile(runs):
    proc, lines, _ = runs["gathers"]
    assert proc.returncode == 0, _log(proc)
    assert sorted(ln["kernel"] for ln in lines) == sorted(
        ["gathers_fwd", "gathers_decode_kernel", "_gathers_decode_combine"])
    (attention,) = attngen.parse_and_check(GATHER_SPEC)
    source = render(attention)
    # every read goes through _gather, none through a tl.load that Triton would pipeline
    assert set(re.findall(r"_gather\(\s*p_(\w+)", source)) == set("acd")
    assert not re.findall(r"tl\.load\(\s*p_[acd]\b", source)


def test_spills_stay_where_they_were_measured(runs):
    """Registers are the budget these kernels live on (ptxas, sm_90): the forward and dQ kernels
    do not spill; dK/dV spilled 1.5 KB per thread with one tile loop per range and 400 B with the
    two loops (benchmarks/results/2026-11-30-h200-two-loops.md). A template change that spills
    more shows here first, without a GPU."""
    proc, lines, _ = runs["spills"]
    assert proc.returncode == 0, _log(proc)
    spills = {ln["kernel"]: int(ln["spills"]) for ln in lines}
    assert spills["llama_fwd"] == 0 and spills["llama_bwd_dq"] == 0, spills
    assert spills["llama_bwd_dkdv"] <= 512, spills


def test_sixteen_wide_head_dim_compiles_every_kernel(runs):
    proc, lines, _ = runs["d16"]
    assert proc.returncode == 0, _log(proc)
    assert sorted(ln["kernel"] for ln in lines) == sorted(
        ["llama4_chunked_fwd", "_llama4_chunked_bwd_preprocess", "llama4_chunked_bwd_dkdv",
         "llama4_chunked_bwd_dq", "llama4_chunked_decode_kernel",
         "_llama4_chunked_decode_combine"])
    assert all(ln["d"] == "16" for ln in lines)

"""The benchmark suite: attngen beside SDPA (flash and cuDNN backends) and compiled
FlexAttention on the same inputs, in one process, on a CUDA GPU.

Training cases time the forward and forward + backward (backward = the difference) with
``triton.testing.do_bench`` medians after warm-up, on random bf16 inputs, B·N = 16k tokens and
H·D = 2048. FLOPs follow FlashAttention: forward 4·B·H·N²·D times the kept fraction of the score
matrix (1/2 causal; window and document masks count only what they keep), backward 2.5× that.
Decode cases (one query per sequence against an L-key cache, B=8, Hq=32, Hkv=8, D=128) report
GB/s of K and V read, eager and replayed from a CUDA graph, beside the device's copy bandwidth.

FlexAttention is compiled with ``dynamic=False``, dynamo's recompile limit raised, and dynamo
reset between cases (its default limit of 8 silently falls back to eager).

Every row is a dict with ``case``, ``impl``, ``mode`` (``train``, or ``eager``/``graph`` for
decode), ``N`` and ``D`` (``L`` for decode) and ``fwd_tflops``/``bwd_tflops`` (``gbps``), so runs
can be compared by script; ``write`` stores them as JSON with the GPU, versions and date, a
markdown table and, where matplotlib is installed, a plot.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

# The suite's specs, inline so the suite runs from any install (the same as examples/*.attn)
SPECS = {
    "full": "attention full { }",
    "causal": "attention causal { mask causal }",
    "window1024": "attention window1024 { mask causal & window(1023) }",  # 1024 keys, diagonal too
    "doc8": "attention doc8 { param doc: i32[B, KV]\n mask causal & document(doc) }",
    "softcap": "attention softcap { score 30.0 * tanh(score / 30.0)\n mask causal }",
    "alibi": "attention alibi { param slopes: f32[H] grad\n score score + slopes[h] * (kv - q)\n"
             " mask causal }",
    # T5's learnt relative-position bias (examples/t5_bias.attn): the table is learnt on both sides
    "relbias": "attention relbias { param table: f32[H, 257] grad\n"
               " score score + table[h, clamp(kv - q + 128, 0, 256)] }",
}
IMPLS = ("attngen", "sdpa_flash", "sdpa_cudnn", "flex")


@dataclass(frozen=True)
class Case:
    name: str  # full, causal, window1024, doc8, softcap, alibi, relbias; decode_causal
    spec: str  # spec text
    N: int  # keys (and queries for training cases)
    D: int
    kept: float  # fraction of the N x N score matrix kept (FLOP count)
    decode: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} {'L' if self.decode else 'N'}={self.N} D={self.D}"


def _window_kept(w: int, n: int) -> float:
    return (w * n - w * (w - 1) / 2) / (n * n)


SUITE = (
    Case("full", SPECS["full"], 4096, 128, 1.0),
    Case("causal", SPECS["causal"], 4096, 128, 0.5),
    Case("full", SPECS["full"], 16384, 128, 1.0),
    Case("causal", SPECS["causal"], 16384, 128, 0.5),
    Case("full", SPECS["full"], 4096, 64, 1.0),
    Case("causal", SPECS["causal"], 4096, 64, 0.5),
    Case("window1024", SPECS["window1024"], 8192, 128, _window_kept(1024, 8192)),
    Case("doc8", SPECS["doc8"], 8192, 128, 0.5 / 8),
    Case("softcap", SPECS["softcap"], 8192, 128, 0.5),
    Case("alibi", SPECS["alibi"], 8192, 128, 0.5),
    Case("relbias", SPECS["relbias"], 4096, 128, 1.0),
    Case("decode_causal", SPECS["causal"], 4096, 128, 1.0, decode=True),
    Case("decode_causal", SPECS["causal"], 32768, 128, 1.0, decode=True),
)
QUICK = tuple(c for c in SUITE if (c.N, c.D) != (16384, 128) and c.D != 64)


def select(names: list[str] | None, quick: bool) -> tuple[Case, ...]:
    """The suite's cases (``quick``: no 16k or D=64 rows), or those whose name is in ``names``."""
    cases = QUICK if quick else SUITE
    if names:
        known = sorted({c.name for c in SUITE})
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown benchmark case {unknown[0]!r}; expected one of "
                             f"{', '.join(known)}")
        cases = tuple(c for c in cases if c.name in names)
    return cases


def meta() -> dict:
    import torch
    import triton

    return dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=triton.__version__, python=platform.python_version(),
                date=str(date.today()))


# ---- running ----------------------------------------------------------------------------------


def _load(spec: str):
    import attngen

    return attngen.load(spec)


def _timed(fn: Callable) -> float:
    import torch
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def _graphed(fn: Callable) -> float:
    import torch

    fn()  # autotune outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _timed(graph.replay)


def run(cases: tuple[Case, ...], impls: tuple[str, ...] = IMPLS,
        step: Callable[[str], None] = lambda _: None,
        done: Callable[[Case], None] = lambda _: None) -> tuple[list[dict], list[dict]]:
    """(rows, checks): timing rows, and agreement checks of attngen against the peers' outputs.
    A peer that fails records an ``error`` row instead of stopping the run. With decode cases,
    the device's copy bandwidth is measured once, first (one ``copy`` row). ``step`` hears what
    is being timed, ``done`` each case finished (a progress bar)."""
    import torch

    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    rows, checks = [], []
    if any(case.decode for case in cases):
        step("device copy bandwidth")
        rows.append(dict(case="copy", impl="torch", mode="copy", gbps=_copy_gbps()))
    for case in cases:
        torch._dynamo.reset()
        if case.decode:
            _run_decode(case, impls, rows, step)
        else:
            _run_train(case, impls, rows, checks, step)
        done(case)
    return rows, checks


def _copy_gbps() -> float:
    import torch

    x = torch.empty(1024**3, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    ms = _timed(lambda: y.copy_(x))
    return round(2 * x.numel() * 2 / (ms * 1e-3) / 1e9, 1)


def _flex_mods(case: Case, params: dict):
    """(score_mod, mask_mod) of FlexAttention for a training case: the same function."""
    import torch

    causal = lambda b, h, i, j: i >= j  # noqa: E731
    score_mod = mask_mod = None
    if case.name != "full":
        mask_mod = causal
    if case.name == "window1024":
        mask_mod = lambda b, h, i, j: (i >= j) & (i - j < 1024)  # noqa: E731
    elif case.name == "doc8":
        doc = params["doc"][0].long()
        mask_mod = lambda b, h, i, j: (doc[i] == doc[j]) & (i >= j)  # noqa: E731
    elif case.name == "softcap":
        score_mod = lambda s, b, h, i, j: 30.0 * torch.tanh(s / 30.0)  # noqa: E731
    elif case.name == "alibi":
        slopes = params["slopes"]
        score_mod = lambda s, b, h, i, j: s + slopes[h] * (j - i)  # noqa: E731
    elif case.name == "relbias":
        mask_mod, table = None, params["table"]
        score_mod = lambda s, b, h, i, j: s + table[h, torch.clamp(j - i + 128, 0, 256)]  # noqa: E731
    return score_mod, mask_mod


def _case_params(op, case: Case, B: int, H: int, device) -> dict:
    import torch

    params = {}
    for p in op.spec.params:
        if p.name == "slopes":
            params["slopes"] = torch.exp2(-8.0 * (torch.arange(H, device=device) + 1) / H)
        elif p.name == "doc":  # 8 equal documents per row
            ids = (torch.arange(case.N, device=device) * 8) // case.N
            params["doc"] = ids.to(torch.int32).expand(B, case.N).contiguous()
        elif p.name == "table":  # learnt: its gradient is part of the backward on both sides
            params["table"] = torch.randn(H, 257, device=device).requires_grad_()
        else:
            raise ValueError(f"benchmark case {case.name}: no values for param {p.name}")
    return params


def _run_train(case: Case, impls, rows: list, checks: list, step) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, N, D = max(1, 16384 // case.N), 2048 // case.D, case.N, case.D
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    op = _load(case.spec)
    params = _case_params(op, case, B, H, "cuda")
    fns = {"attngen": lambda: op(q, k, v, **params)}
    if case.name in ("full", "causal"):
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                              ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            def sdpa(backend=backend):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=case.name == "causal")
            fns[name] = sdpa
    score_mod, mask_mod = _flex_mods(case, params)
    block_mask = None if mask_mod is None else create_block_mask(mask_mod, 1, 1, N, N, "cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    flex_options = [None]  # Flex's kernel_options: a retry with one stage where its default fails
    fns["flex"] = lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask,
                               kernel_options=flex_options[0])
    learnt = (q, k, v, *(t for t in params.values() if t.requires_grad))
    flop = 4 * B * H * N * N * D * case.kept
    outs = {}
    for impl, fn in fns.items():
        if impl not in impls:
            continue
        step(f"{case.label}: {impl}")
        row = dict(case=case.name, impl=impl, mode="train", N=N, D=D, B=B, H=H)
        try:
            try:
                row.update(_time_train(fn, learnt, flop, outs, impl))
            except Exception as err:
                if impl != "flex":
                    raise
                flex_options[0] = {"num_stages": 1}  # e.g. out of shared memory
                torch._dynamo.reset()
                row.update(_time_train(fn, learnt, flop, outs, impl),
                           flex_kernel_options=flex_options[0],
                           flex_default_error=f"{type(err).__name__}: {str(err)[-200:]}")
        except Exception as err:  # a peer failing must not hide the others
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        rows.append(row)
    if "attngen" in outs:  # the same function: the outputs must agree
        for impl, out in outs.items():
            if impl != "attngen":
                diff = (outs["attngen"].detach().float() - out.detach().float()).abs().max()
                checks.append(dict(case=case.name, N=N, D=D, impl=impl,
                                   max_abs_diff=round(diff.item(), 5)))


def _time_train(fn, learnt: tuple, flop: float, outs: dict, impl: str) -> dict:
    """First-call seconds and forward / backward ms and TFLOP/s of one implementation; the
    backward is the gradient of every tensor in ``learnt`` (q, k, v and learnt params)."""
    import torch

    start = time.perf_counter()
    outs[impl] = fn()
    torch.cuda.synchronize()
    first = round(time.perf_counter() - start, 2)
    fwd_ms = _timed(fn)
    d_out = torch.randn_like(outs[impl])
    both_ms = _timed(lambda: torch.autograd.grad(fn(), learnt, d_out))
    bwd_ms = both_ms - fwd_ms
    return dict(first_call_s=first, fwd_ms=round(fwd_ms, 4), fwd_tflops=round(flop / fwd_ms / 1e9, 1),
                bwd_ms=round(bwd_ms, 4), bwd_tflops=round(2.5 * flop / bwd_ms / 1e9, 1))


def _run_decode(case: Case, impls, rows: list, step) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention

    from .testing import paged_cache

    B, Hq, Hkv, L, D = 8, 32, 8, case.N, case.D
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    op = _load(case.spec)
    if op.spec.params:
        raise ValueError(f"decode benchmark {case.name}: specs with params are not benchmarked")
    kv_len = torch.full((B,), L, device="cuda", dtype=torch.int32)
    k_pages, v_pages, table = paged_cache(k, v, 64)
    flex = torch.compile(flex_attention, dynamic=False)
    variants = {
        ("attngen", "attngen"): lambda: op.decode(q, k, v),
        ("attngen", "attngen_paged64"): lambda: op.decode(q, k_pages, v_pages, kv_len=kv_len,
                                                          page_table=table),
        ("sdpa_flash", "sdpa"): lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        ("flex", "flex"): lambda: flex(q, k, v, enable_gqa=True),
    }
    nbytes = 2 * B * Hkv * L * D * 2
    for (family, impl), fn in variants.items():
        if family not in impls:
            continue
        for mode, timer in (("eager", _timed), ("graph", _graphed)):
            if impl == "flex" and mode == "graph":
                continue  # compiled Flex under a manual graph capture is not how it is run
            step(f"{case.label}: {impl} {mode}")
            row = dict(case=case.name, impl=impl, mode=mode, L=L, D=D, B=B, Hq=Hq, Hkv=Hkv)
            try:
                ms = timer(fn)
                row.update(ms=round(ms, 4), gbps=round(nbytes / (ms * 1e-3) / 1e9, 1))
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            rows.append(row)


# ---- reporting --------------------------------------------------------------------------------

def markdown(rows: list[dict], checks: list[dict], info: dict) -> str:
    """The tables: training TFLOP/s with ratios to FlexAttention and cuDNN, decode GB/s."""
    lines = [f"# attngen benchmark, {info.get('gpu', '?')}, {info.get('date', '?')}", "",
             f"torch {info.get('torch', '?')}, triton {info.get('triton', '?')}, Python "
             f"{info.get('python', '?')}; bf16. Command: `{info.get('command', 'attngen bench')}`. "
             "TFLOP/s: forward 4·B·H·N²·D × kept fraction, backward 2.5× that; B·N = 16k tokens, "
             "H·D = 2048. Medians of `triton.testing.do_bench`.", ""]
    train = [r for r in rows if r.get("mode") == "train"]
    if train:
        lines += ["| case | N | D | attngen fwd / bwd | SDPA flash | cuDNN | FlexAttention | "
                  "vs Flex (fwd, bwd) | vs cuDNN fwd |", "|---" * 9 + "|"]
        for (case, N, D), by in _group(train).items():
            cells = [_pair(by.get(i)) for i in IMPLS]
            ours, flex, cudnn = by.get("attngen"), by.get("flex"), by.get("sdpa_cudnn")
            vs_flex = f"{_ratio(ours, flex, 'fwd_tflops')}, {_ratio(ours, flex, 'bwd_tflops')}"
            lines.append(f"| {case} | {N} | {D} | " + " | ".join(cells) +
                         f" | {vs_flex} | {_ratio(ours, cudnn, 'fwd_tflops')} |")
        lines.append("")
    decode = [r for r in rows if r.get("mode") in ("eager", "graph")]
    copy = next((r.get("gbps") for r in rows if r.get("case") == "copy"), None)
    if decode:
        copy_text = "" if copy is None else f"; device copy {copy} GB/s"
        lines += [f"Decode: GB/s of K and V read (B=8, Hq=32, Hkv=8, one query){copy_text}.", "",
                  "| case | L | impl | eager GB/s | graph GB/s | graph / copy |", "|---" * 6 + "|"]
        by_impl: dict[tuple, dict] = {}
        for r in decode:
            by_impl.setdefault((r["case"], r["L"], r["impl"]), {})[r["mode"]] = r
        for (case, L, impl), modes in by_impl.items():
            eager, graph = (modes.get(m, {}).get("gbps", "–") for m in ("eager", "graph"))
            share = f"{graph / copy:.0%}" if copy and isinstance(graph, (int, float)) else "–"
            lines.append(f"| {case} | {L} | {impl} | {eager} | {graph} | {share} |")
        lines.append("")
    errors = [r for r in rows if "error" in r]
    for r in errors:
        lines.append(f"- {r['case']} {r['impl']} {r.get('mode')}: failed: {r['error']}")
    for r in rows:
        if "flex_kernel_options" in r:
            lines.append(f"- {r['case']} N={r['N']} flex: ran with kernel_options "
                         f"{r['flex_kernel_options']}; its default failed: "
                         f"{r.get('flex_default_error', '?')}")
    if checks:
        worst = max(checks, key=lambda c: c["max_abs_diff"])
        lines.append(f"Agreement: max |attngen − peer| over all training cases "
                     f"{worst['max_abs_diff']:.3g} ({worst['case']} N={worst['N']} vs "
                     f"{worst['impl']}).")
    return "\n".join(lines).rstrip() + "\n"


def _group(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    out: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        out.setdefault((r["case"], r["N"], r["D"]), {})[r["impl"]] = r
    return out


def _pair(row: dict | None) -> str:
    if row is None:
        return "–"
    if "error" in row:
        return "failed"
    return f"{row['fwd_tflops']} / {row['bwd_tflops']}"


def _ratio(ours: dict | None, peer: dict | None, field: str) -> str:
    if not ours or not peer or field not in ours or field not in peer:
        return "–"
    return f"{ours[field] / peer[field]:.2f}"


def plot(rows: list[dict], path: Path) -> Path:
    """Grouped bars: forward and backward TFLOP/s per training case and implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("the plot needs matplotlib: pip install 'attngen[bench]'") from err
    groups = _group([r for r in rows if r.get("mode") == "train" and "error" not in r])
    labels = [f"{c}\nN={N // 1024}k D={D}" for c, N, D in groups]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(labels)), 7), sharex=True)
    width = 0.8 / len(IMPLS)
    for ax, field in zip(axes, ("fwd_tflops", "bwd_tflops")):
        for i, impl in enumerate(IMPLS):
            values = [by.get(impl, {}).get(field, 0) for by in groups.values()]
            ax.bar([x + i * width for x in range(len(labels))], values, width, label=impl)
        ax.set_ylabel(f"{field.split('_')[0]} TFLOP/s")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=len(IMPLS), fontsize=8)
    axes[1].set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(out_dir: Path, stem: str, rows: list[dict], checks: list[dict], info: dict,
          with_plot: bool = True) -> list[Path]:
    """``stem``.json (meta, rows, checks), ``stem``.md and, with matplotlib, ``stem``.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    written[0].write_text(json.dumps({"meta": info, "rows": rows, "checks": checks}, indent=1)
                          + "\n")
    written[1].write_text(markdown(rows, checks, info))
    if with_plot:
        try:
            written.append(plot(rows, out_dir / f"{stem}.png"))
        except ImportError:
            pass
    return written


def read(path: Path) -> tuple[list[dict], list[dict], dict]:
    """A results JSON written by ``write``: (rows, checks, meta)."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
        raise ValueError(f"{path}: expected a JSON object with a list of rows (attngen bench "
                         f"output), got {type(document).__name__}")
    rows = document["rows"]
    modes = {r.get("mode") for r in rows if isinstance(r, dict)}
    if rows and not modes & _MODES:
        raise ValueError(f"{path}: expected attngen bench rows (mode {', '.join(sorted(_MODES))}), "
                         f"got rows of mode {', '.join(sorted(map(str, modes)))} (another "
                         f"suite's format, e.g. benchmarks/gpu_check.py's)")
    return rows, document.get("checks", []), document.get("meta", {})


_MODES = {"train", "eager", "graph", "copy"}  # what run() writes

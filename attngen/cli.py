"""The ``attngen`` command line."""

from __future__ import annotations

import sys

import click

from .errors import SpecError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attngen")
def main() -> None:
    """attngen: write attention as a spec, get Triton kernels.

    \b
    Example:
      attngen check examples/*.attn
    """


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def check(files: tuple[str, ...]) -> None:
    """Check spec FILES; print one summary line per attention, or the errors.

    \b
    Example:
      attngen check examples/alibi.attn examples/llama.attn
    """
    specs, failed = _read_all(files, exit_on_error=False)
    for path, attentions in specs:
        for attention in attentions:
            click.echo(f"{path}: ok: {attention.summary()}")
    sys.exit(1 if failed else 0)


def _read_all(files: tuple[str, ...], *, exit_on_error: bool = True):
    """(path, attentions) for every valid file; print the errors of bad ones.

    With ``exit_on_error`` a bad file stops the command (exit 1) before anything is done.
    """
    from .api import parse_and_check

    out, failed = [], False
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            out.append((path, parse_and_check(source, path)))
        except (OSError, UnicodeDecodeError) as err:
            click.echo(f"{path}: error: cannot read spec: {err}", err=True)
            failed = True
        except SpecError as err:
            click.echo(str(err), err=True)
            failed = True
    if failed and exit_on_error:
        sys.exit(1)
    return out, failed


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", default="generated", show_default=True,
              type=click.Path(file_okay=False), help="Directory for the generated modules.")
@click.option("--check", "check_only", is_flag=True,
              help="Write nothing; exit 1 if any module in OUT_DIR differs from a fresh build.")
def build(files: tuple[str, ...], out_dir: str, check_only: bool) -> None:
    """Render spec FILES into one Python module per attention in OUT_DIR.

    Each module holds the spec text and hash, the Triton kernels and a torch op named after
    the attention; it needs only torch, triton and attngen.runtime.

    \b
    Example:
      attngen build examples/*.attn            # writes generated/alibi.py, ...
      python -c "from generated.alibi import alibi"
    """
    from pathlib import Path

    from .cache import write_atomic
    from .render import render, spec_hash

    specs, _ = _read_all(files)
    seen: dict[str, str] = {}
    stale = []
    for path, attentions in specs:
        for attention in attentions:
            if attention.name in seen:
                click.echo(f"{path}:{attention.line}:{attention.column}: error: attention "
                           f"'{attention.name}' is also defined in {seen[attention.name]}; "
                           f"module names must be unique", err=True)
                sys.exit(1)
            seen[attention.name] = path
            target = Path(out_dir) / f"{attention.name}.py"
            text = render(attention, Path(path).name)
            if check_only:
                current = target.read_text(encoding="utf-8") if target.exists() else None
                if current != text:
                    stale.append(str(target))
                continue
            write_atomic(target, text)
            click.echo(f"wrote {target}  ({attention.name}, spec hash "
                       f"{spec_hash(attention)[:12]})")
    if stale:
        click.echo("out of date (rebuild with attngen build): " + ", ".join(stale), err=True)
        sys.exit(1)
    if check_only:
        click.echo(f"{len(seen)} generated module(s) up to date in {out_dir}")


@main.command(name="compile")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--arch", default=90, show_default=True, help="CUDA compute capability, e.g. 90, 80.")
@click.option("--dtype", "dtypes", default="", help="Comma list of bf16,fp16,fp32 (default: the spec's).")
@click.option("--head-dim", "head_dims", default="", help="Comma list (default: the spec's, else 64,128).")
@click.option("--kernels", "which", default="fwd,bwd,decode,block_mask", show_default=True,
              help="Comma list of kernel groups: fwd, bwd, decode, block_mask (the block-classes "
                   "kernel and the kernel variants that read a block mask).")
@click.option("--resources", is_flag=True,
              help="Also report registers per thread and bytes spilled to local memory (ptxas -v "
                   "on each kernel's PTX: a few seconds more per kernel).")
def compile_cmd(files: tuple[str, ...], arch: int, dtypes: str, head_dims: str, which: str,
                resources: bool) -> None:
    """Compile the kernels of spec FILES for a GPU target; no GPU needed.

    Fails if a kernel does not compile, needs more shared memory than the target has, or (an
    fp16/bf16 forward or backward kernel for sm_90) lacks wgmma; decode (16-64-row tiles) and
    the helper kernels are exempt. Each kernel uses the config the runtime would launch first:
    its first autotune config whose tiles fit.

    \b
    Example:
      attngen compile examples/*.attn --arch 90 --dtype bf16,fp16
      attngen compile examples/llama.attn --kernels bwd --head-dim 128 --resources
    """
    import itertools
    import os

    os.environ["TRITON_INTERPRET"] = "0"  # compiled, not interpreted, kernels (before triton loads)
    from pathlib import Path

    from .aot import GROUPS, compile_kernel, expects_wgmma, kernels_of
    from .api import AttentionOp
    from .runtime import SHARED_MEMORY_LIMITS, SPEC_DTYPES

    groups = tuple(g.strip() for g in which.split(","))
    if not set(groups) <= set(GROUPS):
        raise click.BadParameter(f"expected a comma list of {', '.join(GROUPS)}; got {which!r}",
                                 param_hint="--kernels")
    specs, failed = _read_all(files)
    for path, attentions in specs:
        for attention in attentions:
            op = AttentionOp(attention, Path(path).name)
            wanted = [d for d in (dtypes.split(",") if dtypes else attention.dtypes)
                      if d in attention.dtypes]
            dims = [int(d) for d in head_dims.split(",")] if head_dims else \
                list(attention.head_dims or (64, 128))
            dims = [d for d in dims if attention.head_dims is None or d in attention.head_dims] \
                or list(attention.head_dims)
            for dtype, dim, kernel in itertools.product(wanted, dims, kernels_of(op.module, groups)):
                try:
                    k = compile_kernel(op.module, kernel, SPEC_DTYPES[dtype], dim, arch,
                                       resources=resources)
                except Exception as err:  # a compiler failure is reported, not raised
                    first_line = (str(err).strip().splitlines() or [""])[0]
                    click.echo(f"{path}: {kernel} {dtype} D={dim} sm_{arch}: FAILED: "
                               f"{type(err).__name__}: {first_line}", err=True)
                    failed = True
                    continue
                missing = arch >= 90 and dtype != "fp32" and not k.uses_wgmma \
                    and expects_wgmma(kernel)
                limit = SHARED_MEMORY_LIMITS.get(arch)
                too_big = limit is not None and k.shared_memory > limit
                failed |= missing or too_big
                click.echo(f"{path}: {k.kernel} {dtype} D={dim} sm_{arch} [{k.config}]: "
                           f"smem {k.shared_memory} B, cubin {k.cubin_bytes} B, "
                           f"wgmma {'yes' if k.uses_wgmma else 'NO'}"
                           + (f", regs {k.registers}, spills {k.spill_bytes} B" if resources
                              else "") +
                           f"{'  <- expected wgmma' if missing else ''}"
                           f"{f'  <- over the {limit} B of shared memory' if too_big else ''}")
    sys.exit(1 if failed else 0)


MAX_MASK_ENTRIES = 1 << 24  # the reference materialises int64 grids of q_len x kv_len


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--name", help="The attention to show, when SPEC defines several.")
@click.option("--kernel", "group", type=click.Choice(["fwd", "bwd", "decode", "all"]),
              default="all", show_default=True,
              help="Print only this kernel group's Triton functions (and the helpers they call).")
@click.option("--mask", "show_mask", is_flag=True,
              help="Draw the mask (from the reference evaluation) instead of printing source.")
@click.option("--q-len", type=click.IntRange(1), default=None,
              help="Queries  [--mask; default 64].")
@click.option("--kv-len", type=click.IntRange(1), default=None,
              help="Keys  [--mask; default: q_len]. Positions are bottom-right aligned.")
@click.option("--param", "param_texts", multiple=True, metavar="NAME=VALUE",
              help="A param's value [--mask; repeatable]: a number fills it, a comma list gives "
                   "every element, a document table takes document lengths (10,20,34). Params "
                   "the mask reads default to three documents or kv_len // 4.")
@click.option("--head", type=click.IntRange(0), default=0, show_default=True,
              help="Query head to draw [--mask] (masks that read h differ per head).")
@click.option("--png", type=click.Path(dir_okay=False),
              help="Also write the mask as a PNG file (one square per query/key pair) [--mask].")
@click.option("--width", type=click.IntRange(20), default=None,
              help="Picture width in characters [--mask; default: the terminal's]; larger masks "
                   "are downsampled.")
@click.option("--color/--no-color", default=None,
              help="Syntax-highlight the source (default: when stdout is a terminal).")
def show(spec: str, name: str | None, group: str, show_mask: bool, q_len: int | None,
         kv_len: int | None, param_texts: tuple[str, ...], head: int, png: str | None,
         width: int | None, color: bool | None) -> None:
    """Print the generated Triton source of SPEC, or draw its mask.

    The source is the module `attngen build` writes; --kernel cuts out one kernel group.
    --mask evaluates the spec's mask for one query/key length pair and draws it: █ kept,
    · masked, ▒ a downsampled cell that is partly kept.

    \b
    Examples:
      attngen show examples/alibi.attn --kernel fwd | less
      attngen show examples/llama.attn --mask --q-len 16 --kv-len 48
      attngen show examples/packed_docs.attn --mask --q-len 48 --param doc=10,20,18
      attngen show examples/prefix_lm.attn --mask --q-len 1024 --png prefix.png
    """
    from pathlib import Path

    [(path, attentions)], _ = _read_all((spec,))
    attention = _pick(path, attentions, name)
    mask_only = {"--q-len": q_len, "--kv-len": kv_len, "--param": param_texts or None,
                 "--png": png, "--width": width}
    if not show_mask:
        used = [flag for flag, value in mask_only.items() if value is not None]
        if used:
            raise click.UsageError(f"{', '.join(used)} need{'' if len(used) > 1 else 's'} "
                                   f"--mask")
        _show_source(path, attention, Path(path).name, group, color)
        return
    if group != "all":
        raise click.UsageError("--kernel does not apply with --mask")
    _show_mask(path, attention, q_len or 64, kv_len or q_len or 64, param_texts, head, png, width)


def _pick(path: str, attentions, name: str | None):
    names = [a.name for a in attentions]
    if name is None and len(attentions) == 1:
        return attentions[0]
    if name in names:
        return attentions[names.index(name)]
    why = "defines several attentions; pick one with --name" if name is None \
        else f"has no attention named {name!r}"
    _fail(path, f"{why} (it defines: {', '.join(names)})")


def _fail(path: str, message: str):
    click.echo(f"{path}: error: {message}", err=True)
    sys.exit(1)


def _show_source(path: str, attention, source_name: str, group: str, color: bool | None) -> None:
    from .render import render
    from .show import kernel_source

    text = render(attention, source_name)
    if group != "all":
        try:
            text = kernel_source(text, group, attention.name)
        except LookupError as err:
            _fail(path, str(err))
    if color is None:
        color = sys.stdout.isatty()
    if not color:
        click.echo(text, nl=False)
        return
    from rich.console import Console
    from rich.syntax import Syntax

    console = Console(file=sys.stdout, force_terminal=True, soft_wrap=True)
    console.print(Syntax(text, "python", theme="monokai", background_color="default"))


def _show_mask(path: str, attention, q_len: int, kv_len: int, param_texts: tuple[str, ...],
               head: int, png: str | None, width: int | None) -> None:
    import shutil

    if q_len * kv_len > MAX_MASK_ENTRIES:
        _fail(path, f"--q-len {q_len} x --kv-len {kv_len} is too large to draw; at most "
                    f"{MAX_MASK_ENTRIES} pairs (4096 x 4096)")
    given = {}
    for text in param_texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {text!r}", param_hint="--param")
        given[key.strip()] = value
    from .show import draw, mask_grid, write_png

    try:
        grid, notes = mask_grid(attention, q_len, kv_len, given, head=head)
    except ValueError as err:
        _fail(path, str(err))
    width = width or shutil.get_terminal_size((80, 24)).columns
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        "█▒·".encode(encoding)
        ascii_only = False
    except (UnicodeEncodeError, LookupError):
        ascii_only = True
    lines, step = draw(grid, max_width=width, ascii_only=ascii_only)
    kept = int(grid.sum())
    offset = kv_len - q_len
    click.echo(f"{attention.name}: mask {attention.mask_text}")
    click.echo(f"q_len {q_len}, kv_len {kv_len}, head {head}; row i is the query at position "
               f"q = i{f' + {offset}' if offset > 0 else f' - {-offset}' if offset < 0 else ''}, "
               f"column j the key at kv = j")
    for note in notes:
        click.echo(note)
    legend = "# kept  . masked" if ascii_only else "█ kept  · masked"
    if step > 1:
        legend += f"  {'+' if ascii_only else '▒'} partly kept; one cell = {step}x{step} pairs"
    click.echo(f"kept {kept} of {q_len * kv_len} pairs ({100 * kept / (q_len * kv_len):.1f}%)   "
               f"{legend}")
    for line in lines:
        click.echo(line)
    if png:
        try:
            w, h = write_png(png, grid)
        except OSError as err:
            _fail(path, f"cannot write {png}: {err}")
        click.echo(f"wrote {png} ({w}x{h})")



def _progress():
    """A rich progress display on stderr (a spinner and the current step)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, \
        TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                    transient=True)


def _require_gpu(command: str) -> None:
    import torch

    if not torch.cuda.is_available():
        click.echo(f"attngen {command}: error: needs a CUDA GPU (torch.cuda.is_available() is "
                   f"False); timings through the CPU interpreter would mean nothing", err=True)
        sys.exit(1)


@main.command()
@click.option("--cases", default="", help="Comma list of case names (default: the whole suite): "
              "full, causal, window1024, doc8, softcap, alibi, relbias, decode_causal.")
@click.option("--impls", default="attngen,sdpa_flash,sdpa_cudnn,flex", show_default=True,
              help="Comma list of implementations to time.")
@click.option("--quick", is_flag=True, help="Skip the N=16k and D=64 rows.")
@click.option("-o", "--out-dir", default="benchmarks/results", show_default=True,
              type=click.Path(file_okay=False), help="Where the JSON, markdown and plot go.")
@click.option("--name", default=None, help="File stem [default: DATE-GPU-bench].")
@click.option("--from", "from_json", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Render the markdown and plot of an earlier run's JSON (no GPU needed).")
def bench(cases: str, impls: str, quick: bool, out_dir: str, name: str | None,
          from_json: str | None) -> None:
    """Time attngen beside SDPA (flash, cuDNN) and compiled FlexAttention on a GPU.

    One process, the same random bf16 inputs for every implementation; prints the table and
    writes NAME.json (one row per case, implementation and mode), NAME.md and NAME.png (with
    matplotlib: pip install 'attngen[bench]').

    \b
    Examples:
      attngen bench --quick                      # about 3 minutes on an H100
      attngen bench --cases causal,softcap --impls attngen,flex
      attngen bench --from benchmarks/results/2026-11-22-h100-bench.json -o /tmp/bench
    """
    from pathlib import Path

    from . import bench as suite

    if from_json:
        try:
            rows, checks, info = suite.read(Path(from_json))
        except (ValueError, OSError) as err:
            _fail(from_json, str(err))
        stem = name or Path(from_json).stem
    else:
        try:
            selected = suite.select([c.strip() for c in cases.split(",") if c.strip()], quick)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--cases") from None
        chosen = tuple(i.strip() for i in impls.split(",") if i.strip())
        unknown = sorted(set(chosen) - set(suite.IMPLS))
        if unknown:
            raise click.BadParameter(f"unknown implementation {unknown[0]!r}; expected some of "
                                     f"{', '.join(suite.IMPLS)}", param_hint="--impls")
        _require_gpu("bench")
        info = suite.meta()
        words = ["attngen bench", "--quick" * quick, f"--cases {cases}" * bool(cases),
                 f"--impls {impls}" * (chosen != suite.IMPLS)]
        info["command"] = " ".join(w for w in words if w)
        with _progress() as progress:
            task = progress.add_task("benchmarks", total=len(selected))

            def step(text: str) -> None:
                progress.update(task, description=text)

            rows, checks = suite.run(selected, chosen, step,
                                     done=lambda _: progress.advance(task))
        from .tuning import gpu_slug

        stem = name or f"{info['date']}-{gpu_slug(info['gpu'])}-bench"
    written = suite.write(Path(out_dir), stem, rows, checks, info)
    click.echo(suite.markdown(rows, checks, info))
    click.echo("wrote " + ", ".join(str(p) for p in written))


def _shape_list(text: str) -> list[tuple[int, int, int, int, int]]:
    shapes = []
    for item in text.split():
        try:
            values = tuple(int(x) for x in item.split(","))
        except ValueError:
            values = ()
        if len(values) != 5 or min(values) < 1:
            raise click.BadParameter(f"expected B,Hq,Hkv,N,D (five positive integers) per shape, "
                                     f"got {item!r}", param_hint="--shapes")
        if values[1] % values[2]:
            raise click.BadParameter(f"Hq must be a multiple of Hkv, got {item!r}",
                                     param_hint="--shapes")
        shapes.append(values)
    if not shapes:
        raise click.BadParameter("expected at least one shape", param_hint="--shapes")
    return shapes


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--shapes", "shapes_text", required=True,
              help="Space-separated B,Hq,Hkv,N,D shapes to tune at (N: queries = keys; decode "
                   "tunes one query against N keys).")
@click.option("--dtype", default="bf16", show_default=True, type=click.Choice(["bf16", "fp16",
                                                                                 "fp32"]))
@click.option("--kernels", "which", default="fwd,bwd,decode", show_default=True,
              help="Comma list of kernel groups: fwd, bwd, decode.")
@click.option("-o", "--out-dir", default=None, type=click.Path(file_okay=False),
              help="Table directory [default: $ATTNGEN_TUNING_DIR's first entry, else the cache's "
                   "tuning/].")
def tune(files: tuple[str, ...], shapes_text: str, dtype: str, which: str,
         out_dir: str | None) -> None:
    """Autotune the kernels of spec FILES at given shapes on this GPU and keep the choices.

    Writes (merges into) OUT_DIR/<gpu>.json; the runtime reads that table before autotuning,
    so a fresh process, and every rank of a job pointed at the directory through
    ATTNGEN_TUNING_DIR, launches the tuned configs at once.

    \b
    Example:
      attngen tune examples/llama.attn --shapes "8,16,16,2048,128 2,16,16,8192,128"
      ATTNGEN_TUNING_DIR=/shared/tuning attngen tune examples/*.attn --shapes 1,32,8,4096,128
    """
    import os
    from pathlib import Path

    groups = tuple(g.strip() for g in which.split(","))
    if not set(groups) <= {"fwd", "bwd", "decode"}:
        raise click.BadParameter(f"expected a comma list of fwd, bwd, decode; got {which!r}",
                                 param_hint="--kernels")
    shapes = _shape_list(shapes_text)
    specs, _ = _read_all(files)
    # a spec with a fixed head dim tunes the shapes of that head dim (examples/*.attn mixes them)
    plan = [(path, a, [s for s in shapes if not a.head_dims or s[4] in a.head_dims])
            for path, found in specs for a in found]
    dims = sorted({s[4] for s in shapes})
    if not any(mine for _, _, mine in plan):
        takes = "; ".join(f"{a.name}: {list(a.head_dims)}" for _, a, _ in plan)
        raise click.BadParameter(f"no spec takes a head dim of these shapes (their D: {dims}; "
                                 f"head dims taken: {takes})", param_hint="--shapes")
    for path, a, mine in plan:
        if not mine:
            click.echo(f"{path}: {a.name} takes head dims {list(a.head_dims)}: skipped (the "
                       f"shapes' D: {dims})", err=True)
        elif len(mine) < len(shapes):
            click.echo(f"{path}: {a.name} takes head dims {list(a.head_dims)}: tuning "
                       f"{len(mine)} of the {len(shapes)} shapes (their D: {dims})", err=True)
        if mine and dtype not in a.dtypes:
            _fail(path, f"{a.name} does not take {dtype} (its dtypes: {', '.join(a.dtypes)})")
    _require_gpu("tune")
    import torch

    from . import tuning
    from .api import AttentionOp
    from .runtime import SPEC_DTYPES

    target = Path(out_dir) if out_dir else Path(
        next((d for d in os.environ.get("ATTNGEN_TUNING_DIR", "").split(os.pathsep) if d), "")
        or tuning.default_dir())
    plan = [(path, AttentionOp(a, Path(path).name), mine) for path, a, mine in plan if mine]
    gpu = torch.cuda.get_device_name()
    entries = []
    with _progress() as progress:
        task = progress.add_task("tuning", total=sum(len(mine) for _, _, mine in plan))
        for path, op, mine in plan:
            for shape in mine:
                entries += tuning.tune(op, [shape], dtype=SPEC_DTYPES[dtype], kernels=groups,
                                       step=lambda text: progress.update(task, description=text))
                progress.advance(task)
    written = tuning.write_entries(target, gpu, entries)
    for e in entries:
        c = e["config"]
        blocks = " ".join(f"{k}={v}" for k, v in c["kwargs"].items())
        click.echo(f"{e['kernel']} key {e['key'][:3]}: {blocks} warps={c['num_warps']} "
                   f"stages={c['num_stages']}" + (f"  {e['ms']:.4f} ms" if e["ms"] else ""))
    click.echo(f"wrote {len(entries)} entries to {written} ({gpu})")


if __name__ == "__main__":
    main()

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


def _expects_wgmma(kernel: str) -> bool:
    """The preprocess, document-runs and decode-combine kernels have no matrix product; decode's
    tiles of 16-64 query rows are below a warpgroup MMA's 64 and use mma.sync (it is memory-bound)."""
    return "preprocess" not in kernel and kernel != "_document_runs" and "_decode" not in kernel


@main.command(name="compile")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--arch", default=90, show_default=True, help="CUDA compute capability, e.g. 90, 80.")
@click.option("--dtype", "dtypes", default="", help="Comma list of bf16,fp16,fp32 (default: the spec's).")
@click.option("--head-dim", "head_dims", default="", help="Comma list (default: the spec's, else 64,128).")
@click.option("--kernels", "which", default="fwd,bwd,decode", show_default=True,
              help="Comma list of kernel groups: fwd, bwd, decode.")
def compile_cmd(files: tuple[str, ...], arch: int, dtypes: str, head_dims: str, which: str) -> None:
    """Compile the kernels of spec FILES for a GPU target; no GPU needed.

    Fails if a kernel does not compile, or if an fp16/bf16 kernel for sm_90 lacks wgmma.

    \b
    Example:
      attngen compile examples/*.attn --arch 90 --dtype bf16,fp16
    """
    import itertools
    import os

    os.environ["TRITON_INTERPRET"] = "0"  # compiled, not interpreted, kernels (before triton loads)
    from pathlib import Path

    from .aot import compile_kernel, kernels_of
    from .api import AttentionOp
    from .runtime import SPEC_DTYPES

    groups = tuple(g.strip() for g in which.split(","))
    if not set(groups) <= {"fwd", "bwd", "decode"}:
        raise click.BadParameter(f"expected a comma list of fwd, bwd, decode; got {which!r}",
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
                    k = compile_kernel(op.module, kernel, SPEC_DTYPES[dtype], dim, arch)
                except Exception as err:  # a compiler failure is reported, not raised
                    first_line = (str(err).strip().splitlines() or [""])[0]
                    click.echo(f"{path}: {kernel} {dtype} D={dim} sm_{arch}: FAILED: "
                               f"{type(err).__name__}: {first_line}", err=True)
                    failed = True
                    continue
                missing = arch >= 90 and dtype != "fp32" and not k.uses_wgmma \
                    and _expects_wgmma(kernel)
                failed |= missing
                click.echo(f"{path}: {k.kernel} {dtype} D={dim} sm_{arch} [{k.config}]: "
                           f"smem {k.shared_memory} B, cubin {k.cubin_bytes} B, "
                           f"wgmma {'yes' if k.uses_wgmma else 'NO'}"
                           f"{'  <- expected wgmma' if missing else ''}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

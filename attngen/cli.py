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
    from .api import parse_and_check

    failed = False
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        except (OSError, UnicodeDecodeError) as err:
            click.echo(f"{path}: error: cannot read spec: {err}", err=True)
            failed = True
            continue
        try:
            attentions = parse_and_check(source, path)
        except SpecError as err:
            click.echo(str(err), err=True)
            failed = True
            continue
        for attention in attentions:
            click.echo(f"{path}: ok: {attention.summary()}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

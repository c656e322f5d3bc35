"""The Python API: load a spec file (or text) and get its attention ops."""

from __future__ import annotations

from pathlib import Path

from . import ir
from .checker import check
from .parser import parse


def parse_and_check(source: str, path: str | None = None) -> list[ir.Attention]:
    """Parse and check spec text; raise ``SpecError`` (with every error found) when invalid."""
    return check(parse(source, path))


def read_spec(path_or_text: str | Path) -> tuple[str, str | None]:
    """Spec text and its path: a ``Path`` or a string without '{' names a file."""
    if isinstance(path_or_text, Path) or "{" not in str(path_or_text):
        path = Path(path_or_text)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"spec file not found: {path}") from None
    return str(path_or_text), None


class AttentionOp:
    """One attention of a spec, built: ``op(q, k, v, **params)`` runs its Triton kernels and
    ``op.reference(q, k, v, **params)`` evaluates the spec eagerly (the test oracle).

    ``op.module`` is the generated module (from the on-disk cache), ``op.module_path`` its file.
    """

    def __init__(self, attention: ir.Attention, source_name: str):
        from .cache import import_module, module_path

        self.spec = attention
        self.name = attention.name
        self.module_path = module_path(attention, source_name)
        self.module = import_module(self.module_path, attention.name)
        self._fn = getattr(self.module, attention.name)

    def __call__(self, q, k, v, *, scale=None, return_lse=False, **params):
        return self._fn(q, k, v, scale=scale, return_lse=return_lse, **params)

    def reference(self, q, k, v, *, scale=None, return_lse=False, **params):
        """Dense PyTorch evaluation of the spec in the inputs' dtype (float64 for a golden)."""
        from .reference import reference

        return reference(self.spec, q, k, v, scale=scale, return_lse=return_lse, **params)

    def __repr__(self) -> str:
        return f"<attngen op {self.spec.summary()}>"


def load(path_or_text: str | Path, name: str | None = None) -> AttentionOp:
    """The attention of a spec file or text: the only one, or the one called ``name``."""
    source, path = read_spec(path_or_text)
    attentions = parse_and_check(source, path)
    source_name = Path(path).name if path else "<text>"
    if name is None:
        if len(attentions) > 1:
            names = ", ".join(a.name for a in attentions)
            raise ValueError(f"{path or 'the spec'} defines {len(attentions)} attentions "
                             f"({names}); pass name= to choose one")
        return AttentionOp(attentions[0], source_name)
    for attention in attentions:
        if attention.name == name:
            return AttentionOp(attention, source_name)
    names = ", ".join(a.name for a in attentions)
    raise ValueError(f"no attention named {name!r} in {path or 'the spec'}; it defines {names}")

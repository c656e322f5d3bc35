"""Where the grammar and the templates live, in a wheel and in a source checkout alike.

A wheel ships them inside the package (``attngen/_data/``); an editable install or a plain
checkout reads them from the repository's top-level ``grammars/`` and ``templates/``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import Path


@cache
def data_dir(name: str) -> Path:
    packaged = resources.files("attngen") / "_data" / name
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"attngen's {name}/ folder is missing: looked in {packaged} and {checkout}; reinstall attngen"
    )


def grammar_path() -> Path:
    return data_dir("grammars") / "attn.lark"


def templates_dir() -> Path:
    return data_dir("templates")


@cache
def tree_hash(name: str) -> str:
    """A hash over every file of a data folder, so cache keys change when a template changes."""
    digest = hashlib.sha256()
    root = data_dir(name)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()

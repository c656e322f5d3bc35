"""Cache stage: rendered modules on disk, keyed by content, written atomically under a lock.

Layout (root: $ATTNGEN_CACHE_DIR, else ~/.cache/attngen):

    <root>/<name>-<key[:24]>/<name>.py        the generated module
    <root>/<name>-<key[:24]>/manifest.json    written last: key, sha256 of the module, versions
    <root>/<name>-<key[:24]>.lock             file lock held while rendering the entry

The key hashes the attention's canonical form, the templates, the grammar and attngen's own
code, and the versions of attngen, triton, torch and black. An entry counts only once its manifest is written and the
module's hash matches it; anything else is rendered again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import warnings
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from filelock import FileLock

from . import ir
from .render import VERSION, render
from .resources import tree_hash

RENDERS = 0  # modules rendered by this process (tests check a warm cache renders none)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


@cache
def cache_root() -> Path:
    """The cache directory; an unusable one falls back to a temporary directory with a warning."""
    root = Path(os.environ.get("ATTNGEN_CACHE_DIR") or Path.home() / ".cache" / "attngen")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".probe-", delete=True)
        probe.close()
        return root
    except OSError as err:
        # a private, unpredictable directory: nobody else can plant modules in it
        fallback = Path(tempfile.mkdtemp(prefix="attngen-cache-"))
        warnings.warn(f"attngen cache directory {root} is not writable ({err}); using {fallback}. "
                      f"Set ATTNGEN_CACHE_DIR to choose another.", stacklevel=3)
        return fallback


@cache
def _code_hash() -> str:
    """attngen's own generator code: a change to lowering must not serve stale modules."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(attention: ir.Attention) -> str:
    parts = [attention.canonical(), tree_hash("templates"), tree_hash("grammars"), _code_hash(),
             VERSION, _version("triton"), _version("torch"), _version("black")]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same directory and ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid(entry: Path, module: Path, key: str) -> bool:
    manifest = entry / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
        return data["key"] == key and data["module_sha256"] == _sha256(module)
    except (OSError, ValueError, KeyError):
        return False


def module_path(attention: ir.Attention, source_name: str) -> Path:
    """The cached module of ``attention``, rendered first unless a valid entry exists."""
    global RENDERS
    key = cache_key(attention)
    root = cache_root()
    entry = root / f"{attention.name}-{key[:24]}"
    module = entry / f"{attention.name}.py"
    if _valid(entry, module, key):
        return module
    with FileLock(str(root / f"{entry.name}.lock")):
        if _valid(entry, module, key):  # another process rendered it while we waited
            return module
        if (entry / "manifest.json").exists():
            warnings.warn(f"attngen cache entry {entry} is damaged (its module does not match its "
                          f"manifest); rendering it again", stacklevel=3)
        write_atomic(module, render(attention, source_name))
        RENDERS += 1
        manifest = {"key": key, "module_sha256": _sha256(module), "attention": attention.name,
                    "source": source_name, "attngen": VERSION, "triton": _version("triton"),
                    "torch": _version("torch")}
        write_atomic(entry / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return module


def import_module(path: Path, name: str):
    """Import a generated module from ``path`` under a unique, stable module name."""
    module_name = f"attngen_generated_{name}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module

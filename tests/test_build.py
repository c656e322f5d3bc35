"""``attngen build`` and the module cache: reproducible output, the header, the imports of
generated modules, rendering without torch, and cache hits, misses and repairs across processes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import attngen
import attngen.cache
import attngen.render
from attngen.cli import main

REPO = Path(__file__).resolve().parent.parent
GENERATED = REPO / "generated"
EXAMPLE_PATHS = sorted((REPO / "examples").glob("*.attn"))
EXAMPLE_ARGS = [f"examples/{p.name}" for p in EXAMPLE_PATHS]  # relative to the repo root


def _attentions(path: Path):
    return attngen.parse_and_check(path.read_text(encoding="utf-8"), str(path))


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _python(code: str, *, cwd=REPO, timeout=300, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"[rc {proc.returncode}]\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A private ATTNGEN_CACHE_DIR for this process (and the subprocesses it starts)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(root))
    attngen.cache.cache_root.cache_clear()
    yield root
    attngen.cache.cache_root.cache_clear()


def test_examples_and_generated_exist():
    assert len(EXAMPLE_PATHS) == 9
    assert GENERATED.is_dir()


# ---- build reproduces generated/ -----------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory):
    """``attngen build examples/*.attn -o OUT`` in a fresh process from the repo root, timed
    (rendering all nine takes most of a minute on two cores: one run serves the tests below)."""
    out = tmp_path_factory.mktemp("build") / "out"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "attngen.cli", "build", *EXAMPLE_ARGS, "-o",
                           str(out)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    return proc, out, time.perf_counter() - start


def test_build_reproduces_generated_byte_for_byte(fresh_build):
    proc, out, _ = fresh_build
    assert proc.returncode == 0, f"[rc {proc.returncode}]\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    built = sorted(p.name for p in out.iterdir())
    expected = sorted(p.name for p in GENERATED.glob("*.py"))
    assert built == expected  # the same file set, and nothing else (no temporary files left)
    names = sorted(f"{a.name}.py" for p in EXAMPLE_PATHS for a in _attentions(p))
    assert built == names
    for name in built:
        assert (out / name).read_bytes() == (GENERATED / name).read_bytes(), (
            f"generated/{name} differs from a fresh build; run `attngen build examples/*.attn`")
    # one line per module, naming its spec hash
    for p in EXAMPLE_PATHS:
        for a in _attentions(p):
            assert f"({a.name}, spec hash {attngen.render.spec_hash(a)[:12]})" in proc.stdout


def test_build_does_not_depend_on_paths_or_cwd(runner, tmp_path, monkeypatch):
    # absolute spec paths, run from elsewhere: the same bytes (three specs keep this quick)
    monkeypatch.chdir(tmp_path)
    some = [REPO / "examples" / f"{n}.attn" for n in ("alibi", "llama", "packed_docs")]
    result = runner.invoke(main, ["build", *map(str, some), "-o", "elsewhere"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == \
        ["alibi.py", "llama.py", "packed_docs.py"]
    for p in (tmp_path / "elsewhere").iterdir():
        assert p.read_bytes() == (GENERATED / p.name).read_bytes()


def test_build_check_passes_on_the_repo(runner, at_repo_root):
    # three specs keep this quick: that every module of generated/ is a fresh build's is
    # test_build_reproduces_generated_byte_for_byte's check
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in GENERATED.glob("*.py")}
    some = [f"examples/{n}.attn" for n in ("alibi", "packed_docs", "t5_bias")]
    result = runner.invoke(main, ["build", "--check", *some])
    assert result.exit_code == 0, result.output + (result.stderr or "")
    assert "3 generated module(s) up to date in generated" in result.stdout
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in GENERATED.glob("*.py")}
    assert after == before  # --check writes nothing


@pytest.mark.parametrize("damage", ["edit", "append", "delete"])
def test_build_check_fails_on_a_stale_module(runner, at_repo_root, tmp_path, damage):
    copy = tmp_path / "generated"
    shutil.copytree(GENERATED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "mistral_swa.py"
    text = target.read_text(encoding="utf-8")
    if damage == "edit":
        assert "4096" in text
        target.write_text(text.replace("4096", "4095", 1), encoding="utf-8")
    elif damage == "append":
        target.write_text(text + "\n", encoding="utf-8")
    else:
        target.unlink()
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    # two specs keep this quick: the stale module and one that is up to date
    result = runner.invoke(main, ["build", "--check", "examples/llama.attn",
                                  "examples/mistral_swa.attn", "-o", str(copy)])
    assert result.exit_code == 1, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("out of date")]
    assert line.split(": ", 1)[1].split(", ") == [str(copy / "mistral_swa.py")]  # only that one
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # nothing rewritten


# ---- the header and the imports of each generated module --------------------------------------


def _header(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _spec_block(path: Path) -> list[str]:
    """The attention's lines as written in the file, from 'attention' to its closing brace."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("attention "))
    end = max(i for i, line in enumerate(lines) if line.rstrip() == "}")
    return lines[start:end + 1]


def _module_constants(tree: ast.Module) -> dict:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant):
            out[node.targets[0].id] = node.value.value
    return out


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_header_holds_spec_text_and_hash(path):
    (attention,) = _attentions(path)
    text = (GENERATED / f"{attention.name}.py").read_text(encoding="utf-8")
    header = _header(text)
    assert header[0].startswith(f"# Generated by attngen {attngen.__version__} from {path.name}")
    digest = attngen.render.spec_hash(attention)
    assert digest == hashlib.sha256(attention.canonical().encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert f"# spec hash (sha256 of its canonical form): {digest}" in header
    # the spec's text, line by line and in order, as comments
    block = [f"# {line}".rstrip() for line in _spec_block(path)]
    stripped = [line.rstrip() for line in header]
    start = stripped.index(block[0])
    assert stripped[start:start + len(block)] == block
    # and as constants
    consts = _module_constants(ast.parse(text))
    assert consts["SPEC_HASH"] == digest
    assert consts["NAME"] == attention.name
    assert consts["SPEC"].splitlines() == _spec_block(path)


def test_spec_hash_follows_the_meaning():
    base = "attention h { mask causal & window(4096) }"
    (a,) = attngen.parse_and_check(base)
    (same,) = attngen.parse_and_check("attention h {\n    # a comment\n    mask causal & "
                                      "window(4096)\n}\n")
    (other,) = attngen.parse_and_check(base.replace("4096", "4095"))
    assert attngen.render.spec_hash(a) == attngen.render.spec_hash(same)
    assert attngen.render.spec_hash(a) != attngen.render.spec_hash(other)


ALLOWED_IMPORT_ROOTS = {"torch", "triton"}


def _imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in a generated module"
            found += [f"{node.module}.{alias.name}" if node.module == "attngen" else node.module
                      for alias in node.names]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("__import__", "exec", "eval"):
            found.append(f"<{node.func.id}()>")
    return found


@pytest.mark.parametrize("path", sorted(GENERATED.glob("*.py")), ids=lambda p: p.stem)
def test_generated_module_imports_only_torch_triton_and_runtime(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports = _imports(tree)
    assert "attngen.runtime" in imports and "torch" in imports and "triton" in imports
    bad = [m for m in imports
           if m != "attngen.runtime" and m.split(".")[0] not in ALLOWED_IMPORT_ROOTS]
    assert not bad, f"{path.name} imports {bad}"
    # attngen.runtime comes before triton (it selects the interpreter on CPU-only machines)
    order = [m for m in imports if m in ("attngen.runtime", "triton")]
    assert order[0] == "attngen.runtime"


def test_generated_module_does_not_load_the_compiler_stages(tmp_path):
    proc = _python("""
        import json, sys
        import generated.llama
        print(json.dumps(sorted(m for m in sys.modules
                                if m.split('.')[0] in ('attngen', 'lark', 'jinja2', 'black'))))
    """, cwd=tmp_path, ATTNGEN_CACHE_DIR=str(tmp_path / "cache"))
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "attngen.runtime" in loaded
    # attngen.errors (SpecError, no dependencies) is the package's only eager import
    assert not [m for m in loaded if m not in ("attngen", "attngen.errors", "attngen.runtime")], loaded


def test_rendering_imports_neither_torch_nor_triton(tmp_path):
    spec = (REPO / "examples" / "alibi.attn").read_text(encoding="utf-8")
    proc = _python(f"""
        import json, sys
        import attngen.render, attngen.api
        text = attngen.render.render(attngen.parse_and_check({spec!r})[0])
        print(json.dumps({{"len": len(text), "torch": "torch" in sys.modules,
                           "triton": "triton" in sys.modules}}))
    """, cwd=tmp_path)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["len"] > 1000
    assert got == {"len": got["len"], "torch": False, "triton": False}


# ---- the cache across processes ----------------------------------------------------------------

LOAD_AND_REPORT = """
    import json, sys
    import attngen, attngen.cache
    op = attngen.load(sys.argv[1])
    print(json.dumps({"renders": attngen.cache.RENDERS, "path": str(op.module_path)}))
"""


def _load_in_subprocess(spec: Path, cache: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(LOAD_AND_REPORT), str(spec)],
                          cwd=REPO, env=_env(ATTNGEN_CACHE_DIR=str(cache)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.is_dir()}


def test_cache_hit_in_a_second_process(tmp_path, cache_dir):
    spec = tmp_path / "swa.attn"
    spec.write_text("attention swa {\n    mask causal & window(64)\n}\n", encoding="utf-8")
    first = _load_in_subprocess(spec, cache_dir)
    assert first["renders"] == 1
    module = Path(first["path"])
    assert module.is_file() and module.is_relative_to(cache_dir)
    manifest = module.parent / "manifest.json"
    stamps = (module.stat().st_mtime_ns, manifest.stat().st_mtime_ns)
    data = json.loads(manifest.read_text())
    assert data["module_sha256"] == hashlib.sha256(module.read_bytes()).hexdigest()

    second = _load_in_subprocess(spec, cache_dir)
    assert second == {"renders": 0, "path": first["path"]}
    assert (module.stat().st_mtime_ns, manifest.stat().st_mtime_ns) == stamps
    assert _entries(cache_dir) == {module.parent.name}

    # a changed spec is a new entry; the old one stays
    spec.write_text("attention swa {\n    mask causal & window(65)\n}\n", encoding="utf-8")
    third = _load_in_subprocess(spec, cache_dir)
    assert third["renders"] == 1 and third["path"] != first["path"]
    assert _entries(cache_dir) == {module.parent.name, Path(third["path"]).parent.name}
    assert module.stat().st_mtime_ns == stamps[0]


def test_cached_module_is_the_rendered_module(cache_dir):
    (attention,) = _attentions(REPO / "examples" / "llama.attn")
    path = attngen.cache.module_path(attention, "llama.attn")
    assert path.read_bytes() == (GENERATED / "llama.py").read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete_module"])
def test_damaged_cache_entry_is_rendered_again(cache_dir, damage):
    text = "attention dmg {\n    mask causal & window(33)\n}\n"
    (attention,) = attngen.parse_and_check(text)
    renders = attngen.cache.RENDERS
    path = attngen.cache.module_path(attention, "<text>")
    assert attngen.cache.RENDERS == renders + 1
    good = path.read_bytes()
    # a valid entry is not rendered again
    assert attngen.cache.module_path(attention, "<text>") == path
    assert attngen.cache.RENDERS == renders + 1
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "edit":
        path.write_bytes(good.replace(b"window", b"wind0w", 1))
    else:
        path.unlink()
    with pytest.warns(UserWarning, match="damaged"):
        op = attngen.load(text)
    assert op.module_path == path
    assert attngen.cache.RENDERS == renders + 2
    assert path.read_bytes() == good
    assert op.module.SPEC_HASH == attngen.render.spec_hash(attention)


# ---- several attentions in one file ----------------------------------------------------------

TWO = """\
attention first {
    mask causal
}

attention second {
    mask causal & window(3)
}
"""


def test_two_attentions_in_one_file(tmp_path, cache_dir):
    spec = tmp_path / "two.attn"
    spec.write_text(TWO, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        attngen.load(spec)
    assert "first" in str(info.value) and "second" in str(info.value)
    assert "name=" in str(info.value)
    op = attngen.load(spec, name="second")
    assert op.name == "second" and op.module.NAME == "second"
    assert "window(3)" in op.module.SPEC
    assert attngen.load(spec, name="first").module.NAME == "first"
    with pytest.raises(ValueError) as info:
        attngen.load(spec, name="third")
    message = str(info.value)
    assert "third" in message and "first" in message and "second" in message


# ---- speed -----------------------------------------------------------------------------------


def test_build_all_examples_is_fast(fresh_build):
    proc, out, elapsed = fresh_build
    print(f"\nattngen build of {len(EXAMPLE_ARGS)} specs: {elapsed:.2f} s")
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("*.py"))) == len(EXAMPLE_ARGS)
    assert elapsed < 10 * len(EXAMPLE_ARGS), f"build took {elapsed:.1f} s"

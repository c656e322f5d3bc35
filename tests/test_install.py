"""The wheel works on its own: built from the checkout, installed into a temporary folder and
used from an empty directory, it imports, finds its grammar and templates inside the wheel (not
in the checkout) and runs the CLI.

Dependencies (lark, click, torch, ...) come from the running interpreter's site-packages; only
attngen itself comes from the wheel, through PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Output that means "no package index reachable", not "the project does not build".
_NETWORK_SIGNS = (
    "Could not find a version that satisfies", "No matching distribution found",
    "Failed to establish a new connection", "NewConnectionError", "Temporary failure in name "
    "resolution", "Name or service not known", "Network is unreachable", "ConnectionError",
    "ProxyError", "Read timed out", "ConnectTimeout", "SSLError",
)
# A --no-build-isolation build without the backend installed: the fallback cannot work offline.
_NO_BACKEND_SIGNS = ("No module named 'hatchling'", "BackendUnavailable",
                     "Cannot import 'hatchling.build'")


def _run(cmd, *, cwd=None, env=None, timeout=300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _log(proc) -> str:
    return f"$ {' '.join(map(str, proc.args))}\n[rc {proc.returncode}]\n{proc.stdout}\n{proc.stderr}"


def _build_wheel(repo: Path, out: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` (hatchling comes with the test extras);
    failing that, ``python -m build --wheel``. Skips only when both fail for lack of a package
    index."""
    first = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--wheel-dir", str(out), str(repo)])
    if first.returncode != 0:
        second = _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(repo)])
        if second.returncode != 0:
            backendless = any(s in _log(first) for s in _NETWORK_SIGNS + _NO_BACKEND_SIGNS)
            offline = any(s in _log(second) for s in _NETWORK_SIGNS) or \
                "No module named build" in second.stderr
            if offline and backendless:
                pytest.skip("cannot build the wheel without a package index: `python -m build` "
                            "needs to download hatchling and the venv has no hatchling for "
                            "`pip wheel --no-build-isolation`\n" + _log(first) + _log(second))
            pytest.fail("building the wheel failed\n" + _log(first) + _log(second))
    wheels = sorted(out.glob("attngen-*.whl"))
    assert len(wheels) == 1, f"expected one attngen wheel in {out}, got {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory, repo_root):
    """(site folder, empty working directory, environment) for running the installed wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(repo_root, tmp / "dist")
    site = tmp / "site"
    proc = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                 "--target", str(site), str(wheel)])
    assert proc.returncode == 0, _log(proc)
    empty = tmp / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return site.resolve(), empty, env


@pytest.fixture(autouse=True)
def _still_empty(request):
    if "installed" in request.fixturenames:
        empty = request.getfixturevalue("installed")[1]
        assert not any(empty.iterdir()), f"{empty} is not empty"


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder)


def test_wheel_imports_from_its_own_files(installed, repo_root, examples_dir):
    site, empty, env = installed
    script = (
        "import json, attngen, attngen.resources as r\n"
        f"op = attngen.load({str(examples_dir / 'alibi.attn')!r})\n"
        "print(json.dumps({'file': attngen.__file__, 'grammar': str(r.grammar_path()),\n"
        "                  'templates': str(r.templates_dir()), 'version': attngen.__version__,\n"
        "                  'name': op.name}))\n"
    )
    proc = _run([sys.executable, "-c", script], cwd=empty, env=env, timeout=120)
    assert proc.returncode == 0, _log(proc)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert _inside(info["file"], site), f"attngen came from {info['file']}, not the wheel in {site}"
    assert not _inside(info["file"], repo_root.resolve())
    assert _inside(info["grammar"], site) and Path(info["grammar"]).is_file(), info
    assert _inside(info["templates"], site) and Path(info["templates"]).is_dir(), info
    assert info["name"] == "alibi" and info["version"]


@pytest.mark.parametrize("folder", ["grammars", "templates"])
def test_wheel_ships_every_data_file(installed, repo_root, folder):
    site, _, _ = installed
    want = {p.relative_to(repo_root / folder).as_posix()
            for p in (repo_root / folder).rglob("*") if p.is_file() and p.name != ".keep"
            and "__pycache__" not in p.parts}
    packaged = site / "attngen" / "_data" / folder
    got = {p.relative_to(packaged).as_posix() for p in packaged.rglob("*") if p.is_file()}
    assert want <= got, f"missing from the wheel: {sorted(want - got)}"


def test_wheel_cli_check(installed, examples_dir):
    site, empty, env = installed
    spec = str((examples_dir / "alibi.attn").resolve())
    proc = _run([sys.executable, "-m", "attngen.cli", "check", spec], cwd=empty, env=env,
                timeout=120)
    assert proc.returncode == 0, _log(proc)
    assert "ok:" in proc.stdout and "alibi" in proc.stdout, _log(proc)
    # and the console script the wheel declares
    script = site / "bin" / "attngen"
    assert script.is_file(), f"no console script at {script}"
    proc = _run([sys.executable, str(script), "check", spec], cwd=empty, env=env, timeout=120)
    assert proc.returncode == 0 and "ok:" in proc.stdout, _log(proc)


def test_wheel_cli_reports_a_bad_spec(installed, tmp_path):
    _, empty, env = installed
    bad = tmp_path / "bad.attn"
    bad.write_text("attention broken {\n    mask kv <= nowhere\n}\n")
    proc = _run([sys.executable, "-m", "attngen.cli", "check", str(bad)], cwd=empty, env=env,
                timeout=120)
    assert proc.returncode == 1, _log(proc)
    assert "nowhere" in proc.stderr and "ok:" not in proc.stdout, _log(proc)

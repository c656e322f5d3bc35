"""The ``attngen`` command line: ``check`` on good and bad specs, help, and start-up cost."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import attngen
from attngen.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))
ERROR_LINE = re.compile(r"^(?P<path>.+):(?P<line>\d+):(?P<col>\d+): error: ", re.MULTILINE)

BAD_SPEC = "\n".join([
    "attention bad {",
    "    param slopes: f32[H]",
    "    score score + slopes[h] * (kv - q)",
    "    mask kv - q",          # line 4: the '-' is at column 13
    "}",
]) + "\n"


def attngen_command() -> list[str]:
    """The installed ``attngen`` script of this interpreter's environment, else ``-m``."""
    script = Path(sys.executable).parent / "attngen"
    if script.is_file():
        return [str(script)]
    found = shutil.which("attngen")
    if found:
        return [found]
    return [sys.executable, "-m", "attngen.cli"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(main, list(args), catch_exceptions=True)


# ---- check: good specs -----------------------------------------------------------------------

def test_examples_exist():
    assert len(EXAMPLES) >= 5


def test_check_all_examples_ok(runner):
    result = invoke(runner, "check", *map(str, EXAMPLES))
    assert result.exit_code == 0, result.output + result.stderr
    assert result.exception is None
    assert result.stderr == ""
    ok_lines = [line for line in result.stdout.splitlines() if line]
    expected = sum(len(attngen.parse_and_check(p.read_text(), str(p))) for p in EXAMPLES)
    assert len(ok_lines) == expected
    for path in EXAMPLES:
        n = len(attngen.parse_and_check(path.read_text(), str(path)))
        assert sum(line.startswith(f"{path}: ok: ") for line in ok_lines) == n
    assert all(": ok: " in line for line in ok_lines)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_check_each_example_prints_one_ok_line_per_attention(runner, path):
    result = invoke(runner, "check", str(path))
    assert result.exit_code == 0, result.stderr
    names = [a.name for a in attngen.parse_and_check(path.read_text(), str(path))]
    lines = result.stdout.splitlines()
    assert len(lines) == len(names)
    for line, name in zip(lines, names):
        assert line.startswith(f"{path}: ok: {name};")


def test_check_file_with_two_attentions(runner, tmp_path):
    spec = tmp_path / "two.attn"
    spec.write_text("attention one {\n    mask causal\n}\nattention two {\n    mask all\n}\n")
    result = invoke(runner, "check", str(spec))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        line for line in result.stdout.splitlines() if line.startswith(f"{spec}: ok: ")]
    assert [line.split(": ok: ")[1].split(";")[0] for line in result.stdout.splitlines()] == [
        "one", "two"]


def test_check_ok_line_summarises_the_attention(runner):
    path = ROOT / "examples" / "alibi.attn"
    result = invoke(runner, "check", str(path))
    assert result.exit_code == 0
    line = result.stdout.strip()
    assert line.startswith(f"{path}: ok: alibi;")
    assert "slopes: f32[H] grad" in line
    assert "mask causal" in line


# ---- check: bad specs ------------------------------------------------------------------------

def test_check_bad_spec_exits_1_with_compiler_style_error(runner, tmp_path):
    bad = tmp_path / "bad.attn"
    bad.write_text(BAD_SPEC)
    result = invoke(runner, "check", str(bad))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"{bad}:4:13: error: 'mask' expects a bool expression")
    lines = result.stderr.splitlines()
    assert lines[1].strip() == "mask kv - q"
    assert lines[2].index("^") == lines[1].index("-")


def test_check_syntax_error_exits_1(runner, tmp_path):
    bad = tmp_path / "syntax.attn"
    bad.write_text("attention a {\n    dtype bf16\n    mask q @ kv\n}\n")
    result = invoke(runner, "check", str(bad))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{bad}:3:12: error: unexpected character '@'")


def test_check_reports_every_error(runner, tmp_path):
    bad = tmp_path / "many.attn"
    bad.write_text("attention a {\n    param s: f64\n    mask foo\n    dtype fp8\n}\n")
    result = invoke(runner, "check", str(bad))
    assert result.exit_code == 1
    found = [(m["line"], m["col"]) for m in ERROR_LINE.finditer(result.stderr)]
    assert found == [("2", "14"), ("3", "10"), ("4", "11")]
    assert all(m["path"] == str(bad) for m in ERROR_LINE.finditer(result.stderr))


def test_check_reports_every_bad_file(runner, tmp_path):
    bad1 = tmp_path / "bad1.attn"
    bad1.write_text(BAD_SPEC)
    bad2 = tmp_path / "bad2.attn"
    bad2.write_text("attention b {\n    mask foo\n}\n")
    good = ROOT / "examples" / "llama.attn"
    result = invoke(runner, "check", str(bad1), str(good), str(bad2))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    paths = [m["path"] for m in ERROR_LINE.finditer(result.stderr)]
    assert paths == [str(bad1), str(bad2)]  # a bad file does not stop the others' checks
    assert f"{bad2}:2:10: error: unknown name 'foo'" in result.stderr


def test_check_empty_file_is_an_error(runner, tmp_path):
    empty = tmp_path / "empty.attn"
    empty.write_text("")
    result = invoke(runner, "check", str(empty))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{empty}:1:1: error: no attention in this file")


def test_check_missing_file(runner, tmp_path):
    missing = tmp_path / "nope.attn"
    result = invoke(runner, "check", str(missing))
    assert result.exit_code != 0
    assert "Traceback" not in result.output + result.stderr
    assert str(missing) in result.stderr
    assert "error" in result.stderr.lower()
    assert "No such file" in result.stderr or "not found" in result.stderr.lower()


def test_check_undecodable_file(runner, tmp_path):
    binary = tmp_path / "binary.attn"
    binary.write_bytes(b"attention a {\n  mask \xff\xfe\n}\n")
    result = invoke(runner, "check", str(binary))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert f"{binary}: error: cannot read spec" in result.stderr


def test_check_directory_is_refused(runner, tmp_path):
    result = invoke(runner, "check", str(tmp_path))
    assert result.exit_code != 0
    assert "Traceback" not in result.output + result.stderr
    assert "directory" in (result.output + result.stderr).lower()


def test_check_needs_a_file(runner):
    result = invoke(runner, "check")
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr


def test_check_deep_expression_no_traceback(runner, tmp_path):
    crashed = []
    for n in range(150, 800, 50):
        for op in ("+", "**"):
            path = tmp_path / f"deep{n}.attn"
            path.write_text(f"attention a {{\n    score score{f' {op} 1' * n}\n}}\n")
            result = invoke(runner, "check", str(path))
            if result.exit_code not in (0, 1) or not isinstance(result.exception,
                                                                (SystemExit, type(None))):
                crashed.append((op, n, type(result.exception).__name__))
    assert not crashed, crashed


# ---- help and version ------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_check(runner, flag):
    result = invoke(runner, flag)
    assert result.exit_code == 0
    assert re.search(r"^\s+check\s", result.stdout, re.MULTILINE)


def test_check_help(runner):
    result = invoke(runner, "check", "--help")
    assert result.exit_code == 0
    assert "FILES" in result.stdout


def test_version(runner):
    result = invoke(runner, "--version")
    assert result.exit_code == 0
    assert attngen.__version__ in result.stdout


def test_unknown_command(runner):
    result = invoke(runner, "frobnicate")
    assert result.exit_code == 2
    assert "No such command" in result.stderr


# ---- real processes --------------------------------------------------------------------------

def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=60, **kwargs)


def test_import_and_check_do_not_import_torch():
    code = (
        "import sys, attngen, attngen.cli\n"
        "from attngen import parse_and_check\n"
        "text = open('examples/t5_bias.attn').read()\n"
        "assert [a.name for a in parse_and_check(text, 'examples/t5_bias.attn')] == ['t5_bias']\n"
        "try:\n"
        "    parse_and_check('attention a {\\n mask foo\\n}\\n')\n"
        "except attngen.SpecError:\n"
        "    pass\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')\n"
        "             or m == 'triton' or m.startswith('triton.'))\n"
        "print('heavy:', bad)\n"
        "assert 'torch' not in sys.modules, bad\n"
    )
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout


def test_subprocess_check_example_is_fast():
    cmd = [*attngen_command(), "check", "examples/llama.attn"]
    start = time.perf_counter()
    proc = run(cmd)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("examples/llama.attn: ok: llama;")
    assert elapsed < 5.0, f"'attngen check' took {elapsed:.2f} s"


def test_subprocess_check_bad_spec(tmp_path):
    bad = tmp_path / "bad.attn"
    bad.write_text(BAD_SPEC)
    proc = run([*attngen_command(), "check", str(bad)])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{bad}:4:13: error: ")
    assert proc.stdout == ""


def test_python_dash_m_entry_point():
    proc = run([sys.executable, "-m", "attngen.cli", "check", "examples/alibi.attn"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("examples/alibi.attn: ok: alibi;")

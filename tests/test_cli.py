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


# ---- show: generated source ------------------------------------------------------------------

def test_show_prints_what_build_writes(runner, tmp_path):
    spec = ROOT / "examples" / "llama.attn"
    result = invoke(runner, "show", str(spec))
    assert result.exit_code == 0, result.stderr
    built = invoke(runner, "build", str(spec), "-o", str(tmp_path))
    assert built.exit_code == 0, built.stderr
    assert result.stdout == (tmp_path / "llama.py").read_text()
    assert "\x1b[" not in result.stdout  # not a terminal: no colour codes


def _defs(text: str) -> list[str]:
    return re.findall(r"^def (\w+)\(", text, re.MULTILINE)


@pytest.mark.parametrize("group, expected, absent", [
    ("fwd", {"_document_runs", "_packed_docs_fwd_tiles", "packed_docs_fwd", "_tile_ranges"},
     {"packed_docs_bwd_dq", "packed_docs_decode_kernel", "_launch_fwd"}),
    ("bwd", {"_packed_docs_bwd_preprocess", "packed_docs_bwd_dkdv", "packed_docs_bwd_dq",
             "_packed_docs_bwd_dkdv_tiles", "_tile_ranges"},
     {"packed_docs_fwd", "packed_docs_decode_kernel"}),
    ("decode", {"packed_docs_decode_kernel", "_packed_docs_decode_combine",
                "_packed_docs_fwd_tiles"},  # decode reuses the forward's tile loop
     {"packed_docs_fwd", "packed_docs_bwd_dq"}),
])
def test_show_kernel_group(runner, group, expected, absent):
    result = invoke(runner, "show", str(ROOT / "examples" / "packed_docs.attn"), "--kernel", group)
    assert result.exit_code == 0, result.stderr
    names = set(_defs(result.stdout))
    assert expected <= names, names
    assert not names & absent, names
    assert result.stdout.lstrip().startswith("@triton.")
    compile(result.stdout, "<shown>", "exec")  # whole functions, decorators included


def test_show_kernel_group_the_spec_leaves_out(runner, tmp_path):
    spec = tmp_path / "fwd_only.attn"
    spec.write_text("attention fwd_only {\n    mask causal\n    kernels fwd\n}\n")
    for group in ("decode", "bwd"):
        result = invoke(runner, "show", str(spec), "--kernel", group)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr.startswith(f"{spec}: error: fwd_only has no {group} kernels "
                                        f"(it has: fwd)")
        assert "Traceback" not in result.stderr


def test_show_color(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "llama.attn"), "--kernel", "fwd",
                    "--color")
    assert result.exit_code == 0, result.stderr
    assert "\x1b[" in result.stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert "def llama_fwd(" in plain


def test_show_picks_attention_by_name(runner, tmp_path):
    spec = tmp_path / "two.attn"
    spec.write_text("attention one {\n    mask causal\n}\nattention two {\n    mask all\n}\n")
    result = invoke(runner, "show", str(spec), "--name", "two", "--kernel", "fwd")
    assert result.exit_code == 0, result.stderr
    assert "def two_fwd(" in result.stdout
    result = invoke(runner, "show", str(spec))
    assert result.exit_code == 1
    assert "several attentions; pick one with --name (it defines: one, two)" in result.stderr
    result = invoke(runner, "show", str(spec), "--name", "three")
    assert result.exit_code == 1
    assert "no attention named 'three'" in result.stderr


def test_show_bad_spec_and_missing_file(runner, tmp_path):
    bad = tmp_path / "bad.attn"
    bad.write_text(BAD_SPEC)
    result = invoke(runner, "show", str(bad))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{bad}:4:13: error: ")
    result = invoke(runner, "show", str(tmp_path / "nope.attn"), "--mask")
    assert result.exit_code == 1
    assert "cannot read spec" in result.stderr


def test_show_mask_options_need_mask(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "llama.attn"), "--q-len", "8",
                    "--png", "x.png")
    assert result.exit_code == 2
    assert "--q-len, --png need --mask" in result.stderr
    result = invoke(runner, "show", str(ROOT / "examples" / "llama.attn"), "--mask",
                    "--kernel", "fwd")
    assert result.exit_code == 2
    assert "--kernel does not apply with --mask" in result.stderr


# ---- show: mask pictures ---------------------------------------------------------------------

def picture(stdout: str) -> list[str]:
    """The picture rows of ``show --mask`` (row label stripped)."""
    rows = (re.match(r"^\s*\d+ ([█▒·#+.]+)$", line) for line in stdout.splitlines())
    return [row[1] for row in rows if row]


def test_show_mask_causal(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "llama.attn"), "--mask",
                    "--q-len", "6")
    assert result.exit_code == 0, result.stderr
    rows = picture(result.stdout)
    assert rows == ["██" * (i + 1) + "··" * (5 - i) for i in range(6)]
    assert "kept 21 of 36 pairs (58.3%)" in result.stdout
    assert "mask causal" in result.stdout


def test_show_mask_bottom_right_alignment(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "llama.attn"), "--mask",
                    "--q-len", "2", "--kv-len", "5")
    assert result.exit_code == 0, result.stderr
    assert picture(result.stdout) == ["██" * 4 + "··", "██" * 5]
    assert "q = i + 3" in result.stdout


def test_show_mask_matches_the_reference(runner):
    import torch

    from attngen.reference import mask_grid
    from attngen.runtime import Shapes

    path = ROOT / "examples" / "prefix_lm.attn"
    result = invoke(runner, "show", str(path), "--mask", "--q-len", "12", "--param", "prefix=5")
    assert result.exit_code == 0, result.stderr
    attention = attngen.parse_and_check(path.read_text())[0]
    shapes = Shapes(batch=1, heads_q=1, heads_kv=1, q_len=12, kv_len=12, head_dim=64)
    grid = mask_grid(attention, shapes, prefix=torch.tensor([5], dtype=torch.int32))[0, 0]
    drawn = [[row[2 * j] == "█" for j in range(12)] for row in picture(result.stdout)]
    assert drawn == grid.tolist()
    assert "prefix = 5 (given)" in result.stdout


def test_show_mask_default_params_are_named(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "prefix_lm.attn"), "--mask",
                    "--q-len", "16")
    assert result.exit_code == 0, result.stderr
    assert "prefix = 4 (default: kv_len // 4)" in result.stdout
    assert picture(result.stdout)[0] == "██" * 4 + "··" * 12
    result = invoke(runner, "show", str(ROOT / "examples" / "packed_docs.attn"), "--mask",
                    "--q-len", "16")
    assert result.exit_code == 0, result.stderr
    assert "doc = documents of 6, 4, 6 tokens (default)" in result.stdout


def test_show_mask_documents_from_lengths(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "packed_docs.attn"), "--mask",
                    "--q-len", "6", "--param", "doc=2,3")  # the last token is padding
    assert result.exit_code == 0, result.stderr
    assert picture(result.stdout) == ["██··········", "████········", "····██······",
                                      "····████····", "····██████··", "··········██"]


def test_show_mask_score_only_params_need_no_value(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "alibi.attn"), "--mask",
                    "--q-len", "4")
    assert result.exit_code == 0, result.stderr
    assert "slopes" not in result.stdout  # the mask does not read it


def test_show_mask_param_without_default(runner, tmp_path):
    spec = tmp_path / "cut.attn"
    spec.write_text("attention cut {\n    param keep: bool[Q, KV]\n    mask keep[q, kv]\n}\n")
    result = invoke(runner, "show", str(spec), "--mask", "--q-len", "4")
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{spec}: error: the mask reads param keep: bool[Q, KV], "
                                    f"which has no default; pass --param keep=VALUE")
    result = invoke(runner, "show", str(spec), "--mask", "--q-len", "2", "--param",
                    "keep=1,0,1,1")
    assert result.exit_code == 0, result.stderr
    assert picture(result.stdout) == ["██··", "████"]


@pytest.mark.parametrize("param, message", [
    ("nope=3", "--param nope: prefix_lm has no such param (it takes: prefix)"),
    ("prefix=x", "--param prefix: expected a value of type i32, got 'x'"),
    ("prefix=1,2", "--param prefix: expected 1 or 1 values for shape [1], got 2"),
])
def test_show_mask_bad_param(runner, param, message):
    result = invoke(runner, "show", str(ROOT / "examples" / "prefix_lm.attn"), "--mask",
                    "--param", param)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_show_mask_param_needs_equals(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "prefix_lm.attn"), "--mask",
                    "--param", "prefix")
    assert result.exit_code == 2
    assert "expected NAME=VALUE" in result.stderr


def test_show_mask_too_long_documents(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "packed_docs.attn"), "--mask",
                    "--q-len", "8", "--param", "doc=5,5")
    assert result.exit_code == 1
    assert "add up to at most kv_len 8" in result.stderr


def test_show_mask_downsamples_to_the_width(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "mistral_swa.attn"), "--mask",
                    "--q-len", "4096", "--width", "80")
    assert result.exit_code == 0, result.stderr
    rows = picture(result.stdout)
    assert max(len(line) for line in result.stdout.splitlines()[-len(rows) - 1:]) <= 80
    assert len(rows) == len(rows[0]) // 2  # square
    assert "one cell = 111x111 pairs" in result.stdout
    assert "▒" in result.stdout
    assert rows[0].startswith("▒") and rows[-1].endswith("▒")


def test_show_mask_too_large(runner):
    result = invoke(runner, "show", str(ROOT / "examples" / "llama.attn"), "--mask",
                    "--q-len", "8192")
    assert result.exit_code == 1
    assert "too large to draw" in result.stderr


def test_show_mask_png(runner, tmp_path):
    import struct
    import zlib

    out = tmp_path / "mask.png"
    result = invoke(runner, "show", str(ROOT / "examples" / "llama.attn"), "--mask",
                    "--q-len", "4", "--png", str(out))
    assert result.exit_code == 0, result.stderr
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (512, 512)
    assert f"wrote {out} (512x512)" in result.stdout
    idat = data.index(b"IDAT")
    size = struct.unpack(">I", data[idat - 4:idat])[0]
    raw = zlib.decompress(data[idat + 4:idat + 4 + size])
    row = raw[1:1 + 3 * width]  # first pixel row (after the filter byte): query 0 sees key 0
    assert row[0] < 128 and row[-1] > 200


def test_show_help_has_examples(runner):
    for command in ("check", "build", "compile", "show"):
        result = invoke(runner, command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.stdout, command
    assert "attngen show examples/packed_docs.attn --mask" in invoke(runner, "show",
                                                                        "--help").stdout


def test_show_source_does_not_import_torch():
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from attngen.cli import main\n"
            "args = ['show', 'examples/alibi.attn', '--kernel', 'fwd']\n"
            "result = CliRunner().invoke(main, args)\n"
            "assert result.exit_code == 0, result.output\n"
            "assert 'torch' not in sys.modules and 'triton' not in sys.modules\n")
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr

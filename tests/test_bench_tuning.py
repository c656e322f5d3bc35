"""The benchmark suite's selection and reporting (attngen/bench.py), the ``bench`` command's run
loop with the timings faked, and the ``bench``/``tune`` commands on a machine without a GPU.
The tuning tables themselves are tested in test_tuning.py."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import attngen
from attngen import bench
from attngen.cli import main
from conftest import REPO_ROOT

LLAMA = REPO_ROOT / "examples" / "llama.attn"
GPU = "NVIDIA H100 80GB HBM3"


# ---- the benchmark suite ----------------------------------------------------------------------


def test_suite_selection():
    suite = bench.select(None, quick=False)
    assert suite == bench.SUITE
    assert any(c.decode for c in suite) and any(not c.decode for c in suite)
    assert any(c.N == 16384 for c in suite) and any(c.D == 64 for c in suite)
    quick = bench.select(None, quick=True)
    assert quick and set(quick) < set(suite)
    assert all(c.N != 16384 and c.D != 64 for c in quick)
    assert any(c.decode for c in quick) and any(not c.decode for c in quick)
    assert [c.N for c in bench.select(["causal"], quick=False)] == [4096, 16384, 4096]
    assert [(c.N, c.D) for c in bench.select(["causal"], quick=True)] == [(4096, 128)]
    assert {c.name for c in bench.select(["softcap", "decode_causal"], quick=True)} == {
        "softcap", "decode_causal"}
    for case in suite:
        assert case.spec in bench.SPECS.values()
        assert 0 < case.kept <= 1


def test_unknown_case_names_the_expected_ones():
    with pytest.raises(ValueError) as err:
        bench.select(["causal", "nope"], quick=False)
    message = str(err.value)
    assert "'nope'" in message
    for name in ("full", "causal", "window1024", "doc8", "softcap", "alibi", "decode_causal"):
        assert name in message


def test_suite_specs_are_valid_and_named_after_their_case():
    for name, text in bench.SPECS.items():
        (attention,) = attngen.parse_and_check(text)
        assert attention.name == name


def synthetic_rows() -> list[dict]:
    train = [dict(case="causal", impl=impl, mode="train", N=4096, D=128, fwd_tflops=f,
                  bwd_tflops=b)
             for impl, f, b in (("attngen", 460.0, 330.0), ("flex", 400.0, 300.0),
                                ("sdpa_cudnn", 575.0, 500.0))]
    return train + [
        dict(case="full", impl="attngen", mode="train", N=8192, D=64, fwd_tflops=300.0,
             bwd_tflops=200.0),  # no peers: ratios are dashes
        dict(case="copy", impl="torch", mode="copy", gbps=3000.0),
        dict(case="decode_causal", impl="attngen", mode="eager", L=32768, D=128, gbps=2400.0),
        dict(case="decode_causal", impl="attngen", mode="graph", L=32768, D=128, gbps=2850.0),
        dict(case="decode_causal", impl="flex", mode="eager", L=32768, D=128, gbps=1500.0),
        dict(case="softcap", impl="flex", mode="train", N=8192, D=128,
             error="RuntimeError: out of resources"),
    ]


def table_line(md: str, start: str) -> list[str]:
    line = next(l for l in md.splitlines() if l.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_markdown_ratios_decode_share_and_failures():
    checks = [dict(case="causal", N=4096, D=128, impl="flex", max_abs_diff=0.004),
              dict(case="causal", N=4096, D=128, impl="sdpa_cudnn", max_abs_diff=0.0078)]
    md = bench.markdown(synthetic_rows(), checks, {"gpu": GPU, "date": "2026-11-22"})
    assert md.startswith(f"# attngen benchmark, {GPU}, 2026-11-22")
    # | case | N | D | attngen | SDPA flash | cuDNN | Flex | vs Flex (fwd, bwd) | vs cuDNN fwd |
    assert table_line(md, "| causal") == [
        "causal", "4096", "128", "460.0 / 330.0", "–", "575.0 / 500.0", "400.0 / 300.0",
        "1.15, 1.10", "0.80"]
    assert table_line(md, "| full") == [
        "full", "8192", "64", "300.0 / 200.0", "–", "–", "–", "–, –", "–"]
    assert table_line(md, "| softcap") == [
        "softcap", "8192", "128", "–", "–", "–", "failed", "–, –", "–"]
    assert "device copy 3000.0 GB/s" in md
    assert table_line(md, "| decode_causal | 32768 | attngen") == [
        "decode_causal", "32768", "attngen", "2400.0", "2850.0", "95%"]
    assert table_line(md, "| decode_causal | 32768 | flex") == [
        "decode_causal", "32768", "flex", "1500.0", "–", "–"]
    assert "- softcap flex train: failed: RuntimeError: out of resources" in md
    assert "0.0078 (causal N=4096 vs sdpa_cudnn)" in md  # the worst check
    assert "| copy" not in md


@pytest.mark.parametrize("copy, share", [(3000, "95%"), (None, "–")])
def test_markdown_decode_share_of_copy(copy, share):
    """Integer GB/s (a hand-edited or rounded results file) count like floats; with no copy row
    the header names no copy bandwidth and the share is a dash."""
    rows = [dict(case="decode_causal", impl="attngen", mode=mode, L=4096, D=128, gbps=gbps)
            for mode, gbps in (("eager", 2400), ("graph", 2850))]
    if copy is not None:
        rows.insert(0, dict(case="copy", impl="torch", mode="copy", gbps=copy))
    md = bench.markdown(rows, [], {"gpu": GPU})
    assert table_line(md, "| decode_causal") == [
        "decode_causal", "4096", "attngen", "2400", "2850", share]
    assert ("device copy 3000 GB/s" in md) == (copy is not None)
    assert "None" not in md


def test_markdown_says_which_flex_options_ran():
    """A Flex row that only ran on a retry with other kernel_options says so, with the error."""
    rows = [dict(case="relbias", impl=impl, mode="train", N=4096, D=128, fwd_tflops=f,
                 bwd_tflops=b, **extra)
            for impl, f, b, extra in (
                ("attngen", 386.0, 152.1, {}),
                ("flex", 164.6, 1.9, dict(flex_kernel_options={"num_stages": 1},
                                          flex_default_error="OutOfMemoryError: out of resource")))]
    md = bench.markdown(rows, [], {"gpu": GPU})
    assert table_line(md, "| relbias")[3] == "386.0 / 152.1"
    assert "relbias N=4096 flex: ran with kernel_options {'num_stages': 1}; its default failed: " \
           "OutOfMemoryError: out of resource" in md


def test_write_read_round_trip(tmp_path):
    rows, checks = synthetic_rows(), [dict(case="causal", N=4096, D=128, impl="flex",
                                           max_abs_diff=0.004)]
    info = {"gpu": GPU, "torch": "2.13", "date": "2026-11-22"}
    written = bench.write(tmp_path / "out", "run", rows, checks, info)
    assert written[:2] == [tmp_path / "out" / "run.json", tmp_path / "out" / "run.md"]
    assert bench.read(written[0]) == (rows, checks, info)
    assert written[1].read_text() == bench.markdown(rows, checks, info)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert len(written) == 2 and not (tmp_path / "out" / "run.png").exists()
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="expected a JSON object with a list of rows"):
        bench.read(tmp_path / "list.json")


# ---- the commands -----------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
@pytest.mark.parametrize("args", [["bench"], ["bench", "--quick", "--cases", "causal"],
                                  ["tune", str(LLAMA), "--shapes", "1,2,2,64,16"]])
def test_gpu_commands_exit_1_without_a_gpu(args, tmp_path):
    result = CliRunner().invoke(main, args + (["-o", str(tmp_path / "o")]))
    assert result.exit_code == 1, result.output
    assert "needs a CUDA GPU" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, option", [
    (["bench", "--cases", "nope"], "--cases"),
    (["bench", "--impls", "attngen,nope"], "--impls"),
    (["tune", str(LLAMA), "--shapes", "1,2,3"], "--shapes"),
    (["tune", str(LLAMA), "--shapes", "1,2,2,64,x"], "--shapes"),
    (["tune", str(LLAMA), "--shapes", "1,2,2,0,16"], "--shapes"),
    (["tune", str(LLAMA), "--shapes", "1,3,2,64,16"], "--shapes"),
    (["tune", str(LLAMA), "--shapes", "1,2,2,64,16", "--kernels", "fwd,nope"], "--kernels"),
])
def test_bad_options_are_usage_errors(args, option):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert option in result.stderr and "Usage:" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
def test_tune_skips_shapes_of_other_head_dims_before_needing_a_gpu(examples_dir):
    """examples/*.attn mixes head dims: a spec with a fixed one (gemma2_local: 256) tunes only
    the shapes it takes, said on stderr; the checks on the specs come before the GPU's."""
    gemma = str(examples_dir / "gemma2_local.attn")
    result = CliRunner().invoke(main, ["tune", str(LLAMA), gemma, "--shapes",
                                       "1,2,2,64,128 1,2,2,64,256"])
    assert result.exit_code == 1 and "needs a CUDA GPU" in result.stderr
    assert "gemma2_local takes head dims [256]: tuning 1 of the 2 shapes (their D: [128, 256])" \
        in result.stderr
    assert "llama takes" not in result.stderr  # any head dim: every shape
    skipped = CliRunner().invoke(main, ["tune", str(LLAMA), gemma, "--shapes", "1,2,2,64,128"])
    assert "gemma2_local takes head dims [256]: skipped (the shapes' D: [128])" in skipped.stderr
    only = CliRunner().invoke(main, ["tune", gemma, "--shapes", "1,2,2,64,128"])
    assert only.exit_code == 2 and "--shapes" in only.stderr
    assert "no spec takes a head dim of these shapes (their D: [128]; head dims taken: " \
        "gemma2_local: [256])" in " ".join(only.stderr.split())
    assert "needs a CUDA GPU" not in only.stderr
    chunked = CliRunner().invoke(main, ["tune", str(examples_dir / "llama4_chunked.attn"),
                                        "--shapes", "1,2,2,64,128", "--dtype", "fp32"])
    assert chunked.exit_code == 1 and "llama4_chunked does not take fp32" in chunked.stderr
    assert "needs a CUDA GPU" not in chunked.stderr


def test_tune_names_the_hq_hkv_rule():
    result = CliRunner().invoke(main, ["tune", str(LLAMA), "--shapes", "1,3,2,64,16"])
    assert result.exit_code == 2 and "Hq must be a multiple of Hkv" in result.stderr


@pytest.mark.parametrize("cases, copy_rows", [("causal,decode_causal", 1), ("causal", 0)])
def test_bench_runs_the_suite_in_one_pass(tmp_path, monkeypatch, cases, copy_rows):
    """The command with the timings faked: every selected case runs once, in suite order, and
    the device copy bandwidth is measured once for all decode cases (one copy row), or not at
    all without them."""
    ran, copies = [], []

    def fake_train(case, impls, rows, checks, step):
        ran.append(case.label)
        rows.append(dict(case=case.name, impl="attngen", mode="train", N=case.N, D=case.D,
                         fwd_tflops=400.0, bwd_tflops=300.0))

    def fake_decode(case, impls, rows, step):
        ran.append(case.label)
        rows.append(dict(case=case.name, impl="attngen", mode="graph", L=case.N, D=case.D,
                         gbps=2850.0))

    monkeypatch.setattr("attngen.cli._require_gpu", lambda command: None)
    monkeypatch.setattr(bench, "meta", lambda: {"gpu": GPU, "date": "2026-11-22"})
    monkeypatch.setattr(bench, "_copy_gbps", lambda: copies.append(1) or 3000.0)
    monkeypatch.setattr(bench, "_run_train", fake_train)
    monkeypatch.setattr(bench, "_run_decode", fake_decode)
    result = CliRunner().invoke(main, ["bench", "--quick", "--cases", cases, "-o", str(tmp_path),
                                       "--name", "run"])
    assert result.exit_code == 0, result.output
    assert ran == [c.label for c in bench.select(cases.split(","), quick=True)]
    assert len(copies) == copy_rows
    rows, _, _ = bench.read(tmp_path / "run.json")
    assert [r["case"] for r in rows].count("copy") == copy_rows
    assert result.stdout.count("device copy 3000.0 GB/s") == copy_rows


def test_bench_from_json_renders_without_a_gpu(tmp_path):
    rows = synthetic_rows()
    info = {"gpu": GPU, "date": "2026-11-22"}
    source = bench.write(tmp_path / "src", "results", rows, [], info, with_plot=False)[0]
    result = CliRunner().invoke(main, ["bench", "--from", str(source), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "| 1.15, 1.10 |" in result.stdout and "95%" in result.stdout
    md = tmp_path / "o" / "results.md"
    assert md.read_text() == bench.markdown(rows, [], info)
    assert bench.read(tmp_path / "o" / "results.json") == (rows, [], info)
    assert f"wrote {tmp_path / 'o' / 'results.json'}" in result.stdout

    named = CliRunner().invoke(main, ["bench", "--from", str(source), "-o", str(tmp_path / "o"),
                                      "--name", "renamed"])
    assert named.exit_code == 0 and (tmp_path / "o" / "renamed.md").is_file()


def test_bench_from_a_file_that_is_not_results(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"meta": {}}))
    result = CliRunner().invoke(main, ["bench", "--from", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "expected a JSON object with a list of rows" in result.stderr
    missing = CliRunner().invoke(main, ["bench", "--from", str(tmp_path / "absent.json")])
    assert missing.exit_code == 2 and "--from" in missing.stderr
    # another suite's rows (benchmarks/gpu_check.py: mode is the mask) render nothing: refused
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"meta": {}, "rows": [
        {"case": "fwd", "impl": "attngen", "mode": "causal", "N": 4096, "D": 128}]}))
    result = CliRunner().invoke(main, ["bench", "--from", str(other), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "expected attngen bench rows (mode copy, eager, graph, " \
        "train), got rows of mode causal" in " ".join(result.stderr.split())


@pytest.mark.parametrize("command", ["bench", "tune"])
def test_help_has_examples(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output

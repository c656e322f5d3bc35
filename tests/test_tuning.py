"""Tuning tables (attngen/tuning.py) and the benchmark suite's reporting (attngen/bench.py); the
GPU-only commands' errors on a CPU machine."""

from __future__ import annotations

import json

import pytest
import torch
import triton
from click.testing import CliRunner

from attngen import bench, tuning
from attngen.cli import main

GPU = "NVIDIA H100 80GB HBM3"


def _entry(kernel="llama_fwd", spec_hash="abc", key=(4096, 4096, 128, "torch.bfloat16"), m=128,
           warps=8):
    return dict(kernel=kernel, spec_hash=spec_hash, key=list(key),
                config=dict(kwargs={"BLOCK_M": m, "BLOCK_N": 64}, num_warps=warps, num_stages=3))


class _FakeAutotuner:
    """What seed() reads of a triton Autotuner: configs, cache, base_fn's name."""

    def __init__(self, name: str, n_configs: int = 2):
        self.configs = [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64})] * n_configs
        self.cache = {}
        self.base_fn = lambda: None
        self.base_fn.__name__ = name


@pytest.fixture
def tables(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("ATTNGEN_TUNING_DIR", f"{first}:{second}")
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: GPU)
    tuning.forget()
    yield first, second
    tuning.forget()


def test_gpu_slug():
    assert tuning.gpu_slug(GPU) == "nvidia-h100-80gb-hbm3"


def test_write_merges_and_replaces(tables):
    first, _ = tables
    path = tuning.write_entries(first, GPU, [_entry(), _entry(kernel="llama_bwd_dq")])
    assert path == first / "nvidia-h100-80gb-hbm3.json"
    tuning.write_entries(first, GPU, [_entry(m=64)])  # same id: replaces
    document = json.loads(path.read_text())
    assert document["format"] == 1 and document["gpu"] == GPU
    by_kernel = {e["kernel"]: e for e in document["entries"]}
    assert set(by_kernel) == {"llama_fwd", "llama_bwd_dq"}
    assert by_kernel["llama_fwd"]["config"]["kwargs"]["BLOCK_M"] == 64


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": 2, "entries": []}),
                                  json.dumps({"format": 1, "entries": [{"kernel": "x", "key": []}]})])
def test_malformed_tables_warn_and_count_as_empty(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.warns(UserWarning, match="ignoring tuning table"):
        assert tuning.read_table(path) == []


def test_seed_fills_the_autotuner_cache_with_matching_entries_only(tables):
    first, second = tables
    tuning.write_entries(first, GPU, [_entry(), _entry(spec_hash="other", key=(1, 2, 3)),
                                      _entry(kernel="alibi_fwd", key=(5, 6, 7))])
    tuning.write_entries(second, GPU, [_entry(m=32, warps=4),  # shadowed by the first dir
                                       _entry(key=(2048, 2048, 128, "torch.bfloat16"), m=32)])
    kernel = _FakeAutotuner("llama_fwd")
    tuning.seed(kernel, "abc", 0)
    assert set(kernel.cache) == {(4096, 4096, 128, "torch.bfloat16"),
                                 (2048, 2048, 128, "torch.bfloat16")}
    config = kernel.cache[(4096, 4096, 128, "torch.bfloat16")]
    assert (config.kwargs, config.num_warps, config.num_stages) == (
        {"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3)
    assert kernel.cache[(2048, 2048, 128, "torch.bfloat16")].kwargs["BLOCK_M"] == 32
    kernel.cache.clear()
    tuning.seed(kernel, "abc", 0)  # once per kernel and device
    assert kernel.cache == {}
    single = _FakeAutotuner("llama_fwd", n_configs=1)  # nothing to choose: left alone
    tuning.seed(single, "abc", 0)
    assert single.cache == {}


def test_kernels_of_a_generated_module(example_op):
    names = [k.base_fn.__name__ for k in tuning.kernels_of(example_op("llama").module)]
    assert names == ["llama_fwd", "llama_bwd_dkdv", "llama_bwd_dq", "llama_decode_kernel"]


@pytest.fixture
def example_op():
    import attngen
    from conftest import REPO_ROOT

    return lambda name: attngen.load(REPO_ROOT / "examples" / f"{name}.attn")


def test_suite_selection():
    assert {c.decode for c in bench.SUITE} == {True, False}
    assert all(c.N != 16384 and c.D != 64 for c in bench.select(None, quick=True))
    assert [c.name for c in bench.select(["softcap"], quick=False)] == ["softcap"]
    with pytest.raises(ValueError, match="unknown benchmark case 'nope'; expected one of"):
        bench.select(["nope"], quick=False)


def _rows():
    train = [dict(case="causal", impl=i, mode="train", N=4096, D=128, fwd_tflops=f, bwd_tflops=b)
             for i, f, b in (("attngen", 460.0, 330.0), ("flex", 400.0, 400.0),
                             ("sdpa_cudnn", 575.0, 500.0))]
    decode = [dict(case="copy", impl="torch", mode="copy", gbps=3000.0),
              dict(case="decode_causal", impl="attngen", mode="eager", L=32768, D=128, gbps=2700.0),
              dict(case="decode_causal", impl="attngen", mode="graph", L=32768, D=128, gbps=2850.0),
              dict(case="softcap", impl="flex", mode="train", N=8192, D=128, error="RuntimeError: x")]
    return train + decode


def test_markdown_reports_ratios_shares_and_failures(tmp_path):
    md = bench.markdown(_rows(), [dict(case="causal", N=4096, D=128, impl="flex",
                                       max_abs_diff=0.004)], {"gpu": GPU})
    line = next(l for l in md.splitlines() if l.startswith("| causal"))
    assert "460.0 / 330.0" in line and "| 1.15, 0.82 |" in line and line.endswith("| 0.80 |")
    assert "| decode_causal | 32768 | attngen | 2700.0 | 2850.0 | 95% |" in md
    assert "softcap flex train: failed: RuntimeError: x" in md
    written = bench.write(tmp_path, "run", _rows(), [], {"gpu": GPU}, with_plot=False)
    rows, checks, meta = bench.read(written[0])
    assert rows == _rows() and meta == {"gpu": GPU}
    with pytest.raises(ValueError, match="expected a JSON object with a list of rows"):
        (tmp_path / "bad.json").write_text("[]")
        bench.read(tmp_path / "bad.json")


def test_bench_from_json_needs_no_gpu(tmp_path):
    bench.write(tmp_path, "run", _rows(), [], {"gpu": GPU}, with_plot=False)
    result = CliRunner().invoke(main, ["bench", "--from", str(tmp_path / "run.json"), "-o",
                                       str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "| 1.15, 0.82 |" in result.output
    assert (tmp_path / "out" / "run.md").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-machine error")
@pytest.mark.parametrize("args", [["bench", "--cases", "causal"],
                                  ["tune", "examples/llama.attn", "--shapes", "1,2,2,64,16"]])
def test_gpu_commands_refuse_a_cpu_machine(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "needs a CUDA GPU" in result.output


@pytest.mark.parametrize("args, option", [
    (["bench", "--cases", "nope"], "--cases"),
    (["bench", "--impls", "attngen,fa9"], "--impls"),
    (["tune", "examples/llama.attn", "--shapes", "1,2,3"], "--shapes"),
    (["tune", "examples/llama.attn", "--shapes", "1,3,2,64,16"], "--shapes"),
    (["tune", "examples/llama.attn", "--shapes", "1,2,2,64,16", "--kernels", "fwd,nope"],
     "--kernels"),
])
def test_bad_options_are_usage_errors(args, option):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and option in result.output, result.output

"""Tuning tables (attngen/tuning.py: slugs, search order, reading, merging, seeding an autotuner,
the real autotuning key of a generated kernel), the benchmark suite's selection and reporting
(attngen/bench.py) and the ``bench``/``tune`` commands on a machine without a GPU."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import attngen
import attngen.runtime  # noqa: F401  (before triton: picks the interpreter on a CPU machine)
import triton
from attngen import bench, tuning
from attngen.cli import main
from attngen.resources import data_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
LLAMA = REPO_ROOT / "examples" / "llama.attn"
SHIPPED_GPU = "NVIDIA H100 80GB HBM3"  # the table shipped in tuning/
FAKE_GPU = "Imaginary GPU 9000 (test)"  # no shipped table: only what a test writes counts
KEY = [4096, 4096, 128, "torch.bfloat16", "torch.float32"]


def entry(kernel="llama_fwd", spec_hash="h1", key=KEY, m=128, n=64, warps=8, stages=3):
    return dict(kernel=kernel, spec_hash=spec_hash, key=list(key),
                config=dict(kwargs={"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps,
                            num_stages=stages))


class FakeAutotuner:
    """The parts of a triton Autotuner that seed() reads: configs, cache, base_fn.__name__."""

    def __init__(self, name: str = "llama_fwd", n_configs: int = 2):
        self.configs = [triton.Config({"BLOCK_M": 16 * (i + 1), "BLOCK_N": 16}, num_warps=4)
                        for i in range(n_configs)]
        self.cache: dict = {}

        def base_fn():
            pass

        base_fn.__name__ = name
        self.base_fn = base_fn


@pytest.fixture
def gpu_tables(tmp_path, monkeypatch):
    """Three table directories: two in $ATTNGEN_TUNING_DIR (in this order) and the cache root's
    tuning/; torch reports FAKE_GPU; nothing read before or after the test leaks."""
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("ATTNGEN_TUNING_DIR", os.pathsep.join([str(first), "", str(second)]))
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: FAKE_GPU)
    tuning.forget()
    yield first, second, tmp_path / "cache" / "tuning"
    tuning.forget()


# ---- tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, slug", [
    ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
    ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),
    ("  NVIDIA A100-SXM4-40GB  ", "nvidia-a100-sxm4-40gb"),
    ("NVIDIA H200 (MIG 1g.18gb)", "nvidia-h200-mig-1g-18gb"),
])
def test_gpu_slug(name, slug):
    assert tuning.gpu_slug(name) == slug


def test_search_dirs_order(gpu_tables):
    first, second, cache_tuning = gpu_tables
    assert tuning.search_dirs() == [first, second, cache_tuning, data_dir("tuning")]


def test_write_then_read_round_trip_and_merge(gpu_tables):
    first, _, _ = gpu_tables
    a, b = entry(), entry(kernel="llama_bwd_dq", key=[8192, 8192, 128])
    path = tuning.write_entries(first, FAKE_GPU, [a, b])
    assert path == first / f"{tuning.gpu_slug(FAKE_GPU)}.json"
    assert sorted(tuning.read_table(path), key=lambda e: e["kernel"]) == [b, a]

    # same (kernel, spec_hash, key): replaced; another spec hash or key: a new entry
    c = entry(m=64, warps=4)
    d = entry(spec_hash="h2", m=32)
    e = entry(key=[2048, 2048, 128, "torch.bfloat16", "torch.float32"], m=16)
    tuning.write_entries(first, FAKE_GPU, [c, d, e])
    document = json.loads(path.read_text(encoding="utf-8"))  # valid JSON on disk
    assert document["format"] == 1 and document["gpu"] == FAKE_GPU
    entries = document["entries"]
    assert len(entries) == 4
    assert entries == tuning.read_table(path)
    ids = {(x["kernel"], x["spec_hash"], tuple(x["key"])): x for x in entries}
    assert ids[("llama_fwd", "h1", tuple(KEY))] == c  # the newer one
    assert ids[("llama_fwd", "h2", tuple(KEY))] == d
    assert ids[("llama_bwd_dq", "h1", (8192, 8192, 128))] == b  # untouched
    assert ids[("llama_fwd", "h1", tuple(e["key"]))] == e
    # atomic writes leave no temporary files behind (the lock file may stay)
    leftovers = {p.name for p in first.iterdir()} - {path.name, path.name + ".lock"}
    assert leftovers == set()


def test_read_of_a_missing_table_is_empty_and_silent(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuning.read_table(tmp_path / "absent.json") == []


@pytest.mark.parametrize("text", [
    "{not json",
    json.dumps({"format": 2, "entries": [entry()]}),
    json.dumps({"entries": [entry()]}),
    json.dumps({"format": 1}),
    json.dumps({"format": 1, "entries": {"kernel": "x"}}),
    json.dumps({"format": 1, "entries": [{"kernel": "x", "key": [], "config": {}}]}),
    json.dumps({"format": 1, "entries": [{"kernel": "x", "key": []}]}),
    json.dumps({"format": 1, "entries": [{"kernel": "x", "key": "4096", "config": {"kwargs": {}}}]}),
    json.dumps({"format": 1, "entries": [entry(), 7]}),
    json.dumps([entry()]),
])
def test_malformed_tables_warn_and_count_as_empty(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.warns(UserWarning, match="ignoring tuning table"):
        assert tuning.read_table(path) == []


def test_shipped_table_is_well_formed_and_current():
    """The shipped H100 table reads without warnings, and its spec hash is the current llama
    module's (a stale hash would make every shipped entry silently inapplicable)."""
    path = data_dir("tuning") / f"{tuning.gpu_slug(SHIPPED_GPU)}.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entries = tuning.read_table(path)
    assert entries
    module = attngen.load(LLAMA).module
    llama = [e for e in entries if e["kernel"].startswith("llama_")]
    assert llama and {e["spec_hash"] for e in llama} == {module.SPEC_HASH}


# ---- seeding ----------------------------------------------------------------------------------


def test_seed_copies_matching_entries_into_the_autotuner_cache(gpu_tables):
    first, _, _ = gpu_tables
    nested = [1024, [64, 128], "torch.float16"]  # lists in JSON are tuples in Triton's key
    tuning.write_entries(first, FAKE_GPU, [
        entry(m=128, warps=8, stages=2),
        entry(key=nested, m=64, n=32, warps=4, stages=4),
        entry(spec_hash="stale", key=[1, 2, 3]),  # another spec: not seeded
        entry(kernel="alibi_fwd", key=[5, 6, 7]),  # another kernel: not seeded
        entry(kernel="llama_fwd_extra", key=[8, 9]),  # a longer name is another kernel
    ])
    kernel = FakeAutotuner("llama_fwd")
    tuning.seed(kernel, "h1", 0)
    assert set(kernel.cache) == {tuple(KEY), (1024, (64, 128), "torch.float16")}
    for key, (kwargs, warps, stages) in {
            tuple(KEY): ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 2),
            (1024, (64, 128), "torch.float16"): ({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 4)}.items():
        config = kernel.cache[key]
        assert isinstance(config, triton.Config)
        assert (config.kwargs, config.num_warps, config.num_stages) == (kwargs, warps, stages)

    # once per kernel and device: a second call does nothing more
    kernel.cache.clear()
    tuning.seed(kernel, "h1", 0)
    assert kernel.cache == {}
    # ... until forget()
    tuning.forget()
    tuning.seed(kernel, "h1", 0)
    assert len(kernel.cache) == 2


def test_seed_keeps_what_the_autotuner_already_chose(gpu_tables):
    first, _, _ = gpu_tables
    tuning.write_entries(first, FAKE_GPU, [entry(m=128)])
    kernel = FakeAutotuner("llama_fwd")
    chosen = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32})
    kernel.cache[tuple(KEY)] = chosen
    tuning.seed(kernel, "h1", 0)
    assert kernel.cache == {tuple(KEY): chosen}


def test_seed_skips_single_config_kernels_and_reads_the_named_device(gpu_tables, monkeypatch):
    first, _, _ = gpu_tables
    tuning.write_entries(first, FAKE_GPU, [entry()])
    single = FakeAutotuner("llama_fwd", n_configs=1)
    tuning.seed(single, "h1", 0)
    assert single.cache == {}

    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_name",
                        lambda index=None: asked.append(index) or "Some Other GPU")
    other = FakeAutotuner("llama_fwd")
    tuning.seed(other, "h1", 3)
    assert asked == [3] and other.cache == {}  # device 3 is another GPU: no table for it


def test_earlier_directories_win(gpu_tables):
    first, second, cache_tuning = gpu_tables
    only_second = [2048, 2048, 128]
    only_cache = [512, 512, 64]
    tuning.write_entries(cache_tuning, FAKE_GPU, [entry(m=16), entry(key=only_second, m=16),
                                                  entry(key=only_cache, m=16)])
    tuning.write_entries(second, FAKE_GPU, [entry(m=32), entry(key=only_second, m=32)])
    tuning.write_entries(first, FAKE_GPU, [entry(m=64)])
    kernel = FakeAutotuner("llama_fwd")
    tuning.seed(kernel, "h1", 0)
    blocks = {key: c.kwargs["BLOCK_M"] for key, c in kernel.cache.items()}
    assert blocks == {tuple(KEY): 64, tuple(only_second): 32, tuple(only_cache): 16}


def test_a_malformed_table_warns_and_later_directories_still_count(gpu_tables):
    first, second, _ = gpu_tables
    first.mkdir()
    (first / f"{tuning.gpu_slug(FAKE_GPU)}.json").write_text("{broken")
    tuning.write_entries(second, FAKE_GPU, [entry(m=32)])
    kernel = FakeAutotuner("llama_fwd")
    with pytest.warns(UserWarning, match="ignoring tuning table"):
        tuning.seed(kernel, "h1", 0)
    assert kernel.cache[tuple(KEY)].kwargs["BLOCK_M"] == 32


@pytest.mark.xfail(strict=True, raises=TypeError, reason=(
    "bug: read_table accepts an entry whose key holds a list nested two deep (or a dict); "
    "_hashable converts only the first level, so seed() raises TypeError (unhashable) at a "
    "kernel's first launch instead of warning and ignoring the table"))
def test_a_key_with_deeply_nested_lists_is_a_malformed_table(gpu_tables):
    first, _, _ = gpu_tables
    first.mkdir()
    path = first / f"{tuning.gpu_slug(FAKE_GPU)}.json"
    path.write_text(json.dumps({"format": 1, "entries": [entry(key=[1, [2, [3]]])]}))
    kernel = FakeAutotuner("llama_fwd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuning.seed(kernel, "h1", 0)  # raises TypeError today
    assert any("ignoring tuning table" in str(w.message) for w in caught)
    assert kernel.cache == {}


# ---- the real autotuning key ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    return attngen.load(LLAMA)


def test_kernels_of_a_generated_module(llama):
    kernels = tuning.kernels_of(llama.module)
    assert [k.base_fn.__name__ for k in kernels] == [
        "llama_fwd", "llama_bwd_dkdv", "llama_bwd_dq", "llama_decode_kernel"]
    for k in kernels:
        assert isinstance(k, triton.runtime.Autotuner) and isinstance(k.cache, dict)


@pytest.mark.skipif(torch.cuda.is_available(), reason="runs the kernel on the CPU interpreter")
def test_seeded_key_is_the_key_the_autotuner_looks_up(llama, gpu_tables, monkeypatch):
    """Give the forward kernel two configs (the interpreter keeps one) and a fake benchmark, run
    the op on the CPU: Triton's Autotuner fills its cache under its real key. Write that as a
    table (entries_of), seed a cleared cache from it, and run again: no benchmarking, so the
    seeded key is exactly the one the autotuner computes at launch."""
    first, _, _ = gpu_tables
    fwd = tuning.kernels_of(llama.module)[0]
    base = fwd.configs[0]
    faster = triton.Config(dict(base.kwargs), num_warps=base.num_warps * 2,
                           num_stages=base.num_stages)
    timed = []

    def fake_bench(*args, config, **kwargs):
        timed.append(config)
        return [1.0 if config is faster else 2.0] * 3

    monkeypatch.setattr(fwd, "configs", [base, faster])
    monkeypatch.setattr(fwd, "cache", {})
    monkeypatch.setattr(fwd, "_bench", fake_bench)
    for name in ("configs_timings", "best_config", "bench_time"):  # what autotuning sets
        monkeypatch.setattr(fwd, name, None, raising=False)
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    expected = llama(q, k, v)
    assert len(timed) == 2 and len(fwd.cache) == 1
    (real_key,) = fwd.cache
    assert fwd.cache[real_key] is faster
    # its shape: the key arguments (ints), then the dtype of every tensor argument
    assert all(isinstance(x, int) for x in real_key[:3]) and real_key[2] == 16
    assert all(isinstance(x, str) and x.startswith("torch.") for x in real_key[3:])
    assert "torch.float32" in real_key[3:]

    entries = tuning.entries_of(fwd, llama.module.SPEC_HASH)
    assert [(e["kernel"], e["spec_hash"], e["key"]) for e in entries] == [
        ("llama_fwd", llama.module.SPEC_HASH, list(real_key))]
    assert entries[0]["config"]["num_warps"] == faster.num_warps and entries[0]["ms"] == 1.0
    tuning.write_entries(first, FAKE_GPU, entries)

    # the shipped table's keys for this kernel have the same layout (on bf16 tensors)
    shipped = [e for e in tuning.read_table(data_dir("tuning") / "nvidia-h100-80gb-hbm3.json")
               if e["kernel"] == "llama_fwd"]
    assert shipped and all(len(e["key"]) == len(real_key) for e in shipped)

    fwd.cache.clear()
    timed.clear()
    tuning.seed(fwd, llama.module.SPEC_HASH, 0)
    assert set(fwd.cache) == {real_key}
    seeded = fwd.cache[real_key]
    assert (seeded.kwargs, seeded.num_warps, seeded.num_stages) == (
        faster.kwargs, faster.num_warps, faster.num_stages)
    torch.testing.assert_close(llama(q, k, v), expected)
    assert timed == []  # the autotuner found the seeded key: nothing was timed


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
    md = bench.markdown(synthetic_rows(), checks, {"gpu": SHIPPED_GPU, "date": "2026-11-22"})
    assert md.startswith(f"# attngen benchmark, {SHIPPED_GPU}, 2026-11-22")
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


def test_write_read_round_trip(tmp_path):
    rows, checks = synthetic_rows(), [dict(case="causal", N=4096, D=128, impl="flex",
                                           max_abs_diff=0.004)]
    info = {"gpu": SHIPPED_GPU, "torch": "2.13", "date": "2026-11-22"}
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


def test_tune_names_the_hq_hkv_rule():
    result = CliRunner().invoke(main, ["tune", str(LLAMA), "--shapes", "1,3,2,64,16"])
    assert result.exit_code == 2 and "Hq must be a multiple of Hkv" in result.stderr


def test_bench_from_json_renders_without_a_gpu(tmp_path):
    rows = synthetic_rows()
    info = {"gpu": SHIPPED_GPU, "date": "2026-11-22"}
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


@pytest.mark.parametrize("command", ["bench", "tune"])
def test_help_has_examples(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output

"""runtime.launch's plans: launches past triton's JITFunction.run once a call key has been seen.

The launcher itself needs a GPU; here the key is checked against triton's own specialisation, and
the plan bookkeeping (when a plan is made, used, dropped) against a fake kernel.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import triton
from hypothesis import given, settings
from hypothesis import strategies as st
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend
from triton.tools.tensor_descriptor import TensorDescriptor

from attngen import runtime

_POOL = torch.zeros(256, dtype=torch.float32)


def _tensor(dtype, offset: int) -> torch.Tensor:
    # offsets in elements of a 4-byte pool: 16-byte aligned or not
    return _POOL[offset:offset + 64].view(dtype)


_INTS = st.sampled_from([0, 1, 2, 15, 16, 17, 32, 48, -1, -16, 2**31 - 16, 2**31 - 1, 2**31,
                         2**32, -(2**31), -(2**31) - 16, 2**40, 2**63 - 1])
_ARGS = st.one_of(
    _INTS,
    st.sampled_from([0.5, 1.0, 0.0]),
    st.sampled_from([None, True, False]),
    st.builds(_tensor, st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
              st.sampled_from([0, 1, 4, 8])),
)


def _triton_spec(arg):
    return native_specialize_impl(BaseBackend, arg, False, True, True)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ARGS, min_size=2, max_size=10))
def test_call_key_is_at_least_as_fine_as_triton(args):
    """Two argument lists with one call key must get one compiled kernel from triton: equal
    keys imply equal specialisations (type, == 1, divisibility by 16, alignment)."""
    for a, b in itertools.combinations(args, 2):
        if runtime._call_key([a]) == runtime._call_key([b]):
            assert _triton_spec(a) == _triton_spec(b), (a, b)


def test_call_key_of_descriptors_and_unknown_types():
    runtime.tma_descriptors(torch.zeros(1, 1, 16, 16))  # imports TensorDescriptor
    base = torch.zeros(1, 2, 16, 16, dtype=torch.float16)
    d = TensorDescriptor(base, list(base.shape), list(base.stride()), [1, 1, 16, 16])
    wide = torch.zeros(1, 2, 32, 16, dtype=torch.float16)
    e = TensorDescriptor(wide, list(wide.shape), list(wide.stride()), [1, 1, 16, 16])
    assert runtime._call_key([d]) != runtime._call_key([e])  # shapes differ
    assert runtime._call_key([d]) == runtime._call_key(
        [TensorDescriptor(base.clone(), list(base.shape), list(base.stride()), [1, 1, 16, 16])])
    assert runtime._call_key([d, 3]) is not None
    # a type the key does not know (numpy ints, strings...): no plan, triton decides
    assert runtime._call_key([3, "x"]) is None


class _Param:
    def __init__(self, name, default=None):
        self.name, self.default = name, default


class _Compiled:
    def __init__(self, log):
        self.function, self.packed_metadata, self.log = "fn", "packed", log

    @property
    def run(self):
        return lambda *a: self.log.append(("launcher", a))


class _Jit:
    """JITFunction's part that launch uses: params, and run returning the compiled kernel."""

    def __init__(self, log, names):
        self.log, self.params = log, [_Param(n) for n in names]

    def run(self, *args, grid, warmup, **meta):
        self.log.append(("run", args, tuple(sorted(meta.items()))))
        return _Compiled(self.log)


class _Autotuned:
    """triton.autotune's attributes that launch reads."""

    def __init__(self, log):
        self.fn = _Jit(log, ["X", "n", "bucket", "FLAG", "BLOCK"])
        self.arg_names = ["X", "n", "bucket", "FLAG", "BLOCK"]
        self.keys = ["bucket"]
        self.configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})]
        self.cache = {}


@pytest.fixture
def on_gpu(monkeypatch):
    """launch as it runs with a GPU: not interpreting, device 0, stream 7."""
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(runtime, "_current_device", lambda: 0)
    monkeypatch.setattr(runtime, "_current_stream", lambda device: 7)
    monkeypatch.setattr(runtime, "FAST_LAUNCH", True)


def _kinds(log):
    return [entry[0] for entry in log]


def test_plans_skip_run_until_the_key_or_the_tuned_config_changes(on_gpu):
    log = []
    kernel = _Autotuned(log)
    x = torch.zeros(64)
    tune_key = (64, str(x.dtype))
    kernel.cache[tune_key] = kernel.configs[1]
    grid = lambda meta: (64 // meta["BLOCK"], 2)  # noqa: E731

    runtime.launch(kernel, grid, [x, 16, 64], {"FLAG": True})
    assert _kinds(log) == ["run"] and dict(log[0][2])["BLOCK"] == 32
    runtime.launch(kernel, grid, [x, 16, 64], {"FLAG": True})
    assert _kinds(log) == ["run", "launcher"]
    # grid from the config's meta, the current stream, then the arguments and constexpr tail
    assert log[1][1] == (2, 2, 1, 7, "fn", "packed", None, None, None, x, 16, 64, True, 32)

    runtime.launch(kernel, grid, [x, 17, 64], {"FLAG": True})  # another int: triton decides
    runtime.launch(kernel, grid, [x, 16, 64], {"FLAG": False})  # another flag
    assert _kinds(log)[2:] == ["run", "run"]
    runtime.launch(kernel, grid, [x, 17, 64], {"FLAG": True})
    assert _kinds(log)[4:] == ["launcher"]

    kernel.cache[tune_key] = kernel.configs[0]  # re-tuned: the plan of BLOCK 32 is dropped
    runtime.launch(kernel, grid, [x, 16, 64], {"FLAG": True})
    assert _kinds(log)[5:] == ["run"] and dict(log[5][2])["BLOCK"] == 16
    runtime.launch(kernel, grid, [x, 16, 64], {"FLAG": True})
    assert log[6][0] == "launcher" and log[6][1][:3] == (4, 2, 1)


def test_plans_for_plain_kernels_and_their_limit(on_gpu, monkeypatch):
    log = []
    jit = _Jit(log, ["X", "n", "BLOCK"])
    monkeypatch.setattr(runtime, "_PLAN_LIMIT", 3)
    x = torch.zeros(64)
    for n in (16, 16, 17, 18, 19, 16):
        runtime.launch(jit, (1,), [x, n], {"BLOCK": 8})
    # 16 planned, reused; 17, 18 planned; 19 clears the full table, so 16 runs again
    assert _kinds(log) == ["run", "launcher", "run", "run", "run", "run"]
    assert len(jit.attngen_plans) == 2


def test_no_plans_when_turned_off_or_interpreting(on_gpu, monkeypatch):
    log = []
    jit = _Jit(log, ["X", "n", "BLOCK"])
    x = torch.zeros(64)
    monkeypatch.setattr(runtime, "FAST_LAUNCH", False)
    for _ in range(2):
        runtime.launch(jit, (1,), [x, 16, 64], {"BLOCK": 8})
    monkeypatch.setattr(runtime, "FAST_LAUNCH", True)
    monkeypatch.setattr(runtime, "interpreting", lambda: True)
    for _ in range(2):
        runtime.launch(jit, (1,), [x, 16, 64], {"BLOCK": 8})
    assert _kinds(log) == ["run"] * 4

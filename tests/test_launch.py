"""runtime.launch's plans: launches past triton's JITFunction.run once a call key has been seen.

The launcher itself needs a GPU; here the key is checked against triton's own specialisation, and
the plan bookkeeping (when a plan is made, used, dropped) against a fake kernel.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attngen import runtime  # first: without a GPU it selects the interpreter for triton

import triton  # noqa: E402  (isort: skip)
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

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


@settings(max_examples=100, deadline=None)
@given(st.lists(_ARGS, min_size=3, max_size=3), st.lists(_ARGS, min_size=3, max_size=3))
def test_equal_call_keys_of_argument_lists_mean_equal_specialisations(a, b):
    if runtime._call_key(a) == runtime._call_key(b):
        assert [_triton_spec(x) for x in a] == [_triton_spec(x) for x in b]


def test_call_key_of_descriptors_and_unknown_types():
    descriptor = runtime._descriptor_type()
    assert descriptor is TensorDescriptor

    def desc(shape, dtype=torch.float16, box=(1, 1, 16, 16)):
        base = torch.zeros(shape, dtype=dtype)
        return TensorDescriptor(base, list(base.shape), list(base.stride()), list(box))

    # triton specialises a descriptor on its dtype and box only (the box comes from the config,
    # which the plan holds): other shapes share a key, another dtype does not
    small, wide = desc((1, 2, 16, 16)), desc((1, 2, 48, 16))
    assert _triton_spec(small) == _triton_spec(wide)
    assert runtime._call_key([small]) == runtime._call_key([wide])
    assert runtime._call_key([small]) != runtime._call_key([desc((1, 2, 16, 16), torch.float32)])
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

    def launch_metadata(self, grid, stream, *args):
        return ("metadata", grid, stream)


class _Jit:
    """JITFunction's part that launch uses: params, run hooks, and run returning the compiled
    kernel."""

    def __init__(self, log, names):
        self.log, self.params, self.pre_run_hooks = log, [_Param(n) for n in names], []

    def run(self, *args, grid, warmup, **meta):
        self.log.append(("run", args, tuple(sorted(meta.items()))))
        return _Compiled(self.log)


class _Autotuned:
    """triton.autotune's attributes that launch reads."""

    def __init__(self, log, pre_hook=None):
        self.log = log
        self.fn = _Jit(log, ["X", "n", "bucket", "FLAG", "BLOCK"])
        self.arg_names = ["X", "n", "bucket", "FLAG", "BLOCK"]
        self.keys = ["bucket"]
        self.configs = [triton.Config({"BLOCK": 16}, pre_hook=pre_hook),
                        triton.Config({"BLOCK": 32}, pre_hook=pre_hook)]
        self.cache = {}

    def __getitem__(self, grid):  # a launch the autotuner handles (it would benchmark)
        return lambda *args, **flags: self.log.append(("autotune", args))


@pytest.fixture
def on_gpu(monkeypatch):
    """launch as it runs with a GPU: not interpreting, CUDA, device 0, stream 7."""
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(runtime, "_current_device", lambda: 0)
    monkeypatch.setattr(runtime, "_current_stream", lambda device: 7)
    monkeypatch.setattr(runtime, "FAST_LAUNCH", True)


def _kinds(log):
    return [entry[0] for entry in log]


def _tuned(log, pre_hook=None):
    kernel = _Autotuned(log, pre_hook)
    x = torch.zeros(64)
    tune_key = (64, str(x.dtype))
    kernel.cache[tune_key] = kernel.configs[1]
    return kernel, x, tune_key


_GRID = lambda meta: (64 // meta["BLOCK"], 2)  # noqa: E731


def test_plans_skip_run_until_the_key_or_the_tuned_config_changes(on_gpu):
    log = []
    kernel, x, tune_key = _tuned(log)
    runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert _kinds(log) == ["run"] and dict(log[0][2])["BLOCK"] == 32
    runtime.launch(kernel, _GRID, [x, 32, 64], {"FLAG": True})  # another multiple of 16
    assert _kinds(log) == ["run", "launcher"]
    # grid from the config's meta, the current stream, then the arguments and constexpr tail
    assert log[1][1] == (2, 2, 1, 7, "fn", "packed", None, None, None, x, 32, 64, True, 32)
    assert kernel.best_config is kernel.configs[1]

    runtime.launch(kernel, _GRID, [x, 17, 64], {"FLAG": True})  # not a multiple of 16
    runtime.launch(kernel, _GRID, [x, 1, 64], {"FLAG": True})  # 1: a constant to triton
    runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": False})  # another flag
    assert _kinds(log)[2:] == ["run", "run", "run"]
    runtime.launch(kernel, _GRID, [x, 33, 64], {"FLAG": True})  # 17's class
    assert _kinds(log)[5:] == ["launcher"]
    runtime.launch(kernel, _GRID, [x, 16, 128], {"FLAG": True})  # another autotuner key
    assert _kinds(log)[6:] == ["autotune"]

    kernel.cache[tune_key] = kernel.configs[0]  # re-tuned: the plan of BLOCK 32 is dropped
    runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert _kinds(log)[7:] == ["run"] and dict(log[7][2])["BLOCK"] == 16
    runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert log[8][0] == "launcher" and log[8][1][:3] == (4, 2, 1)


def test_plans_of_a_single_config_end_when_it_is_swapped(on_gpu):
    """A kernel with one config has no autotuning key: its plan holds while that config is the
    kernel's, and a config put in its place (benchmarks/ab.py times configs so) launches itself,
    not the plan of the one before."""
    log = []
    kernel = _Autotuned(log)
    kernel.configs = kernel.configs[:1]
    x = torch.zeros(64)
    for _ in range(2):
        runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert _kinds(log) == ["run", "launcher"] and dict(log[0][2])["BLOCK"] == 16
    kernel.configs = [triton.Config({"BLOCK": 32})]
    for _ in range(2):
        runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert _kinds(log)[2:] == ["run", "launcher"] and dict(log[2][2])["BLOCK"] == 32
    assert log[3][1][:3] == (2, 2, 1)  # the grid of BLOCK 32


def test_plans_only_for_the_tma_pre_hook_and_without_run_hooks(on_gpu):
    log = []
    kernel, x, _ = _tuned(log, pre_hook=runtime.tma_block_shapes)
    for _ in range(2):
        runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert _kinds(log) == ["run", "launcher"]

    log = []
    kernel, x, _ = _tuned(log, pre_hook=lambda nargs: log.append(("pre_hook",)))
    for _ in range(2):
        runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert _kinds(log) == ["pre_hook", "run"] * 2  # a hook of its own: run it every time

    log = []
    kernel, x, _ = _tuned(log)
    kernel.fn.pre_run_hooks.append(lambda *args, **kwargs: None)
    for _ in range(2):
        runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert _kinds(log) == ["run", "run"]


def test_plans_follow_triton_settings_and_launch_hooks(on_gpu, monkeypatch):
    from triton import knobs

    log = []
    kernel, x, _ = _tuned(log)
    runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    monkeypatch.setattr(knobs.runtime, "debug", True)  # compiles differently: not the plan
    runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert _kinds(log) == ["run", "run"]
    hooks = []
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: hooks.append(1))
    runtime.launch(kernel, _GRID, [x, 16, 64], {"FLAG": True})
    assert log[2][0] == "launcher" and log[2][1][6] == ("metadata", (2, 2), 7)


def test_plans_for_plain_kernels_and_their_limit(on_gpu, monkeypatch):
    log = []
    jit = _Jit(log, ["X", "n", "BLOCK"])
    monkeypatch.setattr(runtime, "_PLAN_LIMIT", 3)
    x = torch.zeros(64)
    for block in (8, 8, 16, 32, 64, 16, 8):
        runtime.launch(jit, (1,), [x, 16], {"BLOCK": block})
    # 8 planned, reused; 16, 32 planned; 64 drops the oldest (8): 16 reused, 8 runs again
    assert _kinds(log) == ["run", "launcher", "run", "run", "run", "launcher", "run"]
    assert len(jit.attngen_plans) == 3


def test_no_plans_when_turned_off_interpreting_or_on_rocm(on_gpu, monkeypatch):
    log = []
    jit = _Jit(log, ["X", "n", "BLOCK"])
    x = torch.zeros(64)
    monkeypatch.setattr(runtime, "FAST_LAUNCH", False)
    for _ in range(2):
        runtime.launch(jit, (1,), [x, 16], {"BLOCK": 8})
    monkeypatch.setattr(runtime, "FAST_LAUNCH", True)
    monkeypatch.setattr(runtime, "interpreting", lambda: True)
    for _ in range(2):
        runtime.launch(jit, (1,), [x, 16], {"BLOCK": 8})
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(torch.version, "hip", "6.2")  # buffer-size specialisation: not keyed
    for _ in range(2):
        runtime.launch(jit, (1,), [x, 16], {"BLOCK": 8})
    assert _kinds(log) == ["run"] * 6


def _c_launcher(calls, metas, **attrs):
    """Triton 3.6's CudaLauncher as _direct_launch reads it: its launch (the descriptor wrapper
    over the C launcher, here a recorder) and scratch/launch attributes."""
    from types import SimpleNamespace

    from triton.backends.nvidia import driver as nv

    signature = {"X": "*fp16", "XDesc": "tensordesc<fp16[1,1,32,64]>", "n": "i32", "Y": "*fp32",
                 "YDesc": "tensordesc<fp16[1,1,16,64]>", "s": "fp32", "FLAG": "constexpr"}
    fields = dict(launch=nv.wrap_handle_tensordesc(lambda *a: calls.append(a), signature, metas),
                  global_scratch_size=0, profile_scratch_size=0, launch_cooperative_grid=False,
                  launch_pdl=True)
    return SimpleNamespace(**{**fields, **attrs})


def test_direct_launch_gives_the_c_launcher_what_triton_would(monkeypatch):
    """A plan's _Direct calls the C launcher with the arguments triton's own wrapper
    (wrap_handle_tensordesc, make_tensordesc_arg) gives it, tensors as their addresses, and
    declines a launcher it does not know how to call."""
    from types import SimpleNamespace

    import triton.runtime

    fill = lambda *a: ("filled", *a)  # noqa: E731  (the CUtensorMap triton's driver would fill)
    monkeypatch.setattr(triton.runtime.driver, "_active",
                        SimpleNamespace(utils=SimpleNamespace(fill_tma_descriptor=fill)))
    metas = [dict(swizzle=128, elem_size=2, elem_type=6, block_size=[1, 1, 32, 64],
                  fp4_padded=False),
             dict(swizzle=64, elem_size=2, elem_type=10, block_size=[1, 1, 16, 64],
                  fp4_padded=False)]
    calls = []
    launcher = _c_launcher(calls, metas)
    x, y = torch.zeros(1, 2, 48, 64, dtype=torch.float16), torch.zeros(2, 3, 40, 64, dtype=torch.float16)
    x_desc, y_desc = runtime.tma_descriptors(x, y)
    args, tail = [x, x_desc, 17, y[0, 0], y_desc, 0.5], (True,)
    direct = runtime._direct_launch(launcher, args, tail, fill)
    assert direct is not None and direct.pointers == (0, 3)
    plan = runtime._Plan(launcher, "fn", "packed", None, tail, {}, None, None, direct)
    launcher.launch(3, 2, 1, 7, "fn", False, True, None, None, "packed", None, None, None, *args,
                    *tail)  # triton's path
    runtime._launch_direct(direct, (3, 2, 1), 7, plan, None, None, None, args)
    theirs, ours = calls
    assert ours == tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in theirs)
    assert ours[14][0] == "filled" and ours[14][5] == [1, 1, 32, 64]  # the compiled kernel's box

    assert runtime._direct_launch(_c_launcher([], metas, global_scratch_size=64), args, tail,
                                  fill) is None  # scratch buffers: the launcher allocates them
    assert runtime._direct_launch(_c_launcher([], [None, None]), args, tail,
                                  fill) is None  # descriptors lowered to pointers
    assert runtime._direct_launch(SimpleNamespace(), args, tail, fill) is None


def test_direct_launch_of_a_kernel_without_descriptors():
    """Without descriptor arguments triton's launcher is the C function itself (no wrapper):
    the plan calls it with the base arguments and the kernel's, tensors as addresses."""
    import functools
    from types import SimpleNamespace

    calls = []
    c_launch = functools.partial(lambda *a: calls.append(a))  # a callable without Python code
    launcher = SimpleNamespace(launch=c_launch, global_scratch_size=0, profile_scratch_size=0,
                               launch_cooperative_grid=True, launch_pdl=False)
    x = torch.zeros(8)
    args, tail = [x, 3, None, 0.5], (64,)
    direct = runtime._direct_launch(launcher, args, tail, fill=lambda *a: None)
    assert direct is not None and direct.pointers == (0,) and direct.descriptors == ()
    plan = runtime._Plan(launcher, "fn", "packed", None, tail, {}, None, None, direct)
    runtime._launch_direct(direct, (5, 1, 1), 9, plan, None, None, None, args)
    assert calls == [(5, 1, 1, 9, "fn", True, False, None, None, "packed", None, None, None,
                      x.data_ptr(), 3, None, 0.5, 64)]

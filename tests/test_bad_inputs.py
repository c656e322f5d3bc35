"""Bad tensors and params: a ValueError naming the argument, what was expected and what was
received, raised before any kernel launch.

The ops are the real generated modules of examples/alibi.attn (a float param of shape [H]),
examples/packed_docs.attn (an int param of shape [B, KV]) and an inline spec with scalar params,
loaded through ``attngen.load`` into a private cache. Each case starts from valid inputs
(q [2, 4, 3, D=16], k and v [2, 2, 5, 16]) and breaks one thing; it runs through the op and,
unless the reference accepts that input (any float dtype, any strides), through op.reference.
Every kernel launch is patched to fail the test, so no case can pass by reaching a kernel; no
GPU is needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attngen
from attngen import runtime  # before triton: with no GPU this selects the Triton interpreter

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCALARS = """attention scalars {
    param shift: i32
    param temperature: f32
    score score * temperature
    mask kv <= q + shift
}"""
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not runtime.interpreting()
                      else "cpu")
B, HQ, HKV, M, N, D = 2, 4, 2, 3, 5, 16


@pytest.fixture(scope="module")
def ops():
    return {"alibi": attngen.load(EXAMPLES / "alibi.attn"),
            "packed_docs": attngen.load(EXAMPLES / "packed_docs.attn"),
            "scalars": attngen.load(SCALARS)}


class Launched(Exception):
    """Raised by the patched launcher: the call got past validation."""


@pytest.fixture
def no_launch(ops, monkeypatch):
    def launch(*args, **kwargs):
        raise Launched

    for op in ops.values():
        monkeypatch.setattr(op.module, "_launch_fwd", launch)
    return ops


def valid_inputs(name: str) -> dict:
    """Keyword arguments of a valid call of op ``name``: q, k, v and its params."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, HQ, M, D, generator=g).to(DEVICE)
    k = torch.randn(B, HKV, N, D, generator=g).to(DEVICE)
    v = torch.randn(B, HKV, N, D, generator=g).to(DEVICE)
    params = {"alibi": {"slopes": torch.rand(HQ, generator=g).to(DEVICE)},
              "packed_docs": {"doc": torch.zeros(B, N, dtype=torch.int32, device=DEVICE)},
              "scalars": {"shift": 1, "temperature": 0.5}}[name]
    return {"q": q, "k": k, "v": v, **params}


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, device=DEVICE)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, stride(-1) != 1


def _cases():
    dev = str(DEVICE)
    # (id, op, change: a function of the valid keyword arguments, fragments of the message:
    #  the argument, what was expected, what was received)
    return [
        # ---- q, k, v ---------------------------------------------------------------------------
        ("q_fp64", "alibi", lambda a: {"q": a["q"].double(), "k": a["k"].double(),
                                       "v": a["v"].double()},
         ["q has dtype torch.float64", "built for", "torch.float32"]),
        ("k_fp16_mixed", "alibi", lambda a: {"k": a["k"].half()},
         ["k has dtype torch.float16", "q has dtype torch.float32", "share one dtype"]),
        ("v_fp16_mixed", "alibi", lambda a: {"v": a["v"].half()},
         ["v has dtype torch.float16", "q has dtype torch.float32"]),
        ("q_int", "alibi", lambda a: {"q": a["q"].long()},
         ["q must be a floating-point tensor", "torch.int64"]),
        ("k_on_meta", "alibi", lambda a: {"k": a["k"].to("meta")},
         ["k is on device meta", f"q is on {dev}", "one device"]),
        ("all_on_meta", "alibi", lambda a: {x: a[x].to("meta") for x in ("q", "k", "v", "slopes")},
         ["q, k and v must be on a CUDA device or the CPU", "got meta"]),
        ("q_3d", "alibi", lambda a: {"q": a["q"][0]},
         ["q must have 4 dimensions", "[batch, heads, seq_len, head_dim]", "got 3",
          f"({HQ}, {M}, {D})"]),
        ("k_5d", "alibi", lambda a: {"k": a["k"][None]}, ["k must have 4 dimensions", "got 5"]),
        ("head_dim_q_vs_k", "alibi",
         lambda a: {"k": zeros(B, HKV, N, 32), "v": zeros(B, HKV, N, 32)},
         ["k has head_dim 32", "q has head_dim 16", "must agree"]),
        ("head_dim_k_vs_v", "alibi", lambda a: {"v": zeros(B, HKV, N, 32)},
         [f"v has shape ({B}, {HKV}, {N}, 32)", f"k has shape ({B}, {HKV}, {N}, {D})",
          "same shape"]),
        ("head_dim_out_of_range", "alibi",
         lambda a: {x: a[x][..., :8] for x in ("q", "k", "v")},
         ["q has head_dim 8", "16..256"]),
        ("heads_not_a_multiple", "alibi",
         lambda a: {"k": zeros(B, 3, N, D), "v": zeros(B, 3, N, D)},
         [f"q's {HQ} heads", "k's 3 heads", "multiple"]),
        ("no_kv_heads", "alibi",
         lambda a: {"k": zeros(B, 0, N, D), "v": zeros(B, 0, N, D)},
         ["k must have at least one head", f"({B}, 0, {N}, {D})"]),
        ("batch_mismatch", "alibi", lambda a: {"k": a["k"][:1], "v": a["v"][:1]},
         ["k has batch 1", f"q has batch {B}", "must agree"]),
        ("kv_length_mismatch", "alibi", lambda a: {"v": a["v"][:, :, :4]},
         [f"v has shape ({B}, {HKV}, 4, {D})", f"k has shape ({B}, {HKV}, {N}, {D})",
          "same shape"]),
        ("q_last_dim_not_contiguous", "alibi", lambda a: {"q": non_contiguous(a["q"])},
         ["q must be contiguous in its last dimension", "stride 1",
          f"got strides ({HQ * M * D}, {M * D}, 1, {M})"]),
        ("v_last_dim_not_contiguous", "alibi", lambda a: {"v": non_contiguous(a["v"])},
         ["v must be contiguous in its last dimension", "stride 1",
          f"got strides ({HKV * N * D}, {N * D}, 1, {N})"]),
        ("q_list", "alibi", lambda a: {"q": a["q"].tolist()},
         ["q must be a torch.Tensor", "got list"]),
        ("k_none", "alibi", lambda a: {"k": None}, ["k must be a torch.Tensor", "got NoneType"]),
        # ---- params ------------------------------------------------------------------------------
        ("param_missing", "alibi", lambda a: {"slopes": _DELETE},
         ["missing param slopes: f32[H]"]),
        ("param_extra", "alibi", lambda a: {"bogus": 1.0},
         ["unexpected param bogus", "takes: slopes"]),
        ("param_wrong_shape", "alibi", lambda a: {"slopes": torch.ones(2, device=DEVICE)},
         ["param slopes must have shape [4]", "([H])", "got [2]"]),
        ("param_wrong_dtype", "alibi",
         lambda a: {"slopes": torch.ones(HQ, dtype=torch.float64, device=DEVICE)},
         ["param slopes must have dtype torch.float32", "(declared f32)", "got torch.float64"]),
        ("param_wrong_device", "alibi", lambda a: {"slopes": torch.ones(HQ, device="meta")},
         ["param slopes must be on q's device", dev, "got meta"]),
        ("param_float_for_tensor", "alibi", lambda a: {"slopes": 0.5},
         ["param slopes must be a tensor of shape [4]", "(H)", "got float"]),
        ("param_int_wrong_shape", "packed_docs",
         lambda a: {"doc": torch.zeros(B, 3, dtype=torch.int32, device=DEVICE)},
         ["param doc must have shape [2, 5]", "([B, KV])", "got [2, 3]"]),
        ("param_int64_for_i32", "packed_docs",
         lambda a: {"doc": torch.zeros(B, N, dtype=torch.int64, device=DEVICE)},
         ["param doc must have dtype torch.int32", "(declared i32)", "got torch.int64"]),
        ("param_float_tensor_for_i32", "packed_docs",
         lambda a: {"doc": zeros(B, N)},
         ["param doc must have dtype torch.int32", "got torch.float32"]),
        ("scalar_float_for_i32", "scalars", lambda a: {"shift": 2.5},
         ["param shift must be a i32 scalar", "an int or a 0-d tensor", "got float 2.5"]),
        ("scalar_bool_for_i32", "scalars", lambda a: {"shift": True},
         ["param shift must be a i32 scalar", "got bool True"]),
        ("scalar_past_i32", "scalars", lambda a: {"shift": 2**31},
         ["param shift must be a i32 scalar in -2147483648..2147483647", f"got {2**31}"]),
        ("scalar_str_for_f32", "scalars", lambda a: {"temperature": "0.5"},
         ["param temperature must be a f32 scalar", "a float or a 0-d tensor", "got str '0.5'"]),
        ("scalar_past_f32", "scalars", lambda a: {"temperature": 1e39},
         ["param temperature must be a f32 scalar of magnitude at most 3.403e+38", "got 1e+39"]),
        ("scalar_as_1d_tensor", "scalars",
         lambda a: {"temperature": torch.ones(1, device=DEVICE)},
         ["param temperature must have shape []", "got [1]"]),
        # ---- scale -------------------------------------------------------------------------------
        ("scale_nan", "alibi", lambda a: {"scale": float("nan")},
         ["scale must be a finite number >= 0", "got nan"]),
        ("scale_inf", "alibi", lambda a: {"scale": float("inf")},
         ["scale must be a finite number >= 0", "got inf"]),
        ("scale_negative", "alibi", lambda a: {"scale": -0.5},
         ["scale must be a finite number >= 0", "got -0.5"]),
        ("scale_str", "alibi", lambda a: {"scale": "0.5"},
         ["scale must be a finite number >= 0", "got str '0.5'"]),
        ("scale_bool", "alibi", lambda a: {"scale": True},
         ["scale must be a finite number >= 0", "got bool True"]),
        ("scale_huge_int", "alibi", lambda a: {"scale": 10**400},
         ["scale must be a finite number >= 0", "got 1000"]),
        ("scale_tensor_of_two", "alibi", lambda a: {"scale": torch.ones(2, device=DEVICE)},
         ["scale must be a finite number >= 0", "got Tensor"]),
    ]


_DELETE = object()  # a change that removes the argument
CASES = _cases()
# the reference (op.reference) accepts any float dtype and strides, and runs on any device
KERNEL_ONLY = {"q_fp64", "all_on_meta", "q_last_dim_not_contiguous", "v_last_dim_not_contiguous"}


def _call(op, kwargs, reference: bool):
    kwargs = dict(kwargs)
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    return (op.reference if reference else op)(q, k, v, **kwargs)


def _calls():
    for case in CASES:
        yield pytest.param(*case, False, id=f"{case[0]}-op")
        if case[0] not in KERNEL_ONLY:
            yield pytest.param(*case, True, id=f"{case[0]}-reference")


@pytest.mark.parametrize("case, name, change, fragments, reference", list(_calls()))
def test_bad_input_raises_value_error(no_launch, case, name, change, fragments, reference):
    op = no_launch[name]
    kwargs = valid_inputs(name)
    for key, value in change(kwargs).items():
        if value is _DELETE:
            del kwargs[key]
        else:
            kwargs[key] = value
    with pytest.raises(ValueError) as info:
        _call(op, kwargs, reference)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if not case.startswith("scale"):  # the scale's check does not know the op's name
        assert message.startswith(f"{op.name}{'.reference' if reference else ''}: "), message


def test_valid_inputs_reach_the_launch(no_launch):
    """The valid calls the cases start from pass validation (so each case tests one change)."""
    for name, op in no_launch.items():
        with pytest.raises(Launched):
            _call(op, valid_inputs(name), reference=False)


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))

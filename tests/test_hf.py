"""transformers integration: attngen ops as ``attn_implementation``s of a tiny random Llama,
checked against transformers' own ``sdpa`` (fp32, CPU interpreter)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from attngen import hf  # before transformers: it imports triton, and the CPU needs the interpreter

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed; it is the optional 'hf' extra: "
                           "pip install 'attngen[hf]'")

from conftest import REPO_ROOT  # noqa: E402

EXAMPLES = REPO_ROOT / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hf_llama = _example("hf_llama")


@pytest.fixture(scope="module")
def llama_impl() -> str:
    return hf.register(EXAMPLES / "llama.attn")


@pytest.fixture(scope="module")
def models(llama_impl):
    return hf_llama.twin_models(hf_llama.tiny_llama_config(), llama_impl, "cpu", torch.float32)


def test_register_returns_the_implementation_name(llama_impl):
    assert llama_impl == "attngen_llama"
    assert llama_impl in transformers.AttentionInterface()


def test_llama_matches_sdpa(models, monkeypatch):
    reference, model = models
    decode_calls = []
    from attngen.api import AttentionOp

    original = AttentionOp.decode
    monkeypatch.setattr(AttentionOp, "decode",
                        lambda self, *a, **k: decode_calls.append(1) or original(self, *a, **k))
    torch.manual_seed(1)
    input_ids = torch.randint(0, 256, (2, 48))
    result = hf_llama.compare(reference, model, input_ids, new_tokens=3)
    assert result["logits"] <= 1e-4, result
    assert result["grads"] <= 1e-4, result
    assert result["same_tokens"] == 1.0
    assert decode_calls, "one-token generation steps should run the decode kernels"


def test_padding_mask_is_refused(models):
    _, model = models
    input_ids = torch.randint(0, 256, (2, 16))
    padding = torch.ones_like(input_ids)
    padding[0, :3] = 0
    with pytest.raises(ValueError, match="attngen_llama: the model passed an attention mask"):
        model(input_ids, attention_mask=padding)
    model(input_ids, attention_mask=torch.ones_like(input_ids))  # no padding: fine


def test_packed_positions_are_refused_by_a_causal_spec(models):
    _, model = models
    input_ids = torch.randint(0, 256, (1, 16))
    positions = torch.cat([torch.arange(10), torch.arange(6)]).unsqueeze(0)
    with pytest.raises(ValueError, match="position_ids restart inside a row"):
        model(input_ids, position_ids=positions)


def test_packed_documents_match_separate_documents():
    """packed_docs, document ids given at the model call, positions restarting per document:
    the logits of each document are those of the document run alone (with sdpa)."""
    import attngen

    impl = hf.register(EXAMPLES / "packed_docs.attn")
    reference, model = hf_llama.twin_models(hf_llama.tiny_llama_config(), impl, "cpu",
                                            torch.float32)
    lengths = [11, 7, 14]
    cu = torch.tensor([0, 11, 18, 32], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    doc = attngen.document_ids(cu)[None]
    input_ids = torch.randint(0, 256, (1, 32))
    with torch.no_grad():
        out = model(input_ids, position_ids=positions, doc=doc).logits
        gold = torch.cat([reference(input_ids[:, cu[i]:cu[i + 1]]).logits for i in range(3)], 1)
    assert hf_llama.relative(out, gold) <= 1e-4
    with pytest.raises(ValueError, match="param doc is not given; pass it to the model call"):
        model(input_ids, position_ids=positions)


def test_params_from_register():
    """An ALiBi op with its slopes given once at registration (a callable reads the module)."""
    impl = hf.register(EXAMPLES / "alibi.attn", "alibi_fixed",
                       params={"slopes": lambda module, q, k: torch.full((q.shape[1],), 0.5)})
    assert impl == "attngen_alibi_fixed"
    _, model = hf_llama.twin_models(hf_llama.tiny_llama_config(), impl, "cpu", torch.float32)
    with torch.no_grad():
        logits = model(torch.randint(0, 256, (1, 12))).logits
    assert torch.isfinite(logits).all()


def test_register_errors():
    with pytest.raises(ValueError, match="alibi has no param slope "):
        hf.register(EXAMPLES / "alibi.attn", params={"slope": 1.0})
    with pytest.raises(ValueError, match="name must make a Python identifier"):
        hf.register(EXAMPLES / "llama.attn", "not a name")


def test_dropout_is_not_implemented(llama_impl):
    config = hf_llama.tiny_llama_config()
    config.attention_dropout = 0.1
    _, model = hf_llama.twin_models(config, llama_impl, "cpu", torch.float32)
    model.train()
    with pytest.raises(NotImplementedError, match="NYI: attngen_llama: attention dropout"):
        model(torch.randint(0, 256, (1, 8)))

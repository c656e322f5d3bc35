"""The example scripts run (small and on the CPU) and show what they claim."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_train_packed_loss_goes_down_as_with_sdpa(capsys):
    train_packed = _example("train_packed")
    result = train_packed.main(["--device", "cpu", "--steps", "8", "--log-every", "4"])
    losses = result["losses"]
    assert losses["attngen"][-1] < losses["attngen"][0]
    # same weights, same batches: the kernels and SDPA's dense mask train the same model
    assert losses["attngen"] == pytest.approx(losses["sdpa"], rel=1e-4)
    out = capsys.readouterr().out
    assert "tokens/s, training: attngen packed_docs" in out
    assert "SDPA + dense block-causal mask" in out


def test_train_packed_masks_agree():
    """The dense mask given to SDPA is the packed_docs spec's mask (the reference's)."""
    import attngen
    from attngen.reference import mask_grid
    from attngen.runtime import Shapes

    train_packed = _example("train_packed")
    cfg = train_packed.CPU
    tokens, targets, positions, cu_rows = train_packed.packed_batch(
        cfg, torch.Generator().manual_seed(3))
    doc = train_packed.document_ids(cu_rows, cfg.seq_len)
    spec = attngen.load(EXAMPLES / "packed_docs.attn").spec
    shapes = Shapes(batch=cfg.batch, heads_q=1, heads_kv=1, q_len=cfg.seq_len,
                    kv_len=cfg.seq_len, head_dim=16)
    assert torch.equal(train_packed.block_causal_mask(doc), mask_grid(spec, shapes, doc=doc))
    ends = torch.cat([cu[1:] - 1 for cu in cu_rows])
    rows = torch.repeat_interleave(torch.arange(cfg.batch),
                                   torch.tensor([len(cu) - 1 for cu in cu_rows]))
    assert (targets[rows, ends.long()] == -100).all()  # no target across a document boundary


def test_hf_llama_example_runs():
    pytest.importorskip("transformers", reason="transformers is not installed; it is the "
                                               "optional 'hf' extra: pip install 'attngen[hf]'")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "hf_llama.py"), "--device", "cpu",
                           "--seq-len", "32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "max relative logit difference" in proc.stdout
    assert "same tokens" in proc.stdout

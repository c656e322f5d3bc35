"""An attngen spec as a Hugging Face transformers attention implementation.

    pip install 'attngen[hf]'
    python examples/hf_llama.py              # tiny random Llama (no download), CPU or GPU

Builds a small Llama from a LlamaConfig with random weights, registers examples/llama.attn as
``attn_implementation="attngen_llama"``, and compares it with transformers' ``sdpa``: logits,
a training step's gradients, and greedy generation through the KV cache (one new token at a
time: the spec's decode kernels).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# attngen before transformers, which imports triton: on a CPU attngen selects the interpreter
import attngen.hf  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def tiny_llama_config(scale: int = 1) -> LlamaConfig:
    """Llama's architecture at toy size: GQA (4 query heads per kv head pair), RoPE, SwiGLU."""
    return LlamaConfig(vocab_size=256, hidden_size=64 * scale, intermediate_size=128 * scale,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512)


def twin_models(config: LlamaConfig, implementation: str, device: str, dtype: torch.dtype):
    """The same random Llama twice: once with ``sdpa``, once with ``implementation``."""
    torch.manual_seed(0)
    reference = LlamaForCausalLM(copy.deepcopy(config))  # each model owns its config
    reference.set_attn_implementation("sdpa")
    model = LlamaForCausalLM(copy.deepcopy(config))
    model.set_attn_implementation(implementation)
    model.load_state_dict(reference.state_dict())
    return (reference.to(device, dtype).eval(), model.to(device, dtype).eval())


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|"""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def compare(reference, model, input_ids: torch.Tensor, new_tokens: int) -> dict[str, float]:
    with torch.no_grad():
        start = time.perf_counter()
        logits = model(input_ids).logits
        seconds = time.perf_counter() - start
        gold = reference(input_ids).logits
    grads = []
    for m in (model, reference):
        m.zero_grad()
        m(input_ids, labels=input_ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    prompt = input_ids[:, : input_ids.shape[1] // 2]
    with torch.no_grad():
        kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                      attention_mask=torch.ones_like(prompt))
        generated = model.generate(prompt, **kwargs)
        expected = reference.generate(prompt, **kwargs)
    return {"logits": relative(logits, gold), "grads": relative(grads[0], grads[1]),
            "same_tokens": float(torch.equal(generated, expected)), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 64 CPU, 1024 GPU")
    args = parser.parse_args()
    cpu = args.device == "cpu"
    dtype = torch.float32 if cpu else torch.bfloat16
    seq_len = args.seq_len or (64 if cpu else 1024)

    name = attngen.hf.register(ROOT / "examples" / "llama.attn")  # -> "attngen_llama"
    config = tiny_llama_config(scale=1 if cpu else 4)
    reference, model = twin_models(config, name, args.device, dtype)
    input_ids = torch.randint(0, config.vocab_size, (2, seq_len), device=args.device)
    result = compare(reference, model, input_ids, new_tokens=4 if cpu else 32)

    print(f"tiny Llama ({config.num_hidden_layers} layers, {config.num_attention_heads} query / "
          f"{config.num_key_value_heads} kv heads, head dim {config.head_dim}), batch 2 x "
          f"{seq_len} tokens, {args.device} {str(dtype)[6:]}")
    print(f"attn_implementation={name!r} against 'sdpa':")
    print(f"  max relative logit difference     {result['logits']:.2e}")
    print(f"  max relative gradient difference  {result['grads']:.2e}")
    print(f"  greedy generation (KV cache)      "
          f"{'same tokens' if result['same_tokens'] else 'DIFFERENT tokens'}")
    print(f"  forward time                      {result['seconds']:.3f} s")
    limit = 1e-4 if dtype == torch.float32 else 2e-2
    if result["logits"] > limit:
        sys.exit(f"logits differ by more than {limit:g}")


if __name__ == "__main__":
    main()

"""Train a small GPT on packed documents with the `packed_docs` spec, beside SDPA.

    python examples/train_packed.py --device cpu     # tiny: Triton interpreter, < 1 minute
    python examples/train_packed.py                  # on a GPU: larger model, 4k-token rows

Each training row packs documents of random lengths end to end; a token attends causally to
its own document only (examples/packed_docs.attn: `mask causal & document(doc)`, the ids from
`attngen.document_ids(cu_seqlens)`). The same model, from the same initial weights, is trained
twice on the same batches: once with the attngen op, once with PyTorch's SDPA given the dense
[B, 1, L, L] block-causal boolean mask that packing needs without a document-aware kernel.
Both losses should fall the same way; the tokens/s column is the point.

The data is learnable only through attention within a document: document d counts from a random
start in steps of a random stride s_d (mod the vocabulary), so the next token needs the previous
two tokens of the same document; across a document boundary nothing is predictable (those
targets are left out of the loss).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import attngen  # noqa: E402


@dataclass(frozen=True)
class Config:
    vocab: int = 64
    dim: int = 64
    heads: int = 2
    kv_heads: int = 1  # grouped-query attention: the op takes k/v with fewer heads natively
    layers: int = 1
    seq_len: int = 64  # tokens per packed row
    batch: int = 2
    min_doc: int = 4
    max_doc: int = 24


CPU = Config()
GPU = Config(vocab=256, dim=512, heads=8, kv_heads=2, layers=4, seq_len=4096, batch=8,
             min_doc=64, max_doc=1536)


# ---- data: packed documents ---------------------------------------------------------------------


def packed_batch(cfg: Config, generator: torch.Generator):
    """(tokens [B, L], targets [B, L] with -100 where nothing is predictable, positions within
    each document [B, L], cu_seqlens per row)."""
    tokens = torch.empty(cfg.batch, cfg.seq_len, dtype=torch.long)
    targets = torch.full_like(tokens, -100)
    positions = torch.empty_like(tokens)
    cu_rows = []
    for row in range(cfg.batch):
        cu, filled = [0], 0
        while filled < cfg.seq_len:
            n = int(torch.randint(cfg.min_doc, cfg.max_doc + 1, (), generator=generator))
            n = min(n, cfg.seq_len - filled)
            start = torch.randint(0, cfg.vocab, (), generator=generator)
            stride = torch.randint(1, 8, (), generator=generator)
            doc = (start + stride * torch.arange(n)) % cfg.vocab
            tokens[row, filled:filled + n] = doc
            targets[row, filled:filled + n - 1] = doc[1:]  # the last token's successor is unknown
            positions[row, filled:filled + n] = torch.arange(n)
            filled += n
            cu.append(filled)
        cu_rows.append(torch.tensor(cu, dtype=torch.int32))
    return tokens, targets, positions, cu_rows


def document_ids(cu_rows, seq_len: int) -> torch.Tensor:
    """int32 [B, L] ids for `document(doc)`, one row per packed row."""
    return torch.stack([attngen.document_ids(cu, seq_len) for cu in cu_rows])


def block_causal_mask(doc: torch.Tensor) -> torch.Tensor:
    """The dense bool [B, 1, L, L] mask SDPA needs: causal and same document."""
    L = doc.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=doc.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]


# ---- the model ----------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.dim // cfg.heads
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, attend):
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(B, L, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.out(attend(q, k, v).transpose(1, 2).reshape(B, L, -1))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(),
                                 nn.Linear(4 * cfg.dim, cfg.dim))

    def forward(self, x, attend):
        x = x + self.attn(self.norm1(x), attend)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab, cfg.dim)
        self.positions = nn.Embedding(cfg.max_doc, cfg.dim)  # position within the document
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)

    def forward(self, tokens, positions, attend):
        x = self.tokens(tokens) + self.positions(positions)
        for block in self.blocks:
            x = block(x, attend)
        return self.head(self.norm(x))


# ---- attention functions ------------------------------------------------------------------------


def attngen_attention(op, doc):
    return lambda q, k, v: op(q, k, v, doc=doc)


def sdpa_attention(mask, group: int):
    # SDPA's math/efficient kernels take GQA by repeating k/v heads
    return lambda q, k, v: F.scaled_dot_product_attention(
        q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), attn_mask=mask)


# ---- training -----------------------------------------------------------------------------------


def train(cfg: Config, steps: int, device: str, seed: int = 0, log_every: int = 10,
          quiet: bool = False) -> dict:
    op = attngen.load(ROOT / "examples" / "packed_docs.attn")
    torch.manual_seed(seed)
    models = {"attngen": GPT(cfg).to(device)}
    models["sdpa"] = GPT(cfg).to(device)
    models["sdpa"].load_state_dict(models["attngen"].state_dict())
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=6e-3, weight_decay=0.0)
                  for name, m in models.items()}
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda")
    seconds = {name: 0.0 for name in models}
    losses = {name: [] for name in models}
    generator = torch.Generator().manual_seed(seed)
    if not quiet:
        print(f"{'step':>5} {'loss attngen':>13} {'loss sdpa':>10}")
    for step in range(steps):
        tokens, targets, positions, cu_rows = packed_batch(cfg, generator)
        tokens, targets, positions = (t.to(device) for t in (tokens, targets, positions))
        doc = document_ids(cu_rows, cfg.seq_len).to(device)
        attend = {"attngen": attngen_attention(op, doc),
                  "sdpa": sdpa_attention(block_causal_mask(doc), cfg.heads // cfg.kv_heads)}
        for name, model in models.items():
            start = time.perf_counter()
            with autocast:
                logits = model(tokens, positions, attend[name])
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            if device == "cuda":
                torch.cuda.synchronize()
            if step > 0:  # the first step compiles (or warms up the interpreter)
                seconds[name] += time.perf_counter() - start
            losses[name].append(loss.item())
        if not quiet and (step % log_every == 0 or step == steps - 1):
            print(f"{step:>5} {losses['attngen'][-1]:>13.4f} {losses['sdpa'][-1]:>10.4f}")
    timed_tokens = cfg.batch * cfg.seq_len * max(steps - 1, 1)
    return {"losses": losses,
            "tokens_per_s": {name: timed_tokens / max(s, 1e-9) for name, s in seconds.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: 40 CPU, 300 GPU")
    parser.add_argument("--seq-len", type=int, default=None,
                        help=f"tokens per packed row (default: {CPU.seq_len} CPU, "
                             f"{GPU.seq_len} GPU)")
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args(argv)
    cfg = CPU if args.device == "cpu" else GPU
    if args.seq_len:
        cfg = Config(**{**cfg.__dict__, "seq_len": args.seq_len})
    steps = args.steps or (40 if args.device == "cpu" else 300)
    interpreter = " (Triton interpreter: attngen is slow here)" if args.device == "cpu" else ""
    print(f"GPT: {cfg.layers} layer{'s' if cfg.layers > 1 else ''}, dim {cfg.dim}, {cfg.heads} "
          f"query / {cfg.kv_heads} kv heads; {cfg.batch} rows x {cfg.seq_len} tokens of packed "
          f"documents ({cfg.min_doc}-{cfg.max_doc} tokens); {steps} steps on {args.device}"
          f"{interpreter}")
    result = train(cfg, steps, args.device, log_every=args.log_every)
    first, last = (sum(result["losses"]["attngen"][i] for i in idx) / len(idx)
                   for idx in (range(min(5, steps)), range(max(0, steps - 5), steps)))
    rates = result["tokens_per_s"]
    print(f"loss (attngen) {first:.3f} -> {last:.3f} (mean of the first / last 5 steps)")
    print(f"tokens/s, training: attngen packed_docs {rates['attngen']:,.0f}, "
          f"SDPA + dense block-causal mask {rates['sdpa']:,.0f}")
    if last >= first:
        sys.exit("the loss did not go down")
    return result


if __name__ == "__main__":
    main()

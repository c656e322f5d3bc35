"""Hugging Face transformers integration: an attngen op as an ``attn_implementation``.

    import attngen.hf
    attngen.hf.register("examples/llama.attn")                # registers "attngen_llama"
    model = LlamaForCausalLM(config)
    model.set_attn_implementation("attngen_llama")   # or from_pretrained(..., attn_implementation=)

The op replaces the model's attention function (``AttentionInterface``): it gets the model's
``query`` [B, Hq, S, D] and ``key``/``value`` [B, Hkv, S_kv, D] (grouped-query heads are not
repeated: the op takes them natively), the model's ``scaling`` as its ``scale``, and returns
``[B, S, Hq, D]`` as transformers expects. Training works (the op is an autograd op); generation
with a KV cache works (the new queries sit at the end of the cache: bottom-right alignment), and
a single new token without autograd runs the spec's decode kernels.

**The spec defines the mask.** The model's own mask (causal, sliding window, ...) is not
consulted, so pick a spec that means what the model means (``llama.attn`` for a causal decoder).
What a spec cannot express is refused rather than ignored: a padding mask (an
``attention_mask`` with zeros) and packed sequences given as ``position_ids`` that restart inside
a row raise ``ValueError``; pack documents with a ``document(ids)`` spec instead
(``examples/packed_docs.attn``, ids passed as a param). Attention dropout raises
``NotImplementedError``.

On a machine without a GPU, import ``attngen.hf`` before transformers: transformers imports
triton, and triton decides at import whether kernels run through its CPU interpreter.

**Params** (ALiBi slopes, document ids, ...) come from the model call's keyword arguments
(``model(input_ids, doc=ids)``: transformers passes unknown keyword arguments down to the
attention function), else from ``register(..., params={name: tensor})``, or from a callable there
that builds the value from ``(module, query, key)``.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Callable

import torch

# the runtime before transformers, which imports triton: on a CPU it selects the interpreter
from . import runtime  # noqa: F401
from .api import AttentionOp, load, parse_and_check, read_spec

PREFIX = "attngen_"


def register(op_or_spec: AttentionOp | str | Path, name: str | None = None, *,
             params: dict[str, Any] | None = None) -> str:
    """Register an attngen op with transformers; returns its ``attn_implementation`` name,
    ``"attngen_<name>"`` (``name`` defaults to the attention's name).

    ``op_or_spec``: an op from ``attngen.load``, or a spec path or text (its only attention,
    or the one called ``name``). ``params``: values for the spec's params, each a tensor (or
    number) or a callable ``(module, query, key) -> value``; a keyword argument of the same name
    given to the model call takes precedence. Registering a name again replaces it.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as err:
        raise ImportError("attngen.hf needs transformers (>= 4.56): pip install 'attngen[hf]'"
                          ) from err
    op = op_or_spec if isinstance(op_or_spec, AttentionOp) else _load(op_or_spec, name)
    params = dict(params or {})
    declared = [p.name for p in op.spec.params]
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"register: {op.name} has no param {unknown[0]} (it takes: "
                         f"{', '.join(declared) or 'none'})")
    key = PREFIX + (name or op.name)
    if not key.isidentifier():
        raise ValueError(f"register: name must make a Python identifier, got {name!r}")
    AttentionInterface.register(key, _attention_function(op, key, params))
    # The model builds its mask through this: None unless there is padding, which we refuse.
    AttentionMaskInterface.register(key, _padding_mask)
    return key


def _load(spec: str | Path, name: str | None) -> AttentionOp:
    text, path = read_spec(spec)
    names = [a.name for a in parse_and_check(text, path)]
    return load(spec, name=name if name in names else None)


def _padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                  attention_mask=None, **kwargs):
    """transformers' mask hook: the 2D padding mask when it masks anything, else None (the
    spec's mask is the whole mask)."""
    if attention_mask is None or attention_mask.ndim != 2:
        return attention_mask
    attention_mask = attention_mask[:, -kv_length:]
    if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
        return None
    return attention_mask


class _CheckedPositions:
    """Remembers the last position_ids tensor found unpacked, so a model's layers check it once
    (one host sync per forward)."""

    def __init__(self):
        self._ref, self._version = None, None

    def seen(self, t: torch.Tensor) -> bool:
        return self._ref is not None and self._ref() is t and t._version == self._version

    def remember(self, t: torch.Tensor) -> None:
        self._ref, self._version = weakref.ref(t), t._version


def _attention_function(op: AttentionOp, key: str, params: dict[str, Any]) -> Callable:
    names = [p.name for p in op.spec.params]
    has_decode = "decode" in op.spec.kernels
    from .sparsity import analyse

    packs_documents = bool(analyse(op.spec).documents)  # then positions restart per document
    checked = _CheckedPositions()

    def attention(module: torch.nn.Module, query: torch.Tensor, key_states: torch.Tensor,
                  value: torch.Tensor, attention_mask: torch.Tensor | None,
                  scaling: float | None = None, dropout: float = 0.0, **kwargs):
        if attention_mask is not None:
            raise ValueError(
                f"{key}: the model passed an attention mask (shape {list(attention_mask.shape)}),"
                f" e.g. padding; attngen's spec defines the whole mask ({op.spec.mask_text}), so "
                f"call the model without padding, or pack documents with a document(ids) spec")
        if dropout:
            raise NotImplementedError(f"NYI: {key}: attention dropout ({dropout}); set the "
                                      f"config's attention_dropout to 0")
        if not packs_documents:
            _check_positions(key, kwargs.get("position_ids"), checked)
        call_params = {}
        for name in names:
            value_of = kwargs[name] if name in kwargs else params.get(name)
            if value_of is None:
                raise ValueError(f"{key}: param {name} is not given; pass it to the model call "
                                 f"(model(..., {name}=...)) or to attngen.hf.register(params=)")
            if callable(value_of) and not isinstance(value_of, torch.Tensor):
                value_of = value_of(module, query, key_states)
            call_params[name] = value_of
        if has_decode and query.shape[2] == 1 and not torch.is_grad_enabled():
            out = op.decode(query, key_states.contiguous(), value.contiguous(), scale=scaling,
                            **call_params)
        else:
            out = op(query, key_states, value, scale=scaling, **call_params)
        return out.transpose(1, 2).contiguous(), None

    attention.__name__ = attention.__qualname__ = f"{key}_attention"
    attention.__doc__ = f"transformers attention function running attngen's {op.name} op."
    return attention


def _check_positions(key: str, position_ids: torch.Tensor | None,
                     checked: _CheckedPositions) -> None:
    """Packed sequences (positions restarting inside a row) need a document mask the spec may
    not have: refuse them rather than attend across documents."""
    if position_ids is None or position_ids.shape[-1] < 2 or torch.compiler.is_compiling() \
            or checked.seen(position_ids):
        return
    if bool((position_ids[..., 1:] - position_ids[..., :-1] != 1).any()):
        raise ValueError(f"{key}: position_ids restart inside a row (packed sequences); the "
                         f"spec's mask would attend across them; pack with a document(ids) spec "
                         f"(examples/packed_docs.attn) and pass the ids as its param")
    checked.remember(position_ids)

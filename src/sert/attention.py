"""``model.attention=sert``: a faster attention for the one-token decoding step, SDPA for everything else.

A decoding step attends one new query per row to the row's whole KV cache. PyTorch's SDPA kernels are built for
long queries; for a single one on CPU they spend most of their time in setup (SmolLM2, 200 rows x 96 cached
positions, bf16, one thread: 16 ms per layer against ~2 ms here, so ~0.5 s of a ~1 s step). Here the step is two
batched matmuls in the cache's dtype with the query heads grouped by their shared KV head (grouped-query attention
without repeating K/V, and no fp32 copy of the cache), the softmax in fp32: what SDPA computes, at bf16-rounding
distance in bf16 and float-rounding distance in fp32 (tested against it; the path sampler's log-probabilities
against an fp32 model in ``experiments/bench_generate.py``). Prefill and training (queries longer than one token) go to transformers' SDPA
function unchanged, with the same masks (``sdpa_mask``).

``enable(model)`` switches a loaded transformers model to it; ``sert.models.load_model`` does so when the model
config says ``attention: sert`` (the default).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

NAME = "sert"


def decode_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, q, D), key/value (B, KV, L, D), mask None, bool
    (True = attend) or additive float, broadcastable to (B, 1, q, L); returns (B, q, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or (dropout and module.training) or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    q = query.reshape(b * kv_heads, group, dim)
    # (B*KV, L, D) views of the cache (a preallocated cache is strided over its capacity: still a view)
    k, v = key.reshape(b * kv_heads, length, dim), value.reshape(b * kv_heads, length, dim)
    # the matmuls in the cache's dtype (no fp32 copy of the whole cache), the softmax in fp32
    # scores as (K @ q^T)^T: a strided cache view on the left is read in place, on the right it would be copied
    scores = torch.bmm(k, q.transpose(1, 2)).transpose(1, 2).float().mul_(scale).view(b, kv_heads, group, length)
    if attention_mask is not None:  # (B or 1, 1, 1, L): broadcasts over the KV heads and their query groups
        mask = attention_mask[..., -length:]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    probs = scores.softmax(-1).to(value.dtype).view(b * kv_heads, group, length)
    return torch.bmm(probs, v).reshape(b, 1, heads, dim), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def enable(model) -> bool:
    """Use ``decode_attention`` in ``model`` if it takes its attention from transformers' interface (most
    decoder LMs do; others keep theirs, logged). Returns whether it was switched."""
    register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError, NotImplementedError) as e:
        log.info("model.attention=sert: %s keeps its own attention (%s)", type(model).__name__, e)
        return False
    return True

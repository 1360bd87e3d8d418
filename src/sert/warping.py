"""Sampling primitives on (rows, vocab) logits: temperature / top-k / top-p warping and inverse-CDF draws.

Shared by the path sampler (``sert.sampling``) and the decoding engine (``sert.engine``); depends on torch only.
"""

from __future__ import annotations

import torch


def warp(logits: torch.Tensor, top_k: int, top_p: float, temperature: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on a (rows, vocab) logits tensor -> probabilities.

    The full-vocabulary reference; ``sample_tokens`` uses it only when top-k is off."""
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # keep tokens until mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one index per row of ``probs`` from uniforms ``u`` (rows,) in [0, 1)."""
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


def sample_tokens(logits: torch.Tensor, top_k: int, top_p: float, temperature: float, u: torch.Tensor) -> torch.Tensor:
    """One token id per row: the warped distribution (``warp``) drawn by inverse CDF over vocabulary order.

    With top-k set, only the k largest logits are touched (``torch.topk``, no full-vocabulary sort):
    top-p is applied within them and the draw walks the kept ids in ascending id order, which is the
    full-vocabulary CDF with the zero-probability ids left out, i.e. the same token for the same ``u``.
    ``logits`` may be bf16: the top-k ids and values are exact in it, only the k kept values are cast to fp32."""
    if not 0 < top_k < logits.shape[-1]:
        return inverse_cdf(warp(logits.float(), top_k, top_p, temperature), u)
    vals, idx = torch.topk(logits, top_k, dim=-1)  # sorted, largest first; bf16 logits: the same ids as in fp32
    probs = (vals.float() / temperature).softmax(-1)
    if top_p < 1.0:
        probs = probs.masked_fill((probs.cumsum(-1) - probs) >= top_p, 0.0)
    idx, order = idx.sort(-1)  # back to vocabulary order for the draw
    return idx.gather(-1, inverse_cdf(probs.gather(-1, order), u)[:, None]).squeeze(-1)

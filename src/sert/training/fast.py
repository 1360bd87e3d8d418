"""The training step's fast paths, shared by both trainers (``trainer.fast_loss``, ``trainer.fused_optimizer``).

**Loss on target tokens only, LM head fused with cross-entropy, in chunks** (``causal_lm_loss``). The plain path
(``model(**batch).loss``) multiplies every position's hidden state by the (vocab x hidden) output matrix, prompt
and padding included, and keeps the whole (tokens x vocab) logits tensor, in fp32 for the loss, for the backward
pass (SmolLM2: 600 x 49,152 x 4 bytes = 118 MB, read and written several times). Here the decoder runs as usual;
only the hidden states whose next token is a target (``labels != -100`` after the shift) go through the head, in
chunks of ``chunk_rows``, and ``LinearCrossEntropy`` computes each chunk's loss *and* its gradients at once, so
no logits outlive their chunk (as torchtune's chunked output loss and Liger's fused linear cross-entropy). The
numbers are those of the plain path under the same precision: the head's matmuls in the autocast dtype, the
log-softmax in fp32, the mean over target tokens (tested against ``model(**batch).loss`` and its gradients).

**Compiled blocks** (``compile_blocks``, ``trainer.compile``, off by default): ``torch.compile`` of each decoder
block, which fuses the elementwise work between the matmuls (norms, activations, rotary embeddings, casts).

**Fused AdamW** (``make_optimizer``): ``torch.optim.AdamW(fused=True)`` updates every parameter in one kernel
pass instead of the foreach path's dozen elementwise passes over 4 x params floats.

Models: the fused loss needs a causal LM whose logits are ``hidden @ W.T`` (no bias, scaling or soft-capping):
``FAST_LOSS_MODEL_TYPES`` lists the architectures checked; others take the plain path (logged once).
"""

from __future__ import annotations

import logging

import torch

from sert.training.data import IGNORE

log = logging.getLogger(__name__)

# model_type values whose logits are exactly ``base_model(...)[0] @ get_output_embeddings().weight.T``
FAST_LOSS_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2")
_warned: set[str] = set()


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, chunk by chunk, gradients computed in the
    forward pass (so no (rows x vocab) tensor is kept for backward). ``dtype``: the matmuls' dtype (bf16 under
    bf16 autocast, as autocast would run the head), log-softmax always in fp32."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype,
                chunk_rows: int, grads: bool = True) -> torch.Tensor:
        n = hidden.shape[0]
        w = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden) if grads and ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if grads and ctx.needs_input_grad[1] else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, n, chunk_rows):
            h, t = hidden[s:s + chunk_rows].to(dtype), targets[s:s + chunk_rows]
            logits = (h @ w.T).float()
            lse = logits.logsumexp(-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            # d(mean loss)/d(logits) = (softmax - onehot) / n, in place over the chunk's logits
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(t), device=t.device), t] -= 1.0
            grad = grad.div_(n).to(dtype)
            if grad_hidden is not None:
                grad_hidden[s:s + chunk_rows] = grad @ w
            if grad_weight is not None:
                grad_weight += grad.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_out if grad_hidden is not None else None
        gw = (grad_weight * grad_out).to(ctx.weight_dtype) if grad_weight is not None else None
        return gh, gw, None, None, None, None


def fast_loss_supported(model) -> bool:
    """True where ``causal_lm_loss``'s fused path computes exactly the model's own logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    kind = getattr(model.config, "model_type", None)
    ok = (kind in FAST_LOSS_MODEL_TYPES and isinstance(head, torch.nn.Linear) and head.bias is None
          and model.base_model is not model)
    if not ok and str(kind) not in _warned:
        _warned.add(str(kind))
        log.info("trainer.fast_loss: %s is not among the checked architectures (%s): plain loss",
                 kind, ", ".join(FAST_LOSS_MODEL_TYPES))
    return ok


def causal_lm_loss(model, batch: dict, *, fast: bool = True, chunk_rows: int = 1024) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens of ``batch`` (input_ids, attention_mask, labels).

    ``fast``: the decoder, then the fused head + loss on target positions only (``LinearCrossEntropy``); else
    (or for an unchecked architecture) ``model(**batch).loss``. Both give the same value and gradients."""
    if not (fast and fast_loss_supported(model)):
        return model(**batch).loss
    mask = batch.get("attention_mask")
    if mask is not None and bool((mask[:, 1:] <= mask[:, :-1]).all()):
        mask = None  # right padding only: causal attention never lets a real token see the pads after its row's end
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False)[0]
    labels = batch["labels"][:, 1:]
    where = labels != IGNORE
    h = hidden[:, :-1][where]
    if h.shape[0] == 0:  # no target token: zero loss that still reaches every weight (as the plain path's nan-free 0)
        return hidden.sum() * 0.0
    weight = model.get_output_embeddings().weight
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else weight.dtype
    with torch.autocast(h.device.type, enabled=False):
        return LinearCrossEntropy.apply(h, weight, labels[where], dtype, chunk_rows, torch.is_grad_enabled())


def compile_blocks(model) -> int:
    """``torch.compile`` every block of the decoder's layer list (``model.base_model.layers`` / ``.h``) in place,
    with a dynamic sequence length: the blocks share one compiled graph (their weights are its inputs), so the
    compile costs one block's, not the model's. Returns the number of blocks compiled."""
    base = model.base_model
    blocks = next((m for m in base.children() if isinstance(m, torch.nn.ModuleList)), None)
    if blocks is None:
        raise ValueError(f"trainer.compile: {type(model).__name__} has no list of decoder blocks to compile")
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def make_optimizer(model, *, lr: float, betas: tuple[float, float], weight_decay: float, fused: bool):
    """AdamW with decay on matrices only (biases and norms: none), torch's fused kernel where ``fused``."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {}))

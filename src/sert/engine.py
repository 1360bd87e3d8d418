"""One batched decoding engine for everything that writes text with a local model: evaluation
(greedy on the test split), the local teacher and the local judge.

``decode(model, tok, prompts, ...)`` sorts prompts by length, decodes ``batch_size`` at a time with a
KV cache, stops a batch when every row has finished (EOS or a stop string), and returns one
``Decoded`` per prompt in the input order. Context limits are handled here, once for every caller:
the new-token budget is clamped to the room the model's context leaves after the prompt, and a prompt
that alone fills the context is left-truncated (its end, where the model continues, is kept). Both are
counted in ``DecodeStats`` so a step can warn once and record them in its summary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    text: str  # the continuation (special tokens removed), cut before a stop string
    num_tokens: int  # new tokens generated (EOS not counted)
    finish_reason: str  # eos | stop | length
    prompt_tokens: int  # prompt tokens the model saw (after any truncation)


@dataclass
class DecodeStats:
    prompts: int = 0
    new_tokens: int = 0
    clamped: int = 0  # rows whose max_new_tokens was cut to the room left in the context
    truncated_prompts: int = 0  # rows whose prompt was left-truncated to fit the context
    seconds: float = 0.0
    clamped_to: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"prompts": self.prompts, "new_tokens": self.new_tokens, "clamped": self.clamped,
                "truncated_prompts": self.truncated_prompts, "seconds": round(self.seconds, 3),
                "min_new_tokens_allowed": min(self.clamped_to) if self.clamped_to else None}


def context_length(model) -> int | None:
    """The model's maximum number of positions (None when the config does not say)."""
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def stop_cut(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text`` (None if none occurs)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


@torch.no_grad()
def decode(model, tok, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 16,
           temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, stop: Sequence[str] = (),
           seed: int = 0, min_new_tokens: int = 1, desc: str = "decode",
           on_batch: Callable[[list[int], list[Decoded]], None] | None = None,
           skip: set[int] | frozenset = frozenset(), stats: DecodeStats | None = None) -> list[Decoded | None]:
    """Continue every prompt; greedy when ``temperature == 0``.

    ``on_batch(indices, results)`` is called after each batch (for incremental saving); prompts whose
    index is in ``skip`` are not decoded (their slot in the result is None): a resumed run passes the
    indices it already has. ``min_new_tokens`` is the least room a prompt must leave; a longer prompt is
    left-truncated to ``context - min_new_tokens`` tokens."""
    import time

    from tqdm.auto import tqdm

    stats = stats if stats is not None else DecodeStats()
    device = next(model.parameters()).device
    ctx = context_length(model)
    tok.padding_side = "left"
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if ctx is not None:
        for i, row in enumerate(ids):
            if len(row) > ctx - min_new_tokens:
                ids[i] = row[len(row) - (ctx - min_new_tokens):]
                stats.truncated_prompts += 1
    todo = sorted((i for i in range(len(prompts)) if i not in skip), key=lambda i: -len(ids[i]))
    out: list[Decoded | None] = [None] * len(prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    bar = tqdm(total=len(todo), desc=desc, unit="prompt", dynamic_ncols=True)
    t0 = time.perf_counter()
    for s in range(0, len(todo), batch_size):
        idx = todo[s:s + batch_size]
        longest = max(len(ids[i]) for i in idx)
        budget = max_new_tokens if ctx is None else min(max_new_tokens, ctx - longest)
        if budget < max_new_tokens:
            stats.clamped += len(idx)
            stats.clamped_to.append(budget)
        input_ids = torch.full((len(idx), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for r, i in enumerate(idx):
            input_ids[r, longest - len(ids[i]):] = torch.tensor(ids[i])
            mask[r, longest - len(ids[i]):] = 1
        torch.manual_seed(seed + s)
        sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k or None}
                    if temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max(budget, 1), pad_token_id=pad, eos_token_id=tok.eos_token_id,
                             use_cache=True, **sampling)
        results = []
        for r, i in enumerate(idx):
            row = gen[r, longest:].tolist()
            n = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
            text = tok.decode(row[:n], skip_special_tokens=True)
            reason = "eos" if n < len(row) else "length"
            cut = stop_cut(text, stop)
            if cut is not None:
                text, reason = text[:cut], "stop"
            out[i] = Decoded(text, n, reason, len(ids[i]))
            stats.new_tokens += n
            results.append(out[i])
        stats.prompts += len(idx)
        if on_batch:
            on_batch(idx, results)
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{stats.new_tokens / max(time.perf_counter() - t0, 1e-9):.1f}")
    bar.close()
    stats.seconds += time.perf_counter() - t0
    return out

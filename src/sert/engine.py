"""One batched decoding engine for everything that writes text with a local model: evaluation
(greedy on the test split), the local teacher and the local judge.

``decode(model, tok, prompts, ...)`` sorts prompts by length, decodes ``batch_size`` at a time and
returns one ``Decoded`` per prompt in the input order. Each batch runs through our own KV-cache loop
(``decode_batch``): the left-padded prompts go through the model once, then one token per step for the
rows still alive; a row that finished (EOS, a stop string, its budget) leaves the batch and its KV-cache
rows are dropped, so steps get cheaper as rows finish and the batch ends with its last row. Greedy
outputs equal HF ``generate``'s (tested); ``experiments/bench_eval.py`` compares the speed.

Context limits are handled here, once for every caller: each row's new-token budget is clamped to
the room the model's context leaves after its prompt, and a prompt that alone fills the context is
left-truncated (its end, where the model continues, is kept). Both are counted in ``DecodeStats`` so a
step can warn once and record them in its summary.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicLayer

from sert.warping import warp

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    text: str  # the continuation (special tokens removed), cut before a stop string
    num_tokens: int  # new tokens generated (EOS not counted)
    finish_reason: str  # eos | stop | length
    prompt_tokens: int  # prompt tokens the model saw (after any truncation)
    budget: int = 0  # the new-token budget this row had (max_new_tokens, or less where the context clamped it)
    truncated: bool = False  # the prompt was left-truncated to fit the context


@dataclass
class DecodeStats:
    prompts: int = 0
    new_tokens: int = 0
    clamped: int = 0  # rows whose max_new_tokens was cut to the room left in the context
    truncated_prompts: int = 0  # rows whose prompt was left-truncated to fit the context
    seconds: float = 0.0
    clamped_to: list[int] = field(default_factory=list)

    def count(self, d: Decoded, max_new_tokens: int) -> None:
        """Add one decoded row (also used by a resumed step for the rows it read back)."""
        self.prompts += 1
        self.new_tokens += d.num_tokens
        self.truncated_prompts += bool(d.truncated)
        if d.budget < max_new_tokens:
            self.clamped += 1
            self.clamped_to.append(d.budget)

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


def fit_prompts(tok, prompts: Sequence[str], context: int | None, min_new_tokens: int = 1
                ) -> tuple[list[list[int]], set[int]]:
    """Token ids of each prompt, left-truncated where a prompt leaves fewer than ``min_new_tokens`` positions
    of the context (its end, where the model continues, is kept); returns (ids, indices truncated)."""
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    truncated = set()
    if context is not None:
        for i, row in enumerate(ids):
            if len(row) > context - min_new_tokens:
                ids[i] = row[len(row) - (context - min_new_tokens):]
                truncated.add(i)
    return ids, truncated


def new_token_budget(prompt_len: int, max_new_tokens: int, context: int | None) -> int:
    """A row's own budget: ``max_new_tokens``, or the room its prompt leaves in the context (at least 1)."""
    return max(1, max_new_tokens if context is None else min(max_new_tokens, context - prompt_len))


def trim_to_stop(tok, row: list[int], stops: Sequence[str]) -> tuple[int, str]:
    """(tokens kept, text) of a row that hit a stop string: the text cut before the earliest stop string and
    the number of tokens that lie wholly before it."""
    n, text = len(row), tok.decode(row)
    cut = stop_cut(text, stops)
    if cut is None:
        return n, text
    while n > 0 and len(tok.decode(row[:n])) > cut:
        n -= 1
    return n, text[:cut]


def path_record(tok, row: list[int], lps: list[float], reason: str, first: int, rank: int | None, sample: int,
                stops: Sequence[str]) -> dict:
    """One latent path as ``sert.sampling`` records it, for the ct2 and vLLM samplers: the text cut before a stop
    string (``reason == "stop"``), ppl over the kept tokens' log-probs ``lps`` (the first token's included)."""
    n, text = trim_to_stop(tok, row, stops) if reason == "stop" else (len(row), tok.decode(row))
    return {"first_token": tok.decode([first]), "first_token_rank": rank, "sample": sample, "text": text.strip(),
            "token_ids": row[:n], "num_tokens": n, "ppl": math.exp(-sum(lps[:n]) / n) if n else None,
            "finish_reason": reason}


def stop_cut(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text`` (None if none occurs)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


Batch = Callable[[int, list[list[int]], list[int]], list[tuple[str, int, str]]]
"""Decodes one batch: (its start in the sorted order, prompt ids, new-token budgets) -> per row (text, new
tokens, finish reason)."""


def decode_batches(tok, prompts: Sequence[str], context: int | None, batch: Batch, *, max_new_tokens: int,
                   batch_size: int, min_new_tokens: int, desc: str,
                   on_batch: Callable[[list[int], list[Decoded]], None] | None, skip: set[int] | frozenset,
                   stats: DecodeStats) -> list[Decoded | None]:
    """The outer loop of ``decode`` and ``sert.ct2.decode_ct2``: fit the prompts to the context, sort them
    longest first, hand ``batch_size`` at a time to ``batch`` with each row's own budget (positions are per
    row, so a short prompt next to a long one keeps its room), and count, report and return the results."""
    from tqdm.auto import tqdm

    ids, truncated = fit_prompts(tok, prompts, context, min_new_tokens)
    todo = sorted((i for i in range(len(prompts)) if i not in skip), key=lambda i: -len(ids[i]))
    out: list[Decoded | None] = [None] * len(prompts)
    bar = tqdm(total=len(todo), desc=desc, unit="prompt", dynamic_ncols=True, mininterval=2.0)
    # a batch function that takes a 4th argument reports rows as they finish, so the bar moves within a batch
    import inspect

    per_row = len(inspect.signature(batch).parameters) >= 4
    reported = [0]

    def row_done(n: int) -> None:
        reported[0] += n
        bar.update(n)

    t0 = time.perf_counter()
    for s in range(0, len(todo), batch_size):
        idx = todo[s:s + batch_size]
        budgets = [new_token_budget(len(ids[i]), max_new_tokens, context) for i in idx]
        reported[0] = 0
        rows = (batch(s, [ids[i] for i in idx], budgets, row_done) if per_row
                else batch(s, [ids[i] for i in idx], budgets))
        for i, budget, (text, n, reason) in zip(idx, budgets, rows):
            out[i] = Decoded(text, n, reason, len(ids[i]), budget, i in truncated)
            stats.count(out[i], max_new_tokens)
        if on_batch:
            on_batch(idx, [out[i] for i in idx])
        bar.update(len(idx) - reported[0])
        bar.set_postfix(tok_s=f"{stats.new_tokens / max(time.perf_counter() - t0, 1e-9):.1f}")
    bar.close()
    stats.seconds += time.perf_counter() - t0
    return out


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a buffer sized for the whole generation: each step
    writes its position in place instead of ``torch.cat``-ing a copy of the whole cache."""

    def preallocate(self, capacity: int) -> None:
        k, v = self.keys, self.values
        self.n = k.shape[-2]
        self.kbuf = k.new_empty(*k.shape[:2], capacity, k.shape[-1])
        self.vbuf = v.new_empty(*v.shape[:2], capacity, v.shape[-1])
        self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n] = k, v
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        m = key_states.shape[-2]
        self.kbuf[:, :, self.n:self.n + m] = key_states
        self.vbuf[:, :, self.n:self.n + m] = value_states
        self.n += m
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices``, copying only the filled positions (not the unused capacity)."""
        for name in ("kbuf", "vbuf"):
            buf = getattr(self, name)
            new = buf.new_empty(len(indices), *buf.shape[1:])
            new[:, :, :self.n] = buf[indices, :, :self.n]
            setattr(self, name, new)
        self._views()


def preallocate(cache, capacity: int) -> bool:
    """Switch a freshly filled DynamicCache to preallocated layers (False if it has other layer kinds)."""
    if not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        return False
    for layer in cache.layers:
        layer.__class__ = PreallocatedLayer
        layer.preallocate(capacity)
    return True


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
    left-truncated to ``context - min_new_tokens`` tokens. Sampling (``temperature > 0``) draws from a
    generator seeded with ``seed`` + the batch's start, so it is reproducible for a fixed ``batch_size``."""

    def batch(start: int, rows: list[list[int]], budgets: list[int],
              row_done: Callable[[int], None] | None = None) -> list[tuple[str, int, str]]:
        pick = _picker(temperature, top_p, top_k, seed + start)
        results = []
        for toks, reason in decode_batch(model, tok, rows, budgets, pick, stop, on_done=row_done):
            text = tok.decode(toks, skip_special_tokens=True)
            cut = stop_cut(text, stop) if reason == "stop" else None
            results.append((text[:cut] if cut is not None else text, len(toks), reason))
        return results

    return decode_batches(tok, prompts, context_length(model), batch, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, min_new_tokens=min_new_tokens, desc=desc, on_batch=on_batch,
                          skip=skip, stats=stats if stats is not None else DecodeStats())


def _picker(temperature: float, top_p: float, top_k: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Next-token choice from (rows, vocab) logits: argmax, or a seeded draw after top-k/top-p warping."""
    if temperature <= 0:
        return lambda logits: logits.argmax(-1)
    gen = torch.Generator().manual_seed(seed)
    return lambda logits: torch.multinomial(warp(logits.float().cpu(), top_k, top_p, temperature), 1,
                                            generator=gen).squeeze(1).to(logits.device)


@torch.no_grad()
def decode_batch(model, tok, rows: list[list[int]], budgets: list[int], pick: Callable[[torch.Tensor], torch.Tensor],
                 stop: Sequence[str] = (), on_done: Callable[[int], None] | None = None) -> list[tuple[list[int], str]]:
    """New tokens (EOS excluded, at most ``budgets[r]``) and finish reason (eos | stop | length) per
    prompt of one batch.

    The left-padded prompts go through the model once; then one token per step for the rows still
    alive, the KV cache and the mask preallocated for the longest budget and written in place. A finished row
    leaves the batch at once (its KV-cache rows are dropped with ``batch_select_indices``), so the steps get
    cheaper as rows finish and the loop ends with the last one. Stop strings are checked on the decoded last
    few tokens of each row (cheap). ``on_done(n)`` (a progress bar) hears how many rows finished at each step."""
    device = next(model.parameters()).device
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, longest - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[r, longest - len(row):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, next_pos = out.cache, pos[:, -1:] + 1
    width, capacity = longest, longest + max(budgets)
    preallocate(cache, capacity)  # the KV cache and the mask are written in place, not grown by torch.cat
    mask = torch.cat([mask, mask.new_zeros(len(rows), capacity - longest)], dim=1)
    tokens = pick(out.logits[:, -1])
    new: list[list[int]] = [[] for _ in rows]
    reason = ["length"] * len(rows)
    alive = list(range(len(rows)))  # batch rows still decoding, in cache order
    tail = max((len(s) for s in stop if s), default=0) + 8  # tokens decoded for the stop-string check
    while True:
        keep = []
        for j, t in enumerate(tokens.tolist()):
            r = alive[j]
            if t == eos:
                reason[r] = "eos"
                continue
            new[r].append(t)
            if stop and stop_cut(tok.decode(new[r][-tail:]), stop) is not None:
                reason[r] = "stop"
            elif len(new[r]) < budgets[r]:
                keep.append(j)
        if on_done is not None and len(keep) < len(alive):
            on_done(len(alive) - len(keep))
        if not keep:
            break
        if len(keep) < len(alive):  # finished rows leave the batch and the KV cache
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            alive, mask, next_pos, tokens = [alive[j] for j in keep], mask[sel], next_pos[sel], tokens[sel]
        mask[:, width] = 1
        width += 1
        out = model(input_ids=tokens[:, None], attention_mask=mask[:, :width], position_ids=next_pos, cache=cache,
                    use_cache=True)
        cache, next_pos = out.cache, next_pos + 1
        tokens = pick(out.logits[:, -1])
    return [(new[r], reason[r]) for r in range(len(rows))]

"""The batched path sampler of ``generation.backend=hf`` (paper II-A1, III-A; the step is ``sert.generate``).

For every question the prompt ``Question: q Answer:`` is encoded ONCE; its last-position logits give
the first-step distribution, whose top-``first_k`` tokens start the paths. The prompt's KV cache is
then repeated ``first_k * samples_per_token`` times and all paths of a batch of questions are sampled
together in one loop (top-k 10 / top-p 0.95 warping, temperature 1). The log-probability of every
sampled token under the model's RAW distribution (log_softmax of the unwarped, temperature-1 logits)
is accumulated in the same loop, so ``ppl`` needs no second forward pass.

Randomness is per question: a ``torch.Generator`` seeded from (seed, qid) draws one uniform per path
per step and tokens are drawn by inverse CDF, so a question's samples do not depend on which other
questions share its batch (``batch_size`` is not part of the cache key). Left padding only changes
logits at float-rounding level, which can in principle flip a sample whose uniform lands within ~1e-6
of a CDF boundary; we accept that.

Speed (CPU): the prompt's KV cache lives in buffers preallocated for the whole generation (no per-step
``torch.cat``), finished rows leave the cache only once they are more than 1/16 of the batch, the warp
takes ``torch.topk`` first (no full-vocabulary sort), the sampled token's log-prob is ``logit -
logsumexp`` and stop strings are checked only for rows whose newest token could complete one.
Context: each question's new-token budget is clamped to the room its prompt leaves in the model's
context; a prompt that alone fills it is refused (``PromptTooLong``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sert import faults
from sert.artifacts import stable_hash
from sert.config.steps import GenerationConfig
from sert.engine import DecodeStats, context_length, preallocate, stop_cut, trim_to_stop

log = logging.getLogger(__name__)
_DEFAULT = GenerationConfig()  # the paper's settings are declared once, there


@dataclass
class SamplingSpec:
    """What the samplers of every backend read (``sert.generate.spec_from_cfg`` builds it from the config)."""

    mode: str = _DEFAULT.mode.value  # topk_alternatives | raw
    first_k: int = _DEFAULT.first_k
    samples_per_token: int = _DEFAULT.samples_per_token
    top_k: int = _DEFAULT.top_k
    top_p: float = _DEFAULT.top_p
    temperature: float = _DEFAULT.temperature
    max_new_tokens: int = _DEFAULT.max_new_tokens
    stop: Sequence[str] = tuple(_DEFAULT.stop)

    @property
    def paths_per_question(self) -> int:
        return self.first_k * self.samples_per_token


# ----------------------------------------------------------------------------- sampling primitives
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


def question_generator(seed: int, qid: str) -> torch.Generator:
    return torch.Generator().manual_seed(int(stable_hash([seed, qid]), 16) % (2**63))


class PromptTooLong(ValueError):
    pass


def new_token_budgets(lengths: Sequence[int], qids: Sequence[str], max_new_tokens: int, context: int | None) -> list[int]:
    """Per question, the new tokens the context leaves room for: ``max_new_tokens`` clamped to
    ``context - prompt length``. A prompt that leaves no room at all is refused (cutting the question
    would change what is asked)."""
    if context is None:
        return [max_new_tokens] * len(lengths)
    for q, n in zip(qids, lengths):
        if n >= context:
            raise PromptTooLong(f"question {q!r}: its generation prompt has {n} tokens but the model's context is "
                                f"{context} positions, no room for a single new token; shorten or drop it")
    return [min(max_new_tokens, context - n) for n in lengths]


_STOP_TOKENS: dict[tuple, torch.Tensor] = {}


def _stop_candidates(tok, stops: Sequence[str]) -> torch.Tensor:
    """(vocab,) bool: tokens whose text could complete a stop string (contain the last character of one,
    or decode to nothing / a partial character). Only rows that just sampled such a token are decoded."""
    key = (id(tok), getattr(tok, "name_or_path", ""), len(tok), tuple(stops))
    if key not in _STOP_TOKENS:
        lasts = {s[-1] for s in stops if s}
        texts = tok.batch_decode([[i] for i in range(len(tok))])
        _STOP_TOKENS[key] = torch.tensor([not t.strip() or "\ufffd" in t or any(c in t for c in lasts) for t in texts])
    return _STOP_TOKENS[key]


# ----------------------------------------------------------------------------- the batched sampler
@torch.no_grad()
def sample_batch(model, tok, prompts: list[str], qids: list[str], spec: SamplingSpec, seed: int,
                 stats: DecodeStats | None = None) -> list[list[dict]]:
    """All paths of a batch of questions. Returns per question a list of path dicts (first_token,
    first_token_rank, sample, text, token_ids, num_tokens, ppl, finish_reason).

    ``stats`` (optional) counts rows whose new-token budget was clamped to the model's context."""
    device = next(model.parameters()).device
    B, K, S, P = len(prompts), spec.first_k, spec.samples_per_token, spec.paths_per_question
    R = B * P
    gens = [question_generator(seed, q) for q in qids]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    budgets = new_token_budgets(enc.attention_mask.sum(1).tolist(), qids, spec.max_new_tokens, context_length(model))
    if stats is not None:
        stats.prompts += B
        stats.clamped += P * sum(b < spec.max_new_tokens for b in budgets)
        stats.clamped_to += [b for b in budgets if b < spec.max_new_tokens]
    steps = max(budgets)
    budget = torch.tensor(budgets, device=device).repeat_interleave(P)  # (R,)
    prompt_len = enc.input_ids.shape[1]
    mask = torch.zeros(B, prompt_len + steps, dtype=enc.attention_mask.dtype, device=device)
    mask[:, :prompt_len] = enc.attention_mask
    pos = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=pos, use_cache=True,
                logits_to_keep=1)
    first_logits = out.logits[:, -1].float()  # (B, V); log-probs always in fp32
    first_logp = first_logits.log_softmax(-1)

    # first tokens: top-k alternatives (rank r repeated S times) or plain warped sampling
    if spec.mode == "topk_alternatives":
        ranks = torch.arange(K).repeat_interleave(S)  # (P,)
        first = torch.topk(first_logits, K, dim=-1).indices[:, ranks]  # (B, P)
    elif spec.mode == "raw":
        ranks = None
        u = torch.stack([torch.rand(P, generator=g) for g in gens]).to(device)  # (B, P)
        first = sample_tokens(first_logits.repeat_interleave(P, 0), spec.top_k, spec.top_p, spec.temperature,
                              u.reshape(-1)).reshape(B, P)
    else:
        raise ValueError(f"generation.mode must be topk_alternatives or raw, got {spec.mode!r}")

    cache = out.cache
    cache.batch_repeat_interleave(P)  # the prompt is encoded once, its cache shared by P paths
    preallocate(cache, prompt_len + steps)
    mask = mask.repeat_interleave(P, 0)
    next_pos = pos[:, -1].repeat_interleave(P) + 1  # (R,)
    tokens = first.reshape(-1)  # (R,)
    logps = [first_logp.repeat_interleave(P, 0).gather(1, tokens[:, None]).squeeze(1)]
    ids = [tokens]
    eos = tok.eos_token_id
    done = (tokens == eos) | (budget <= 1)
    finish = ["eos" if t == eos else "" for t in tokens.tolist()]
    stops = [s for s in spec.stop if s]
    stop_tokens = _stop_candidates(tok, stops).to(device) if stops else None
    tail = max((len(s) for s in stops), default=0) + 8  # tokens decoded for the stop-string check
    _check_stops(tok, ids, torch.arange(R, device=device), done, finish, stops, tail, stop_tokens)
    rows = torch.arange(R, device=device)  # rows still in the batch, in cache order
    for t in range(1, steps):
        if bool(done.all()):
            break
        finished = done[rows]
        if 16 * int(finished.sum()) > len(rows):  # compact now and then: finished rows leave the KV cache
            keep = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, mask, next_pos = rows[keep], mask[keep], next_pos[keep]
        width = prompt_len + t
        mask[:, width - 1] = 1
        out = model(input_ids=tokens[rows][:, None], attention_mask=mask[:, :width], position_ids=next_pos[:, None],
                    cache=cache, use_cache=True)
        cache, next_pos = out.cache, next_pos + 1
        logits = out.logits[:, -1]  # the model's dtype: top-k needs no fp32 copy of (rows, V)
        u = torch.stack([torch.rand(P, generator=g) for g in gens]).reshape(-1).to(device)  # one per path, always
        step_tok = sample_tokens(logits, spec.top_k, spec.top_p, spec.temperature, u[rows])
        # raw log p in fp32 (logsumexp over the whole vocabulary)
        step_lp = logits.gather(1, step_tok[:, None]).squeeze(1).float() - logits.float().logsumexp(-1)
        live = ~done[rows]
        tokens = torch.full((R,), eos, dtype=torch.long, device=device)
        tokens[rows[live]] = step_tok[live]
        lp = torch.zeros(R, device=device)
        lp[rows[live]] = step_lp[live]
        ids.append(tokens), logps.append(lp)
        faults.reached("generate.step")
        newly_eos = torch.zeros(R, dtype=torch.bool, device=device)
        newly_eos[rows[live]] = step_tok[live] == eos
        for r in newly_eos.nonzero().squeeze(1).tolist():
            finish[r] = "eos"
        live_rows = rows[live]
        done = done | newly_eos
        _check_stops(tok, ids, live_rows, done, finish, stops, tail, stop_tokens)
        done = done | (budget <= t + 1)  # the row's context room is used up: finish_reason "length"

    return _assemble(tok, torch.stack(ids, 1).cpu(), torch.stack(logps, 1).cpu(), finish, ranks, B, P, S, spec.stop)


def _check_stops(tok, ids: list[torch.Tensor], rows: torch.Tensor, done: torch.Tensor, finish: list[str],
                 stops: Sequence[str], tail: int, stop_tokens: torch.Tensor | None) -> None:
    """Mark rows whose recent text contains a stop string (decoding only the last ``tail`` tokens, and
    only for rows whose newest token could complete one)."""
    if not stops:
        return
    rows = rows[stop_tokens[ids[-1][rows]] & ~done[rows]]
    if not len(rows):
        return
    recent = torch.stack(ids[-tail:], 1)[rows].cpu()
    for r, row in zip(rows.tolist(), recent.tolist()):
        if stop_cut(tok.decode(row), stops) is not None:
            done[r] = True
            finish[r] = "stop"


def _assemble(tok, ids: torch.Tensor, logps: torch.Tensor, finish: list[str], ranks, B: int, P: int, S: int,
              stops: Sequence[str]) -> list[list[dict]]:
    """Turn the sampled (rows, steps) tokens into path dicts: cut at EOS / stop string, score ppl."""
    eos = tok.eos_token_id
    results: list[list[dict]] = [[] for _ in range(B)]
    for r in range(B * P):
        row = ids[r].tolist()
        n = row.index(eos) if eos in row else len(row)  # EOS itself is not part of the completion
        reason = finish[r] or "length"
        n, text = trim_to_stop(tok, row[:n], stops) if reason == "stop" else (n, tok.decode(row[:n]))
        lp = logps[r, :n]
        ppl = float(torch.exp(-lp.mean())) if n else None
        q, p = divmod(r, P)
        results[q].append({
            "first_token": tok.decode([row[0]]),
            "first_token_rank": None if ranks is None else int(ranks[p]),
            "sample": p if ranks is None else p % S,
            "text": text.strip(),
            "token_ids": row[:n],
            "num_tokens": n,
            "ppl": ppl,
            "finish_reason": reason,
        })
    return results


def check_context(model, tok, items: list[tuple[str, str]], spec: SamplingSpec) -> int:
    """Before any sampling: refuse a prompt that alone fills the model's context (``PromptTooLong``) and
    warn once about the paths whose ``max_new_tokens`` the context clamps. Returns those paths' count."""
    qids = [q for q, _ in items]
    lengths = [len(tok(p)["input_ids"]) for _, p in items]
    budgets = new_token_budgets(lengths, qids, spec.max_new_tokens, context_length(model))
    short = [b for b in budgets if b < spec.max_new_tokens]
    if short:
        log.warning("generation.max_new_tokens=%d does not fit the model's %d-position context after the prompt "
                    "for %d of %d questions (%d paths): they stop at the context end (finish_reason length) after "
                    "%d-%d new tokens", spec.max_new_tokens, context_length(model), len(short), len(items),
                    len(short) * spec.paths_per_question, min(short), max(short))
    return len(short) * spec.paths_per_question


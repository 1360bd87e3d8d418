"""Option-likelihood accuracy (a labelled addition, not one of the paper's metrics): for each question,
the log-likelihood of every answer option written after the question, the argmax being the model's answer — as
lm-evaluation-harness scores multiple choice (its ``acc``: the sum of the option's token log-probabilities, no
length normalisation). It shows what a model knows when its output format (a missing or cut answer sentence)
hides it from the strict and lenient Acc.

Context: the label-only prompt ``Question: {q} Answer:`` (``prompts.label_only`` up to the answer), for every
model and format, so all rows of a table are scored alike. Options: StrategyQA ``Yes`` / ``No``
(``prompts.answer_binary``), CommonsenseQA ``(A) <text>`` ... ``(E) <text>`` (``prompts.answer_choice``), each
preceded by the space that separates it from "Answer:". Ties go to the first option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sert.data import Record
from sert.prompts import Prompts

BINARY = ("Yes", "No")


def answer_options(prompts: Prompts, rec: Record) -> list[tuple[str, str]]:
    """(label, continuation) of every option: ``[("Yes", " Yes"), ("No", " No")]`` for a yes/no question,
    ``[("A", " (A) ignore"), ...]`` for multiple choice."""
    if rec.choices:
        return [(c.label, " " + prompts.answer_choice.format(label=c.label, text=c.text)) for c in rec.choices]
    return [(lab, " " + prompts.answer_binary.format(label=lab, text=lab)) for lab in BINARY]


def context(prompts: Prompts, rec: Record) -> str:
    """The text the options follow: the label-only training prompt, ``Question: {q} Answer:``."""
    return prompts.training_pair("label_only", rec, "")[0]


def continuation_logprobs(model, tok, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Sum of the log-probabilities of each continuation's tokens after its context (context and continuation
    tokenised separately and concatenated, as lm-evaluation-harness does), in batches of right-padded rows."""
    encoded = [(tok(c, add_special_tokens=False)["input_ids"], tok(x, add_special_tokens=False)["input_ids"])
               for c, x in pairs]
    return [sum(lps) for lps in token_logprobs(model, tok, encoded, batch_size)]


@torch.no_grad()
def token_logprobs(model, tok, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 16
                   ) -> list[list[float]]:
    """The fp32 log-probability of every continuation token after its context (token ids), teacher-forced, in
    batches of right-padded rows."""
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    out: list[list[float]] = []
    was_training = model.training
    model.eval()
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        width = max(len(c) + len(x) for c, x in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (c, x) in enumerate(chunk):
            ids[i, :len(c) + len(x)] = torch.tensor([*c, *x])
            mask[i, :len(c) + len(x)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for i, (c, x) in enumerate(chunk):
            pos = torch.arange(len(c) - 1, len(c) + len(x) - 1, device=device)  # the positions predicting x
            logp = logits[i, pos].float().log_softmax(-1)
            out.append(logp.gather(1, torch.tensor(x, device=device)[:, None]).squeeze(1).tolist())
    model.train(was_training)
    return out


def path_perplexities(model, tok, prompts: Sequence[str], paths: Sequence[Sequence[int]], batch_size: int = 16
                      ) -> list[float | None]:
    """Teacher-forced perplexity of each sampled path (its token ids) after its prompt, the prompt encoded as the
    sampler encodes it (``tok(prompt)``): what ``sert.sampling`` records under the model that generated the path,
    computed under ``model`` instead. None for an empty path."""
    import math

    pairs = [(tok(p)["input_ids"], list(ids)) for p, ids in zip(prompts, paths)]
    keep = [i for i, (_, ids) in enumerate(pairs) if ids]
    lps = token_logprobs(model, tok, [pairs[i] for i in keep], batch_size)
    out: list[float | None] = [None] * len(pairs)
    for i, lp in zip(keep, lps):
        out[i] = math.exp(-sum(lp) / len(lp))
    return out


def option_predictions(model, tok, prompts: Prompts, records: Sequence[Record], batch_size: int = 16
                       ) -> list[dict]:
    """Per record: ``{"option_pred": label with the highest log-likelihood, "option_logprobs": {label: value}}``."""
    flat = [(rec_i, label, (context(prompts, rec), cont))
            for rec_i, rec in enumerate(records) for label, cont in answer_options(prompts, rec)]
    scores = continuation_logprobs(model, tok, [pair for _, _, pair in flat], batch_size=batch_size)
    per: list[dict[str, float]] = [{} for _ in records]
    for (rec_i, label, _), value in zip(flat, scores):
        per[rec_i][label] = round(value, 4)
    return [{"option_pred": max(lp, key=lp.get), "option_logprobs": lp} for lp in per]

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


@torch.no_grad()
def continuation_logprobs(model, tok, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Sum of the log-probabilities of each continuation's tokens after its context (context and continuation
    tokenised separately and concatenated, as lm-evaluation-harness does), in batches of right-padded rows."""
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    encoded = [(tok(c, add_special_tokens=False)["input_ids"], tok(x, add_special_tokens=False)["input_ids"])
               for c, x in pairs]
    out: list[float] = []
    was_training = model.training
    model.eval()
    for s in range(0, len(encoded), batch_size):
        chunk = encoded[s:s + batch_size]
        width = max(len(c) + len(x) for c, x in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (c, x) in enumerate(chunk):
            ids[i, :len(c) + len(x)] = torch.tensor(c + x)
            mask[i, :len(c) + len(x)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for i, (c, x) in enumerate(chunk):
            pos = torch.arange(len(c) - 1, len(c) + len(x) - 1)  # the positions that predict the continuation
            out.append(float(logp[i, pos.to(device), torch.tensor(x, device=device)].sum()))
    model.train(was_training)
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

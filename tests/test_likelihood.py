"""Option-likelihood accuracy (sert.likelihood): the options, and each option's summed log-probability after the
question, batched and right-padded, against a one-sequence forward computed by hand."""

from __future__ import annotations

import pytest
import torch

from sert.data import make_record
from sert.likelihood import answer_options, context, continuation_logprobs, option_predictions
from sert.models import load_model
from sert.prompts import Prompts

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 256, "seed": 0}
CSQA = make_record({"question": "Where do you keep milk cold? Answer choices: (A) oven, (B) fridge.", "answer": "B"}, "q0")
SQA = make_record({"question": "Is water wet?", "answer": "Yes"}, "q1")


def test_options_and_context():
    p = Prompts()
    assert answer_options(p, SQA) == [("Yes", " Yes"), ("No", " No")]
    assert answer_options(p, CSQA) == [("A", " (A) oven"), ("B", " (B) fridge")]
    assert context(p, SQA) == "Question: Is water wet? Answer:"


def _by_hand(model, tok, ctx: str, cont: str) -> float:
    c = tok(ctx, add_special_tokens=False)["input_ids"]
    x = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([c + x])).logits.float()[0], dim=-1)
    return sum(float(logp[len(c) - 1 + i, t]) for i, t in enumerate(x))


def test_logprobs_match_one_sequence_forward_and_argmax_is_the_prediction():
    model, tok = load_model("tiny", random_init=TINY, device="cpu")
    model.train()  # dropout on: continuation_logprobs must score in eval mode
    p = Prompts()
    pairs = [(context(p, r), cont) for r in (SQA, CSQA) for _, cont in answer_options(p, r)]
    batched = continuation_logprobs(model, tok, pairs, batch_size=3)  # rows of different lengths share a batch
    model.eval()
    assert batched == [pytest.approx(_by_hand(model, tok, c, x), abs=1e-4) for c, x in pairs]
    model.train()
    picks = option_predictions(model, tok, p, [SQA, CSQA], batch_size=4)
    for pick, rec in zip(picks, (SQA, CSQA)):
        labels = [lab for lab, _ in answer_options(p, rec)]
        assert list(pick["option_logprobs"]) == labels
        assert pick["option_pred"] == max(labels, key=lambda lab: pick["option_logprobs"][lab])
    assert model.training  # scored in eval mode (no dropout), the caller's mode restored


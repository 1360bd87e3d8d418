"""``distill`` step (paper II-C): fine-tune on the teacher's chain-of-thought.

Reads the ``teacher`` step's ``teacher.jsonl`` (qid, question, answer, reasoning, correct) and trains on
``Question: {q}. Answer: Let's think step by step. {R} So the answer is {a}.`` (``prompts.distill``).
Rows whose teacher answer is wrong (``correct: false``) or whose reasoning is empty are left out, as in
the reasoning-teacher recipe the paper follows ([17]). The starting weights are ``stage.distill_init``:
``base`` (RD, ``stage=rd``) or ``sert`` (SERT+RD, ``stage=sert_rd``: the ``self_train`` checkpoint).
"""

from __future__ import annotations

import logging

from sert.artifacts import read_jsonl
from sert.pipeline import Context, StepOutput
from sert.train_steps import records_from_rows, train_step
from sert.training_data import Example

log = logging.getLogger(__name__)


def run(ctx: Context) -> StepOutput:
    teacher = ctx.require("teacher")
    path = teacher.path("teacher.jsonl")
    pairs = records_from_rows(read_jsonl(path), path)
    kept = [(rec, row) for rec, row in pairs if row.get("correct") is not False and (row.get("reasoning") or "").strip()]
    log.info("distill: %d of %d teacher rows kept (correct, non-empty reasoning)", len(kept), len(pairs))
    examples = [Example(*ctx.prompts.training_pair("distill", rec, row["reasoning"])) for rec, row in kept]
    init_from = str(getattr(ctx.cfg.stage.distill_init, "value", ctx.cfg.stage.distill_init))  # TODO(issue 14): typed stage
    init = ctx.require("self_train") if init_from == "sert" else None
    return train_step(ctx, "distill", "distill", examples, [teacher], init=init)

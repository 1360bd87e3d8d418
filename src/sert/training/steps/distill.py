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
from sert.schema import DistillInit
from sert.training.data import Example
from sert.training.steps import TrainingData, records_from_rows, train_step

log = logging.getLogger(__name__)


def source(ctx: Context) -> TrainingData:
    """The teacher's rationales (correct answers only), into the base model or the SERT checkpoint."""
    teacher = ctx.require("teacher")
    path = teacher.path("teacher.jsonl")
    pairs = records_from_rows(read_jsonl(path), path)
    kept = [(rec, row) for rec, row in pairs if row.get("correct") is not False and (row.get("reasoning") or "").strip()]
    log.info("distill: %d of %d teacher rows kept (correct, non-empty reasoning)", len(kept), len(pairs))
    examples = [Example(*ctx.prompts.training_pair("distill", rec, row["reasoning"])) for rec, row in kept]
    init = ctx.require("self_train") if DistillInit(ctx.cfg.stage.distill_init) is DistillInit.sert else None
    return TrainingData("distill", examples, [teacher], init=init)


def run(ctx: Context) -> StepOutput:
    return train_step(ctx, "distill", source)

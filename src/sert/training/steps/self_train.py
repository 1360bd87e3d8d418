"""``self_train`` step (paper II-B): fine-tune the base model on its own filtered latent reasoning paths.

Reads the ``filter`` step's ``selected.jsonl`` (qid, question, answer, text = the reasoning path r) and
trains on ``Question: {q}. Answer: {r} So the answer is {a}.`` (``prompts.self_train``).
"""

from __future__ import annotations

from sert.artifacts import read_jsonl
from sert.filters import NoPathsError, explain_no_paths
from sert.pipeline import Context, StepOutput
from sert.training.data import Example
from sert.training.steps import TrainingData, records_from_rows, train_step


def source(ctx: Context) -> TrainingData:
    """The filtered latent reasoning paths."""
    selected = ctx.require("filter")
    path = selected.path("selected.jsonl")
    pairs = records_from_rows(read_jsonl(path), path)
    examples = [Example(*ctx.prompts.training_pair("self_train", rec, row.get("text") or "")) for rec, row in pairs
                if (row.get("text") or "").strip()]
    if not examples:  # stop this job with the funnel, not a traceback from the trainer
        funnel = selected.summary.get("funnel")
        raise NoPathsError(explain_no_paths(funnel, ctx.cfg.filter) if funnel and not pairs else
                           f"no reasoning paths to self-train on: {path} has {len(pairs)} rows"
                           + (", none with text" if pairs else ""))
    return TrainingData("self_train", examples, [selected])


def run(ctx: Context) -> StepOutput:
    return train_step(ctx, "self_train", source)

"""``finetune`` step (paper III-C baseline 1): fine-tune the base model on labels alone,
``Question: {q} Answer: {a}`` (``prompts.label_only``), over the configured training split."""

from __future__ import annotations

from sert.pipeline import Context, StepOutput
from sert.training.data import Example
from sert.training.steps import TrainingData, train_step


def source(ctx: Context) -> TrainingData:
    """The training split's labels, no reasoning."""
    ds = ctx.dataset()
    return TrainingData("label_only", [Example(*ctx.prompts.training_pair("label_only", rec)) for rec in ds.records], [ds])


def run(ctx: Context) -> StepOutput:
    return train_step(ctx, "finetune", source)

"""``finetune`` step (paper III-C baseline 1): fine-tune the base model on labels alone,
``Question: {q} Answer: {a}`` (``prompts.label_only``), over the configured training split."""

from __future__ import annotations

from sert.pipeline import Context, StepOutput
from sert.train_steps import train_step
from sert.training_data import Example


def run(ctx: Context) -> StepOutput:
    ds = ctx.dataset()
    examples = [Example(*ctx.prompts.training_pair("label_only", rec)) for rec in ds.records]
    return train_step(ctx, "finetune", "label_only", examples, [ds])

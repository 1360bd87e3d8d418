"""What the three training steps (``self_train``, ``distill``, ``finetune``) share: building the
trainer from config, the cache key, loading the starting weights, saving ``model/``.

Output of each: the cache entry ``<cache>/<step>/<key>/`` with ``model/`` (a HF checkpoint, loadable
by ``sert.models.load_model``; ``model/training_info.json`` names the output format the evaluate step
prompts with), ``train_data.jsonl`` (the rendered prompt/completion pairs), ``log_history.json``.
The key hashes the trainer config (minus pure logging/saving knobs), the format and its template, the
starting weights (base model identity, or the key of the step that produced them), the training
data's key and the seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate

from sert.artifacts import read_json, write_json, write_jsonl
from sert.data import DataError, Record, make_record
from sert.models import load_model, save_model
from sert.pipeline import Context, Dataset, StepOutput, _plain
from sert.train import NON_RESULT_KNOBS, BaseTrainer
from sert.training_data import Example

log = logging.getLogger(__name__)

TRAINING_STEPS = ("self_train", "distill", "finetune")
INFO = "training_info.json"


def make_trainer(ctx: Context) -> BaseTrainer:
    log.info("Instantiating trainer <%s>", ctx.cfg.trainer._target_)
    return instantiate(_plain(ctx.cfg.trainer))


def trainer_material(ctx: Context) -> dict:
    """The trainer config that determines the trained weights (logging/saving knobs left out)."""
    return {k: v for k, v in _plain(ctx.cfg.trainer).items() if k not in NON_RESULT_KNOBS}


def records_from_rows(rows: list[dict], source: Path) -> list[tuple[Record, dict]]:
    """Upstream rows (qid, question, answer, ...) as Records; a bad row fails naming file and line."""
    out = []
    for i, row in enumerate(rows, 1):
        try:
            out.append((make_record({"question": row.get("question"), "answer": row.get("answer")},
                                    str(row.get("qid", i - 1))), row))
        except DataError as e:
            raise DataError(f"{source}:{i}: {e}") from None
    return out


def training_info(model_dir: Path) -> dict | None:
    path = Path(model_dir) / INFO
    return read_json(path) if path.exists() else None


def train_step(ctx: Context, step: str, fmt: str, examples: list[Example], inputs: list[StepOutput | Dataset],
               init: StepOutput | None = None) -> StepOutput:
    """Train the base model (or ``init``'s checkpoint) on ``examples`` through the stage cache."""
    if not examples:
        raise ValueError(f"{step}: no training examples")
    p = ctx.prompts
    material = {
        "trainer": trainer_material(ctx), "format": fmt, "seed": ctx.cfg.seed,
        "template": {"text": getattr(p, fmt), "answer_choice": p.answer_choice, "answer_binary": p.answer_binary},
        "init": ctx.model_identity() if init is None else {"step": init.step},
    }

    def build(d: Path) -> dict:
        write_jsonl(d / "train_data.jsonl", ({"prompt": e.prompt, "completion": e.completion} for e in examples))
        if init is None:
            model, tok = load_model(**ctx.model_kwargs())
        else:
            model, tok = load_model(str(init.dir / "model"), device=ctx.cfg.device)
        summary = make_trainer(ctx).train(model, tok, examples, d, seed=ctx.cfg.seed)
        save_model(model, tok, d / "model")
        write_json(d / "model" / INFO, {"step": step, "format": fmt, "init": init.step if init else "base"})
        metrics = {f"{step}/train_loss": summary["train_loss"], f"{step}/tokens_per_s": summary["tokens_per_s"]}
        return {**summary, "format": fmt, "init": init.step if init else "base", "metrics": metrics}

    out = ctx.cached(step, material, [*inputs, *([init] if init else [])], build)
    s = out.summary
    print(f"{step}: {s.get('examples')} examples, {s.get('steps')} steps, loss {s.get('train_loss')}, "
          f"{s.get('tokens_per_s')} tok/s -> {out.path('model')}")
    return out

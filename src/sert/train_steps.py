"""What the three training steps (``self_train``, ``distill``, ``finetune``) share: building the
trainer from config, the cache key, loading the starting weights, saving ``model/``.

Output of each: the cache entry ``<cache>/<step>/<key>/`` with ``model/`` (a HF checkpoint, loadable
by ``sert.models.load_model``; ``model/training_info.json`` names the output format the evaluate step
prompts with), ``train_data.jsonl`` (the rendered prompt/completion pairs), ``log_history.json``.
The key hashes the trainer config (minus pure logging/saving knobs; ``precision: auto`` resolved to what
this machine trains in), the format and its template, the starting weights (base model identity, or the
key of the step that produced them), the training data's key and the seed.

Order of the final writes, each resumable: training (checkpoints) -> ``train_summary.json`` -> ``model/``
(written to a temporary directory, ``training_info.json`` included, then renamed) -> checkpoints deleted.
A rerun that finds ``model/`` and the summary does not train again.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from sert import faults
from sert.artifacts import read_json, write_json, write_jsonl
from sert.data import DataError, Record, make_record
from sert.models import load_model, resolve_device, save_model
from sert.pipeline import Context, Dataset, StepOutput
from sert.train import NON_RESULT_KNOBS, BaseTrainer, resolve_precision
from sert.training_data import Example

log = logging.getLogger(__name__)


def _plain(node: Any) -> Any:  # TODO(issue 14, training helper): read the typed TrainerConfig instead
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


TRAINING_STEPS = ("self_train", "distill", "finetune")
INFO = "training_info.json"
SUMMARY = "train_summary.json"


def make_trainer(ctx: Context) -> BaseTrainer:
    log.info("Instantiating trainer <%s>", ctx.cfg.trainer._target_)
    return instantiate(_plain(ctx.cfg.trainer))


def trainer_material(ctx: Context) -> dict:
    """The trainer config that determines the trained weights (logging/saving knobs left out), with
    ``precision`` resolved for the run's device and ``max_grad_norm`` null written as 0 (both: no clipping)."""
    material = {k: v for k, v in _plain(ctx.cfg.trainer).items() if k not in NON_RESULT_KNOBS}
    material["precision"] = resolve_precision(material.get("precision", "auto"), resolve_device(ctx.cfg.device))
    material["max_grad_norm"] = float(material.get("max_grad_norm") or 0.0)
    return material


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


def save_final_model(model, tok, out: Path, info: dict) -> Path:
    """``model/`` with its ``training_info.json``, complete or absent: written beside it, then renamed."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tok, tmp)
    write_json(tmp / INFO, info)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


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
        trainer = make_trainer(ctx)
        if (d / "model" / INFO).exists() and (d / SUMMARY).exists():
            log.info("[%s] model/ was saved by an earlier, interrupted run of this entry: not training again", step)
            summary = read_json(d / SUMMARY)
        else:
            if init is None:
                model, tok = load_model(**ctx.model_kwargs())
            else:
                model, tok = load_model(str(init.dir / "model"), device=ctx.cfg.device)
            summary = trainer.train(model, tok, examples, d, seed=ctx.cfg.seed)
            write_json(d / SUMMARY, summary)
            save_final_model(model, tok, d / "model", {"step": step, "format": fmt, "init": init.step if init else "base"})
            faults.reached("train.model_saved")
        trainer.drop_checkpoints(d)  # only now: the final model is on disk
        metrics = {f"{step}/train_loss": summary["train_loss"], f"{step}/tokens_per_s": summary["tokens_per_s"]}
        return {**summary, "format": fmt, "init": init.step if init else "base", "metrics": metrics}

    out = ctx.cached(step, material, [*inputs, *([init] if init else [])], build)
    s = out.summary
    print(f"{step}: {s.get('examples')} examples, {s.get('steps')} steps, loss {s.get('train_loss')}, "
          f"{s.get('tokens_per_s')} tok/s -> {out.path('model')}")
    return out

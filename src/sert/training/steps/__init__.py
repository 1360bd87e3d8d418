"""The three training steps (``self_train``, ``distill``, ``finetune``) are one step function,
``train_step(ctx, step, source)``, parameterised by where the examples come from: each step's module
(``sert.training.steps.<step>``) holds its ``source(ctx) -> TrainingData`` and ``run(ctx)``.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from sert import distributed, faults
from sert.artifacts import read_json, write_json, write_jsonl
from sert.data import DataError, Record, make_record
from sert.models import load_model, resolve_device, save_model
from sert.pipeline import Context, Dataset, StepOutput
from sert.training.base import BaseTrainer, enum_value, resolve_precision
from sert.training.config import NON_RESULT_KNOBS
from sert.training.data import Example

log = logging.getLogger(__name__)

INFO = "training_info.json"
SUMMARY = "train_summary.json"
# The trainers' targets before they moved into sert.training: cache keys hold the old names, so entries
# trained before the move stay valid (a new trainer's target is used as it is).
KEYED_TARGETS = {"sert.training.sft.HFTrainer": "sert.train.HFTrainer",
                 "sert.training.loop.LoopTrainer": "sert.train.LoopTrainer"}


@dataclass
class TrainingData:
    """What a step trains on: ``examples`` rendered in ``format`` (a ``Prompts`` field), the upstream
    outputs they came from (cache-key inputs) and the starting weights (None: the base model)."""

    format: str
    examples: list[Example]
    inputs: list[StepOutput | Dataset] = field(default_factory=list)
    init: StepOutput | None = None


def make_trainer(ctx: Context) -> BaseTrainer:
    """The configured trainer, built from its typed config (``TrainerConfig`` or a trainer's subclass)."""
    config = OmegaConf.to_object(ctx.cfg.trainer)
    log.info("Instantiating trainer <%s>", config._target_)
    return instantiate({"_target_": config._target_}, config)


def trainer_material(ctx: Context) -> dict:
    """The trainer config that determines the trained weights (logging/saving knobs left out), with
    ``precision`` resolved for the run's device and ``max_grad_norm`` null written as 0 (both: no clipping)."""
    config = OmegaConf.to_object(ctx.cfg.trainer)
    material = {k: enum_value(v) for k, v in vars(config).items() if k not in NON_RESULT_KNOBS}
    material["_target_"] = KEYED_TARGETS.get(material["_target_"], material["_target_"])
    material["precision"] = resolve_precision(material["precision"], resolve_device(ctx.cfg.device))
    material["max_grad_norm"] = float(material["max_grad_norm"] or 0.0)
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


def train_step(ctx: Context, step: str, source: Callable[[Context], TrainingData]) -> StepOutput:
    """Train the base model (or ``data.init``'s checkpoint) on ``source(ctx)`` through the stage cache."""
    data = source(ctx)
    fmt, examples, init = data.format, data.examples, data.init
    if not examples:
        raise ValueError(f"{step}: no training examples")
    p = ctx.prompts
    material = {
        "trainer": trainer_material(ctx), "format": fmt, "seed": ctx.cfg.seed,
        "template": {"text": getattr(p, fmt), "answer_choice": p.answer_choice, "answer_binary": p.answer_binary},
        "init": ctx.model_identity() if init is None else {"step": init.step},
    }
    info = {"step": step, "format": fmt, "init": init.step if init else "base"}

    def build(d: Path) -> dict:
        # every rank of a distributed run trains (sert.distributed); only rank 0 writes files
        main = distributed.is_main()
        trainer = make_trainer(ctx)
        if distributed.active() and not trainer.distributed:
            raise ValueError(f"trainer={trainer.name} trains in one process; under torchrun/accelerate "
                             f"use trainer=sft (transformers' Trainer, DDP)")
        if main:
            write_jsonl(d / "train_data.jsonl", ({"prompt": e.prompt, "completion": e.completion} for e in examples))
        if distributed.broadcast((d / "model" / INFO).exists() and (d / SUMMARY).exists()):
            log.info("[%s] model/ was saved by an earlier, interrupted run of this entry: not training again", step)
            summary = read_json(d / SUMMARY)
        else:
            if init is None:
                model, tok = load_model(**ctx.model_kwargs())
            else:
                model, tok = load_model(str(init.dir / "model"), device=ctx.cfg.device,
                                        attention=ctx.cfg.model.attention)
            summary = trainer.train(model, tok, examples, d, seed=ctx.cfg.seed)
            if main:
                write_json(d / SUMMARY, summary)
                save_final_model(model, tok, d / "model", info)
                faults.reached("train.model_saved")
        if main:
            trainer.drop_checkpoints(d)  # only now: the final model is on disk
        metrics = {f"{step}/train_loss": summary["train_loss"], f"{step}/tokens_per_s": summary["tokens_per_s"]}
        return {**summary, "format": fmt, "init": info["init"], "metrics": metrics}

    out = ctx.cached(step, material, [*data.inputs, *([init] if init else [])], build, all_ranks=True)
    s = out.summary
    print(f"{step}: {s.get('examples')} examples, {s.get('steps')} steps, loss {s.get('train_loss')}, "
          f"{s.get('tokens_per_s')} tok/s -> {out.path('model')}")
    return out

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
from sert.training.config import NON_RESULT_KNOBS, SELECT_KNOBS, Select
from sert.training.data import Example
from sert.training.select import EpochSelector, accuracy_scorer, validation_slice

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
    if material["select"] == Select.last.value:
        for knob in SELECT_KNOBS:
            del material[knob]
    return material


def validation_records(ctx: Context) -> list[Record]:
    """The held-out validation slice of the training split under ``trainer.select=val_acc`` (else none)."""
    t = ctx.cfg.trainer
    if Select(t.select) is Select.last:
        return []
    if str(t.save_strategy) != "epoch":
        raise ValueError(f"trainer.select={Select(t.select).value} validates after each epoch's checkpoint: it needs "
                         f"trainer.save_strategy=epoch, got {t.save_strategy}")
    ds = ctx.dataset()
    if ds.split == ctx.cfg.evaluate.split:
        raise ValueError(f"trainer.select: the validation slice comes from the training split, which here is the "
                         f"evaluate split ({ds.split!r}): it would select on test")
    return validation_slice(ds.records, t.val_fraction, t.val_seed)


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


def longest_target(tok, examples: list[Example]) -> int:
    """Tokens of the longest completion (the text the model learns to write after the prompt), EOS included:
    the evaluate step's new-token budget should not be below it (``sert.evaluate.budget_check``)."""
    return max(len(tok(e.completion, add_special_tokens=False)["input_ids"]) for e in examples) + 1


def train_step(ctx: Context, step: str, source: Callable[[Context], TrainingData]) -> StepOutput:
    """Train the base model (or ``data.init``'s checkpoint) on ``source(ctx)`` through the stage cache."""
    data = source(ctx)
    fmt, examples, init = data.format, data.examples, data.init
    if not examples:
        raise ValueError(f"{step}: no training examples")
    p = ctx.prompts
    val = validation_records(ctx)
    if val:  # the validation questions are not trained on (matched by their prompt in this format)
        held = {p.training_pair(fmt, rec, "")[0] for rec in val}
        examples = [e for e in examples if e.prompt not in held]
        if not examples:
            raise ValueError(f"{step}: no training examples left after holding out {len(val)} validation questions")
    material = {
        "trainer": trainer_material(ctx), "format": fmt, "seed": ctx.cfg.seed,
        "template": {"text": getattr(p, fmt), "answer_choice": p.answer_choice, "answer_binary": p.answer_binary},
        "init": ctx.model_identity() if init is None else {"step": init.step},
    }
    info = {"step": step, "format": fmt, "init": init.step if init else "base"}
    ecfg = ctx.cfg.evaluate
    max_new = ecfg.label_only_max_new_tokens if fmt == "label_only" else ecfg.max_new_tokens
    if val:  # what the selection depends on: the slice and how it is scored (the evaluate step's decoding)
        material["select"] = {"val_qids": [r.qid for r in val], "max_new_tokens": max_new,
                              "fmt": {"rep_n": ecfg.fmt_rep_n, "max_rep": ecfg.fmt_max_rep}}

    def build(d: Path) -> dict:
        # every rank of a distributed run trains (sert.distributed); only rank 0 writes files
        main = distributed.is_main()
        trainer = make_trainer(ctx)
        if distributed.active() and not trainer.distributed:
            raise ValueError(f"trainer={trainer.name} trains in one process; under torchrun/accelerate "
                             f"use trainer=sft (transformers' Trainer, DDP)")
        if val and distributed.active():
            raise ValueError("trainer.select=val_acc validates in one process: under torchrun/accelerate use "
                             "trainer.select=last")
        if val:
            trainer.selector = EpochSelector(d, accuracy_scorer(p, fmt, val, max_new_tokens=max_new,
                                                                batch_size=ecfg.batch_size, rep_n=ecfg.fmt_rep_n,
                                                                max_rep=ecfg.fmt_max_rep), questions=len(val))
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
            if trainer.selector is not None:  # model/ gets the epoch best on validation
                summary["select"] = trainer.selector.finish(model, tok, summary["steps"], summary["epochs"])
                summary["select"]["val_qids"] = [r.qid for r in val]
            summary["longest_target_tokens"] = longest_target(tok, examples)
            if main:
                write_json(d / SUMMARY, summary)
                save_final_model(model, tok, d / "model",
                                 {**info, "longest_target_tokens": summary["longest_target_tokens"]})
                faults.reached("train.model_saved")
        if main:
            trainer.drop_checkpoints(d)  # only now: the final model is on disk
            if not trainer.config.keep_checkpoints:
                shutil.rmtree(d / "select" / "best", ignore_errors=True)  # a copy of model/ by now
        metrics = {f"{step}/train_loss": summary["train_loss"], f"{step}/tokens_per_s": summary["tokens_per_s"]}
        if "select" in summary:
            sel = summary["select"]
            metrics.update({f"{step}/val_acc": sel["best_val_acc"], f"{step}/selected_epoch": sel["best_epoch"]})
        return {**summary, "format": fmt, "init": info["init"], "metrics": metrics}

    out = ctx.cached(step, material, [*data.inputs, *([init] if init else [])], build, all_ranks=True)
    s = out.summary
    print(f"{step}: {s.get('examples')} examples, {s.get('steps')} steps, loss {s.get('train_loss')}, "
          f"{s.get('tokens_per_s')} tok/s -> {out.path('model')}")
    return out

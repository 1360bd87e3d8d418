"""Epoch selection on a held-out validation slice (``trainer.select=val_acc``).

The paper trains 20 epochs (III-A) and evaluates the last. With ``trainer.select=val_acc`` a seeded slice of the
TRAINING split (``trainer.val_fraction`` of its questions, chosen by ``trainer.val_seed``; never the test split)
is left out of training and, after every epoch, answered with greedy decoding in the evaluate step's prompt format
and scored with its strict Acc (``sert.evaluate.generate`` / ``score``: the same prompt, budget and answer
extraction). The epoch best on validation (the earliest of equal scores) becomes ``model/``, the model the test
split is evaluated on; every epoch's score and the chosen epoch go into the training summary (``select``), and so
into run.json and W&B.

Durable across a kill. Beside ``checkpoints/`` the training entry holds ``select/``:
  * ``scores.json``: one record per validated step (step, epoch, val_acc), rewritten atomically after each;
  * ``best/``: the best weights so far (``model.pt``) and ``best.json`` (their step, epoch, val_acc), written
    into a staging directory and renamed into place, so it is always complete.
An epoch is validated right AFTER its checkpoint is published (so ``trainer.save_strategy=epoch`` is required):
a run killed before its validation finished resumes from that checkpoint, whose weights are the epoch's own,
and validates them first (``resume``). Scores of steps beyond the resumed checkpoint cannot exist; any found are
dropped. Both trainers call the same three methods: ``resume`` when training (re)starts, ``validate`` after
each epoch's checkpoint, and the training step calls ``finish`` after training (validates the final weights if
no epoch ended there, then loads the best weights into the model).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sert.artifacts import read_json, write_json
from sert.data import Record

log = logging.getLogger(__name__)

Scorer = Callable[[object, object], float]  # (model, tokenizer) -> validation accuracy


def validation_slice(records: Sequence[Record], fraction: float, seed: int) -> list[Record]:
    """``fraction`` of ``records`` (at least 1, at most all but one), drawn by ``random.Random(seed)``, in the
    split's order: the same questions for every method and run seed with the same ``val_seed``."""
    if not 0 < fraction < 1:
        raise ValueError(f"trainer.val_fraction must be in (0, 1), got {fraction}")
    if len(records) < 2:
        raise ValueError(f"trainer.select needs at least 2 training questions for a validation slice, got {len(records)}")
    k = min(max(1, round(fraction * len(records))), len(records) - 1)
    picked = set(random.Random(seed).sample(range(len(records)), k))
    return [r for i, r in enumerate(records) if i in picked]


def accuracy_scorer(prompts, fmt: str, records: list[Record], *, max_new_tokens: int, batch_size: int,
                    rep_n: int = 3, max_rep: float = 0.3) -> Scorer:
    """Strict Acc of greedy outputs on ``records``, prompted as the evaluate step prompts a checkpoint trained
    in ``fmt`` (``sert.evaluate.prompt_for``, ``generate``, ``score``: nothing duplicated)."""

    def scorer(model, tok) -> float:
        from sert.evaluate import generate, prompt_for, score

        outputs = generate(model, tok, [prompt_for(prompts, fmt, r) for r in records],
                           max_new_tokens=max_new_tokens, batch_size=batch_size)
        return score(records, outputs, tok, fmt, rep_n=rep_n, max_rep=max_rep)[1]["acc"]

    return scorer


class EpochSelector:
    """Validation after each epoch, the best weights kept on disk, the best loaded at the end (module doc)."""

    def __init__(self, out_dir: str | os.PathLike, scorer: Scorer, *, questions: int, metric: str = "val_acc"):
        self.dir = Path(out_dir) / "select"
        self.scorer, self.questions, self.metric = scorer, questions, metric
        self.seconds = 0.0  # time spent validating (left out of the training throughput)

    # -- state on disk ---------------------------------------------------------------------------
    def scores(self) -> list[dict]:
        path = self.dir / "scores.json"
        return read_json(path)["scores"] if path.exists() else []

    def best(self) -> dict | None:
        if not (self.dir / "best").exists() and (self.dir / ".best.old").exists():  # killed inside _save_best
            os.replace(self.dir / ".best.old", self.dir / "best")
        path = self.dir / "best" / "best.json"
        return read_json(path) if path.exists() and (self.dir / "best" / "model.pt").exists() else None

    # -- the three calls ---------------------------------------------------------------------------
    def resume(self, model, tok, step: int, epoch: float) -> None:
        """Training (re)starts at ``step``: forget scores beyond it; validate ``step`` if it never was."""
        kept = [s for s in self.scores() if s["step"] <= step]
        if len(kept) < len(self.scores()):
            log.warning("select: dropping validation scores beyond the resumed step %d", step)
            write_json(self.dir / "scores.json", {"scores": kept})
        best = self.best()
        if best is not None and best["step"] > step:
            shutil.rmtree(self.dir / "best", ignore_errors=True)
        if step > 0 and not any(s["step"] == step for s in kept):
            self.validate(model, tok, step, epoch)

    def validate(self, model, tok, step: int, epoch: float) -> float:
        """Score the current weights; keep them as the best when strictly better than every earlier step."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            value = float(self.scorer(model, tok))
        model.train(was_training)
        best = self.best()
        if best is None or value > best[self.metric]:
            self._save_best(model, {"step": step, "epoch": round(epoch, 3), self.metric: value})
        scores = [s for s in self.scores() if s["step"] != step]
        scores.append({"step": step, "epoch": round(epoch, 3), self.metric: value})
        write_json(self.dir / "scores.json", {"scores": sorted(scores, key=lambda s: s["step"])})
        self.seconds += time.perf_counter() - start
        log.info("select: step %d (epoch %.2f) %s %.4f (best so far: step %d)", step, epoch, self.metric, value,
                 (self.best() or {}).get("step", step))
        return value

    def finish(self, model, tok, step: int, epoch: float) -> dict:
        """After training: validate the final weights if no epoch ended at ``step``, load the best weights into
        ``model``; returns the summary record (every score, the chosen step and epoch)."""
        if not any(s["step"] == step for s in self.scores()):
            self.validate(model, tok, step, epoch)
        best = self.best()
        if best is None:
            raise RuntimeError(f"select: no best weights in {self.dir / 'best'}")
        device = next(model.parameters()).device
        model.load_state_dict(torch.load(self.dir / "best" / "model.pt", map_location=device, weights_only=True))
        log.info("select: model/ is step %d (epoch %s), %s %.4f", best["step"], best["epoch"], self.metric,
                 best[self.metric])
        return {"metric": self.metric, "val_questions": self.questions, "scores": self.scores(),
                "best_step": best["step"], "best_epoch": best["epoch"], f"best_{self.metric}": best[self.metric],
                "validation_seconds": round(self.seconds, 3)}

    def _save_best(self, model, record: dict) -> None:
        staged = self.dir / ".best.staging"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        torch.save(model.state_dict(), staged / "model.pt")
        write_json(staged / "best.json", record)
        old = self.dir / ".best.old"
        shutil.rmtree(old, ignore_errors=True)
        if (self.dir / "best").exists():
            os.replace(self.dir / "best", old)
        os.replace(staged, self.dir / "best")
        shutil.rmtree(old, ignore_errors=True)


def hf_callback(selector: EpochSelector, tok, trainer):
    """The transformers callback of ``trainer=sft``: ``resume`` at train begin (the checkpoint is loaded by
    then), ``validate`` after each epoch's checkpoint is saved; validation time is taken out of the
    ``CountingTrainer``'s clock (its throughput counts training only)."""
    from transformers import TrainerCallback

    class SelectCallback(TrainerCallback):
        def _timed(self, fn, *args) -> None:
            start = time.perf_counter()
            fn(*args)
            trainer.session_start += time.perf_counter() - start

        def on_train_begin(self, args, state, control, model=None, **kw):
            self._timed(selector.resume, model, tok, state.global_step, state.epoch or 0.0)

        def on_save(self, args, state, control, model=None, **kw):
            if not any(s["step"] == state.global_step for s in selector.scores()):
                self._timed(selector.validate, model, tok, state.global_step, state.epoch or 0.0)

    return SelectCallback()

"""Trainers (the ``trainer`` config group): supervised fine-tuning of a causal LM on (prompt, completion)
pairs with the cross-entropy next-token loss (paper II-B self-training, II-C2 distillation).

Both implementations share one interface and the same data path (``sert.training_data``):

    trainer.train(model, tokenizer, examples, out_dir, seed=42) -> summary dict
    trainer.drop_checkpoints(out_dir)   # once the caller has saved the final model

* ``HFTrainer`` (``trainer=sft``, default): transformers' ``Trainer``. Dynamic padding + length-grouped
  batches, checkpoints in ``out_dir/checkpoints`` resumed on rerun, multi-GPU through
  ``accelerate launch -m sert ...`` / ``torchrun -m sert ...`` with no code change.
* ``LoopTrainer`` (``trainer=loop``): the same recipe as a plain torch loop that reads top to bottom
  (single device).

Paper III-A: batch size 8, Adam, lr 3e-4, 20 epochs. Adam is AdamW with ``weight_decay=0``. The paper
names no schedule: the default is a constant lr (one number given, no warmup), overridable.

Checkpoints and resume. A checkpoint directory appears under its final name only once complete (written
into a staging directory, then renamed), and after each save only the newest ``save_total_limit``
checkpoints remain (the new one is complete before the old one is deleted). A rerun resumes from the
newest checkpoint that validates (every file the trainer needs exists and loads); an invalid one is
logged and deleted. Each checkpoint carries the running totals (loss sum, steps, real/padded tokens,
seconds), so the summary of a resumed run covers the whole run: it equals an uninterrupted run's.
``checkpoint_optimizer=false`` keeps weights only (1x the model instead of 3x with Adam's two moments):
a resume then restarts the optimizer moments, which is inexact (logged).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from sert import faults, hardware
from sert.artifacts import read_json, write_json
from sert.training_data import Example, PadCollator, Tokenized, length_grouped_batches, tokenize_examples

log = logging.getLogger(__name__)

# Knobs that change how training is logged/saved but never the weights of an uninterrupted run: left
# out of cache keys. (checkpoint_optimizer=false only makes a *resumed* run inexact.)
NON_RESULT_KNOBS = ("logging_steps", "report_to", "save_strategy", "save_steps", "save_total_limit",
                    "keep_checkpoints", "eval_strategy", "eval_steps", "checkpoint_optimizer")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TOTALS = "sert_totals.json"  # running totals inside every checkpoint (both trainers)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``trainer.precision`` -> fp32 | bf16 | fp16 for ``device``: ``auto`` is bf16 autocast only where
    bf16 is hardware-accelerated (``sert.hardware.bf16_fast``), else fp32. fp16 needs a CUDA GPU."""
    precision = getattr(precision, "value", precision)
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if hardware.bf16_fast(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"trainer.precision=fp16 needs a CUDA GPU (device is {device}): "
                         "use trainer.precision=auto, fp32 or bf16")
    if precision == "bf16" and not hardware.bf16_fast(device):
        log.warning("trainer.precision=bf16 on %s without fast bf16 (%s): emulated, much slower than fp32; "
                    "trainer.precision=auto would choose fp32", device, hardware.cpu_info()["model"])
    return precision


@dataclass
class Totals:
    """What a run has done so far; saved in each checkpoint so a resumed run reports the whole run."""

    steps: int = 0
    loss_sum: float = 0.0  # sum over optimizer steps of the step's mean loss
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    @classmethod
    def load(cls, ckpt: Path) -> Totals:
        return cls(**{k: v for k, v in read_json(ckpt / TOTALS).items() if k in cls.__dataclass_fields__})

    def summary(self, steps_per_epoch: float) -> dict:
        return {"train_loss": round(self.loss_sum / max(self.steps, 1), 5), "steps": self.steps,
                "epochs": round(self.steps / max(steps_per_epoch, 1e-9), 3),
                "tokens": self.real_tokens, "padded_tokens": self.padded_tokens,
                "train_seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.real_tokens / max(self.seconds, 1e-9), 1)}


class BaseTrainer:
    """Configuration and data preparation shared by the implementations (fields of ``TrainerConfig``)."""

    def __init__(self, name: str = "sft", epochs: float = 20.0, max_steps: int = -1, batch_size: int = 8,
                 lr: float = 3e-4, optimizer: str = "adamw_torch", weight_decay: float = 0.0,
                 adam_beta1: float = 0.9, adam_beta2: float = 0.999, lr_scheduler: str = "constant",
                 warmup_ratio: float = 0.0, max_grad_norm: float | None = 1.0, grad_accum: int = 1,
                 max_length: int = 1024, precision: str = "auto", loss_on: str = "answer",
                 group_by_length: bool = True, eval_fraction: float = 0.0, eval_strategy: str = "no",
                 eval_steps: int = 500, save_strategy: str = "epoch", save_steps: int = 500,
                 save_total_limit: int | None = 1, keep_checkpoints: bool = False,
                 checkpoint_optimizer: bool = True, logging_steps: int = 10, report_to: str = "none"):
        if getattr(precision, "value", precision) not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if loss_on not in ("answer", "all"):
            raise ValueError(f"trainer.loss_on must be answer or all, got {loss_on!r}")
        if eval_strategy != "no" and eval_fraction <= 0:
            raise ValueError("trainer.eval_strategy needs trainer.eval_fraction > 0 (held-out examples)")
        if save_total_limit is not None and save_total_limit < 1:
            raise ValueError(f"trainer.save_total_limit must be >= 1 or null (keep all), got {save_total_limit}")
        self.name, self.epochs, self.max_steps, self.batch_size, self.lr = name, epochs, max_steps, batch_size, lr
        self.optimizer, self.weight_decay, self.betas = optimizer, weight_decay, (adam_beta1, adam_beta2)
        self.lr_scheduler, self.warmup_ratio = lr_scheduler, warmup_ratio
        self.max_grad_norm = float(max_grad_norm or 0.0)  # 0 / null: no clipping
        self.grad_accum, self.max_length, self.loss_on = grad_accum, max_length, loss_on
        self.precision = getattr(precision, "value", precision)
        self.group_by_length, self.eval_fraction = group_by_length, eval_fraction
        self.eval_strategy, self.eval_steps = eval_strategy, eval_steps
        self.save_strategy, self.save_steps, self.save_total_limit = save_strategy, save_steps, save_total_limit
        self.keep_checkpoints, self.checkpoint_optimizer = keep_checkpoints, checkpoint_optimizer
        self.logging_steps, self.report_to = logging_steps, report_to
        self.callbacks: list[Any] = []  # extra transformers callbacks (HFTrainer), e.g. tests that crash a run
        self.resolved_precision = self.precision

    # -- data ------------------------------------------------------------------
    def context_length(self, model) -> int:
        cfg = model.config
        ctx = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        return min(self.max_length, ctx) if ctx else self.max_length

    def prepare(self, model, tokenizer, examples: Sequence[Example], seed: int) -> tuple[Tokenized, Tokenized | None]:
        data = tokenize_examples(tokenizer, list(examples), max_length=self.context_length(model), loss_on=self.loss_on)
        if not data.rows:
            raise ValueError(f"no training examples left ({len(examples)} given, {data.dropped} longer than max_length)")
        if self.eval_fraction <= 0:
            return data, None
        n_eval = max(1, int(len(data.rows) * self.eval_fraction))
        order = torch.randperm(len(data.rows), generator=torch.Generator().manual_seed(seed)).tolist()
        pick = lambda ids: Tokenized([data.rows[i] for i in ids], lengths=[data.lengths[i] for i in ids])  # noqa: E731
        train, held = pick(order[n_eval:]), pick(order[:n_eval])
        train.dropped, train.truncated, train.prefix_mismatch = data.dropped, data.truncated, data.prefix_mismatch
        return train, held

    def train(self, model, tokenizer, examples: Sequence[Example], out_dir: str | Path, *, seed: int = 42) -> dict:
        """Train ``model`` in place on ``examples``; checkpoints go to ``out_dir/checkpoints`` and a
        rerun with the same ``out_dir`` resumes from the newest complete one. Returns the summary (of
        the whole run, resumed or not). The checkpoints stay until ``drop_checkpoints(out_dir)``, which
        the caller calls once the final model is saved."""
        out_dir = Path(out_dir)
        _drop_quantization_marker(model)
        device = next(model.parameters()).device
        self.resolved_precision = resolve_precision(self.precision, device)
        log.info("training precision %s (trainer.precision=%s, device %s, bf16 fast: %s)", self.resolved_precision,
                 self.precision, device, hardware.bf16_fast(device))
        train, held = self.prepare(model, tokenizer, examples, seed)
        ckpt_dir = out_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        summary = self._fit(model, tokenizer, train, held, ckpt_dir, seed)
        summary.update(trainer=self.name, precision=self.resolved_precision, examples=len(train.rows),
                       eval_examples=len(held.rows) if held else 0, dropped=train.dropped,
                       truncated=train.truncated, prefix_mismatch=train.prefix_mismatch)
        model.eval()
        return summary

    def drop_checkpoints(self, out_dir: str | Path) -> None:
        """Delete ``out_dir/checkpoints`` (unless ``keep_checkpoints``): call after the final model is saved."""
        if not self.keep_checkpoints:
            shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)

    def _fit(self, model, tokenizer, train: Tokenized, held: Tokenized | None, ckpt_dir: Path, seed: int) -> dict:
        raise NotImplementedError

    # -- checkpoints (shared) --------------------------------------------------
    prefix = "checkpoint"

    def checkpoints(self, ckpt_dir: Path) -> list[Path]:
        """Checkpoint directories, oldest first (by step number)."""
        found = [p for p in ckpt_dir.glob(f"{self.prefix}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def problem(self, ckpt: Path) -> str | None:
        """Why ``ckpt`` cannot be resumed from (None = it is complete)."""
        raise NotImplementedError

    def last_complete(self, ckpt_dir: Path) -> Path | None:
        """The newest checkpoint that validates; newer incomplete ones are logged and deleted."""
        for stale in ckpt_dir.glob(".staging*"):
            shutil.rmtree(stale, ignore_errors=True)  # a save that was killed midway
        for ckpt in reversed(self.checkpoints(ckpt_dir)):
            why = self.problem(ckpt)
            if why is None:
                return ckpt
            log.warning("checkpoint %s is incomplete (%s): deleting it", ckpt, why)
            shutil.rmtree(ckpt, ignore_errors=True)
        return None

    def publish(self, staged: Path, ckpt_dir: Path) -> Path:
        """Move a fully written checkpoint into place, then keep only the newest ``save_total_limit``."""
        final = ckpt_dir / staged.name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staged, final)
        if staged.parent.name.startswith(".staging"):
            shutil.rmtree(staged.parent, ignore_errors=True)
        if self.save_total_limit:
            for old in self.checkpoints(ckpt_dir)[: -self.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        faults.reached("train.checkpoint_saved")
        return final


def _drop_quantization_marker(model) -> None:
    """A GGUF-loaded model (``model=smollm2-135m``) holds dequantised float weights but keeps its
    quantizer marker, which transformers' Trainer refuses to train; the weights are plain, so drop it."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "is_quantized", False) is True:
        model.is_quantized = False


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _load_problem(path: Path) -> str | None:
    """None if ``path`` exists and loads (torch file: memory-mapped; safetensors: header and size)."""
    if not path.is_file():
        return f"{path.name} missing"
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            from transformers.trainer_pt_utils import safe_globals

            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure to load means the file is unusable
        return f"{path.name} unreadable: {type(e).__name__}: {str(e)[:120]}"
    return None


# ----------------------------------------------------------------------------- transformers Trainer
class HFTrainer(BaseTrainer):
    """``trainer=sft``: transformers' Trainer with a padding-only collator and length-grouped sampling."""

    def training_arguments(self, ckpt_dir: Path, seed: int, use_cpu: bool, has_eval: bool):
        precision = self.resolved_precision if self.resolved_precision in ("fp32", "bf16", "fp16") else "fp32"
        return TrainingArguments(
            output_dir=str(ckpt_dir),
            num_train_epochs=self.epochs, max_steps=self.max_steps,
            per_device_train_batch_size=self.batch_size, per_device_eval_batch_size=self.batch_size,
            gradient_accumulation_steps=self.grad_accum,
            learning_rate=self.lr, optim=self.optimizer, weight_decay=self.weight_decay,
            adam_beta1=self.betas[0], adam_beta2=self.betas[1],
            lr_scheduler_type=self.lr_scheduler, warmup_steps=float(self.warmup_ratio), max_grad_norm=self.max_grad_norm,
            bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=use_cpu,
            train_sampling_strategy="group_by_length" if self.group_by_length else "random",
            eval_strategy=self.eval_strategy if has_eval else "no", eval_steps=self.eval_steps,
            save_strategy=self.save_strategy, save_steps=self.save_steps, save_total_limit=self.save_total_limit,
            logging_steps=self.logging_steps, report_to=self.report_to,
            include_num_input_tokens_seen="non_padding",
            seed=seed, data_seed=seed, dataloader_num_workers=0, remove_unused_columns=False,
        )

    def problem(self, ckpt: Path) -> str | None:
        why = _load_problem(ckpt / TOTALS) or _load_problem(ckpt / "trainer_state.json")
        if why:
            return why
        weights = sorted(ckpt.glob("*.safetensors")) or sorted(ckpt.glob("pytorch_model*.bin"))
        if not weights:
            return "no model weights"
        needed = [ckpt / "scheduler.pt", *weights]
        needed += sorted(ckpt.glob("rng_state*.pth")) or [ckpt / "rng_state.pth"]
        if read_json(ckpt / TOTALS).get("optimizer", True):
            needed.append(ckpt / "optimizer.pt")
        for path in needed:
            why = _load_problem(path)
            if why:
                return why
        return None

    def _fit(self, model, tokenizer, train, held, ckpt_dir, seed):
        use_cpu = next(model.parameters()).device.type == "cpu"
        args = self.training_arguments(ckpt_dir, seed, use_cpu, held is not None)
        trainer = CountingTrainer(model=model, args=args, data_collator=PadCollator(_pad_id(tokenizer)),
                                  train_dataset=train.rows, eval_dataset=held.rows if held else None,
                                  processing_class=tokenizer, callbacks=list(self.callbacks))
        trainer.checkpoint_optimizer = self.checkpoint_optimizer
        trainer.publish = lambda staged: self.publish(staged, ckpt_dir)
        last = self.last_complete(ckpt_dir)
        if last:
            trainer.prior = Totals.load(last)
            log.info("resuming training from %s (step %d)", last, trainer.prior.steps)
        trainer.session_start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        state = trainer.state
        write_json(ckpt_dir.parent / "log_history.json", state.log_history)
        totals = trainer.totals()
        steps_per_epoch = state.global_step / state.epoch if state.epoch else 1
        return {**totals.summary(steps_per_epoch), "epochs": round(state.epoch or 0, 3),
                "resumed_from": last.name if last else None, "tokens_total": state.num_input_tokens_seen}


class CountingTrainer(Trainer):
    """transformers' Trainer that keeps sert's running totals (loss, real/padded tokens, seconds) across
    resumes and writes each checkpoint atomically (staging directory, then rename)."""

    prior = Totals()
    checkpoint_optimizer = True
    session_start = 0.0
    real_tokens = padded_tokens = 0  # this session
    loss_sum = 0.0  # this session: sum of the per-micro-batch losses (each already divided for accumulation)
    publish = None  # set by HFTrainer: move a staged checkpoint into place and rotate

    def training_step(self, model, inputs, *args, **kwargs):
        self.real_tokens += int(inputs["attention_mask"].sum())
        self.padded_tokens += inputs["input_ids"].numel()
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.loss_sum += float(loss)
        return loss

    def totals(self) -> Totals:
        """The whole run's totals so far (the prior sessions' from the checkpoint + this session)."""
        p = self.prior
        return Totals(steps=self.state.global_step, loss_sum=p.loss_sum + self.loss_sum,
                      real_tokens=p.real_tokens + self.real_tokens, padded_tokens=p.padded_tokens + self.padded_tokens,
                      seconds=p.seconds + time.perf_counter() - self.session_start)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "train_loss" in logs:  # the end-of-training record: whole run, not just this session
            t = self.totals()
            logs["train_loss"] = t.loss_sum / max(t.steps, 1)
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        if self.args.world_size > 1 or self.publish is None:  # every rank writes its own files: in place
            super()._save_checkpoint(model, trial)
            out = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            if self.args.should_save:
                write_json(out / TOTALS, {**asdict(self.totals()), "optimizer": self.checkpoint_optimizer})
            return
        root = self.args.output_dir
        staging = Path(root) / f".staging-{self.state.global_step}"
        shutil.rmtree(staging, ignore_errors=True)
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = root
        staged = staging / f"checkpoint-{self.state.global_step}"
        write_json(staged / TOTALS, {**asdict(self.totals()), "optimizer": self.checkpoint_optimizer})
        self.publish(staged)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.checkpoint_optimizer:
            super()._save_optimizer_and_scheduler(output_dir)
        else:  # weights-only checkpoints: the schedule's position is tiny, keep it
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, "scheduler.pt"))
        faults.reached("train.checkpoint_writing")  # weights written, trainer_state.json not yet

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or os.path.isfile(os.path.join(checkpoint, "optimizer.pt")):
            return super()._load_optimizer_and_scheduler(checkpoint)
        log.warning("checkpoint %s has no optimizer state (trainer.checkpoint_optimizer=false): the optimizer "
                    "moments restart, so this resume is not exact", checkpoint)
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=True))
        for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
            group["lr"] = lr


# ----------------------------------------------------------------------------- plain torch loop
class LoopTrainer(BaseTrainer):
    """``trainer=loop``: the same SFT recipe in one readable loop (nanoGPT style), single device.

    Per optimiser step: ``grad_accum`` micro-batches, loss weighted by their target-token counts,
    gradient clipping (``max_grad_norm`` 0/null: none), an lr schedule from ``transformers.get_scheduler``,
    bf16/fp16 autocast by ``precision``. Checkpoints (``checkpoints/step-N/``: ``model.pt``,
    ``optimizer.pt`` (optimizer + grad scaler; left out with ``checkpoint_optimizer=false``), ``state.pt``
    (schedule, RNG), ``log_history.json``, ``sert_totals.json``) are written per epoch or every ``save_steps``; batches of
    epoch ``e`` are a pure function of ``seed + e``, so a resumed run continues with exactly the batches
    it would have seen."""

    prefix = "step"

    def _fit(self, model, tokenizer, train, held, ckpt_dir, seed):
        from tqdm.auto import tqdm
        from transformers import get_scheduler

        device = next(model.parameters()).device
        collate = PadCollator(_pad_id(tokenizer))
        n_batches = math.ceil(len(train.rows) / self.batch_size)
        steps_per_epoch = math.ceil(n_batches / self.grad_accum)
        total = self.max_steps if self.max_steps > 0 else math.ceil(self.epochs * steps_per_epoch)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=self.betas)
        sched = get_scheduler(self.lr_scheduler, opt, num_warmup_steps=math.ceil(self.warmup_ratio * total),
                              num_training_steps=total)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.resolved_precision)
        scaler = torch.amp.GradScaler(device.type, enabled=self.resolved_precision == "fp16")
        torch.manual_seed(seed)  # dropout; a resumed run restores the generator state it saved
        totals, history, resumed = self._resume(ckpt_dir, model, opt, sched, scaler, device)
        step, session_start = totals.steps, time.perf_counter() - totals.seconds
        model.train()
        bar = tqdm(total=total, initial=step, desc="train", unit="step")
        while step < total:
            epoch, k = divmod(step, steps_per_epoch)
            batches = length_grouped_batches(train.lengths, self.batch_size, seed + epoch, group=self.group_by_length)
            micro = [collate([train.rows[i] for i in b]) for b in batches[k * self.grad_accum:(k + 1) * self.grad_accum]]
            n_targets = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
            step_loss = 0.0
            for m in micro:
                totals.real_tokens += int(m["attention_mask"].sum())
                totals.padded_tokens += m["input_ids"].numel()
                m = {key: v.to(device) for key, v in m.items()}
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    out = model(**m)
                weight = int((m["labels"][:, 1:] != -100).sum()) / max(n_targets, 1)
                scaler.scale(out.loss.float() * weight).backward()
                step_loss += out.loss.item() * weight
            if self.max_grad_norm > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            totals.steps, totals.loss_sum = step, totals.loss_sum + step_loss
            totals.seconds = time.perf_counter() - session_start
            bar.update(1)
            if step % self.logging_steps == 0:
                lr = sched.get_last_lr()[0]
                history.append({"loss": step_loss, "learning_rate": lr, "epoch": round(step / steps_per_epoch, 4),
                                "step": step})
                log.info("step %d/%d loss %.4f lr %.2e", step, total, step_loss, lr)
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            if (self.save_strategy == "steps" and step % self.save_steps == 0) or (self.save_strategy == "epoch" and end_of_epoch):
                self._save(ckpt_dir, totals, history, model, opt, sched, scaler)
            if held is not None and ((self.eval_strategy == "epoch" and end_of_epoch)
                                     or (self.eval_strategy == "steps" and step % self.eval_steps == 0)):
                log.info("step %d eval_loss %.4f", step, self.eval_loss(model, held, PadCollator(collate.pad_id), device))
        bar.close()
        write_json(ckpt_dir.parent / "log_history.json", history)
        return {**totals.summary(steps_per_epoch), "resumed_from": resumed}

    @torch.no_grad()
    def eval_loss(self, model, held: Tokenized, collate: PadCollator, device) -> float:
        model.eval()
        total, n = 0.0, 0
        for s in range(0, len(held.rows), self.batch_size):
            m = {k: v.to(device) for k, v in collate(held.rows[s:s + self.batch_size]).items()}
            t = int((m["labels"][:, 1:] != -100).sum())
            total, n = total + model(**m).loss.item() * t, n + t
        model.train()
        return total / max(n, 1)

    def problem(self, ckpt: Path) -> str | None:
        why = _load_problem(ckpt / TOTALS)
        if why:
            return why
        files = ["model.pt", "state.pt", "log_history.json"] + (["optimizer.pt"] if read_json(ckpt / TOTALS).get("optimizer") else [])
        for name in files:
            why = _load_problem(ckpt / name)
            if why:
                return why
        return None

    def _save(self, ckpt_dir: Path, totals: Totals, history: list[dict], model, opt, sched, scaler) -> None:
        staged = ckpt_dir / f".staging-{totals.steps}" / f"step-{totals.steps}"
        shutil.rmtree(staged.parent, ignore_errors=True)
        staged.mkdir(parents=True)
        torch.save(model.state_dict(), staged / "model.pt")
        faults.reached("train.checkpoint_writing")
        if self.checkpoint_optimizer:
            torch.save({"optimizer": opt.state_dict(), "scaler": scaler.state_dict()}, staged / "optimizer.pt")
        torch.save({"scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   staged / "state.pt")
        write_json(staged / "log_history.json", history)
        write_json(staged / TOTALS, {**asdict(totals), "optimizer": self.checkpoint_optimizer})
        self.publish(staged, ckpt_dir)

    def _resume(self, ckpt_dir: Path, model, opt, sched, scaler, device) -> tuple[Totals, list[dict], str | None]:
        ckpt = self.last_complete(ckpt_dir)
        if ckpt is None:
            return Totals(), [], None
        model.load_state_dict(torch.load(ckpt / "model.pt", map_location=device, weights_only=True))
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        if (ckpt / "optimizer.pt").exists():
            o = torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True)
            opt.load_state_dict(o["optimizer"])
            scaler.load_state_dict(o["scaler"])
        else:
            log.warning("checkpoint %s has no optimizer state (trainer.checkpoint_optimizer=false): the optimizer "
                        "moments restart, so this resume is not exact", ckpt)
        sched.load_state_dict(state["scheduler"])
        for group, lr in zip(opt.param_groups, sched.get_last_lr()):
            group["lr"] = lr
        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        totals = Totals.load(ckpt)
        log.info("resuming training from %s (step %d)", ckpt, totals.steps)
        return totals, read_json(ckpt / "log_history.json"), ckpt.name

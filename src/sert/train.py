"""Trainers (the ``trainer`` config group): supervised fine-tuning of a causal LM on (prompt, completion)
pairs with the cross-entropy next-token loss (paper II-B self-training, II-C2 distillation).

Both implementations share one interface and the same data path (``sert.training_data``):

    trainer.train(model, tokenizer, examples, out_dir, seed=42) -> summary dict

* ``HFTrainer`` (``trainer=sft``, default): transformers' ``Trainer``. Dynamic padding + length-grouped
  batches, checkpoints in ``out_dir/checkpoints`` resumed on rerun, multi-GPU through
  ``accelerate launch -m sert ...`` / ``torchrun -m sert ...`` with no code change.
* ``LoopTrainer`` (``trainer=loop``): the same recipe as a plain torch loop that reads top to bottom
  (single device).

Paper III-A: batch size 8, Adam, lr 3e-4, 20 epochs. Adam is AdamW with ``weight_decay=0``. The paper
names no schedule: the default is a constant lr (one number given, no warmup), overridable.
The summary reports ``tokens`` = real (non-padding) input tokens processed in this session and
``tokens_per_s`` over the session's training wall time.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from sert.artifacts import write_json
from sert.training_data import Example, PadCollator, Tokenized, length_grouped_batches, tokenize_examples

log = logging.getLogger(__name__)

# Knobs that change how training is logged/saved but never the weights: left out of cache keys.
NON_RESULT_KNOBS = ("logging_steps", "report_to", "save_strategy", "save_steps", "save_total_limit",
                    "keep_checkpoints", "eval_strategy", "eval_steps")


class BaseTrainer:
    """Configuration and data preparation shared by the implementations (fields of ``TrainerConfig``)."""

    def __init__(self, name: str = "sft", epochs: float = 20.0, max_steps: int = -1, batch_size: int = 8,
                 lr: float = 3e-4, optimizer: str = "adamw_torch", weight_decay: float = 0.0,
                 adam_beta1: float = 0.9, adam_beta2: float = 0.999, lr_scheduler: str = "constant",
                 warmup_ratio: float = 0.0, max_grad_norm: float = 1.0, grad_accum: int = 1,
                 max_length: int = 1024, precision: str = "fp32", loss_on: str = "answer",
                 group_by_length: bool = True, eval_fraction: float = 0.0, eval_strategy: str = "no",
                 eval_steps: int = 500, save_strategy: str = "epoch", save_steps: int = 500,
                 save_total_limit: int | None = 1, keep_checkpoints: bool = False, logging_steps: int = 10,
                 report_to: str = "none"):
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"trainer.precision must be fp32, bf16 or fp16, got {precision!r}")
        if loss_on not in ("answer", "all"):
            raise ValueError(f"trainer.loss_on must be answer or all, got {loss_on!r}")
        if eval_strategy != "no" and eval_fraction <= 0:
            raise ValueError("trainer.eval_strategy needs trainer.eval_fraction > 0 (held-out examples)")
        self.name, self.epochs, self.max_steps, self.batch_size, self.lr = name, epochs, max_steps, batch_size, lr
        self.optimizer, self.weight_decay, self.betas = optimizer, weight_decay, (adam_beta1, adam_beta2)
        self.lr_scheduler, self.warmup_ratio, self.max_grad_norm = lr_scheduler, warmup_ratio, max_grad_norm
        self.grad_accum, self.max_length, self.precision, self.loss_on = grad_accum, max_length, precision, loss_on
        self.group_by_length, self.eval_fraction = group_by_length, eval_fraction
        self.eval_strategy, self.eval_steps = eval_strategy, eval_steps
        self.save_strategy, self.save_steps, self.save_total_limit = save_strategy, save_steps, save_total_limit
        self.keep_checkpoints, self.logging_steps, self.report_to = keep_checkpoints, logging_steps, report_to
        self.callbacks: list[Any] = []  # extra transformers callbacks (HFTrainer), e.g. tests that crash a run

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
        rerun with the same ``out_dir`` resumes from the newest one. Returns the summary."""
        out_dir = Path(out_dir)
        _drop_quantization_marker(model)
        train, held = self.prepare(model, tokenizer, examples, seed)
        ckpt_dir = out_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        summary = self._fit(model, tokenizer, train, held, ckpt_dir, seed)
        summary.update(trainer=self.name, examples=len(train.rows), eval_examples=len(held.rows) if held else 0,
                       dropped=train.dropped, truncated=train.truncated, prefix_mismatch=train.prefix_mismatch)
        if not self.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        model.eval()
        return summary

    def _fit(self, model, tokenizer, train: Tokenized, held: Tokenized | None, ckpt_dir: Path, seed: int) -> dict:
        raise NotImplementedError


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


# ----------------------------------------------------------------------------- transformers Trainer
class HFTrainer(BaseTrainer):
    """``trainer=sft``: transformers' Trainer with a padding-only collator and length-grouped sampling."""

    def training_arguments(self, ckpt_dir: Path, seed: int, use_cpu: bool, has_eval: bool):
        return TrainingArguments(
            output_dir=str(ckpt_dir),
            num_train_epochs=self.epochs, max_steps=self.max_steps,
            per_device_train_batch_size=self.batch_size, per_device_eval_batch_size=self.batch_size,
            gradient_accumulation_steps=self.grad_accum,
            learning_rate=self.lr, optim=self.optimizer, weight_decay=self.weight_decay,
            adam_beta1=self.betas[0], adam_beta2=self.betas[1],
            lr_scheduler_type=self.lr_scheduler, warmup_steps=float(self.warmup_ratio), max_grad_norm=self.max_grad_norm,
            bf16=self.precision == "bf16", fp16=self.precision == "fp16", use_cpu=use_cpu,
            train_sampling_strategy="group_by_length" if self.group_by_length else "random",
            eval_strategy=self.eval_strategy if has_eval else "no", eval_steps=self.eval_steps,
            save_strategy=self.save_strategy, save_steps=self.save_steps, save_total_limit=self.save_total_limit,
            logging_steps=self.logging_steps, report_to=self.report_to,
            include_num_input_tokens_seen="non_padding",
            seed=seed, data_seed=seed, dataloader_num_workers=0, remove_unused_columns=False,
        )

    def _fit(self, model, tokenizer, train, held, ckpt_dir, seed):
        use_cpu = next(model.parameters()).device.type == "cpu"
        args = self.training_arguments(ckpt_dir, seed, use_cpu, held is not None)
        trainer = CountingTrainer(model=model, args=args, data_collator=PadCollator(_pad_id(tokenizer)),
                                  train_dataset=train.rows, eval_dataset=held.rows if held else None,
                                  processing_class=tokenizer, callbacks=list(self.callbacks))
        last = get_last_checkpoint(str(ckpt_dir))
        if last:
            log.info("resuming training from %s", last)
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=last)
        seconds = time.perf_counter() - start
        state = trainer.state
        write_json(ckpt_dir.parent / "log_history.json", state.log_history)
        return {
            "train_loss": round(result.training_loss, 5), "steps": state.global_step,
            "epochs": round(state.epoch or 0, 3), "resumed_from": Path(last).name if last else None,
            "tokens": trainer.real_tokens, "padded_tokens": trainer.padded_tokens,
            "tokens_total": state.num_input_tokens_seen, "train_seconds": round(seconds, 3),
            "tokens_per_s": round(trainer.real_tokens / max(seconds, 1e-9), 1),
        }


class CountingTrainer(Trainer):
    """transformers' Trainer that counts the real and padded input tokens it trains on (this session)."""

    real_tokens = padded_tokens = 0

    def training_step(self, model, inputs, *args, **kwargs):
        self.real_tokens += int(inputs["attention_mask"].sum())
        self.padded_tokens += inputs["input_ids"].numel()
        return super().training_step(model, inputs, *args, **kwargs)


# ----------------------------------------------------------------------------- plain torch loop
class LoopTrainer(BaseTrainer):
    """``trainer=loop``: the same SFT recipe in one readable loop (nanoGPT style), single device.

    Per optimiser step: ``grad_accum`` micro-batches, loss weighted by their target-token counts,
    gradient clipping, an lr schedule from ``transformers.get_scheduler``. Checkpoints
    (``checkpoints/step-N/state.pt``: weights, optimiser, schedule, step) are written per epoch or every
    ``save_steps``; batches of epoch ``e`` are a pure function of ``seed + e``, so a resumed run continues
    with exactly the batches it would have seen."""

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
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        torch.manual_seed(seed)  # dropout; a resumed run restores the generator state it saved
        step, resumed = self._resume(ckpt_dir, model, opt, sched, device)
        model.train()
        losses, start, bar = [], time.perf_counter(), tqdm(total=total, initial=step, desc="train", unit="step")
        while step < total:
            epoch, k = divmod(step, steps_per_epoch)
            batches = length_grouped_batches(train.lengths, self.batch_size, seed + epoch, group=self.group_by_length)
            micro = [collate([train.rows[i] for i in b]) for b in batches[k * self.grad_accum:(k + 1) * self.grad_accum]]
            n_targets = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
            step_loss = 0.0
            for m in micro:
                m = {key: v.to(device) for key, v in m.items()}
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    out = model(**m)
                weight = int((m["labels"][:, 1:] != -100).sum()) / max(n_targets, 1)
                scaler.scale(out.loss * weight).backward()
                step_loss += out.loss.item() * weight
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            losses.append(step_loss)
            bar.update(1)
            if step % self.logging_steps == 0:
                log.info("step %d/%d loss %.4f lr %.2e", step, total, step_loss, sched.get_last_lr()[0])
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            if (self.save_strategy == "steps" and step % self.save_steps == 0) or (self.save_strategy == "epoch" and end_of_epoch):
                self._save(ckpt_dir, step, model, opt, sched)
            if held is not None and ((self.eval_strategy == "epoch" and end_of_epoch)
                                     or (self.eval_strategy == "steps" and step % self.eval_steps == 0)):
                log.info("step %d eval_loss %.4f", step, self.eval_loss(model, held, PadCollator(collate.pad_id), device))
        bar.close()
        seconds = time.perf_counter() - start
        return {
            "train_loss": round(sum(losses) / max(len(losses), 1), 5), "steps": step,
            "epochs": round(step / steps_per_epoch, 3), "resumed_from": resumed,
            "tokens": collate.real_tokens, "padded_tokens": collate.padded_tokens, "train_seconds": round(seconds, 3),
            "tokens_per_s": round(collate.real_tokens / max(seconds, 1e-9), 1),
        }

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

    def _save(self, ckpt_dir: Path, step: int, model, opt, sched) -> None:
        tmp, final = ckpt_dir / f".step-{step}.tmp", ckpt_dir / f"step-{step}"
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": step, "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint dir exists only once complete
        if self.save_total_limit:
            for old in _loop_checkpoints(ckpt_dir)[: -self.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)

    def _resume(self, ckpt_dir: Path, model, opt, sched, device) -> tuple[int, str | None]:
        ckpts = _loop_checkpoints(ckpt_dir)
        if not ckpts:
            return 0, None
        state = torch.load(ckpts[-1] / "state.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resuming training from %s", ckpts[-1])
        return state["step"], ckpts[-1].name


def _loop_checkpoints(ckpt_dir: Path) -> list[Path]:
    return sorted((p for p in ckpt_dir.glob("step-*") if (p / "state.pt").exists()),
                  key=lambda p: int(p.name.split("-")[1]))

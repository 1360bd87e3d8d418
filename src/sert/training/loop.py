"""``trainer=loop``: the same supervised fine-tuning as ``trainer=sft`` as one plain torch loop that reads
top to bottom (nanoGPT style), single device. Same data path (``sert.training.data``), same summary,
same checkpoint/resume contract (``sert.training.base``)."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from sert import faults
from sert.artifacts import read_json, write_json
from sert.training.base import TOTALS, BaseTrainer, Totals, autocast_dtype, load_problem, pad_id
from sert.training.data import PadCollator, Tokenized, length_grouped_batches
from sert.training.fast import make_optimizer

log = logging.getLogger(__name__)


class LoopTrainer(BaseTrainer):
    """``trainer=loop``: the same SFT recipe in one readable loop (nanoGPT style), single device.

    Per optimiser step: ``grad_accum`` micro-batches (loss: ``BaseTrainer.loss``, the fused target-only head where
    ``fast_loss``; AdamW fused where ``fused_optimizer``), loss weighted by their target-token counts,
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

        c = self.config
        device = next(model.parameters()).device
        collate = PadCollator(pad_id(tokenizer))
        n_batches = math.ceil(len(train.rows) / c.batch_size)
        steps_per_epoch = math.ceil(n_batches / c.grad_accum)
        total = c.max_steps if c.max_steps > 0 else math.ceil(c.epochs * steps_per_epoch)
        opt = make_optimizer(model, lr=c.lr, betas=(c.adam_beta1, c.adam_beta2), weight_decay=c.weight_decay,
                             fused=c.fused_optimizer)
        sched = get_scheduler(c.lr_scheduler, opt, num_warmup_steps=math.ceil(c.warmup_ratio * total),
                              num_training_steps=total)
        amp = autocast_dtype(self.resolved_precision)
        scaler = torch.amp.GradScaler(device.type, enabled=self.resolved_precision == "fp16")
        torch.manual_seed(seed)  # dropout; a resumed run restores the generator state it saved
        totals, history, resumed = self._resume(ckpt_dir, model, opt, sched, scaler, device)
        step, session_start = totals.steps, time.perf_counter() - totals.seconds
        if self.selector is not None:  # trainer.select: validate the resumed checkpoint if it never was
            session_start += self._timed(self.selector.resume, model, tokenizer, step, step / steps_per_epoch)
        first_step = None  # this session's first step: oneDNN set-up, and the compile under trainer.compile
        model.train()
        bar = tqdm(total=total, initial=step, desc="train", unit="step")
        while step < total:
            epoch, k = divmod(step, steps_per_epoch)
            batches = length_grouped_batches(train.lengths, c.batch_size, seed + epoch, group=c.group_by_length)
            micro = [collate([train.rows[i] for i in b]) for b in batches[k * c.grad_accum:(k + 1) * c.grad_accum]]
            n_targets = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
            step_loss = 0.0
            for m in micro:
                totals.real_tokens += int(m["attention_mask"].sum())
                totals.padded_tokens += m["input_ids"].numel()
                m = {key: v.to(device) for key, v in m.items()}
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = self.loss(model, m)
                weight = int((m["labels"][:, 1:] != -100).sum()) / max(n_targets, 1)
                scaler.scale(loss.float() * weight).backward()
                step_loss += loss.item() * weight
            if c.max_grad_norm > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            totals.steps, totals.loss_sum = step, totals.loss_sum + step_loss
            if first_step is None:
                first_step = time.perf_counter() - session_start - totals.seconds
            totals.seconds = time.perf_counter() - session_start
            bar.update(1)
            if step % c.logging_steps == 0:
                lr = sched.get_last_lr()[0]
                history.append({"loss": step_loss, "learning_rate": lr, "epoch": round(step / steps_per_epoch, 4),
                                "step": step})
                log.info("step %d/%d loss %.4f lr %.2e", step, total, step_loss, lr)
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            if (c.save_strategy == "steps" and step % c.save_steps == 0) or (c.save_strategy == "epoch" and end_of_epoch):
                self._save(ckpt_dir, totals, history, model, opt, sched, scaler)
            if self.selector is not None and end_of_epoch:  # after the epoch's checkpoint (sert.training.select)
                session_start += self._timed(self.selector.validate, model, tokenizer, step, step / steps_per_epoch)
            if held is not None and ((c.eval_strategy == "epoch" and end_of_epoch)
                                     or (c.eval_strategy == "steps" and step % c.eval_steps == 0)):
                log.info("step %d eval_loss %.4f", step, self.eval_loss(model, held, PadCollator(collate.pad_id), device))
        bar.close()
        write_json(ckpt_dir.parent / "log_history.json", history)
        return {**totals.summary(steps_per_epoch), "resumed_from": resumed,
                "first_step_seconds": round(first_step, 3) if first_step is not None else None}

    @staticmethod
    def _timed(fn, *args) -> float:
        """Run ``fn(*args)``; its seconds (validation: not training time, left out of the throughput)."""
        start = time.perf_counter()
        fn(*args)
        return time.perf_counter() - start

    @torch.no_grad()
    def eval_loss(self, model, held: Tokenized, collate: PadCollator, device) -> float:
        model.eval()
        total, n = 0.0, 0
        size = self.config.batch_size
        for s in range(0, len(held.rows), size):
            m = {k: v.to(device) for k, v in collate(held.rows[s:s + size]).items()}
            t = int((m["labels"][:, 1:] != -100).sum())
            total, n = total + self.loss(model, m).item() * t, n + t
        model.train()
        return total / max(n, 1)

    def problem(self, ckpt: Path) -> str | None:
        why = load_problem(ckpt / TOTALS)
        if why:
            return why
        files = ["model.pt", "state.pt", "log_history.json"] + (["optimizer.pt"] if read_json(ckpt / TOTALS).get("optimizer") else [])
        for name in files:
            why = load_problem(ckpt / name)
            if why:
                return why
        return None

    def _save(self, ckpt_dir: Path, totals: Totals, history: list[dict], model, opt, sched, scaler) -> None:
        staged = ckpt_dir / f".staging-{totals.steps}" / f"step-{totals.steps}"
        shutil.rmtree(staged.parent, ignore_errors=True)
        staged.mkdir(parents=True)
        torch.save(model.state_dict(), staged / "model.pt")
        faults.reached("train.checkpoint_writing")
        if self.config.checkpoint_optimizer:
            torch.save({"optimizer": opt.state_dict(), "scaler": scaler.state_dict()}, staged / "optimizer.pt")
        torch.save({"scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   staged / "state.pt")
        write_json(staged / "log_history.json", history)
        write_json(staged / TOTALS, {**asdict(totals), "optimizer": self.config.checkpoint_optimizer})
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

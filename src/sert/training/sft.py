"""``trainer=sft`` (default): supervised fine-tuning with transformers' ``Trainer``.

Dynamic padding (``PadCollator``) + length-grouped batches, checkpoints in ``out_dir/checkpoints`` resumed
on rerun, several processes (GPUs) through ``torchrun -m sert ...`` / ``accelerate launch -m sert ...``
(``sert.distributed``; ``batch_size`` is the global batch).
The ``Trainer`` subclass that keeps sert's running totals lives in ``sert.training._counting`` (imported
when training starts, so composing a config does not import transformers' Trainer).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from sert import distributed
from sert.artifacts import read_json, write_json
from sert.portable import machine_roots, portable
from sert.training.base import TOTALS, BaseTrainer, Totals, load_problem, pad_id
from sert.training.data import PadCollator, Tokenized

log = logging.getLogger(__name__)


def optimizer_name(name: str, fused: bool) -> str:
    """``trainer.optimizer`` as transformers names it: adamw_torch becomes adamw_torch_fused where ``fused``."""
    return "adamw_torch_fused" if fused and name == "adamw_torch" else name


class _PortableConfig:
    """``wandb.config`` whose ``update`` writes machine paths portably (``sert.portable``); the rest passes through."""

    def __init__(self, config: Any, roots: list[tuple[str, str]]):
        self._config, self._roots = config, roots

    def update(self, d: Any, *args: Any, **kwargs: Any) -> Any:
        return self._config.update(portable(dict(d), self._roots), *args, **kwargs)

    def __setitem__(self, key: str, value: Any) -> None:
        self._config[key] = portable(value, self._roots)

    def __getitem__(self, key: str) -> Any:
        return self._config[key]

    def __contains__(self, key: str) -> bool:
        return key in self._config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


class _PortableWandb:
    """The ``wandb`` module as transformers' WandbCallback sees it, with a portable ``config``."""

    def __init__(self, wandb: Any, roots: list[tuple[str, str]]):
        self._wandb, self._roots = wandb, roots

    @property
    def config(self) -> _PortableConfig:
        return _PortableConfig(self._wandb.config, self._roots)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wandb, name)


def portable_wandb_config(trainer: Any, roots: list[tuple[str, str]]) -> None:
    """transformers' WandbCallback copies TrainingArguments and the model config into the W&B run's config, with
    absolute paths (``output_dir``: the checkpoint dir in the cache; ``_name_or_path``: the model's files). A study
    commits its W&B runs, so the callback writes them portable (``<cache>/...``, ``<site-packages>/...``)."""
    from transformers.integrations import WandbCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, WandbCallback) and cb._wandb is not None and not isinstance(cb._wandb, _PortableWandb):
            cb._wandb = _PortableWandb(cb._wandb, roots)


class HFTrainer(BaseTrainer):
    """transformers' Trainer with a padding-only collator and length-grouped sampling.

    Batches are sert's length-grouped batches (``sert.training.data.RankBatches``, as ``trainer=loop``), a
    pure function of the seed and the epoch. Several processes (torchrun, ``accelerate launch``, srun): DDP,
    and ``batch_size`` stays the *global* batch: every rank computes the same batches and takes its share;
    transformers divides the loss by the target tokens of the whole batch across ranks
    (``average_tokens_across_devices``). So the batches, their loss and the updates are those of one
    process, up to float summation order (and dropout, whose masks each process draws)."""

    distributed = True

    def training_arguments(self, ckpt_dir: Path, seed: int, use_cpu: bool, has_eval: bool):
        from transformers import TrainingArguments

        c = self.config
        distributed.check_batch(c.batch_size)
        precision = self.resolved_precision if self.resolved_precision in ("fp32", "bf16", "fp16") else "fp32"
        return TrainingArguments(
            output_dir=str(ckpt_dir),
            num_train_epochs=c.epochs, max_steps=c.max_steps,
            # batch_size is the global batch: each of N processes takes its share (CountingTrainer's batches)
            per_device_train_batch_size=c.batch_size // distributed.world_size(),
            per_device_eval_batch_size=c.batch_size,
            gradient_accumulation_steps=c.grad_accum,
            learning_rate=c.lr, optim=optimizer_name(c.optimizer, c.fused_optimizer), weight_decay=c.weight_decay,
            adam_beta1=c.adam_beta1, adam_beta2=c.adam_beta2,
            lr_scheduler_type=c.lr_scheduler, warmup_steps=float(c.warmup_ratio), max_grad_norm=c.max_grad_norm,
            bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=use_cpu,
            eval_strategy=c.eval_strategy if has_eval else "no", eval_steps=c.eval_steps,
            save_strategy=c.save_strategy, save_steps=c.save_steps, save_total_limit=c.save_total_limit,
            logging_steps=c.logging_steps, report_to=c.report_to,
            include_num_input_tokens_seen="non_padding",
            seed=seed, data_seed=seed, dataloader_num_workers=0, remove_unused_columns=False,
            average_tokens_across_devices=True,
        )

    def problem(self, ckpt: Path) -> str | None:
        why = load_problem(ckpt / TOTALS) or load_problem(ckpt / "trainer_state.json")
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
            why = load_problem(path)
            if why:
                return why
        return None

    def _fit(self, model, tokenizer, train: Tokenized, held: Tokenized | None, ckpt_dir: Path, seed: int) -> dict:
        from sert.training._counting import CountingTrainer

        c = self.config
        use_cpu = next(model.parameters()).device.type == "cpu"
        args = self.training_arguments(ckpt_dir, seed, use_cpu, held is not None)
        trainer = CountingTrainer(model=model, args=args, data_collator=PadCollator(pad_id(tokenizer)),
                                  train_dataset=train.rows, eval_dataset=held.rows if held else None,
                                  processing_class=tokenizer, callbacks=list(self.callbacks))
        portable_wandb_config(trainer, machine_roots({"output_dir": os.path.abspath(os.environ.get("SERT_OUTPUT_DIR",
                                                                                                  "outputs"))}))
        trainer.checkpoint_optimizer = self.config.checkpoint_optimizer
        if self.selector is not None:  # trainer.select: validation after each epoch's checkpoint
            from sert.training.select import hf_callback

            trainer.add_callback(hf_callback(self.selector, tokenizer, trainer))
        trainer.sert_loss = self.loss
        trainer.global_batch, trainer.lengths, trainer.group_by_length = c.batch_size, train.lengths, c.group_by_length
        trainer.publish = lambda staged: self.publish(staged, ckpt_dir)
        last = distributed.broadcast(self.last_complete(ckpt_dir) if distributed.is_main() else None)
        if last:
            trainer.prior = Totals.load(last)
            log.info("resuming training from %s (step %d)", last, trainer.prior.steps)
        trainer.session_start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        state = trainer.state
        totals = trainer.totals()
        if distributed.is_main():
            write_json(ckpt_dir.parent / "log_history.json", state.log_history)
        steps_per_epoch = state.global_step / state.epoch if state.epoch else 1
        return {**totals.summary(steps_per_epoch), "epochs": round(state.epoch or 0, 3),
                "resumed_from": last.name if last else None, "tokens_total": state.num_input_tokens_seen}

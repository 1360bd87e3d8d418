"""transformers' ``Trainer`` that keeps sert's running totals across resumes and writes each checkpoint
atomically (used by ``sert.training.sft.HFTrainer``; private so that config composition, which imports
the trainer modules, does not import transformers' Trainer)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from sert import distributed, faults
from sert.artifacts import write_json
from sert.training.base import TOTALS, Totals
from sert.training.data import IGNORE, MaskableRows, RankBatches

log = logging.getLogger(__name__)


class CountingTrainer(Trainer):
    """transformers' Trainer that keeps sert's running totals (loss, real/padded tokens, seconds) across
    resumes and writes each checkpoint atomically (staging directory, then rename)."""

    prior = Totals()
    checkpoint_optimizer = True
    session_start = 0.0
    real_tokens = padded_tokens = 0  # this session
    loss_sum = 0.0  # this session: sum of the per-micro-batch losses (each already divided for accumulation)
    publish = None  # set by HFTrainer: move a staged checkpoint into place and rotate (rank 0)
    sert_loss = None  # set by HFTrainer: BaseTrainer.loss (the fused target-only head where trainer.fast_loss)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """sert's loss (``BaseTrainer.loss``) on a single process; transformers' own otherwise (a DDP-wrapped
        model must be called as a whole for its gradient hooks). Scaled as transformers scales the model's own
        loss: with ``num_items_in_batch``, this micro-batch's sum over all target tokens of the step."""
        if self.sert_loss is None or return_outputs or model is not self.accelerator.unwrap_model(model):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        with self.accelerator.autocast():  # accelerate wraps only model.forward in autocast; this calls past it
            loss = self.sert_loss(model, inputs)
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            loss = loss * (inputs["labels"][:, 1:] != -100).sum() / num_items_in_batch
        return loss

    global_batch = 8  # set by HFTrainer: trainer.batch_size, split across the processes
    lengths: list[int] = []  # set by HFTrainer: the training rows' token counts (length-grouped batches)
    group_by_length = True

    def get_train_dataloader(self) -> DataLoader:
        """sert's batches (``RankBatches``): the same global batches for 1 or N processes, this rank's share."""
        batches = RankBatches(self.lengths, self.global_batch, self.args.seed, group=self.group_by_length,
                              rank=self.args.process_index, world=self.args.world_size)
        loader = self.accelerator.prepare(DataLoader(MaskableRows(self.train_dataset), batch_sampler=batches,
                                                     collate_fn=self.data_collator, num_workers=0))
        shard = getattr(loader, "batch_sampler", None)  # accelerate's per-process wrapper: ours is per-process already
        if getattr(shard, "batch_sampler", None) is batches:
            shard.num_processes, shard.process_index = 1, 0
        return loader

    def training_step(self, model, inputs, *args, **kwargs):
        real = inputs["labels"].ne(IGNORE).any(dim=1)  # not a masked stand-in row (RankBatches)
        self.real_tokens += int(inputs["attention_mask"][real].sum())
        self.padded_tokens += int(real.sum()) * inputs["input_ids"].shape[1]
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.loss_sum += float(loss)
        return loss

    def totals(self) -> Totals:
        """The whole run's totals so far (the prior sessions' from the checkpoint + this session).

        Several processes: a collective (every rank calls it at the same points). Tokens are summed over
        ranks; each rank's loss is its share of the batch's token-weighted loss times the number of ranks
        (transformers' ``average_tokens_across_devices``), so the batch's loss is the mean over ranks."""
        p = self.prior
        loss_sum, real, padded = distributed.all_sum(self.loss_sum, self.real_tokens, self.padded_tokens)
        return Totals(steps=self.state.global_step, loss_sum=p.loss_sum + loss_sum / distributed.world_size(),
                      real_tokens=p.real_tokens + int(real), padded_tokens=p.padded_tokens + int(padded),
                      seconds=p.seconds + time.perf_counter() - self.session_start)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "train_loss" in logs:  # the end-of-training record: whole run, not just this session
            t = self.totals()
            logs["train_loss"] = t.loss_sum / max(t.steps, 1)
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        """Every rank writes its files (rank 0 the weights and optimizer, each rank its RNG state) into one
        staging directory; then rank 0 adds the totals and publishes it (rename, then rotate)."""
        totals = self.totals()  # a collective: before any rank-0-only branch
        root = self.args.output_dir
        staging = Path(root) / f".staging-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        distributed.barrier()
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = root
        distributed.barrier()  # every rank's files are written
        if not self.args.should_save:
            return
        staged = staging / f"checkpoint-{self.state.global_step}"
        write_json(staged / TOTALS, {**asdict(totals), "optimizer": self.checkpoint_optimizer})
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

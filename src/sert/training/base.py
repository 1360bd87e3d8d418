"""What every trainer shares: the typed config, data preparation, the run summary and checkpoints.

Interface (``trainer`` config group; ``sert.training.sft.HFTrainer`` and ``sert.training.loop.LoopTrainer``)::

    trainer = HFTrainer(config)            # a TrainerConfig; or HFTrainer(max_steps=3, ...) for its defaults + overrides
    trainer.train(model, tokenizer, examples, out_dir, seed=42) -> summary dict
    trainer.drop_checkpoints(out_dir)      # once the caller has saved the final model

A new trainer is one subclass implementing ``_fit`` (and ``problem`` for its checkpoint layout) plus one
YAML under ``conf/trainer/`` naming it as ``_target_``.

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
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from sert import faults, hardware
from sert.artifacts import read_json
from sert.models import drop_quantization
from sert.training.config import LossOn, Precision, TrainerConfig
from sert.training.data import Example, Tokenized, tokenize_examples

log = logging.getLogger(__name__)

PRECISIONS = tuple(p.value for p in Precision)
TOTALS = "sert_totals.json"  # running totals inside every checkpoint (both trainers)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``trainer.precision`` -> fp32 | bf16 | fp16 for ``device``: ``auto`` is bf16 autocast only where
    bf16 is hardware-accelerated (``sert.hardware.bf16_fast``), else fp32. fp16 needs a CUDA GPU."""
    precision = enum_value(precision)
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


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for fp32: no autocast)."""
    return None if precision == "fp32" else hardware.DTYPES[hardware.ALIASES[precision]]


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
    """Configuration and data preparation shared by the implementations. ``config_class`` is the dataclass
    of the trainer's settings (a trainer with knobs of its own names its ``TrainerConfig`` subclass)."""

    config_class: ClassVar[type[TrainerConfig]] = TrainerConfig
    distributed: ClassVar[bool] = False  # trains under torchrun/accelerate (several processes, DDP)

    def __init__(self, config: TrainerConfig | None = None, **overrides: Any):
        cfg = replace(config or self.config_class(), **overrides)
        precision, loss_on = enum_value(cfg.precision), enum_value(cfg.loss_on)
        if precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if loss_on not in tuple(v.value for v in LossOn):
            raise ValueError(f"trainer.loss_on must be answer or all, got {loss_on!r}")
        if cfg.eval_strategy != "no" and cfg.eval_fraction <= 0:
            raise ValueError("trainer.eval_strategy needs trainer.eval_fraction > 0 (held-out examples)")
        if cfg.loss_chunk_rows < 1:
            raise ValueError(f"trainer.loss_chunk_rows must be >= 1, got {cfg.loss_chunk_rows}")
        if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
            raise ValueError(f"trainer.save_total_limit must be >= 1 or null (keep all), got {cfg.save_total_limit}")
        # plain strings for the enums; 0 / null max_grad_norm: no clipping
        self.config = replace(cfg, precision=precision, loss_on=loss_on, max_grad_norm=float(cfg.max_grad_norm or 0.0))
        self.callbacks: list[Any] = []  # extra transformers callbacks (HFTrainer), e.g. tests that crash a run
        self.selector: Any = None  # sert.training.select.EpochSelector under trainer.select=val_acc (the step sets it)
        self.resolved_precision = precision

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def save_total_limit(self) -> int | None:
        return self.config.save_total_limit

    # -- data ------------------------------------------------------------------
    def context_length(self, model) -> int:
        cfg = model.config
        ctx = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        return min(self.config.max_length, ctx) if ctx else self.config.max_length

    def prepare(self, model, tokenizer, examples: Sequence[Example], seed: int) -> tuple[Tokenized, Tokenized | None]:
        data = tokenize_examples(tokenizer, list(examples), max_length=self.context_length(model),
                                 loss_on=self.config.loss_on)
        if not data.rows:
            raise ValueError(f"no training examples left ({len(examples)} given, {data.dropped} longer than max_length)")
        if self.config.eval_fraction <= 0:
            return data, None
        n_eval = max(1, int(len(data.rows) * self.config.eval_fraction))
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
        drop_quantization(model)  # a GGUF-loaded model's weights are plain floats: trainable
        device = next(model.parameters()).device
        self.resolved_precision = resolve_precision(self.config.precision, device)
        log.info("training precision %s (trainer.precision=%s, device %s, bf16 fast: %s)", self.resolved_precision,
                 self.config.precision, device, hardware.bf16_fast(device))
        train, held = self.prepare(model, tokenizer, examples, seed)
        if self.config.compile:
            from sert.training.fast import compile_blocks

            log.info("trainer.compile: %d decoder blocks compiled on first use", compile_blocks(model))
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
        if not self.config.keep_checkpoints:
            shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)

    def _fit(self, model, tokenizer, train: Tokenized, held: Tokenized | None, ckpt_dir: Path, seed: int) -> dict:
        raise NotImplementedError

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean cross-entropy over the batch's target tokens (``sert.training.fast.causal_lm_loss``)."""
        from sert.training.fast import causal_lm_loss

        return causal_lm_loss(model, batch, fast=self.config.fast_loss, chunk_rows=self.config.loss_chunk_rows)

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


def enum_value(v: Any) -> Any:
    return getattr(v, "value", v)  # an Enum member -> its string


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load_problem(path: Path) -> str | None:
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



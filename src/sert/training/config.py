"""The ``trainer`` config group's schema: the one place a trainer setting, its default and its paper
reference are declared. ``conf/trainer/*.yaml`` only select a ``_target_`` and override.

A trainer with knobs of its own subclasses ``TrainerConfig`` next to its class (with its own
``_target_``) and names that dataclass in its YAML's defaults list (``- schema/<ClassName>``): the subclass
is registered in Hydra's ConfigStore under ``trainer/schema/<ClassName>`` by ``register()``, so its knobs
are typed and a misspelled one fails at composition like any other.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from hydra.core.config_store import ConfigStore


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast where sert.hardware.bf16_fast(device), else fp32 (resolved at run time)
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # CUDA only


class Select(str, Enum):
    last = "last"  # the final epoch's weights (the paper's recipe, III-A)
    val_acc = "val_acc"  # the epoch with the best strict Acc on a held-out slice of the training split


class LossOn(str, Enum):
    answer = "answer"  # loss on the completion only (labels -100 over the prompt tokens)
    all = "all"  # loss on every token, prompt included


@dataclass
class TrainerConfig:
    """Supervised fine-tuning: cross-entropy next-token loss (paper II-B, II-C2). Paper III-A: batch size 8,
    Adam, lr 3e-4, 20 epochs; Adam is AdamW with weight_decay 0. The paper names no schedule: constant lr."""

    _target_: str = "sert.training.sft.HFTrainer"  # sft: transformers' Trainer | sert.training.loop.LoopTrainer
    name: str = "sft"
    epochs: float = 20.0  # III-A: "trained ... for 20 epochs"
    max_steps: int = -1  # > 0 overrides epochs (smoke tests)
    batch_size: int = 8  # III-A: "batch size of 8" (global: N processes take batch_size/N rows each; x grad_accum)
    lr: float = 3e-4  # III-A: "Adam optimizer with a learning rate of 3e-4"
    optimizer: str = "adamw_torch"  # III-A says Adam: AdamW with weight_decay 0 *is* Adam
    weight_decay: float = 0.0  # 0 = plain Adam (III-A)
    adam_beta1: float = 0.9  # paper silent: torch defaults
    adam_beta2: float = 0.999
    lr_scheduler: str = "constant"  # paper silent (names one lr): constant | constant_with_warmup | linear | cosine
    warmup_ratio: float = 0.0  # paper silent
    max_grad_norm: Optional[float] = 1.0  # paper silent: the transformers default; 0 or null = no clipping
    grad_accum: int = 1
    max_length: int = 1024  # tokens per example (capped at the model's context; GPT-2: 1024); longer are cut at the right
    # paper silent (V100, III-A). auto = bf16 autocast (fp32 master weights) only where
    # sert.hardware.bf16_fast(device), else fp32 | fp32 | bf16 | fp16 (CUDA only)
    precision: Precision = Precision.auto
    loss_on: LossOn = LossOn.answer  # answer: loss on the completion only (prompt labels -100) | all: whole text
    group_by_length: bool = True  # length-grouped batches: less padding (dynamic padding is always on)
    # speed (docs/performance.md); each changes the result only at float-rounding level (tested):
    fast_loss: bool = True  # LM head + cross-entropy on target tokens only, fused and chunked (sert.training.fast)
    loss_chunk_rows: int = 1024  # rows of the fused LM head per chunk (peak memory ~ rows x vocab x 4 bytes)
    fused_optimizer: bool = True  # torch's fused AdamW kernel (one pass over the parameters; foreach/loop if false)
    # torch.compile each decoder block (one compiled graph shared by all blocks, dynamic sequence length):
    # fuses norms, activations and casts; costs a compile in the first step (cached across runs by inductor)
    compile: bool = False
    eval_fraction: float = 0.0  # hold out this fraction of the training examples for an eval loss
    eval_strategy: str = "no"  # no | steps | epoch (needs eval_fraction > 0)
    eval_steps: int = 500
    save_strategy: str = "epoch"  # no | steps | epoch: checkpoints under <cache entry>/checkpoints, resumed on rerun
    save_steps: int = 500
    save_total_limit: Optional[int] = 1  # keep the newest N checkpoints (null: all)
    keep_checkpoints: bool = False  # delete checkpoints once model/ is saved (they carry optimizer state)
    # true: checkpoints hold Adam's state (3x the model), resume is exact;
    # false: weights only (1x), a resume restarts the optimizer moments (inexact)
    checkpoint_optimizer: bool = True
    logging_steps: int = 10
    # Which epoch's weights become model/ (sert.training.select). last: the final one (paper III-A trains 20 epochs
    # and names no selection). val_acc: after each epoch, greedy decoding + strict Acc, exactly as the
    # evaluate step (its prompt format, evaluate.max_new_tokens / label_only_max_new_tokens, evaluate.batch_size),
    # on a held-out slice of the TRAINING split (never the test split; left out of training); the best epoch is
    # saved and evaluated on test. Needs save_strategy=epoch (an epoch is validated after its checkpoint: resumable).
    select: Select = Select.last
    val_fraction: float = 0.1  # select=val_acc: share of the training-split questions held out (>= 1 question)
    val_seed: int = 0  # select=val_acc: fixes the slice, the same questions for every method and run seed
    report_to: str = "none"  # transformers integrations (the YAML: ${logger.report_to}); ignored by the loop


# Knobs that change how training is logged/saved but never the weights of an uninterrupted run: left
# out of cache keys. (checkpoint_optimizer=false only makes a *resumed* run inexact.)
NON_RESULT_KNOBS = ("logging_steps", "report_to", "save_strategy", "save_steps", "save_total_limit",
                    "keep_checkpoints", "eval_strategy", "eval_steps", "checkpoint_optimizer")
# Knobs of trainer.select=val_acc: left out of cache keys under select=last (entries trained before they existed
# keep their keys; sert.training.steps.trainer_material)
SELECT_KNOBS = ("select", "val_fraction", "val_seed")


def register(cs: ConfigStore | None = None) -> None:
    """Store every ``TrainerConfig`` subclass as ``trainer/schema/<ClassName>``. The trainer modules of this
    package are imported first (they are light: transformers is imported only when training starts)."""
    import sert.training as package

    for mod in pkgutil.iter_modules(package.__path__):
        if not mod.ispkg and not mod.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{mod.name}")
    cs = cs or ConfigStore.instance()
    for cls in _subclasses(TrainerConfig):
        cs.store(group="trainer/schema", name=cls.__name__, node=cls)


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]

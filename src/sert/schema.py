"""Structured configs: the typed schema every composed config is validated against.

Registered in Hydra's ConfigStore as ``sert_schema`` and listed first in ``conf/config.yaml``'s defaults,
so a misspelled key (``model.nme=x``) or a wrong type fails at composition, before any model loads.
Every default lives in a dataclass (here and in ``sert.config``), with the paper section it comes from;
the YAML files under ``conf/`` only select and override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from sert.config.api import ApiConfig, JudgeConfig, LoggerConfig, TeacherConfig  # noqa: F401 (re-exported)
from sert.config.data import DatasetConfig, DType, ModelConfig, OnError, PathsConfig  # noqa: F401
from sert.config.steps import (EvaluateConfig, GenerationBackend, GenerationConfig, GenerationMode,  # noqa: F401
                               LengthFilterConfig, PatternFilterConfig, PerplexityFilterConfig, Rep2FilterConfig,
                               SelectorConfig)
from sert.prompts import Prompts


class DistillInit(str, Enum):
    base = "base"  # RD: distil into the base model
    sert = "sert"  # SERT+RD: distil into the self-trained (SERT) checkpoint


@dataclass
class StageConfig:
    _target_: str = "sert.pipeline.Pipeline"
    name: str = MISSING
    steps: List[str] = MISSING
    extra_steps: List[str] = field(default_factory=list)  # appended to any stage: stage.extra_steps=[judge]
    distill_init: DistillInit = DistillInit.base  # the distill step's starting weights (stage rd vs sert_rd)


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast where sert.hardware.bf16_fast(device), else fp32 (resolved at run time)
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class LossOn(str, Enum):
    answer = "answer"  # loss on the completion only (labels -100 over the prompt tokens)
    all = "all"  # loss on every token, prompt included


@dataclass
class TrainerConfig:
    """Supervised fine-tuning (paper II-B, II-C2; III-A settings). Read by ``sert.train``."""

    _target_: str = "sert.train.HFTrainer"
    name: str = "sft"
    epochs: float = 20.0  # III-A
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # III-A (per device)
    lr: float = 3e-4  # III-A (Adam)
    optimizer: str = "adamw_torch"  # with weight_decay 0 this is Adam
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler: str = "constant"  # constant | constant_with_warmup | linear | cosine
    warmup_ratio: float = 0.0
    max_grad_norm: Optional[float] = 1.0  # 0 or null: no clipping
    grad_accum: int = 1
    max_length: int = 1024
    precision: Precision = Precision.auto  # fp16 only on CUDA
    loss_on: LossOn = LossOn.answer
    group_by_length: bool = True
    eval_fraction: float = 0.0
    eval_strategy: str = "no"  # no | steps | epoch
    eval_steps: int = 500
    save_strategy: str = "epoch"  # no | steps | epoch
    save_steps: int = 500
    save_total_limit: Optional[int] = 1
    keep_checkpoints: bool = False
    checkpoint_optimizer: bool = True  # false: weights-only checkpoints (1x model, resume restarts Adam: inexact)
    logging_steps: int = 10
    report_to: str = "none"


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    stage: StageConfig = MISSING
    prompts: Prompts = field(default_factory=Prompts)  # the paper's text formats (sert.prompts)
    paths: PathsConfig = field(default_factory=PathsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # The filter chain: `order` names filters defined under filter.<name> (conf/filter/full.yaml lists the
    # paper's, each validated by its dataclass in FILTER_SCHEMAS); open, so that a new filter is one class
    # plus one YAML. Keys the chain cannot use are refused at composition (sert.cli.check_config).
    filter: Any = MISSING
    trainer: TrainerConfig = MISSING
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: Optional[str] = None  # groups runs of one experiment (W&B group); null = sweep dir name
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 42


# filter/schema/<name>: the typed defaults of the paper's filters (conf/filter/full.yaml lists them)
FILTER_SCHEMAS = {"pattern": PatternFilterConfig, "length": LengthFilterConfig, "rep2": Rep2FilterConfig,
                  "perplexity": PerplexityFilterConfig, "selector": SelectorConfig}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="sert_schema", node=Config)
    for name, node in FILTER_SCHEMAS.items():
        cs.store(group="filter/schema", name=name, node=node)

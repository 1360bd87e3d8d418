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
from sert.training import config as training_config
from sert.training.config import TrainerConfig


class DistillInit(str, Enum):
    base = "base"  # RD: distil into the base model
    sert = "sert"  # SERT+RD: distil into the self-trained (SERT) checkpoint


class EvaluateModel(str, Enum):
    """The model the evaluate step reads: the output of one training step of the run, or the base model."""

    base = "base"  # zero-shot: the base model (stage=evaluate)
    self_train = "self_train"  # SERT (stage=sert)
    distill = "distill"  # RD, SERT+RD (stage=rd, sert_rd)
    finetune = "finetune"  # Finetune (stage=finetune)


@dataclass
class StageConfig:
    _target_: str = "sert.pipeline.Pipeline"
    name: str = MISSING
    steps: List[str] = MISSING
    extra_steps: List[str] = field(default_factory=list)  # appended to any stage: stage.extra_steps=[judge]
    distill_init: DistillInit = DistillInit.base  # the distill step's starting weights (stage rd vs sert_rd)
    # the step whose model/ the evaluate step reads (runs it if needed); evaluate.checkpoint=DIR overrides
    evaluate_model: EvaluateModel = EvaluateModel.base


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
    training_config.register()  # trainer/schema/<Class>: the dataclasses of trainers with knobs of their own

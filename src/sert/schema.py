"""Structured configs: the typed schema every composed config is validated against.

Registered in Hydra's ConfigStore as ``sert_schema`` and listed first in ``conf/config.yaml``'s defaults,
so a misspelled key (``model.nme=x``) or a wrong type fails at composition, before any model loads.
Paper settings live in the YAML files under ``conf/`` with comments; defaults here mirror them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class OnError(str, Enum):
    skip = "skip"  # report and count the malformed row, go on
    fail = "fail"  # stop the run at the first malformed row


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    auto = "auto"


@dataclass
class DatasetConfig:
    name: str = MISSING
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_splits: Dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    path: Optional[str] = None  # local unified .json or .jsonl; null = Hugging Face Hub
    split_file: Optional[str] = None  # {"train": [idx], "test": [idx]} for unified .json files
    split: str = "train"  # the split the training-side stages use
    limit: Optional[int] = None  # first N rows of the split
    on_error: OnError = OnError.skip


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in run names and W&B tags
    name_or_path: str = MISSING  # hub id or local directory
    gguf_file: Optional[str] = None
    tokenizer: Optional[str] = None  # separate tokenizer path (default: name_or_path)
    dtype: DType = DType.float32
    trust_remote_code: bool = False
    random_init: Optional[Dict[str, int]] = None  # tiny test models: a GPT2Config shape, no weights


@dataclass
class PromptsConfig:
    generate: str = "Question: {question} Answer:"
    self_train: str = "Question: {question}. Answer: {reasoning} So the answer is {answer}."
    teacher: str = "Question: {question}. Answer: Let's think step by step."
    distill: str = "Question: {question}. Answer: Let's think step by step. {reasoning} So the answer is {answer}."
    label_only: str = "Question: {question} Answer: {answer}"
    answer_choice: str = "({label}) {text}"
    answer_binary: str = "{label}"


class DistillInit(str, Enum):
    base = "base"  # RD: distil into the base model
    sert = "sert"  # SERT+RD: distil into the self-trained (SERT) checkpoint


@dataclass
class StageConfig:
    _target_: str = "sert.pipeline.Pipeline"
    name: str = MISSING
    steps: List[str] = MISSING
    distill_init: DistillInit = DistillInit.base  # the distill step's starting weights (stage rd vs sert_rd)


class Precision(str, Enum):
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
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    max_length: int = 1024
    precision: Precision = Precision.fp32
    loss_on: LossOn = LossOn.answer
    group_by_length: bool = True
    eval_fraction: float = 0.0
    eval_strategy: str = "no"  # no | steps | epoch
    eval_steps: int = 500
    save_strategy: str = "epoch"  # no | steps | epoch
    save_steps: int = 500
    save_total_limit: Optional[int] = 1
    keep_checkpoints: bool = False
    logging_steps: int = 10
    report_to: str = "none"


@dataclass
class EvaluateConfig:
    """Greedy decoding on the test split + Acc/Fmt/Len/Rep (paper III-D). Read by ``sert.evaluate``."""

    split: str = "test"
    limit: Optional[int] = None
    checkpoint: Optional[str] = None  # null = the model this run just trained (else the base model)
    format: Optional[str] = None  # null = by the training step | self_train | distill | label_only
    max_new_tokens: int = 512
    label_only_max_new_tokens: int = 32
    batch_size: int = 16
    greedy: bool = True
    fmt_rep_n: int = 3
    fmt_max_rep: float = 0.3


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    cache_dir: str = "outputs/cache"
    shared_dir: str = "../shared"


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    stage: StageConfig = MISSING
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # Groups filled by their stage modules; typed there (see register()).
    generation: Any = None
    filter: Any = None
    trainer: TrainerConfig = MISSING
    teacher: Any = None
    judge: Any = None
    evaluate: EvaluateConfig = MISSING
    logger: Any = None
    experiment_name: Optional[str] = None  # groups runs of one experiment (W&B group); null = sweep dir name
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 42


def register() -> None:
    ConfigStore.instance().store(name="sert_schema", node=Config)

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


@dataclass
class StageConfig:
    _target_: str = "sert.pipeline.Pipeline"
    name: str = MISSING
    steps: List[str] = MISSING
    extra_steps: List[str] = field(default_factory=list)  # appended to any stage: stage.extra_steps=[judge]


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    cache_dir: str = "outputs/cache"
    shared_dir: str = "../shared"


@dataclass
class LoggerConfig:
    """``logger`` group (code: sert.tracking). ``logger=none`` uses only ``_target_``/``report_to``."""
    _target_: str = "sert.tracking.NullLogger"
    report_to: str = "none"  # what the HF Trainer reports to (trainer.report_to: ${logger.report_to})
    project: str = "sert"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (WANDB_MODE, else online with WANDB_API_KEY, else offline) | online | offline | disabled
    tags: List[str] = field(default_factory=list)  # extra tags (model/dataset/stage/filter are added)
    notes: Optional[str] = None
    max_table_rows: int = 200  # rows of predictions/selected paths per wandb.Table
    log_tables: bool = True
    log_manifest: bool = True  # run.json as a W&B artifact at finish
    console: str = "off"  # W&B console capture: off | auto | wrap (the run's log file is in the run dir)
    init_timeout: float = 60.0  # seconds wandb.init may take before logging is given up for the run


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
    trainer: Any = None
    teacher: Any = None
    judge: Any = None
    evaluate: Any = None
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: Optional[str] = None  # groups runs of one experiment (W&B group); null = sweep dir name
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 42


def register() -> None:
    ConfigStore.instance().store(name="sert_schema", node=Config)

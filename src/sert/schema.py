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

from sert.prompts import Prompts
from sert.training import config as training_config
from sert.training.config import TrainerConfig


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


class GenerationMode(str, Enum):
    topk_alternatives = "topk_alternatives"  # II-A1: top-k first tokens, then sampling
    raw = "raw"  # Fig. 1 baseline: plain top-k/top-p sampling


class GenerationBackend(str, Enum):
    hf = "hf"  # batched KV-cache sampler over a transformers model (sert.generate.sample_batch)
    vllm = "vllm"  # optional extra for GPU machines
    ctranslate2 = "ctranslate2"  # optional extra sert[ct2]: CPU int8/fp32 kernels (sert.ct2.generate_ct2)


@dataclass
class GenerationConfig:
    mode: GenerationMode = GenerationMode.topk_alternatives
    first_k: int = 5  # III-A: top 5 first tokens
    samples_per_token: int = 5  # III-A: 5 sequences per first token
    top_k: int = 10  # III-A
    top_p: float = 0.95  # III-A
    temperature: float = 1.0
    max_new_tokens: int = 256  # paper silent; room for its reported path lengths (SERT Len 145-160)
    stop: List[str] = field(default_factory=lambda: ["Question:"])
    batch_size: int = 8  # questions per batch (x first_k*samples_per_token rows); not in the cache key
    backend: GenerationBackend = GenerationBackend.hf
    ct2_compute_type: str = "float32"  # backend=ctranslate2 only: float32 | int8 | bfloat16 (CPU must support it)
    dtype: DType = DType.auto  # auto -> bfloat16 only where the hardware has it, else float32 (sert.hardware)


@dataclass
class PatternFilterConfig:
    _target_: str = "sert.filters.PatternFilter"
    imitative: List[str] = field(default_factory=lambda: [r"Question\s*:", r"\bAnswer\s*:"])
    drop_stopped: bool = True
    direct_max_words: int = 6
    direct_patterns: List[str] = field(default_factory=list)
    min_options_listed: int = 3
    option_label_re: str = r"\(([A-E])\)"


@dataclass
class LengthFilterConfig:
    _target_: str = "sert.filters.LengthFilter"
    min_tokens: int = 25  # III-A


@dataclass
class Rep2FilterConfig:
    _target_: str = "sert.filters.Rep2Filter"
    max_rate: float = 0.20  # III-A
    n: int = 2
    unit: str = "tokens"  # tokens | words


@dataclass
class PerplexityFilterConfig:
    _target_: str = "sert.filters.PerplexityFilter"
    min_ppl: float = 5.0  # III-A


@dataclass
class SelectorConfig:
    _target_: str = "sert.filters.Selector"
    n: int = 2
    unit: str = "tokens"
    strategy: str = "lowest_rep2"  # lowest_rep2 (III-A) | random (seeded; the Fig. 4 "raw" arm)
    seed: int = 0  # random strategy only


@dataclass
class FilterConfig:
    input: Optional[str] = None  # an existing candidates.jsonl to filter instead of generating
    order: List[str] = field(default_factory=lambda: ["pattern", "length", "rep2", "perplexity"])
    pattern: PatternFilterConfig = field(default_factory=PatternFilterConfig)
    length: LengthFilterConfig = field(default_factory=LengthFilterConfig)
    rep2: Rep2FilterConfig = field(default_factory=Rep2FilterConfig)
    perplexity: PerplexityFilterConfig = field(default_factory=PerplexityFilterConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)


@dataclass
class EvaluateConfig:
    """Greedy decoding on the test split + Acc/Fmt/Len/Rep (paper III-D). Read by ``sert.evaluate``."""

    split: str = "test"
    limit: Optional[int] = None
    checkpoint: Optional[str] = None  # null = the model stage.evaluate_model names (a training step or base)
    format: Optional[str] = None  # null = by the training step | self_train | distill | label_only
    max_new_tokens: int = 512
    label_only_max_new_tokens: int = 32
    batch_size: int = 16
    greedy: bool = True
    dtype: DType = DType.auto  # compute dtype; auto = bfloat16 only where the hardware is fast at it (sert.hardware)
    fmt_rep_n: int = 3
    fmt_max_rep: float = 0.3


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    cache_dir: str = "outputs/cache"
    shared_dir: str = "../shared"


@dataclass
class ApiConfig:
    """An OpenAI-compatible endpoint (sert.llm_client): OpenAI, vLLM, llama.cpp server, Ollama."""
    api: str = "completions"  # completions | chat
    model: Optional[str] = "gpt-3.5-turbo-instruct"  # judge=hf: local model (null = the run's `model`)
    base_url: Optional[str] = None  # null = api.openai.com; e.g. http://localhost:8000/v1 (vLLM)
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # NAME of the env var holding the key (never the key)
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: Optional[float] = None
    stop: Optional[List[str]] = None
    mode: str = "online"  # online | batch (OpenAI Batch API, 50% cheaper, resumable by batch id)
    concurrency: int = 8
    timeout: float = 60.0  # seconds per request
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    poll_interval: float = 30.0  # batch mode
    batch_max_wait: Optional[float] = None  # batch mode: stop polling after N s (rerun resumes)
    price_prompt: float = 0.0  # USD per 1M prompt tokens
    price_completion: float = 0.0  # USD per 1M completion tokens
    batch_discount: float = 0.5


@dataclass
class TeacherConfig(ApiConfig):
    name: str = "openai"
    n: int = 1  # samples per question
    keep: str = "correct"  # correct | all
    input: Optional[str] = None  # JSONL {qid|question, reasoning|completion} or a reasoning-teacher completion JSON
    retry_failed: bool = True  # a rerun of a finished step with failed calls retries only those
    # zero-shot-CoT step 2 (answer extraction) appended after the reasoning; null = one step (answer parsed from R)
    answer_prompt: Optional[str] = None
    answer_max_tokens: int = 16  # new tokens of the answer step
    # local teacher (teacher=local): `model` is a model config name, a local dir / .gguf file, or a hub id
    backend: str = "api"  # api (OpenAI-compatible endpoint) | torch | ctranslate2
    batch_size: int = 8  # prompts per decoding batch (local backends)
    dtype: str = "auto"  # torch: auto = bfloat16 where the hardware is fast at it, else float32
    compute_type: str = "int8"  # ctranslate2: int8 | int8_float32 | float32 | ...
    device: str = "auto"  # torch device
    top_k: int = 0  # local sampling (0 = off)
    chat_template: bool = True  # wrap the prompt in the model's chat template when it has one
    chat_prefill: Optional[str] = "Let's think step by step."  # prompt text from here on opens the assistant turn


@dataclass
class JudgeConfig(ApiConfig):
    _target_: str = "sert.judge.OpenAIJudge"  # sert.judge.OpenAIJudge | sert.judge.LocalJudge (alias HFJudge)
    name: str = "openai"
    template: str = MISSING  # Table I prompt with {eval_question} / {eval_completion}
    target: str = "predictions"  # predictions | candidates | selected (ignored when input is set)
    input: Optional[str] = None  # JSONL with question + output|text|completion (qid optional)
    limit: Optional[int] = None  # first N outputs
    sample: Optional[int] = None  # N questions drawn at random (seed), all their outputs kept
    seed: int = 0
    retry_temperature: float = 0.7  # the one retry of an unparsable reply samples at this temperature
    hf_device: str = "auto"  # judge=local: the local model's device
    hf_batch_size: int = 4  # judge=local: prompts per decoding batch (each batch cached before the next)
    # judge=local (sert.judge.LocalJudge; conf/judge/local.yaml documents these)
    backend: str = "torch"  # torch (sert.engine) | ctranslate2 (sert.ct2, optional)
    dtype: str = "auto"  # torch: auto | float32 | bfloat16 (resolved by sert.hardware.resolve_dtype)
    compute_type: str = "int8"  # ctranslate2 only
    chat_template: str = "auto"  # auto | true | false
    reply_format: str = "free"  # free | prefill | stepwise
    score_tokens: int = 4  # stepwise: new tokens per "- Score for X:" line
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
    prompts: Prompts = field(default_factory=Prompts)  # the paper's text formats (sert.prompts)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # Groups filled by their stage modules; typed there (see register()).
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    trainer: TrainerConfig = MISSING
    teacher: TeacherConfig = MISSING
    judge: JudgeConfig = MISSING
    evaluate: EvaluateConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: Optional[str] = None  # groups runs of one experiment (W&B group); null = sweep dir name
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 42


def register() -> None:
    ConfigStore.instance().store(name="sert_schema", node=Config)
    training_config.register()  # trainer/schema/<Class>: the dataclasses of trainers with knobs of their own

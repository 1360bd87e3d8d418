"""Configs of the LLM-calling steps: ``teacher`` (II-C1), ``judge`` (III-D), and the ``logger`` group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

# Table I of the paper, verbatim (its quotes kept): the judge prompt; {eval_question} / {eval_completion}.
TABLE_I = """Please evaluate the reasoning provided by a single method in response to the following question. Your task is to assess the quality of reasoning based on the criteria provided below and calculate the average score.
Question: “{eval_question}”
Response: “{eval_completion}”
Evaluation Instructions: Carefully evaluate the reasoning quality of the response based on the following criteria and provide a score from 0 (lowest) to 10 (highest) for each. Each score should be presented in a specified format for easy extraction:
1. Coherence: How logically consistent and easily understandable is the reasoning in the response?
- Score for Coherence: [Insert score here]
2. Relevance: How relevant are the reasoning steps to answering the given question?
- Score for Relevance: [Insert score here]
3. Logical Consistency: Are there any logical fallacies or contradictions in the reasoning provided?
- Score for Logical Consistency: [Insert score here]
4. Completeness: Does the response address all parts of the question and provide a thorough reasoning process?
- Score for Completeness: [Insert score here]
Please ensure that each score is clearly indicated following the phrases provided above. This will assist in the subsequent extraction and analysis of the data.
Summarize the overall effectiveness of the reasoning based on these scores in a brief concluding statement."""


@dataclass
class ApiConfig:
    """An OpenAI-compatible endpoint (``sert.llm_client``): OpenAI, vLLM, llama.cpp server, Ollama."""

    api: str = "completions"  # completions | chat
    model: Optional[str] = None
    base_url: Optional[str] = None  # null = api.openai.com; vLLM http://localhost:8000/v1, llama.cpp :8080/v1, Ollama :11434/v1
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # NAME of the env var holding the key; the key is never written anywhere
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: Optional[float] = None
    stop: Optional[List[str]] = None
    mode: str = "online"  # online | batch (OpenAI Batch API: 50% cheaper, resumable by batch id)
    concurrency: int = 8
    timeout: float = 60.0  # seconds per request
    max_retries: int = 6  # on 429 / 5xx / timeout / connection error / malformed reply
    backoff_base: float = 1.0  # backoff min(backoff_max, base*2^attempt) with jitter; Retry-After wins when sent
    backoff_max: float = 60.0
    poll_interval: float = 30.0  # batch mode: seconds between polls
    batch_max_wait: Optional[float] = None  # batch mode: give up polling after N s (a rerun resumes the same batch)
    price_prompt: float = 0.0  # USD per 1M prompt tokens
    price_completion: float = 0.0  # USD per 1M completion tokens
    batch_discount: float = 0.5  # Batch API price factor


@dataclass
class TeacherConfig(ApiConfig):
    """The reasoning teacher (paper II-C1): zero-shot CoT, "Question: q. Answer: Let's think step by step."
    (prompts.teacher); the completion is the reasoning R. Defaults: ``teacher=openai``; conf/teacher/local.yaml
    and llamacpp.yaml override them (``sert.teacher``)."""

    _target_: str = "sert.teacher.ApiTeacher"  # sert.teacher.ApiTeacher | sert.teacher.LocalTeacher
    name: str = "openai"
    # paper III-A: GPT-3.5 text-davinci-002 (retired); its completions successor. teacher=local: a
    # conf/model name, a local dir / .gguf file, or a hub id
    model: Optional[str] = "gpt-3.5-turbo-instruct"
    temperature: float = 0.0  # paper silent; greedy for n=1 (Fine-tune-CoT), raise it with n>1 (diverse reasoning)
    max_tokens: int = 256  # paper silent
    price_prompt: float = 1.50  # USD per 1M prompt tokens (gpt-3.5-turbo-instruct list price; check yours)
    price_completion: float = 2.00
    n: int = 1  # samples per question (one request each: llama.cpp / Ollama ignore `n`)
    keep: str = "correct"  # correct: drop completions whose parsed answer != gold (Fine-tune-CoT) | all
    # ingest instead of calling: JSONL {qid|question, reasoning|completion} or a reasoning-teacher
    # (Fine-tune-CoT) completion JSON {metadata, data}
    input: Optional[str] = None
    retry_failed: bool = True  # rerunning a finished step that had failed calls retries only those
    # zero-shot-CoT step 2: e.g. "\nTherefore, the answer is" is appended after the reasoning and the answer
    # read from that reply (api=completions only); null = one step, the answer parsed from R as the paper's
    # single prompt implies
    answer_prompt: Optional[str] = None
    answer_max_tokens: int = 16  # new tokens of the answer step
    backend: str = "api"  # api (OpenAI-compatible endpoint) | torch | ctranslate2 (teacher=local)
    batch_size: int = 8  # local: prompts per decoding batch (sorted by length; not in the cache key)
    dtype: str = "auto"  # torch: auto = bfloat16 on CPUs with AVX512-BF16/AMX and bf16 GPUs, else float32
    compute_type: str = "int8"  # ctranslate2 weights/compute: int8 | int8_float32 | float32 | bfloat16 ...
    device: str = "auto"  # torch device
    top_k: int = 0  # local sampling (0 = off)
    chat_template: bool = True  # local: use the model's chat template when it has one (false: the raw prompt)
    # Chat models: the prompt is split at chat_prefill. The text before it (stripped: "Question: q. Answer:")
    # is the user message; the assistant turn is opened with "Let's think step by step." and the model
    # continues it, so R is, as in the paper, the continuation of the zero-shot-CoT trigger. null: the whole
    # prompt is the user message and the reply is R.
    chat_prefill: Optional[str] = "Let's think step by step."


@dataclass
class JudgeConfig(ApiConfig):
    """The reasoning judge (paper III-D "Reasoning Detail Evaluation"): Llama-3-8B-Instruct scoring
    Coherence, Relevance, Logical Consistency and Completeness 0-10 with the Table I prompt. Defaults:
    ``judge=openai`` (any OpenAI-compatible endpoint; the paper's model behind vLLM:
    ``vllm serve meta-llama/Meta-Llama-3-8B-Instruct``); conf/judge/local.yaml overrides them (``sert.judge``)."""

    _target_: str = "sert.judge.OpenAIJudge"  # sert.judge.OpenAIJudge | sert.judge.LocalJudge (alias HFJudge)
    name: str = "openai"
    api: str = "chat"  # chat | completions
    # paper III-D. judge=local: a conf/model name, a local dir or .gguf file, or a hub id; null = the run's `model`
    model: Optional[str] = "meta-llama/Meta-Llama-3-8B-Instruct"
    base_url: Optional[str] = "http://localhost:8000/v1"  # vLLM's default; null = api.openai.com
    temperature: float = 0.0  # paper silent; greedy for reproducible scores
    max_tokens: int = 512  # room for the four scores and the concluding statement
    timeout: float = 120.0
    template: str = TABLE_I  # the paper's Table I prompt, verbatim
    target: str = "predictions"  # predictions (evaluate) | candidates (generate) | selected (filter)
    input: Optional[str] = None  # or a JSONL file: question + output|text|completion (+ qid)
    limit: Optional[int] = None  # first N outputs
    sample: Optional[int] = None  # N questions at random (paper V / Fig. 1, 4: 100), all their outputs kept
    seed: int = 0
    retry_temperature: float = 0.7  # an unparsable reply is retried once, sampled at this temperature
    # judge=local (sert.judge.LocalJudge; conf/judge/local.yaml documents these)
    hf_device: str = "auto"  # the local model's device
    hf_batch_size: int = 4  # prompts per decoding batch (sorted by length, each batch cached before the next)
    backend: str = "torch"  # torch (sert.engine) | ctranslate2 (sert.ct2, optional)
    dtype: str = "auto"  # torch: auto | float32 | bfloat16 (resolved by sert.hardware.resolve_dtype)
    compute_type: str = "int8"  # ctranslate2 only
    chat_template: str = "auto"  # auto | true | false
    reply_format: str = "free"  # free | prefill | stepwise
    score_tokens: int = 4  # stepwise: new tokens per "- Score for X:" line


@dataclass
class LoggerConfig:
    """``logger`` group (``sert.tracking``). Logging never stops an experiment: if W&B fails (no network,
    bad key) the run warns once and goes on. ``logger=none`` uses only ``_target_``/``report_to``."""

    _target_: str = "sert.tracking.NullLogger"
    report_to: str = "none"  # what the HF Trainer reports to (trainer.report_to: ${logger.report_to})
    project: str = "sert"
    entity: Optional[str] = None  # your W&B team/user; null = the API key's default entity
    # auto: $WANDB_MODE if set, else online with $WANDB_API_KEY, else offline | online | offline | disabled
    mode: str = "auto"
    tags: List[str] = field(default_factory=list)  # extra tags; model/dataset/stage/filter tags are always added
    notes: Optional[str] = None
    max_table_rows: int = 200  # rows of predictions.jsonl / selected.jsonl per wandb.Table
    log_tables: bool = True  # filter funnel, predictions, selected paths, judge bins as tables
    log_manifest: bool = True  # run.json as a `manifest` artifact at the end of the run
    console: str = "off"  # W&B console capture: off | auto | wrap (the run's log file is in the run dir)
    init_timeout: float = 60.0  # seconds wandb.init may take before logging is given up for the run

"""Configs of the sampling-side steps: ``generation`` (II-A1), ``filter`` (II-A2) and ``evaluate`` (III-D)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from sert.config.data import DType


class GenerationMode(str, Enum):
    topk_alternatives = "topk_alternatives"  # II-A1: top-k first tokens, then sampling
    raw = "raw"  # Fig. 1 baseline: first_k*samples_per_token plain top-k/top-p samples


class GenerationBackend(str, Enum):
    hf = "hf"  # batched KV-cache sampler over a transformers model (sert.sampling.sample_batch)
    vllm = "vllm"  # optional extra for GPU machines
    ctranslate2 = "ctranslate2"  # optional extra sert[ct2]: CPU int8/fp32 kernels (sert.ct2.generate_ct2)

    def __str__(self) -> str:  # the value, also where ``${generation.backend}`` is interpolated into a string
        return self.value


@dataclass
class GenerationSampler:
    """The backend the generate step builds with ``hydra.utils.instantiate``; ``generation.backend`` picks it
    (or name a class of your own here, with ``sert.generate.HFBackend``'s constructor and call)."""

    _target_: str = "sert.generate.Backends.${..backend}"


@dataclass
class GenerationConfig:
    """Latent reasoning path generation (paper II-A1, III-A; ``sert.generate``). The prompt
    "Question: q Answer:" is encoded once per question; its top-``first_k`` first tokens each start
    ``samples_per_token`` sampled continuations (25 candidates per question with the paper's 5 x 5)."""

    mode: GenerationMode = GenerationMode.topk_alternatives
    first_k: int = 5  # III-A: "the top 5 tokens were selected" at the first decoding step
    samples_per_token: int = 5  # III-A: "from each token, 5 sequences were generated"
    top_k: int = 10  # III-A: top-k 10
    top_p: float = 0.95  # III-A: nucleus sampling, top-p 0.95
    temperature: float = 1.0  # paper silent; 1 = the model's own distribution (ppl is always at temperature 1)
    # Paper silent; its SERT paths average 145-160 tokens (Table II "Len"), so 256 (first token included)
    # lets such paths exist; clamped per question to the model's context (warning + generate/clamped_rows);
    # a prompt that alone fills the context is refused.
    max_new_tokens: int = 256
    stop: List[str] = field(default_factory=lambda: ["Question:"])  # a new question (imitation): cut before it
    # Questions per batch (x 25 rows each); sampling is seeded per question, so results do not depend on it
    # and it is not part of the cache key.
    batch_size: int = 8
    # The sampling seed (paths are seeded per question from it); null = the run's ``seed``. A study whose budget
    # allows one set of paths can fix it (generation.seed=0) so that its run seeds vary the training only.
    seed: Optional[int] = None
    backend: GenerationBackend = GenerationBackend.hf
    sampler: GenerationSampler = field(default_factory=GenerationSampler)  # built from ``backend``
    # backend=ctranslate2: float32 (ppl matches torch) | int8 (faster, but moves ppl: docs/generation-and-filters.md) | bfloat16
    ct2_compute_type: str = "float32"
    # The model's compute dtype while sampling. auto = bfloat16 only on hardware with fast bf16
    # (AVX512-BF16/AMX CPUs, bf16 GPUs), else float32; the RESOLVED dtype is in the cache key.
    # Log-probs / ppl are always computed in fp32 from the logits.
    dtype: DType = DType.auto


# ----------------------------------------------------------------------------- filters (II-A2, III-A)
# One dataclass per filter of the chain, registered under ``filter/schema/<name>`` (sert.schema) and
# listed by conf/filter/full.yaml. A new filter needs none: its YAML names its class and arguments.
@dataclass
class PatternFilterConfig:
    """Non-reasoning outputs of Fig. 2."""

    _target_: str = "sert.filters.PatternFilter"
    # III-A: outputs reproducing "Question: q Answer:" (case-insensitive)
    imitative: List[str] = field(default_factory=lambda: [r"Question\s*:", r"\bAnswer\s*:"])
    drop_stopped: bool = True  # a completion cut at a generation.stop string began a new question: imitative
    # direct response: <= 6 words and contains an option label "(B)", an option text or yes/no (or is
    # empty); extra full-match regexes may be added to direct_patterns
    direct_max_words: int = 6
    direct_patterns: List[str] = field(default_factory=list)
    # repetitive options: re-lists >= 3 distinct choices ("(A)" labels or option texts); 0 = off
    min_options_listed: int = 3
    option_label_re: str = r"\(([A-E])\)"


@dataclass
class LengthFilterConfig:
    _target_: str = "sert.filters.LengthFilter"
    min_tokens: int = 25  # III-A: "excluded sequences shorter than 25 tokens" (model tokens)


@dataclass
class Rep2FilterConfig:
    _target_: str = "sert.filters.Rep2Filter"
    max_rate: float = 0.20  # III-A: drop bi-gram repetition rate above 20%
    n: int = 2
    unit: str = "tokens"  # paper silent on the unit; model token ids (as the 25-token length) | words


@dataclass
class PerplexityFilterConfig:
    _target_: str = "sert.filters.PerplexityFilter"
    min_ppl: float = 5.0  # III-A: drop perplexity lower than 5 (completion tokens, unwarped distribution)


@dataclass
class SelectorConfig:
    """III-A: per question, the survivor with the lowest rep-2 (ties: lower first_token_rank, then sample)."""

    _target_: str = "sert.filters.Selector"
    n: int = "${filter.rep2.n}"  # type: ignore[assignment]
    unit: str = "${filter.rep2.unit}"
    strategy: str = "lowest_rep2"  # lowest_rep2 (III-A) | random: a seeded uniform draw among the survivors
    seed: int = "${seed}"  # type: ignore[assignment]  # random strategy: Random(seed, qid) per question


# ----------------------------------------------------------------------------- evaluate (III-D)
@dataclass
class EvaluateConfig:
    """Greedy decoding on the test split, answer extraction, Acc/Fmt/Len/Rep (paper III-D; ``sert.evaluate``)."""

    split: str = "test"
    limit: Optional[int] = None  # first N test records
    # a checkpoint dir (or a training cache entry); null = the model stage.evaluate_model names (run if needed)
    checkpoint: Optional[str] = None
    # prompt/output format; null = by the step that trained the checkpoint: self_train -> "Question: {q}.
    # Answer:", distill -> "... Answer: Let's think step by step.", label_only (finetune) -> "Question: {q}
    # Answer:"; base model -> self_train
    format: Optional[str] = None
    # paper silent; Table II's mean lengths reach 257 tokens, so leave ample room. Clamped per row to what
    # the model's context leaves after the (never cut) prompt
    max_new_tokens: int = 512
    label_only_max_new_tokens: int = 32  # a label-only model writes "(B) fridge" and stops
    # prompts per batch of the decoding engine (length-sorted, KV cache; not in the cache key): a decoding step's
    # matmuls run at their best from ~64 rows up (SmolLM2, bf16, one thread: 2.1x the tok/s of 16; docs/performance.md)
    batch_size: int = 64
    greedy: bool = True  # greedy decoding (false: nucleus sampling, top_p 0.95, seeded per batch)
    dtype: DType = DType.auto  # auto = bf16 only on hardware fast at it (AVX512-BF16/AMX, bf16 GPUs), else fp32
    fmt_rep_n: int = 3  # Fmt: an output is degenerate when its rep-n over model tokens ...
    fmt_max_rep: float = 0.3  # ... exceeds this (a loop repeats most of its trigrams; fluent text ~0-0.05)
    # Labelled addition, not the paper's: option-likelihood accuracy ``acc_option``, each answer option's
    # log-likelihood after "Question: {q} Answer:", argmax = the answer, as lm-evaluation-harness scores multiple
    # choice (sert.likelihood); shows knowledge a missing or cut answer sentence hides from strict/lenient Acc
    option_likelihood: bool = True

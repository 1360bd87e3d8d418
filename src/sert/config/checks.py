"""Value checks the schema's types cannot express (``first_k >= 1``, ``top_p`` in (0, 1], ...): made when a
run starts, before anything loads, so a nonsense value is one line instead of a silently wrong result
(0 training steps cached as a trained model, 0 candidates cached as a finished generation).

``RULES`` maps a dotted key to what its value must be. A key absent from the composed config (a custom
filter chain without ``length``, say) is not checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    must: str  # "an integer >= 1", said in the error

    def optional(self) -> Rule:
        return Rule(lambda v: v is None or self.ok(v), f"null or {self.must}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def at_least(n: float) -> Rule:
    return Rule(lambda v: _number(v) and v >= n, f">= {n}")


def above(n: float) -> Rule:
    return Rule(lambda v: _number(v) and v > n, f"> {n}")


def between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Rule:
    text = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return Rule(lambda v: _number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi), text)


COUNT, NONNEG = at_least(1), at_least(0)
TOP_P = between(0, 1, lo_open=True)  # 0 would keep no token: greedy decoding is top_k=1 / temperature 0
SHARE = between(0, 1)

_API = {"max_tokens": COUNT, "temperature": NONNEG, "top_p": TOP_P.optional(), "concurrency": COUNT,
        "timeout": above(0), "max_retries": NONNEG, "backoff_base": NONNEG, "backoff_max": NONNEG,
        "poll_interval": above(0), "batch_max_wait": above(0).optional(), "price_prompt": NONNEG,
        "price_completion": NONNEG, "batch_discount": between(0, 1, lo_open=True)}

RULES: dict[str, Rule] = {
    "seed": NONNEG,
    "generation.first_k": COUNT, "generation.samples_per_token": COUNT, "generation.top_k": NONNEG,
    "generation.top_p": TOP_P, "generation.temperature": above(0), "generation.max_new_tokens": COUNT,
    "generation.batch_size": COUNT,
    "filter.pattern.direct_max_words": NONNEG, "filter.pattern.min_options_listed": NONNEG,
    "filter.length.min_tokens": NONNEG, "filter.rep2.max_rate": SHARE, "filter.rep2.n": COUNT,
    "filter.perplexity.min_ppl": NONNEG,
    "trainer.batch_size": COUNT, "trainer.lr": above(0), "trainer.weight_decay": NONNEG,
    "trainer.adam_beta1": between(0, 1, hi_open=True), "trainer.adam_beta2": between(0, 1, hi_open=True),
    "trainer.warmup_ratio": SHARE, "trainer.max_grad_norm": NONNEG.optional(), "trainer.grad_accum": COUNT,
    "trainer.max_length": at_least(2), "trainer.eval_fraction": between(0, 1, hi_open=True),
    "trainer.eval_steps": COUNT, "trainer.save_steps": COUNT, "trainer.save_total_limit": COUNT.optional(),
    "trainer.logging_steps": COUNT,
    "evaluate.max_new_tokens": COUNT, "evaluate.label_only_max_new_tokens": COUNT,
    "evaluate.batch_size": COUNT, "evaluate.fmt_rep_n": COUNT, "evaluate.fmt_max_rep": SHARE,
    **{f"teacher.{k}": r for k, r in _API.items()},
    "teacher.n": COUNT, "teacher.answer_max_tokens": COUNT, "teacher.batch_size": COUNT, "teacher.top_k": NONNEG,
    **{f"judge.{k}": r for k, r in _API.items()},
    "judge.limit": COUNT.optional(), "judge.sample": COUNT.optional(), "judge.retry_temperature": NONNEG,
    "judge.hf_batch_size": COUNT, "judge.score_tokens": COUNT,
    "logger.max_table_rows": NONNEG, "logger.init_timeout": above(0),
}


def check_values(cfg: DictConfig) -> None:
    """Raise ``ValueError`` (one line: the key, what it must be, the value) for the first nonsense value."""
    for key, rule in RULES.items():
        node, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, node) if node else cfg
        if not OmegaConf.is_dict(parent) or leaf not in parent:
            continue
        value = parent[leaf]
        if not rule.ok(value):
            raise ValueError(f"{key} must be {rule.must}, got {value!r}")
    epochs, max_steps = OmegaConf.select(cfg, "trainer.epochs"), OmegaConf.select(cfg, "trainer.max_steps")
    if epochs is not None and max_steps is not None and not (epochs > 0 or max_steps > 0):
        raise ValueError(f"trainer.epochs must be > 0 (or trainer.max_steps > 0), got epochs={epochs!r} "
                         f"max_steps={max_steps!r}: the model would not be trained at all")

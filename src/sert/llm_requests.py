"""Requests to OpenAI-compatible endpoints as data: the request and its cache key, the response log,
error classification and backoff, cost. Used by ``sert.llm_client`` (the client) and the local backends of
the teacher and judge (which log their replies in the same ``ResponseCache``)."""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sert.artifacts import append_jsonl, read_jsonl_tolerant, stable_hash

SAMPLING_KEYS = ("temperature", "max_tokens", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


# ----------------------------------------------------------------------------- requests / results
@dataclass
class Request:
    """One call. ``body`` is exactly what is sent (model, prompt or messages, sampling params);
    ``index`` separates otherwise identical calls (sample i of n, retry attempt) in the cache key."""

    api: str  # "completions" | "chat"
    body: dict
    index: int = 0
    meta: dict = field(default_factory=dict)  # caller's bookkeeping (qid, sample, ...): not in the key

    @property
    def key(self) -> str:
        return stable_hash({"api": self.api, "body": self.body, "index": self.index}, length=24)


@dataclass
class Result:
    request: Request
    text: str | None = None
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)
    cached: bool = False
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def make_request(api: str, model: str, prompt: str, sampling: dict, index: int = 0, meta: dict | None = None) -> Request:
    """A completions (``prompt``) or chat (one user message) request with the given sampling params."""
    if api not in ("completions", "chat"):
        raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
    body: dict[str, Any] = {"model": model}
    body.update({"prompt": prompt} if api == "completions" else {"messages": [{"role": "user", "content": prompt}]})
    body.update({k: v for k, v in sampling.items() if k in SAMPLING_KEYS and v is not None})
    return Request(api, body, index, dict(meta or {}))


# ----------------------------------------------------------------------------- response cache
class ResponseCache:
    """Append-only JSONL log of responses keyed by request hash (last row per key wins)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.rows: dict[str, dict] = {r["key"]: r for r in read_jsonl_tolerant(self.path) if "key" in r}

    @classmethod
    def for_model(cls, cache_dir: str | os.PathLike, model: str) -> ResponseCache:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[-60:]
        return cls(Path(cache_dir) / "llm" / f"{slug}-{stable_hash(model, 8)}.jsonl")

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, row: dict) -> None:
        """Append atomically: one fsync'd line, under a thread lock and an inter-process file lock."""
        with self._lock, open(self.path.with_name(self.path.name + ".lock"), "w") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            append_jsonl(self.path, row)
            self.rows[row["key"]] = row


# ----------------------------------------------------------------------------- errors / backoff
class FatalAPIError(RuntimeError):
    """An error no retry can fix (bad key, unknown model, bad request): the run stops, cache kept."""


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms``; None if absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            return float(ms) / 1000
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(ra) if ra else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [d/2, d], d = min(cap, base * 2**attempt)."""
    d = min(cap, base * (2 ** attempt))
    return rng.uniform(d / 2, d)


def classify(exc: BaseException) -> tuple[str, bool, float | None]:
    """(error label, retryable?, Retry-After seconds) of an exception raised by the openai client."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True, None
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        ra = retry_after_seconds(exc.response.headers)
        if status == 429 or status == 408 or status == 409 or status >= 500:
            return f"http {status}", True, ra
        if status in (401, 403):
            raise FatalAPIError(f"authentication failed (HTTP {status}): check the API key env var") from exc
        return f"http {status}: {str(exc)[:200]}", False, None
    if isinstance(exc, (json.JSONDecodeError, ValueError, KeyError, IndexError, TypeError, AttributeError)):
        return f"malformed response: {type(exc).__name__}: {str(exc)[:120]}", True, None
    return f"{type(exc).__name__}: {str(exc)[:200]}", False, None


def estimate_cost(prompt_tokens: int, completion_tokens: int, price_prompt: float, price_completion: float,
                  discount: float = 1.0) -> float:
    """USD from per-1M-token prices (``discount`` 0.5 for the Batch API)."""
    return round((prompt_tokens * price_prompt + completion_tokens * price_completion) / 1e6 * discount, 6)


def sampling_params(cfg: Any) -> dict:
    """The request sampling parameters a teacher/judge config sets (``sert.config.api.ApiConfig``)."""
    return {k: getattr(cfg, k) for k in SAMPLING_KEYS if getattr(cfg, k, None) is not None}

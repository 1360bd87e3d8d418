"""One client for every OpenAI-compatible call of the project (teacher and judge): cached, concurrent,
retrying, resumable, and with a Batch-API path.

* **Response cache** (``ResponseCache``): every successful response is appended (fsync'd) to a JSONL log
  the moment it arrives, keyed by a hash of *what determines it* — API kind, model, prompt/messages,
  sampling parameters and a sample/attempt index — never the base URL or the key. The log lives at
  ``<cache_dir>/llm/<model>-<hash>.jsonl`` and is shared by every step config using that model, so a
  killed run, a rerun after failures, or another config asking for the same call never pays twice.
  Failures are not cached: a rerun retries exactly them.
* **Online mode** (``LLMClient.run``): a thread pool of ``concurrency`` workers over one ``openai.OpenAI``
  client with its own retries disabled; ours retry 429 / 5xx / timeouts / connection errors / malformed
  replies with exponential backoff and jitter, honouring ``Retry-After``. After ``max_retries`` the call
  is recorded as failed, counted and the run continues.
* **Batch mode** (``LLMClient.run_batch``): writes the Batch-API JSONL, uploads it, creates the batch,
  persists the batch id in ``state_dir`` and polls; a rerun polls the same batch instead of resubmitting.
  Its output is ingested into the same response cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sert.artifacts import read_json, write_json, write_jsonl
from sert.llm_requests import (SAMPLING_KEYS, FatalAPIError, Request, ResponseCache, Result,  # noqa: F401 (re-exported)
                               backoff_seconds, classify, estimate_cost, make_request, retry_after_seconds,
                               sampling_params)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the client
@dataclass
class Stats:
    requests: int = 0
    cache_hits: int = 0
    api_calls: int = 0  # HTTP attempts made (retries included)
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    new_prompt_tokens: int = 0
    new_completion_tokens: int = 0
    failures: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class LLMClient:
    """Cached, concurrent, retrying calls to an OpenAI-compatible endpoint."""

    def __init__(self, cache: ResponseCache, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 60.0, max_retries: int = 6, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, seed: int = 0, progress: bool = True):
        self.cache, self.base_url, self.api_key_env = cache, base_url, api_key_env
        self.concurrency, self.timeout, self.max_retries = max(1, concurrency), timeout, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.rng = random.Random(seed)
        self.progress = progress
        self.stats = Stats()
        self._client = None
        self._stats_lock = threading.Lock()
        self._batch_errors: dict[str, str] = {}

    # -- the openai client, built only when a call is needed ---------------------------------------
    @property
    def client(self):
        if self._client is None:
            import openai

            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            if not key:
                if self.base_url is None:
                    raise FatalAPIError(f"no API key: set the environment variable {self.api_key_env} "
                                        "(or point base_url at a local server that needs none)")
                if self.api_key_env:
                    log.warning("env var %s is not set: calling %s without a key", self.api_key_env, self.base_url)
                key = "EMPTY"
            self._client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0)
        return self._client

    # -- online mode ---------------------------------------------------------------------------------
    def run(self, requests: Iterable[Request]) -> list[Result]:
        """Results in request order: cached ones immediately, the rest over the thread pool."""
        requests = list(requests)
        results: list[Result | None] = [None] * len(requests)
        todo: list[int] = []
        for i, req in enumerate(requests):
            row = self.cache.get(req.key)
            if row is not None:
                results[i] = self._from_row(req, row, cached=True)
            else:
                todo.append(i)
        with self._stats_lock:
            self.stats.requests += len(requests)
            self.stats.cache_hits += len(requests) - len(todo)
        if todo:
            log.info("llm: %d requests, %d cached, %d to call (%d concurrent)", len(requests),
                     len(requests) - len(todo), len(todo), self.concurrency)
            _ = self.client  # fail fast on a missing key before spawning workers
            with ThreadPoolExecutor(self.concurrency) as pool, _progress(len(todo), self.progress) as bar:
                futures = {pool.submit(self._call, requests[i]): i for i in todo}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
        for r in results:
            self._account(r)
        return results  # type: ignore[return-value]

    def _call(self, req: Request) -> Result:
        attempt, last = 0, ""
        while True:
            with self._stats_lock:
                self.stats.api_calls += 1
            try:
                resp = self._send(req)
                text, finish, usage = _parse_response(req.api, resp)
                row = {"key": req.key, "api": req.api, "request": req.body, "index": req.index, "text": text,
                       "finish_reason": finish, "usage": usage, "time": round(time.time(), 3)}
                self.cache.put(row)
                return self._from_row(req, row, cached=False, attempts=attempt + 1)
            except FatalAPIError:
                raise
            except Exception as exc:  # noqa: BLE001 — classified below; unknown errors are not retried
                last, retryable, retry_after = classify(exc)
            if not retryable or attempt >= self.max_retries:
                log.warning("llm: request %s failed after %d attempt(s): %s", req.key, attempt + 1, last)
                return Result(req, error=last, attempts=attempt + 1)
            wait = retry_after if retry_after is not None else backoff_seconds(attempt, self.backoff_base, self.backoff_max, self.rng)
            log.info("llm: %s on %s, retry %d/%d in %.2fs", last, req.key, attempt + 1, self.max_retries, wait)
            with self._stats_lock:
                self.stats.retries += 1
            time.sleep(wait)
            attempt += 1

    def _send(self, req: Request):
        if req.api == "chat":
            return self.client.chat.completions.create(**req.body)
        return self.client.completions.create(**req.body)

    # -- batch mode -----------------------------------------------------------------------------------
    def run_batch(self, requests: Iterable[Request], state_dir: str | os.PathLike, *, poll_interval: float = 30.0,
                  max_wait: float | None = None, completion_window: str = "24h") -> list[Result]:
        """The Batch-API path: submit what the cache lacks as one batch, poll, ingest, return results.

        The batch id is persisted in ``state_dir/batch.json`` before polling: a rerun (after a kill or a
        ``max_wait`` timeout) polls the same batch. Once ingested the state moves to ``batch-<id>.json``."""
        requests = list(requests)
        missing = list({r.key: r for r in requests if self.cache.get(r.key) is None}.values())
        state_path = Path(state_dir) / "batch.json"
        if missing or state_path.exists():
            state = read_json(state_path) if state_path.exists() else self._submit_batch(missing, Path(state_dir), completion_window)
            if not state_path.exists():
                write_json(state_path, state)
            self._await_and_ingest(state, {r.key: r for r in requests}, poll_interval, max_wait)
            state_path.rename(state_path.with_name(f"batch-{state['batch_id']}.json"))
        results, submitted = [], {m.key for m in missing}
        for req in requests:
            row = self.cache.get(req.key)
            hit = row is not None and req.key not in submitted
            results.append(self._from_row(req, row, cached=hit) if row else
                           Result(req, error=self._batch_errors.get(req.key, "missing from batch output")))
        with self._stats_lock:
            self.stats.requests += len(requests)
            self.stats.cache_hits += sum(r.cached for r in results)
        for r in results:
            self._account(r)
        return results

    def _submit_batch(self, missing: list[Request], state_dir: Path, window: str) -> dict:
        endpoints = {r.api for r in missing}
        if len(endpoints) != 1:
            raise ValueError(f"one batch serves one endpoint; got {sorted(endpoints)}")
        url = "/v1/chat/completions" if endpoints == {"chat"} else "/v1/completions"
        path = write_jsonl(state_dir / "batch_input.jsonl", (
            {"custom_id": r.key, "method": "POST", "url": url, "body": r.body} for r in missing))
        with open(path, "rb") as f:
            file = self.client.files.create(file=f, purpose="batch")
        batch = self.client.batches.create(input_file_id=file.id, endpoint=url, completion_window=window)
        log.info("llm batch: submitted %s (%d requests, input file %s)", batch.id, len(missing), file.id)
        self.stats.api_calls += 2
        return {"batch_id": batch.id, "input_file_id": file.id, "endpoint": url, "requests": len(missing),
                "submitted": round(time.time(), 3)}

    def _await_and_ingest(self, state: dict, by_key: dict[str, Request], poll: float, max_wait: float | None) -> None:
        start = time.time()
        while True:
            batch = self.client.batches.retrieve(state["batch_id"])
            self.stats.api_calls += 1
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                break
            if max_wait is not None and time.time() - start > max_wait:
                raise TimeoutError(f"batch {state['batch_id']} still {batch.status} after {max_wait}s; "
                                   "rerun the same command to keep polling it (nothing is resubmitted)")
            log.info("llm batch %s: %s %s", batch.id, batch.status, getattr(batch, "request_counts", "") or "")
            time.sleep(poll)
        log.info("llm batch %s: %s", batch.id, batch.status)
        self._batch_errors = {}
        if batch.status != "completed":
            self._batch_errors = {k: f"batch {batch.status}" for k in by_key}
        for file_id in (batch.output_file_id, getattr(batch, "error_file_id", None)):
            if file_id:
                self._ingest_batch_file(self.client.files.content(file_id).text, by_key)

    def _ingest_batch_file(self, text: str, by_key: dict[str, Request]) -> None:
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, resp = row["custom_id"], row.get("response") or {}
            except (json.JSONDecodeError, KeyError) as e:
                log.warning("llm batch: skipping malformed output line (%s)", e)
                continue
            req = by_key.get(key)
            if req is None:
                continue
            if row.get("error") or resp.get("status_code", 200) >= 400:
                self._batch_errors[key] = f"batch error: {json.dumps(row.get('error') or resp.get('body'))[:200]}"
                continue
            try:
                text_, finish, usage = _parse_body(req.api, resp["body"])
            except (KeyError, IndexError, TypeError) as e:
                self._batch_errors[key] = f"malformed batch response: {e}"
                continue
            self.cache.put({"key": key, "api": req.api, "request": req.body, "index": req.index, "text": text_,
                            "finish_reason": finish, "usage": usage, "batch": True, "time": round(time.time(), 3)})

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _from_row(self, req: Request, row: dict, *, cached: bool, attempts: int = 0) -> Result:
        return Result(req, text=row["text"], finish_reason=row.get("finish_reason"), usage=row.get("usage") or {},
                      cached=cached, attempts=attempts)

    def _account(self, r: Result) -> None:
        with self._stats_lock:
            s = self.stats
            if not r.ok:
                s.failed += 1
                s.failures.append({"key": r.request.key, **r.request.meta, "error": r.error, "attempts": r.attempts})
                return
            p, c = int(r.usage.get("prompt_tokens") or 0), int(r.usage.get("completion_tokens") or 0)
            s.prompt_tokens += p
            s.completion_tokens += c
            if not r.cached:
                s.new_prompt_tokens += p
                s.new_completion_tokens += c


# ----------------------------------------------------------------------------- parsing replies
def _parse_response(api: str, resp: Any) -> tuple[str, str | None, dict]:
    if isinstance(resp, str):  # a non-JSON body that the client returned as text
        raise ValueError(f"response is not JSON: {resp[:80]!r}")
    return _parse_body(api, resp.model_dump() if hasattr(resp, "model_dump") else resp)


def _parse_body(api: str, body: dict) -> tuple[str, str | None, dict]:
    choice = body["choices"][0]
    text = choice["message"]["content"] if api == "chat" else choice["text"]
    if not isinstance(text, str):
        raise TypeError(f"reply text is {type(text).__name__}, not a string")
    usage = body.get("usage") or {}
    return text, choice.get("finish_reason"), {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens")}


@contextlib.contextmanager
def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n: int) -> None:
                pass
        yield _Null()
        return
    with tqdm(total=total, desc="llm calls", mininterval=2.0) as bar:
        yield bar


def client_from_config(cfg: Any, cache_dir: str | os.PathLike, *, seed: int = 0) -> LLMClient:
    """An ``LLMClient`` for a teacher/judge config (``sert.config.api.ApiConfig``)."""
    return LLMClient(ResponseCache.for_model(cache_dir, cfg.model), base_url=cfg.base_url,
                     api_key_env=cfg.api_key_env or "", concurrency=cfg.concurrency, timeout=cfg.timeout,
                     max_retries=cfg.max_retries, backoff_base=cfg.backoff_base, backoff_max=cfg.backoff_max,
                     seed=seed)


def run_requests(client: LLMClient, reqs: list[Request], cfg: Any, state_dir: Path, what: str) -> list[Result]:
    """``reqs`` online or through the Batch API, as ``cfg.mode`` says (``what``: the config group, for errors)."""
    if cfg.mode == "batch":
        state_dir.mkdir(parents=True, exist_ok=True)
        return client.run_batch(reqs, state_dir, poll_interval=cfg.poll_interval, max_wait=cfg.batch_max_wait)
    if cfg.mode == "online":
        return client.run(reqs)
    raise ValueError(f"{what}.mode must be online or batch, got {cfg.mode!r}")


def api_stats(client: LLMClient, cfg: Any) -> dict:
    """The client's counts with the estimated cost of all calls (``est_cost_usd``, cached ones included)
    and of this run's new calls (``new_cost_usd``), at the config's prices; the first 100 failures."""
    st = client.stats.as_dict()
    discount = cfg.batch_discount if cfg.mode == "batch" else 1.0
    for key, prompt, completion in (("est_cost_usd", "prompt_tokens", "completion_tokens"),
                                    ("new_cost_usd", "new_prompt_tokens", "new_completion_tokens")):
        st[key] = estimate_cost(st[prompt], st[completion], cfg.price_prompt, cfg.price_completion, discount)
    st["failures"] = st["failures"][:100]
    return st

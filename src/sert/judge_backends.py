"""Judge backends, built from ``judge._target_`` (``hydra.utils.instantiate``): ``OpenAIJudge`` (any
OpenAI-compatible endpoint, through ``sert.llm_client``) and ``LocalJudge`` (a local causal LM on
``sert.engine`` or ``sert.ct2``). Both give ``identity()`` (for the cache key), ``generate(prompts, attempt,
temperature, state_dir) -> [(reply, error)]`` and ``stats()``, and log every reply in a response cache."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from sert import faults
from sert.artifacts import stable_hash
from sert.config.api import JudgeConfig
from sert.engine import Decoded, DecodeStats, decode
from sert.llm_client import LLMClient, api_stats, client_from_config, run_requests
from sert.llm_requests import Request, ResponseCache, make_request, sampling_params

log = logging.getLogger(__name__)


class OpenAIJudge:
    """Judge through any OpenAI-compatible endpoint (``judge=openai``)."""

    def __init__(self, *, cache_dir: str, seed: int = 0, model_kwargs: dict | None = None,
                 model_identity: dict | None = None, **settings: Any):
        self.cfg = JudgeConfig(**settings)
        if not self.cfg.model:
            raise ValueError("judge.model must name the endpoint's model for judge=openai")
        self.client: LLMClient = client_from_config(self.cfg, cache_dir, seed=seed)

    def identity(self) -> dict:
        return {"backend": "openai", "api": self.cfg.api, "model": self.cfg.model,
                "sampling": sampling_params(self.cfg)}

    def generate(self, prompts: list[str], attempt: int, temperature: float, state_dir: Path) -> list[tuple[str | None, str | None]]:
        """(reply, error) per prompt; ``attempt`` separates the retry's cache key."""
        sampling = {**sampling_params(self.cfg), "temperature": temperature}
        reqs = [make_request(self.cfg.api, self.cfg.model, p, sampling, index=attempt, meta={"item": i})
                for i, p in enumerate(prompts)]
        results = run_requests(self.client, reqs, self.cfg, state_dir, "judge")
        return [(r.text, r.error) for r in results]

    def stats(self) -> dict:
        return api_stats(self.client, self.cfg)


SCORE_LINES = tuple(f"- Score for {name}:"
                    for name in ("Coherence", "Relevance", "Logical Consistency", "Completeness"))  # Table I
REPLY_FORMATS = ("free", "prefill", "stepwise")


class LocalJudge:
    """Judge with a local causal LM on the project's decoding engine (``judge=local``; ``judge=hf`` is an alias).

    ``judge.model``: a ``conf/model`` name, a local dir / .gguf file or a hub id (``sert.models.model_spec``);
    null judges with the run's ``model``. The Table I prompt goes in the chat template's user turn when
    the tokenizer has one (``judge.chat_template``: auto | true | false), else it is the raw prompt.
    ``judge.reply_format`` shapes the reply (the prompt itself stays Table I verbatim):
      * ``free``     — the model writes the whole reply (the paper's setting);
      * ``prefill``  — the reply is opened with ``- Score for Coherence:`` and the model continues it;
      * ``stepwise`` — each of the four ``- Score for X:`` lines of Table I is written into the reply in turn
        and the model adds only its score (``judge.score_tokens`` tokens, cut at the line end); small
        models that drift in a free reply still give a parseable number per criterion.
    Prompts are batched (``hf_batch_size``) in length order; each finished batch's replies go to the
    response log (``<cache_dir>/llm/local-*.jsonl``), so a killed run resumes and a rerun loads no model."""

    def __init__(self, *, cache_dir: str, seed: int = 0, model_kwargs: dict | None = None,
                 model_identity: dict | None = None, **settings: Any):
        from sert.hardware import resolve_dtype
        from sert.models import model_spec, resolve_device

        self.cfg = cfg = JudgeConfig(**settings)
        self.seed, self.cache_dir = seed, cache_dir
        if cfg.reply_format not in REPLY_FORMATS:
            raise ValueError(f"judge.reply_format must be one of {REPLY_FORMATS}, got {cfg.reply_format!r}")
        self.chat = str(cfg.chat_template).lower()
        if self.chat not in ("auto", "true", "false"):
            raise ValueError(f"judge.chat_template must be auto, true or false, got {cfg.chat_template!r}")
        if cfg.backend not in ("torch", "ctranslate2"):
            raise ValueError(f"judge.backend must be torch or ctranslate2, got {cfg.backend!r}")
        device = cfg.hf_device
        if cfg.model:
            spec = model_spec(cfg.model)
            self.model_kwargs = {**spec, "device": device}
            self.model_id: Any = {k: v for k, v in spec.items() if k not in ("device", "dtype")}
        else:
            self.model_kwargs = {**(model_kwargs or {}), "device": device}
            self.model_id = model_identity
        torch_backend = cfg.backend == "torch"
        self.precision = (resolve_dtype(str(cfg.dtype), resolve_device(device)) if torch_backend
                          else cfg.compute_type)
        if torch_backend:
            self.model_kwargs["dtype"] = self.precision
        self.cache = ResponseCache.for_model(cache_dir, "local-" + stable_hash([self.model_id, self.precision]))
        self._decoder = None
        self.counts = {"requests": 0, "cache_hits": 0, "generated": 0}
        self.decoding = DecodeStats()

    def identity(self) -> dict:
        c = self.cfg
        return {"backend": "local", "engine": c.backend, "model": self.model_id, "precision": self.precision,
                "max_tokens": c.max_tokens, "temperature": c.temperature, "chat_template": self.chat,
                "reply_format": c.reply_format, "score_tokens": c.score_tokens}

    def generate(self, prompts: list[str], attempt: int, temperature: float, state_dir: Path) -> list[tuple[str | None, str | None]]:
        """(reply, None) per prompt; decoded in batches, each batch cached before the next starts."""
        body = {k: v for k, v in self.identity().items() if k not in ("temperature", "backend")}
        reqs = [Request("local", {**body, "prompt": p, "temperature": temperature}, index=attempt) for p in prompts]
        todo = [i for i, r in enumerate(reqs) if self.cache.get(r.key) is None]
        self.counts["requests"] += len(reqs)
        self.counts["cache_hits"] += len(reqs) - len(todo)
        if todo:
            todo.sort(key=lambda i: -len(prompts[i]))  # similar lengths share a batch
            bs = max(1, self.cfg.hf_batch_size)
            for start in _progress_range(0, len(todo), bs, "local judge"):
                chunk = todo[start:start + bs]
                replies = self._replies([prompts[i] for i in chunk], temperature, self.seed + attempt * 100_003 + start)
                for i, text in zip(chunk, replies):
                    self.cache.put({"key": reqs[i].key, "api": "local", "request": reqs[i].body, "index": attempt,
                                    "text": text})
                self.counts["generated"] += len(chunk)
                faults.reached("judge.batch_saved")
        return [(self.cache.get(r.key)["text"], None) for r in reqs]

    def _replies(self, prompts: list[str], temperature: float, seed: int) -> list[str]:
        decoder = self._load()
        texts = [self._wrap(decoder.tok, p) for p in prompts]
        fmt, sampling = self.cfg.reply_format, {"temperature": temperature, "seed": seed}
        if fmt == "stepwise":
            replies = [""] * len(prompts)
            for line in SCORE_LINES:
                outs = decoder.decode([t + r + line for t, r in zip(texts, replies)], stop=["\n"],
                                      max_new_tokens=self.cfg.score_tokens, min_new_tokens=self.cfg.score_tokens,
                                      **sampling)
                replies = [r + line + o.text.split("\n")[0] + "\n" for r, o in zip(replies, outs)]
            return [r.rstrip("\n") for r in replies]
        prefix = SCORE_LINES[0] if fmt == "prefill" else ""
        room = self.cfg.max_tokens if decoder.ctx is None else min(self.cfg.max_tokens, decoder.ctx // 2)
        outs = decoder.decode([t + prefix for t in texts], max_new_tokens=self.cfg.max_tokens,
                              min_new_tokens=room, **sampling)
        return [prefix + o.text for o in outs]

    def _wrap(self, tok, prompt: str) -> str:
        """The Table I prompt as the model sees it: in the chat template's user turn, or raw (+ a newline
        before a prefilled reply)."""
        has = bool(getattr(tok, "chat_template", None))
        if self.chat == "true" and not has:
            raise ValueError("judge.chat_template=true but the judge model's tokenizer has no chat template "
                             "(use auto or false)")
        if has and self.chat != "false":
            return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
        return prompt + ("\n" if self.cfg.reply_format != "free" else "")

    def _load(self) -> LocalDecoder:
        if self._decoder is None:
            self._decoder = LocalDecoder(self.cfg.backend, self.model_kwargs, self.cfg.compute_type,
                                         self.cache_dir, self.decoding)
        return self._decoder

    def stats(self) -> dict:
        return {**self.counts, "engine": self.cfg.backend, "precision": self.precision,
                "decoding": self.decoding.as_dict()}


class LocalDecoder:
    """The one place a local backend is chosen: ``torch`` (``sert.engine.decode`` on a transformers model)
    or ``ctranslate2`` (``sert.ct2.decode_ct2``, optional). ``decode(prompts, **kw)`` -> list[Decoded]."""

    def __init__(self, backend: str, model_kwargs: dict, compute_type: str, cache_dir: str, stats: DecodeStats):
        self.stats, self.ctx = stats, None
        if backend == "torch":
            from sert.engine import context_length
            from sert.models import load_model

            model, self.tok = load_model(**model_kwargs)
            self.ctx = context_length(model)
            self._decode = functools.partial(decode, model, self.tok)
            return
        try:
            from sert.ct2 import decode_ct2
        except ImportError as e:
            raise ImportError("judge.backend=ctranslate2 needs sert.ct2 and the ctranslate2 package "
                              "(pip install 'sert[ct2]'); use judge.backend=torch otherwise") from e
        from sert.models import tokenizer_for

        kw = {k: v for k, v in model_kwargs.items() if k not in ("dtype", "device")}
        self.tok = tokenizer_for(kw)
        self._decode = functools.partial(decode_ct2, kw, compute_type=compute_type, cache_dir=cache_dir)

    def decode(self, prompts: list[str], **kw: Any) -> list[Decoded]:
        return self._decode(prompts, batch_size=len(prompts), desc="judge", stats=self.stats, **kw)


HFJudge = LocalJudge  # the former name (judge=hf configs)


def _progress_range(start: int, stop: int, step: int, desc: str):
    from tqdm import tqdm

    return tqdm(range(start, stop, step), desc=desc, disable=stop - start <= step, mininterval=2.0)

"""Teacher backends, built from ``teacher._target_`` (``hydra.utils.instantiate``): ``ApiTeacher`` (an
OpenAI-compatible endpoint through ``sert.llm_client``) and ``LocalTeacher`` (a local causal LM on
``sert.engine`` or ``sert.ct2``). Both give ``material(prompts, seed)`` (what determines their rows, for the
cache key) and ``collect(records, prompts, dir) -> (rows, stats)``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sert import faults
from sert.artifacts import stable_hash, write_jsonl
from sert.config.api import TeacherConfig
from sert.data import Record
from sert.engine import DecodeStats, context_length, decode
from sert.llm_client import LLMClient, api_stats, client_from_config, run_requests
from sert.llm_requests import Request, ResponseCache, make_request, sampling_params
from sert.models import tokenizer_for, weights_identity
from sert.teacher_data import teacher_rows

log = logging.getLogger(__name__)


class ApiTeacher:
    """The teacher behind an OpenAI-compatible endpoint (``teacher=openai`` / ``llamacpp``): cached,
    concurrent, retried calls, online or through the Batch API (``teacher.mode``)."""

    def __init__(self, *, cache_dir: str, seed: int = 0, **settings: Any):
        self.t = TeacherConfig(**settings)
        if self.t.backend != "api":
            raise ValueError(f"teacher.backend={self.t.backend} runs a local model: use teacher=local "
                             f"(teacher.backend=torch|ctranslate2)")
        self.cache_dir, self.seed = cache_dir, seed

    def material(self, prompts, seed: int) -> dict:
        t = self.t
        material = {"api": t.api, "model": t.model, "sampling": sampling_params(t), "n": t.n,
                    "prompt": prompts.teacher, "keep": t.keep}
        if t.answer_prompt:
            material["answer"] = [t.answer_prompt, t.answer_max_tokens]
        return material

    def collect(self, records: list[Record], prompts, d: Path, wall_start: float) -> tuple[list[dict], dict]:
        client = client_from_config(self.t, self.cache_dir, seed=self.seed)
        rows = collect(client, records, prompts, self.t, d)
        write_jsonl(d / "failures.jsonl", client.stats.failures)
        return rows, {**api_stats(client, self.t), "cache_file": str(client.cache.path)}


def collect(client: LLMClient, records: list[Record], prompts, t: TeacherConfig, state_dir: Path) -> list[dict]:
    """Call the teacher for every (record, sample), then the answer step if configured; rows for the
    successful calls."""
    sampling = sampling_params(t)
    if t.n > 1 and not t.temperature:
        log.warning("teacher.n=%d at temperature 0: the samples will be (nearly) identical", t.n)
    if t.answer_prompt and t.api != "completions":
        raise ValueError("teacher.answer_prompt needs teacher.api=completions (a chat endpoint cannot continue "
                         "the assistant's reasoning); set teacher.answer_prompt=null for a one-step teacher")
    reqs = [make_request(t.api, t.model, prompts.teacher_prompt(rec), sampling, index=s,
                         meta={"qid": rec.qid, "sample": s})
            for rec in records for s in range(t.n)]
    results = [r for r in run_requests(client, reqs, t, state_dir, "teacher") if r.ok]
    answers: dict[str, str] = {}
    if t.answer_prompt:
        step2 = [make_request(t.api, t.model, r.request.body["prompt"] + r.text + t.answer_prompt,
                              {**sampling, "max_tokens": t.answer_max_tokens}, index=r.request.index,
                              meta=r.request.meta) for r in results]
        answers = {a.request.meta["qid"] + f"/{a.request.meta['sample']}": a.text
                   for a in run_requests(client, step2, t, state_dir / "answer", "teacher") if a.ok}
    by_qid = {r.qid: r for r in records}
    rows = []
    for res in results:
        qid, s = res.request.meta["qid"], res.request.meta["sample"]
        if t.answer_prompt and f"{qid}/{s}" not in answers:
            continue  # its answer call failed (counted): retried by a rerun
        rows.append(teacher_rows(by_qid[qid], s, res.text, answers.get(f"{qid}/{s}"), finish_reason=res.finish_reason))
    return rows


class LocalTeacher:
    """A local causal LM as the teacher (``teacher.backend=torch|ctranslate2``), zero-shot-CoT in one or
    two steps. Every decoded prompt goes to a response cache (one fsync'd line per prompt, written after
    each batch), keyed by the model's identity, the exact text the model sees and the decoding settings:
    a killed run decodes only what is missing, and a rerun with everything cached loads no model."""

    def __init__(self, *, cache_dir: str, seed: int = 0, **settings: Any):
        self.t = t = TeacherConfig(**settings)
        self.seed, self.cache_dir = seed, cache_dir
        if t.backend not in ("torch", "ctranslate2"):
            raise ValueError(f"teacher=local: teacher.backend must be torch or ctranslate2, got {t.backend!r} "
                             "(an OpenAI-compatible endpoint: teacher=openai)")
        self.spec = local_model_spec(t.model)
        self.device = t.device
        if t.backend == "torch":
            from sert.hardware import resolve_dtype
            from sert.models import resolve_device

            self.device = str(resolve_device(t.device))
            self.spec["dtype"] = resolve_dtype(t.dtype, self.device)
            precision = self.spec["dtype"]
        else:
            precision = t.compute_type
        self.identity = {"backend": t.backend, "precision": precision, **weights_identity(self.spec)}
        self.cache = ResponseCache.for_model(cache_dir, "local-" + stable_hash(self.identity))
        self.stats = DecodeStats()
        self.counts = {"requests": 0, "cache_hits": 0}
        self._model = self._tok = None

    def material(self, prompts, seed: int) -> dict:
        t = self.t
        return {"local": self.identity, "n": t.n, "prompt": prompts.teacher, "keep": t.keep,
                "sampling": {"temperature": t.temperature, "max_tokens": t.max_tokens, "top_p": t.top_p,
                             "top_k": t.top_k, "stop": t.stop},
                "seed": seed if t.temperature else None,
                "answer": [t.answer_prompt, t.answer_max_tokens] if t.answer_prompt else None,
                "chat": [t.chat_template, t.chat_prefill]}

    def collect(self, records: list[Record], prompts, d: Path, wall_start: float) -> tuple[list[dict], dict]:
        rows = collect_local(self, records, prompts, self.t)
        return rows, _local_stats(self, rows, self.t, time.perf_counter() - wall_start)

    # -- model / tokenizer, loaded only when needed -------------------------------------------------
    def tokenizer(self):
        """The model's tokenizer, without loading the model (prompts are rendered before any decoding)."""
        if self._tok is None:
            self._tok = tokenizer_for(self.spec)
        return self._tok

    def _load(self):
        if self._model is None:
            from sert.models import load_model

            t0 = time.perf_counter()
            self._model, self._tok = load_model(**self.spec, device=self.device)
            log.info("teacher model %s loaded in %.1fs (%s)", self.t.model, time.perf_counter() - t0,
                     self.spec["dtype"])
        return self._model, self._tok

    def context(self) -> int | None:
        if self.t.backend == "torch":
            return context_length(self._load()[0])
        if self.spec.get("random_init"):
            return self.spec["random_init"].get("n_positions")
        try:
            from transformers import AutoConfig

            kw = {"gguf_file": self.spec["gguf_file"]} if self.spec.get("gguf_file") else {}
            return context_length(type("M", (), {"config": AutoConfig.from_pretrained(self.spec["name_or_path"], **kw)}))
        except Exception as e:  # noqa: BLE001 — the check is a courtesy; decoding still clamps
            log.debug("teacher: context length unknown (%s)", e)
            return None

    # -- prompts ---------------------------------------------------------------------------------------
    def render(self, prompt: str) -> str:
        """The text the model continues: the chat template around the user turn, the assistant turn
        opened with ``chat_prefill`` (see conf/teacher/local.yaml), or the raw prompt."""
        tok = self.tokenizer()
        if not (self.t.chat_template and getattr(tok, "chat_template", None)):
            return prompt
        user, prefill = prompt, ""
        marker = self.t.chat_prefill
        if marker and marker in prompt:
            cut = prompt.rindex(marker)
            user, prefill = prompt[:cut].strip(), prompt[cut:]
        head = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
        return head + prefill

    # -- decoding ----------------------------------------------------------------------------------------
    def complete(self, texts: list[str], *, max_tokens: int, stop: list[str], index: int, labels: list[str],
                 check_fits: bool) -> list[dict]:
        """Cached continuations of ``texts`` (rows with text, finish_reason, usage)."""
        t = self.t
        params = {"max_tokens": max_tokens, "temperature": t.temperature, "top_p": t.top_p,
                  "top_k": t.top_k, "stop": stop}
        if t.temperature:
            params["seed"] = self.seed  # greedy replies do not depend on it
        reqs = [Request("local", {"model": self.identity, "prompt": x, **params}, index=index) for x in texts]
        todo = [i for i, r in enumerate(reqs) if self.cache.get(r.key) is None]
        self.counts["requests"] += len(reqs)
        self.counts["cache_hits"] += len(reqs) - len(todo)
        if todo:
            if check_fits:
                self._check_fits([texts[i] for i in todo], [labels[i] for i in todo])

            def save(idx: list[int], outs: list) -> None:
                for i, d in zip(idx, outs):
                    self.cache.put({"key": reqs[i].key, "api": "local", "request": reqs[i].body, "index": index,
                                    "text": d.text, "finish_reason": d.finish_reason, "time": round(time.time(), 3),
                                    "usage": {"prompt_tokens": d.prompt_tokens, "completion_tokens": d.num_tokens}})
                faults.reached("teacher.batch_saved")

            skip = frozenset(range(len(texts))) - set(todo)
            self._decode(texts, max_tokens, stop, index, save, skip)
        return [self.cache.get(r.key) for r in reqs]

    def _check_fits(self, texts: list[str], labels: list[str]) -> None:
        ctx = self.context()
        if ctx is None:
            return
        tok = self.tokenizer()
        for text, label in zip(texts, labels):
            n = len(tok(text, add_special_tokens=False)["input_ids"])
            if n >= ctx:
                raise ValueError(f"teacher.model={self.t.model}: its context is {ctx} tokens but the teacher "
                                 f"prompt of {label} is {n} tokens; use a model with a longer context or a "
                                 "shorter prompts.teacher")

    def _decode(self, texts, max_tokens, stop, index, save, skip) -> None:
        t = self.t
        kw = dict(max_new_tokens=max_tokens, batch_size=t.batch_size, temperature=t.temperature or 0.0,
                  top_p=t.top_p or 1.0, top_k=t.top_k or 0, stop=stop or [],
                  seed=self.seed + 1_000_003 * index, on_batch=save, skip=skip, stats=DecodeStats())
        if t.backend == "torch":
            model, tok = self._load()
            decode(model, tok, texts, desc="teacher", **kw)
        else:
            try:
                from sert.ct2 import decode_ct2
            except ImportError as e:
                raise RuntimeError(f"teacher.backend=ctranslate2 needs sert.ct2 and `pip install ctranslate2` ({e}); "
                                   "or use teacher.backend=torch") from None
            decode_ct2(self.spec, texts, compute_type=t.compute_type, cache_dir=self.cache_dir, **kw)
        for name in ("prompts", "new_tokens", "clamped", "truncated_prompts", "seconds"):  # per call: the bar's tok/s
            setattr(self.stats, name, getattr(self.stats, name) + getattr(kw["stats"], name))


def local_model_spec(ref: str) -> dict:
    """``load_model`` kwargs for ``teacher.model``; a GGUF file that is not there is one clear error."""
    from sert.models import model_spec

    if not ref:
        raise ValueError("teacher.model is empty: name a model config, a local dir or .gguf file, or a hub id")
    spec = model_spec(ref)
    if spec.get("gguf_file"):
        path = Path(spec["name_or_path"]) / spec["gguf_file"]
        if not path.is_file():
            hint = (" (make it with experiments/get_qwen_teacher.sh, see docs/teacher-and-judge.md, \"Distillation without an API\")"
                    if spec["gguf_file"] == QWEN_GGUF else "")
            raise FileNotFoundError(f"teacher.model={ref}: model file {path} not found{hint}")
    spec.pop("name", None)
    return spec


QWEN_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def collect_local(teacher: LocalTeacher, records: list[Record], prompts, t: TeacherConfig) -> list[dict]:
    """Step 1 (reasoning) for every (record, sample), then step 2 (answer) if ``answer_prompt`` is set."""
    if t.n > 1 and not t.temperature:
        log.warning("teacher.n=%d at temperature 0: the samples will be (nearly) identical", t.n)
    texts = [teacher.render(prompts.teacher_prompt(rec)) for rec in records]
    labels = [f"question {rec.qid}" for rec in records]
    done = []
    for s in range(t.n):
        step1 = teacher.complete(texts, max_tokens=t.max_tokens, stop=t.stop or [], index=s, labels=labels,
                                 check_fits=True)
        step2: list[dict | None] = [None] * len(records)
        if t.answer_prompt:
            follow = [x + r["text"] + t.answer_prompt for x, r in zip(texts, step1)]
            step2 = teacher.complete(follow, max_tokens=t.answer_max_tokens, stop=[], index=s, labels=labels,
                                     check_fits=False)
        done.append((step1, step2))
    rows = []
    for i, rec in enumerate(records):
        for s, (step1, step2) in enumerate(done):
            r1, r2 = step1[i], step2[i]
            used = [r["usage"] for r in (r1, r2) if r]
            rows.append(teacher_rows(rec, s, r1["text"], r2["text"] if r2 else None, finish_reason=r1["finish_reason"],
                                     prompt_tokens=sum(u["prompt_tokens"] for u in used),
                                     completion_tokens=sum(u["completion_tokens"] for u in used)))
    return rows


def _local_stats(teacher: LocalTeacher, rows: list[dict], t: TeacherConfig, wall: float) -> dict:
    st = teacher.stats
    return {"backend": t.backend, "model": t.model, "model_identity": teacher.identity,
            "requests": teacher.counts["requests"], "failed": 0,
            "prompt_tokens": sum(r.pop("prompt_tokens") for r in rows),
            "completion_tokens": sum(r.pop("completion_tokens") for r in rows),
            "cache_file": str(teacher.cache.path),
            # what this run did (differs between an uninterrupted run and a resumed one)
            "this_run": {"cache_hits": teacher.counts["cache_hits"], "decoded": st.prompts,
                         "new_tokens": st.new_tokens, "decode_seconds": round(st.seconds, 2),
                         "tok_s": round(st.new_tokens / st.seconds, 2) if st.seconds else None,
                         "wall_seconds": round(wall, 2), "clamped": st.clamped,
                         "truncated_prompts": st.truncated_prompts}}

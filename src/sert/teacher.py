"""Step ``teacher``: the teacher's zero-shot-CoT reasoning for distillation (paper II-C1).

Each question is sent as ``prompts.teacher`` ("Question: q. Answer: Let's think step by step."); the
completion is the reasoning R. ``teacher.n`` samples per question (one request each, cached separately).
With ``teacher.answer_prompt`` (teacher=local: "\nTherefore, the answer is") a second, short call continues
prompt + R + answer_prompt and the teacher's answer is read from that reply (zero-shot-CoT's answer
extraction); without it the answer is parsed from R. ``teacher.keep=correct`` (default, the Fine-tune-CoT
practice) drops samples whose answer is missing or disagrees with the gold label, ``keep=all`` keeps all.

Sources: an OpenAI-compatible endpoint (``backend=api``, sert.llm_client), a local causal LM
(``backend=torch|ctranslate2``, ``LocalTeacher``), or ``teacher.input=PATH``: a reasoning-teacher
completion file or a JSONL of ``{qid|question, reasoning|completion}`` rows.

Outputs: ``teacher.jsonl`` (qid, question, answer, reasoning, teacher_answer, correct, sample,
answer_completion, finish_reason) and ``teacher_summary.json`` (requests, cache hits, failures, tokens,
estimated cost; local: wall time and tok/s of this run under ``this_run``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from sert import faults
from sert.artifacts import COMPLETE, file_hash, stable_hash, write_json, write_jsonl
from sert.data import Record
from sert.engine import DecodeStats, context_length, decode
from sert.models import tokenizer_for
from sert.llm_client import (LLMClient, Request, ResponseCache, client_from_config, estimate_cost, make_request,
                             sampling_params)
from sert.pipeline import Context, StepOutput, _plain

log = logging.getLogger(__name__)

_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.{0,60})", re.I)
_LABEL = re.compile(r"\(([A-E])\)|\b([A-E])\b(?=[\s.,)]|$)")
_YESNO = re.compile(r"\b(yes|no)\b", re.I)


def parse_teacher_answer(text: str, rec: Record) -> str | None:
    """The answer stated in the teacher's reasoning: a choice label ("A".."E") or "Yes"/"No"; None if absent.

    Looks at the last "answer is ..." phrase first, then the whole text's last label / yes-no / choice text."""
    tails = [m.group(1) for m in _ANSWER_IS.finditer(text)]
    for span in ([tails[-1]] if tails else []) + [text]:
        ans = _answer_in(span, rec, last=span is text)
        if ans:
            return ans
    return None


def _answer_in(span: str, rec: Record, last: bool) -> str | None:
    if rec.choices:
        labels = {c.label for c in rec.choices}
        hits = [a or b for a, b in _LABEL.findall(span) if (a or b) in labels]
        if hits:
            return hits[-1] if last else hits[0]
        low = span.lower()
        pos = {c.label: low.rfind(c.text.lower()) for c in rec.choices if c.text and c.text.lower() in low}
        return max(pos, key=pos.get) if pos else None
    hits = _YESNO.findall(span)
    return (hits[-1] if last else hits[0]).capitalize() if hits else None


def parse_answer_reply(reply: str, rec: Record) -> str | None:
    """The answer in a zero-shot-CoT step-2 reply (the text after "...Therefore, the answer is"):
    its first choice label / yes-no / choice text."""
    return parse_teacher_answer("The answer is " + reply.strip(), rec)


def teacher_rows(rec: Record, sample: int, completion: str, answer_completion: str | None = None, **extra) -> dict:
    """One teacher.jsonl row. With a step-2 reply the answer is read from it, else from the reasoning."""
    reasoning = completion.strip()
    if answer_completion is not None:
        pred = parse_answer_reply(answer_completion, rec)
    else:
        pred = parse_teacher_answer(reasoning, rec)
    return {"qid": rec.qid, "question": rec.question, "answer": rec.answer, "reasoning": reasoning,
            "teacher_answer": pred, "correct": pred == rec.answer, "sample": sample,
            "answer_completion": answer_completion, **extra}


# ----------------------------------------------------------------------------- API collection
def collect(client: LLMClient, records: list[Record], prompts, t: dict, state_dir: Path) -> list[dict]:
    """Call the teacher for every (record, sample), then the answer step if configured; rows for the
    successful calls."""
    sampling = sampling_params(t)
    if t["n"] > 1 and not t["temperature"]:
        log.warning("teacher.n=%d at temperature 0: the samples will be (nearly) identical", t["n"])
    if t["answer_prompt"] and t["api"] != "completions":
        raise ValueError("teacher.answer_prompt needs teacher.api=completions (a chat endpoint cannot continue "
                         "the assistant's reasoning); set teacher.answer_prompt=null for a one-step teacher")
    reqs = [make_request(t["api"], t["model"], prompts.teacher_prompt(rec), sampling, index=s,
                         meta={"qid": rec.qid, "sample": s})
            for rec in records for s in range(t["n"])]
    results = [r for r in _call(client, reqs, t, state_dir) if r.ok]
    answers: dict[str, str] = {}
    if t["answer_prompt"]:
        step2 = [make_request(t["api"], t["model"], r.request.body["prompt"] + r.text + t["answer_prompt"],
                              {**sampling, "max_tokens": t["answer_max_tokens"]}, index=r.request.index,
                              meta=r.request.meta) for r in results]
        answers = {a.request.meta["qid"] + f"/{a.request.meta['sample']}": a.text
                   for a in _call(client, step2, t, state_dir / "answer") if a.ok}
    by_qid = {r.qid: r for r in records}
    rows = []
    for res in results:
        qid, s = res.request.meta["qid"], res.request.meta["sample"]
        if t["answer_prompt"] and f"{qid}/{s}" not in answers:
            continue  # its answer call failed (counted): retried by a rerun
        rows.append(teacher_rows(by_qid[qid], s, res.text, answers.get(f"{qid}/{s}"), finish_reason=res.finish_reason))
    return rows


def _call(client: LLMClient, reqs: list, t: dict, state_dir: Path) -> list:
    if t["mode"] == "batch":
        state_dir.mkdir(parents=True, exist_ok=True)
        return client.run_batch(reqs, state_dir, poll_interval=t["poll_interval"], max_wait=t["batch_max_wait"])
    if t["mode"] == "online":
        return client.run(reqs)
    raise ValueError(f"teacher.mode must be online or batch, got {t['mode']!r}")


# ----------------------------------------------------------------------------- local teacher
class LocalTeacher:
    """A local causal LM as the teacher (``teacher.backend=torch|ctranslate2``), zero-shot-CoT in one or
    two steps. Every decoded prompt goes to a response cache (one fsync'd line per prompt, written after
    each batch), keyed by the model's identity, the exact text the model sees and the decoding settings:
    a killed run decodes only what is missing, and a rerun with everything cached loads no model."""

    def __init__(self, t: dict, cache_dir: str, seed: int):
        self.t, self.seed, self.cache_dir = t, seed, cache_dir
        if t["backend"] not in ("torch", "ctranslate2"):
            raise ValueError(f"teacher.backend must be api, torch or ctranslate2, got {t['backend']!r}")
        self.spec = local_model_spec(t["model"])
        self.device = t["device"]
        if t["backend"] == "torch":
            from sert.hardware import resolve_dtype
            from sert.models import resolve_device

            self.device = str(resolve_device(t["device"]))
            self.spec["dtype"] = resolve_dtype(t["dtype"], self.device)
            precision = self.spec["dtype"]
        else:
            precision = t["compute_type"]
        self.identity = {"backend": t["backend"], "precision": precision,
                         **{k: self.spec.get(k) for k in ("name_or_path", "gguf_file", "tokenizer", "random_init")}}
        self.cache = ResponseCache.for_model(cache_dir, "local-" + stable_hash(self.identity))
        self.stats = DecodeStats()
        self.counts = {"requests": 0, "cache_hits": 0}
        self._model = self._tok = None

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
            log.info("teacher model %s loaded in %.1fs (%s)", self.t["model"], time.perf_counter() - t0,
                     self.spec["dtype"])
        return self._model, self._tok

    def context(self) -> int | None:
        if self.t["backend"] == "torch":
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
        if not (self.t["chat_template"] and getattr(tok, "chat_template", None)):
            return prompt
        user, prefill = prompt, ""
        marker = self.t["chat_prefill"]
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
        params = {"max_tokens": max_tokens, "temperature": t["temperature"], "top_p": t["top_p"],
                  "top_k": t["top_k"], "stop": stop}
        if t["temperature"]:
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
                raise ValueError(f"teacher.model={self.t['model']}: its context is {ctx} tokens but the teacher "
                                 f"prompt of {label} is {n} tokens; use a model with a longer context or a "
                                 "shorter prompts.teacher")

    def _decode(self, texts, max_tokens, stop, index, save, skip) -> None:
        t = self.t
        kw = dict(max_new_tokens=max_tokens, batch_size=t["batch_size"], temperature=t["temperature"] or 0.0,
                  top_p=t["top_p"] or 1.0, top_k=t["top_k"] or 0, stop=stop or [],
                  seed=self.seed + 1_000_003 * index, on_batch=save, skip=skip, stats=DecodeStats())
        if t["backend"] == "torch":
            model, tok = self._load()
            decode(model, tok, texts, desc="teacher", **kw)
        else:
            try:
                from sert.ct2 import decode_ct2
            except ImportError as e:
                raise RuntimeError(f"teacher.backend=ctranslate2 needs sert.ct2 and `pip install ctranslate2` ({e}); "
                                   "or use teacher.backend=torch") from None
            decode_ct2(self.spec, texts, compute_type=t["compute_type"], cache_dir=self.cache_dir, **kw)
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
            hint = (" (make it with experiments/get_qwen_teacher.sh, see README \"Distillation without an API\")"
                    if spec["gguf_file"] == QWEN_GGUF else "")
            raise FileNotFoundError(f"teacher.model={ref}: model file {path} not found{hint}")
    spec.pop("name", None)
    return spec


QWEN_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def collect_local(teacher: LocalTeacher, records: list[Record], prompts, t: dict) -> list[dict]:
    """Step 1 (reasoning) for every (record, sample), then step 2 (answer) if ``answer_prompt`` is set."""
    if t["n"] > 1 and not t["temperature"]:
        log.warning("teacher.n=%d at temperature 0: the samples will be (nearly) identical", t["n"])
    texts = [teacher.render(prompts.teacher_prompt(rec)) for rec in records]
    labels = [f"question {rec.qid}" for rec in records]
    done = []
    for s in range(t["n"]):
        step1 = teacher.complete(texts, max_tokens=t["max_tokens"], stop=t["stop"] or [], index=s, labels=labels,
                                 check_fits=True)
        step2: list[dict | None] = [None] * len(records)
        if t["answer_prompt"]:
            follow = [x + r["text"] + t["answer_prompt"] for x, r in zip(texts, step1)]
            step2 = teacher.complete(follow, max_tokens=t["answer_max_tokens"], stop=[], index=s, labels=labels,
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


def _local_stats(teacher: LocalTeacher, rows: list[dict], t: dict, wall: float) -> dict:
    st = teacher.stats
    return {"backend": t["backend"], "model": t["model"], "model_identity": teacher.identity,
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


# ----------------------------------------------------------------------------- file ingestion
def read_teacher_input(path: str | Path) -> list[dict]:
    """Entries ``{where, qid, question, reasoning, answer_completion, finish_reason}`` of a teacher file:

    * a reasoning-teacher (Fine-tune-CoT, Ho et al. 2023) completion file, as released:
      ``{"metadata": {...}, "data": {"<sample_index>": [{question, reasoning_completion, completion, ...}]}}``;
      R is ``reasoning_completion``, the teacher's answer the ``completion`` of "...Therefore, the answer is";
    * JSONL rows ``{qid or question, reasoning or completion}`` (the completion *is* the reasoning there).

    A file in neither format is one clear error."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and isinstance(whole.get("data"), dict):
        return _read_reasoning_teacher(path, whole["data"])
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise ValueError(_neither(path, f"line {lineno} is not a JSON object"))
        entries.append({"where": f"{path}:{lineno}", "qid": row.get("qid"), "question": row.get("question"),
                        "reasoning": row.get("reasoning", row.get("completion")), "answer_completion": None,
                        "finish_reason": row.get("finish_reason")})
    if not any((e["qid"] is not None or e["question"]) and isinstance(e["reasoning"], str) for e in entries):
        raise ValueError(_neither(path, "no row has qid|question and reasoning|completion"))
    return entries


def _neither(path: Path, why: str) -> str:
    return (f"teacher.input {path}: neither a reasoning-teacher completion file ({{\"metadata\", \"data\"}}) "
            f"nor JSONL of {{qid|question, reasoning|completion}} rows ({why})")


def _read_reasoning_teacher(path: Path, data: dict) -> list[dict]:
    entries = []
    for index, samples in data.items():
        for j, c in enumerate(samples if isinstance(samples, list) else [samples]):
            c = c if isinstance(c, dict) else {}
            question = c.get("question") or _question_from_prompt(c.get("reasoning_prompt") or c.get("prompt") or "")
            reasoning, answer = c.get("reasoning_completion"), c.get("completion")
            if not isinstance(reasoning, str):  # no zero-shot-CoT step 1: the completion is the reasoning
                reasoning, answer = answer, None
            entries.append({"where": f"{path}: data[{index}][{j}]", "qid": None, "question": question,
                            "reasoning": reasoning, "answer_completion": answer if isinstance(answer, str) else None,
                            "finish_reason": c.get("reasoning_finish_reason") or c.get("finish_reason")})
    return entries


_Q_PREFIX = re.compile(r"^\s*(?:Q|Question)\s*:\s*", re.I)
_A_SUFFIX = re.compile(r"\n\s*(?:A|Answer)\s*:.*\Z", re.S | re.I)


def _question_from_prompt(prompt: str) -> str:
    """The question of a "Q: ...\\nA: Let's think step by step." prompt (its last "Q:")."""
    return _A_SUFFIX.sub("", re.split(r"(?:^|\n)\s*Q\s*:\s*", prompt)[-1])


def question_key(q: str) -> str:
    """Question text for matching: "Q: ...\\nA:" wrappers dropped, whitespace normalised, case folded."""
    return " ".join(_A_SUFFIX.sub("", _Q_PREFIX.sub("", q or "")).split()).lower()


def ingest(path: str | Path, records: list[Record]) -> tuple[list[dict], list[str]]:
    """Teacher rows of a teacher file (``read_teacher_input``) matched to records by qid, else question text.

    Returns (teacher rows, unmatched-row descriptions)."""
    by_qid = {r.qid: r for r in records}
    by_q = {question_key(r.question): r for r in records}
    rows, unmatched, samples = [], [], {}
    for e in read_teacher_input(path):
        rec = by_qid.get(str(e["qid"])) if e["qid"] is not None else None
        rec = rec or by_q.get(question_key(str(e["question"] or "")))
        if rec is None or not isinstance(e["reasoning"], str):
            why = "no completion/reasoning field" if rec is not None else "no record with this qid or question"
            unmatched.append(f"{e['where']}: {why}")
            continue
        samples[rec.qid] = samples.get(rec.qid, -1) + 1
        rows.append(teacher_rows(rec, samples[rec.qid], e["reasoning"], e["answer_completion"],
                                 finish_reason=e["finish_reason"]))
    return rows, unmatched


# ----------------------------------------------------------------------------- the step
def run(ctx: Context) -> StepOutput:
    t = _plain(ctx.cfg.teacher)
    if t["keep"] not in ("correct", "all"):
        raise ValueError(f"teacher.keep must be 'correct' or 'all', got {t['keep']!r}")
    ds = ctx.dataset()
    prompts = ctx.prompts
    local = None
    if t["input"]:
        if not Path(t["input"]).exists():
            raise FileNotFoundError(f"teacher.input: no such file {t['input']}")
        material = {"input": file_hash(t["input"]), "keep": t["keep"]}
    elif t["backend"] == "api":
        material = {"api": t["api"], "model": t["model"], "sampling": sampling_params(t), "n": t["n"],
                    "prompt": prompts.teacher, "keep": t["keep"]}
        if t["answer_prompt"]:
            material["answer"] = [t["answer_prompt"], t["answer_max_tokens"]]
    else:
        local = LocalTeacher(t, ctx.cfg.paths.cache_dir, seed=ctx.cfg.seed)
        material = {"local": local.identity, "n": t["n"], "prompt": prompts.teacher, "keep": t["keep"],
                    "sampling": {k: t[k] for k in ("temperature", "max_tokens", "top_p", "top_k", "stop")},
                    "seed": ctx.cfg.seed if t["temperature"] else None,
                    "answer": [t["answer_prompt"], t["answer_max_tokens"]] if t["answer_prompt"] else None,
                    "chat": [t["chat_template"], t["chat_prefill"]]}

    def build(d: Path) -> dict:
        start = time.perf_counter()
        if t["input"]:
            rows, unmatched = ingest(t["input"], ds.records)
            stats: dict = {"source": str(t["input"]), "rows": len(rows) + len(unmatched),
                           "unmatched": len(unmatched), "unmatched_rows": unmatched[:50]}
        elif local is not None:
            rows = collect_local(local, ds.records, prompts, t)
            stats = _local_stats(local, rows, t, time.perf_counter() - start)
        else:
            client = client_from_config(t, ctx.cfg.paths.cache_dir, seed=ctx.cfg.seed)
            rows = collect(client, ds.records, prompts, t, d)
            write_jsonl(d / "failures.jsonl", client.stats.failures)
            stats = _api_stats(client, t)
        return _finish(d, rows, t, stats, len(ds.records))

    out = ctx.cached("teacher", material, [ds], build)
    if out.cached and out.summary.get("failed") and t["retry_failed"] and not t["input"]:
        log.info("[teacher] cached entry has %d failed calls: retrying only those", out.summary["failed"])
        (out.dir / COMPLETE).unlink()
        out = ctx.cached("teacher", material, [ds], build)
    s = out.summary
    speed = s.get("this_run", {}) if not out.cached else {}
    extra = f", {speed['new_tokens']} new tokens at {speed['tok_s']} tok/s" if speed.get("new_tokens") else ""
    print(f"teacher: {s['kept']} rows kept of {s['samples']} samples ({s['questions']} questions, "
          f"teacher acc {s['metrics']['teacher/acc']:.3f}, {s.get('failed', 0)} failed{extra}) -> {out.path('teacher.jsonl')}")
    return out


def _api_stats(client: LLMClient, t: dict) -> dict:
    st = client.stats.as_dict()
    discount = t["batch_discount"] if t["mode"] == "batch" else 1.0
    st["est_cost_usd"] = estimate_cost(st["prompt_tokens"], st["completion_tokens"], t["price_prompt"],
                                       t["price_completion"], discount)
    st["new_cost_usd"] = estimate_cost(st["new_prompt_tokens"], st["new_completion_tokens"], t["price_prompt"],
                                       t["price_completion"], discount)
    st["cache_file"] = str(client.cache.path)
    st["failures"] = st["failures"][:100]  # all of them in failures.jsonl
    return st


def _finish(d: Path, rows: list[dict], t: dict, stats: dict, questions: int) -> dict:
    kept = [r for r in rows if r["correct"]] if t["keep"] == "correct" else rows
    write_jsonl(d / "teacher.jsonl", kept)
    correct = sum(r["correct"] for r in rows)
    summary = {"questions": questions, "samples": len(rows), "kept": len(kept), "keep": t["keep"],
               "no_answer": sum(r["teacher_answer"] is None for r in rows),
               "questions_covered": len({r["qid"] for r in kept}), **stats,
               "metrics": {"teacher/acc": round(correct / len(rows), 4) if rows else 0.0,
                           "teacher/kept": len(kept), "teacher/failed": stats.get("failed", 0)}}
    write_json(d / "teacher_summary.json", summary)
    return summary

"""Step ``judge``: the paper's Reasoning Detail Evaluation (III-D, Table I).

Every output is scored 0-10 on Coherence, Relevance, Logical Consistency and Completeness by an LLM
judge given the Table I prompt (``judge.template``, placeholders ``{eval_question}`` / ``{eval_completion}``).
Scores are extracted from the reply (``parse_scores``: the "Score for X: N" phrases, with tolerant
fallbacks such as "X: 7/10", "**X**: **7**", "X - [7]"); a reply missing any score is retried once
(sampled at ``judge.retry_temperature``) and then counted ``unparsable`` — never guessed.

Backends (``judge._target_``): ``OpenAIJudge`` (any OpenAI-compatible endpoint, through
``sert.llm_client``) and ``LocalJudge`` (``judge=local``, alias ``judge=hf``: a local model on the
decoding engine ``sert.engine``, batched, optionally with a prefilled or stepwise reply format). Both
cache every reply in the same kind of response log, so a killed judge run resumes and a rerun makes no
calls.

What is judged (``judge.target``): ``predictions`` (evaluate's predictions.jsonl, field ``output``),
``candidates`` (generate's candidates.jsonl, ``text``), ``selected`` (filter's selected.jsonl, ``text``),
or ``judge.input=PATH`` (a JSONL with ``question`` and ``output``/``text``/``completion``, ``qid`` optional).

Outputs: ``judge.jsonl`` (one row per output: qid, question, output, scores, overall, unparsable, failed,
reply) and ``judge_metrics.json``: mean per criterion and overall (the mean of the four), the share of
scored outputs in the paper's bins [0,2), [2,4), [4,6), [6,8), [8,10] (Figures 3, 4), and — as in
Figure 1 — the share of questions with at least one output in each bin.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from pathlib import Path
from typing import Any

from hydra.utils import get_class

from sert import faults
from sert.artifacts import file_hash, read_jsonl, stable_hash, write_json, write_jsonl
from sert.engine import Decoded, DecodeStats, decode
from sert.llm_client import (LLMClient, Request, ResponseCache, client_from_config, estimate_cost, make_request,
                             sampling_params)
from sert.pipeline import Context, StepOutput, _plain

log = logging.getLogger(__name__)

# Table I, verbatim (the paper's quotes kept); conf/judge/openai.yaml carries the same text.
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

CRITERIA = {"coherence": r"coherence", "relevance": r"relevance",
            "logical_consistency": r"logical[\s_-]*consistency", "completeness": r"completeness"}
BINS = ("[0,2)", "[2,4)", "[4,6)", "[6,8)", "[8,10]")
_NUM = r"(\d{1,2}(?:\.\d+)?)(?!\d)(?:\s*(/|out\s+of)\s*(\d+))?"
# "Score for X" may be followed by up to 40 non-digit characters on the same line ("**:** [", ": ");
# a bare "X" only by up to 12 (": **", " - [", " (score): "), so prose mentioning X is not read as a score.
_STRICT = {c: re.compile(rf"score\s+for\s+(?:the\s+)?{p}[^0-9\n]{{0,40}}?{_NUM}", re.I) for c, p in CRITERIA.items()}
_LOOSE = {c: re.compile(rf"{p}[^0-9\n]{{0,12}}?{_NUM}", re.I) for c, p in CRITERIA.items()}


# ----------------------------------------------------------------------------- prompt and parsing
def render(template: str, question: str, completion: str) -> str:
    """The judge prompt (``str.replace``: braces inside the texts are safe)."""
    for ph in ("{eval_question}", "{eval_completion}"):
        if ph not in template:
            raise ValueError(f"judge.template lacks the placeholder {ph}")
    return template.replace("{eval_question}", question.strip()).replace("{eval_completion}", completion.strip())


def parse_scores(reply: str | None) -> dict[str, float] | None:
    """The four 0-10 scores of a judge reply, or None if any is missing or out of range."""
    if not reply:
        return None
    scores = {}
    for crit in CRITERIA:
        value = _first_valid(_STRICT[crit], reply)
        if value is None:
            value = _first_valid(_LOOSE[crit], reply)
        if value is None:
            return None
        scores[crit] = value
    return scores


def _first_valid(pattern: re.Pattern, text: str) -> float | None:
    for m in pattern.finditer(text):
        value, denom = float(m.group(1)), m.group(3)
        if denom is not None and float(denom) != 10:
            if float(denom) > 0 and value <= float(denom):
                value = round(value / float(denom) * 10, 3)  # "45/50", "4 out of 5" -> 0-10 scale
            else:
                continue
        if 0 <= value <= 10:
            return value
    return None


def bin_index(score: float) -> int:
    """[0,2) -> 0, [2,4) -> 1, [4,6) -> 2, [6,8) -> 3, [8,10] -> 4."""
    return min(int(score // 2), 4)


# ----------------------------------------------------------------------------- backends
class OpenAIJudge:
    """Judge through any OpenAI-compatible endpoint (``judge=openai``)."""

    def __init__(self, cfg: dict, cache_dir: str, seed: int = 0, **_: Any):
        if not cfg.get("model"):
            raise ValueError("judge.model must name the endpoint's model for judge=openai")
        self.cfg = cfg
        self.client: LLMClient = client_from_config(cfg, cache_dir, seed=seed)

    def identity(self) -> dict:
        return {"backend": "openai", "api": self.cfg["api"], "model": self.cfg["model"],
                "sampling": sampling_params(self.cfg)}

    def generate(self, prompts: list[str], attempt: int, temperature: float, state_dir: Path) -> list[tuple[str | None, str | None]]:
        """(reply, error) per prompt; ``attempt`` separates the retry's cache key."""
        sampling = {**sampling_params(self.cfg), "temperature": temperature}
        reqs = [make_request(self.cfg["api"], self.cfg["model"], p, sampling, index=attempt, meta={"item": i})
                for i, p in enumerate(prompts)]
        if self.cfg["mode"] == "batch":
            results = self.client.run_batch(reqs, state_dir, poll_interval=self.cfg["poll_interval"],
                                            max_wait=self.cfg["batch_max_wait"])
        else:
            results = self.client.run(reqs)
        return [(r.text, r.error) for r in results]

    def stats(self) -> dict:
        st = self.client.stats.as_dict()
        discount = self.cfg["batch_discount"] if self.cfg["mode"] == "batch" else 1.0
        st["est_cost_usd"] = estimate_cost(st["prompt_tokens"], st["completion_tokens"], self.cfg["price_prompt"],
                                           self.cfg["price_completion"], discount)
        st["failures"] = st["failures"][:100]
        return st


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

    def __init__(self, cfg: dict, cache_dir: str, seed: int = 0, model_kwargs: dict | None = None,
                 model_identity: dict | None = None, **_: Any):
        from sert.hardware import resolve_dtype
        from sert.models import model_spec, resolve_device

        self.cfg, self.seed, self.cache_dir = cfg, seed, cache_dir
        if cfg["reply_format"] not in REPLY_FORMATS:
            raise ValueError(f"judge.reply_format must be one of {REPLY_FORMATS}, got {cfg['reply_format']!r}")
        self.chat = str(cfg["chat_template"]).lower()
        if self.chat not in ("auto", "true", "false"):
            raise ValueError(f"judge.chat_template must be auto, true or false, got {cfg['chat_template']!r}")
        if cfg["backend"] not in ("torch", "ctranslate2"):
            raise ValueError(f"judge.backend must be torch or ctranslate2, got {cfg['backend']!r}")
        device = cfg["hf_device"]
        if cfg.get("model"):
            spec = model_spec(cfg["model"])
            self.model_kwargs = {**spec, "device": device}
            self.model_id: Any = {k: v for k, v in spec.items() if k not in ("device", "dtype")}
        else:
            self.model_kwargs = {**(model_kwargs or {}), "device": device}
            self.model_id = model_identity
        torch_backend = cfg["backend"] == "torch"
        self.precision = (resolve_dtype(str(cfg["dtype"]), resolve_device(device)) if torch_backend
                          else cfg["compute_type"])
        if torch_backend:
            self.model_kwargs["dtype"] = self.precision
        self.cache = ResponseCache.for_model(cache_dir, "local-" + stable_hash([self.model_id, self.precision]))
        self._decoder = None
        self.counts = {"requests": 0, "cache_hits": 0, "generated": 0}
        self.decoding = DecodeStats()

    def identity(self) -> dict:
        c = self.cfg
        return {"backend": "local", "engine": c["backend"], "model": self.model_id, "precision": self.precision,
                "max_tokens": c["max_tokens"], "temperature": c["temperature"], "chat_template": self.chat,
                "reply_format": c["reply_format"], "score_tokens": c["score_tokens"]}

    def generate(self, prompts: list[str], attempt: int, temperature: float, state_dir: Path) -> list[tuple[str | None, str | None]]:
        """(reply, None) per prompt; decoded in batches, each batch cached before the next starts."""
        body = {k: v for k, v in self.identity().items() if k not in ("temperature", "backend")}
        reqs = [Request("local", {**body, "prompt": p, "temperature": temperature}, index=attempt) for p in prompts]
        todo = [i for i, r in enumerate(reqs) if self.cache.get(r.key) is None]
        self.counts["requests"] += len(reqs)
        self.counts["cache_hits"] += len(reqs) - len(todo)
        if todo:
            todo.sort(key=lambda i: -len(prompts[i]))  # similar lengths share a batch
            bs = max(1, self.cfg["hf_batch_size"])
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
        fmt, sampling = self.cfg["reply_format"], {"temperature": temperature, "seed": seed}
        if fmt == "stepwise":
            replies = [""] * len(prompts)
            for line in SCORE_LINES:
                outs = decoder.decode([t + r + line for t, r in zip(texts, replies)], stop=["\n"],
                                      max_new_tokens=self.cfg["score_tokens"], min_new_tokens=self.cfg["score_tokens"],
                                      **sampling)
                replies = [r + line + o.text.split("\n")[0] + "\n" for r, o in zip(replies, outs)]
            return [r.rstrip("\n") for r in replies]
        prefix = SCORE_LINES[0] if fmt == "prefill" else ""
        room = self.cfg["max_tokens"] if decoder.ctx is None else min(self.cfg["max_tokens"], decoder.ctx // 2)
        outs = decoder.decode([t + prefix for t in texts], max_new_tokens=self.cfg["max_tokens"],
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
        return prompt + ("\n" if self.cfg["reply_format"] != "free" else "")

    def _load(self) -> LocalDecoder:
        if self._decoder is None:
            self._decoder = LocalDecoder(self.cfg["backend"], self.model_kwargs, self.cfg["compute_type"],
                                         self.cache_dir, self.decoding)
        return self._decoder

    def stats(self) -> dict:
        return {**self.counts, "engine": self.cfg["backend"], "precision": self.precision,
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


# ----------------------------------------------------------------------------- items to judge
TARGETS = {"predictions": ("evaluate", "predictions.jsonl"), "candidates": ("generate", "candidates.jsonl"),
           "selected": ("filter", "selected.jsonl")}
TEXT_FIELDS = ("output", "text", "completion", "reasoning")


def items_from_rows(rows: list[dict], where: str) -> list[dict]:
    """Normalise rows to {qid, question, output, sample} (+ ``first_token_rank`` when the row has it);
    ``sample`` numbers a question's outputs."""
    items, seen = [], {}
    for i, row in enumerate(rows):
        text = next((row[f] for f in TEXT_FIELDS if isinstance(row.get(f), str)), None)
        if not isinstance(row.get("question"), str) or text is None:
            raise ValueError(f"{where}: row {i + 1} needs 'question' and one of {TEXT_FIELDS}")
        qid = str(row.get("qid", row["question"]))
        seen[qid] = seen.get(qid, -1) + 1
        item = {"qid": qid, "question": row["question"], "output": text, "sample": seen[qid]}
        if "first_token_rank" in row:  # candidates / selected paths: Figure 1's per-rank bins need it
            item["first_token_rank"] = row["first_token_rank"]
        items.append(item)
    return items


def choose(items: list[dict], limit: int | None, sample: int | None, seed: int) -> list[dict]:
    """``sample``: N questions drawn with ``seed`` (all their outputs kept); then ``limit``: first N outputs."""
    if sample is not None:
        qids = sorted({it["qid"] for it in items})
        keep = set(random.Random(seed).sample(qids, min(sample, len(qids))))
        items = [it for it in items if it["qid"] in keep]
    return items[:limit] if limit is not None else items


# ----------------------------------------------------------------------------- judging and metrics
def judge_items(backend: Any, items: list[dict], template: str, temperature: float, retry_temperature: float,
                state_dir: Path) -> list[dict]:
    prompts = [render(template, it["question"], it["output"]) for it in items]
    first = backend.generate(prompts, 0, temperature, state_dir)
    rows = []
    for it, (reply, err) in zip(items, first):
        rows.append({**it, "scores": parse_scores(reply), "reply": reply, "error": err, "attempts": 1})
    retry = [i for i, r in enumerate(rows) if r["scores"] is None and r["error"] is None]
    if retry:
        log.info("judge: %d unparsable replies, retrying each once", len(retry))
        second = backend.generate([prompts[i] for i in retry], 1, retry_temperature, state_dir)
        for i, (reply, err) in zip(retry, second):
            rows[i].update(scores=parse_scores(reply), reply=reply, error=err, attempts=2)
    for r in rows:
        r["failed"] = r["error"] is not None
        r["unparsable"] = r["scores"] is None and not r["failed"]
        r["overall"] = round(sum(r["scores"].values()) / len(CRITERIA), 4) if r["scores"] else None
    return rows


def metrics(rows: list[dict]) -> dict:
    """Means, bin distribution over scored outputs, and per-question "at least one output in bin" shares."""
    scored = [r for r in rows if r["scores"]]
    names = [*CRITERIA, "overall"]

    def value(r: dict, name: str) -> float:
        return r["overall"] if name == "overall" else r["scores"][name]

    mean = {n: round(sum(value(r, n) for r in scored) / len(scored), 4) if scored else None for n in names}
    dist, cover = {}, {}
    questions = sorted({r["qid"] for r in rows})
    for n in names:
        counts = [0] * len(BINS)
        hit: list[set] = [set() for _ in BINS]
        for r in scored:
            b = bin_index(value(r, n))
            counts[b] += 1
            hit[b].add(r["qid"])
        dist[n] = [round(c / len(scored), 4) if scored else 0.0 for c in counts]
        cover[n] = [round(len(h) / len(questions), 4) if questions else 0.0 for h in hit]
    return {"n": len(rows), "scored": len(scored), "unparsable": sum(r["unparsable"] for r in rows),
            "failed": sum(r["failed"] for r in rows), "questions": len(questions), "mean": mean, "bins": list(BINS),
            "distribution": dist, "question_coverage": cover}


# ----------------------------------------------------------------------------- the step
def _items(ctx: Context, j: dict) -> tuple[list[dict], list, dict]:
    """(items, upstream inputs for the cache key, material describing the source)."""
    if j["input"]:
        path = Path(j["input"])
        if not path.exists():
            raise FileNotFoundError(f"judge.input: no such file {path}")
        return items_from_rows(read_jsonl(path), str(path)), [], {"input": file_hash(path)}
    if j["target"] not in TARGETS:
        raise ValueError(f"judge.target must be one of {sorted(TARGETS)} (or set judge.input), got {j['target']!r}")
    step, name = TARGETS[j["target"]]
    out = ctx.require(step)
    return items_from_rows(read_jsonl(out.path(name)), str(out.path(name))), [out], {"target": j["target"]}


def run(ctx: Context) -> StepOutput:
    j = _plain(ctx.cfg.judge)
    backend = get_class(j["_target_"])(j, ctx.cfg.paths.cache_dir, seed=ctx.cfg.seed,
                                       model_kwargs=ctx.model_kwargs(), model_identity=ctx.model_identity())
    items, inputs, source = _items(ctx, j)
    items = choose(items, j["limit"], j["sample"], j["seed"])
    material = {**source, "judge": backend.identity(), "template": j["template"], "limit": j["limit"],
                "sample": j["sample"], "seed": j["seed"], "retry_temperature": j["retry_temperature"]}

    def build(d: Path) -> dict:
        rows = judge_items(backend, items, j["template"], j["temperature"], j["retry_temperature"], d)
        write_jsonl(d / "judge.jsonl", rows)
        m = metrics(rows)
        write_json(d / "judge_metrics.json", m)
        flat = {f"judge/{k}": v for k, v in m["mean"].items()}
        flat.update({"judge/scored": m["scored"], "judge/unparsable": m["unparsable"], "judge/failed": m["failed"]})
        return {**{k: m[k] for k in ("n", "scored", "unparsable", "failed", "questions")}, "backend": backend.stats(),
                "metrics": flat}

    out = ctx.cached("judge", material, inputs, build)
    s = out.summary
    print(f"judge: {s['scored']}/{s['n']} outputs scored ({s['unparsable']} unparsable, {s['failed']} failed), "
          f"overall mean {s['metrics']['judge/overall']} -> {out.path('judge_metrics.json')}")
    return out

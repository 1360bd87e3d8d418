"""Step ``judge``: the paper's Reasoning Detail Evaluation (III-D, Table I).

Every output is scored 0-10 on Coherence, Relevance, Logical Consistency and Completeness by an LLM
judge given the Table I prompt (``judge.template``, placeholders ``{eval_question}`` / ``{eval_completion}``).
Scores are extracted from the reply (``parse_scores``: the "Score for X: N" phrases, with tolerant
fallbacks such as "X: 7/10", "**X**: **7**", "X - [7]"); a reply missing any score is retried once
(sampled at ``judge.retry_temperature``) and then counted ``unparsable`` — never guessed.

Backends (``judge._target_``): ``OpenAIJudge`` (any OpenAI-compatible endpoint, through
``sert.llm_client``) and ``HFJudge`` (a local transformers chat model). Both cache every reply in the
same response log, so a killed judge run resumes and a rerun makes no calls.

What is judged (``judge.target``): ``predictions`` (evaluate's predictions.jsonl, field ``output``),
``candidates`` (generate's candidates.jsonl, ``text``), ``selected`` (filter's selected.jsonl, ``text``),
or ``judge.input=PATH`` (a JSONL with ``question`` and ``output``/``text``/``completion``, ``qid`` optional).

Outputs: ``judge.jsonl`` (one row per output: qid, question, output, scores, overall, unparsable, failed,
reply) and ``judge_metrics.json``: mean per criterion and overall (the mean of the four), the share of
scored outputs in the paper's bins [0,2), [2,4), [4,6), [6,8), [8,10] (Figures 3, 4), and — as in
Figure 1 — the share of questions with at least one output in each bin.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

from hydra.utils import get_class

from sert.artifacts import file_hash, read_jsonl, stable_hash, write_json, write_jsonl
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


class HFJudge:
    """Judge with a local transformers chat model (``judge=hf``): chat template + ``generate``.

    ``judge.model`` names the model (hub id or directory); null judges with the run's ``model``. Replies
    are cached in the same response log as the API judge's, keyed by model identity and prompt."""

    def __init__(self, cfg: dict, cache_dir: str, seed: int = 0, model_kwargs: dict | None = None,
                 model_identity: dict | None = None, **_: Any):
        self.cfg, self.seed = cfg, seed
        if cfg.get("model"):
            self.model_kwargs = {"name_or_path": cfg["model"], "device": cfg["hf_device"]}
            self.model_id: Any = {"name_or_path": cfg["model"]}
        else:
            self.model_kwargs = {**(model_kwargs or {}), "device": cfg["hf_device"]}
            self.model_id = model_identity
        self.cache = ResponseCache.for_model(cache_dir, "hf-" + stable_hash(self.model_id))
        self._model = None
        self.counts = {"requests": 0, "cache_hits": 0, "generated": 0}

    def identity(self) -> dict:
        return {"backend": "hf", "model": self.model_id, "max_tokens": self.cfg["max_tokens"],
                "temperature": self.cfg["temperature"]}

    def _load(self):
        if self._model is None:
            from sert.models import load_model

            self._model = load_model(**self.model_kwargs)
        return self._model

    def generate(self, prompts: list[str], attempt: int, temperature: float, state_dir: Path) -> list[tuple[str | None, str | None]]:
        reqs = [Request("hf", {"model": self.model_id, "prompt": p, "max_tokens": self.cfg["max_tokens"],
                               "temperature": temperature}, index=attempt) for p in prompts]
        todo = [i for i, r in enumerate(reqs) if self.cache.get(r.key) is None]
        self.counts["requests"] += len(reqs)
        self.counts["cache_hits"] += len(reqs) - len(todo)
        bs = max(1, self.cfg["hf_batch_size"])
        for start in _progress_range(0, len(todo), bs, "hf judge"):
            chunk = todo[start:start + bs]
            texts = self._generate([prompts[i] for i in chunk], temperature, attempt)
            for i, text in zip(chunk, texts):
                self.cache.put({"key": reqs[i].key, "api": "hf", "request": reqs[i].body, "index": attempt, "text": text})
            self.counts["generated"] += len(chunk)
        return [(self.cache.get(r.key)["text"], None) for r in reqs]

    def _generate(self, prompts: list[str], temperature: float, attempt: int) -> list[str]:
        import torch

        model, tok = self._load()
        if getattr(tok, "chat_template", None):
            texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
                     for p in prompts]
        else:  # base models (the tiny test model) have no chat template: the raw prompt
            texts = prompts
        limit = getattr(model.config, "max_position_embeddings", None) or 4096
        max_new = min(self.cfg["max_tokens"], limit // 2)  # small context models: keep room for the prompt
        tok.truncation_side = "left"  # keep the end of the prompt (the instructions) if it must be cut
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=limit - max_new,
                  add_special_tokens=False).to(model.device)
        torch.manual_seed(self.seed + attempt)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def stats(self) -> dict:
        return dict(self.counts)


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

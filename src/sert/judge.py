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

import logging
import random
import re
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from sert.artifacts import file_hash, read_jsonl, write_json, write_jsonl
from sert.config.api import TABLE_I, JudgeConfig  # noqa: F401 (TABLE_I re-exported)
from sert.judge_backends import HFJudge, LocalDecoder, LocalJudge, OpenAIJudge  # noqa: F401 (judge._target_ names)
from sert.pipeline import Context, StepOutput

log = logging.getLogger(__name__)

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
def _items(ctx: Context, j: JudgeConfig) -> tuple[list[dict], list, dict]:
    """(items, upstream inputs for the cache key, material describing the source)."""
    if j.input:
        path = Path(j.input)
        if not path.exists():
            raise FileNotFoundError(f"judge.input: no such file {path}")
        return items_from_rows(read_jsonl(path), str(path)), [], {"input": file_hash(path)}
    if j.target not in TARGETS:
        raise ValueError(f"judge.target must be one of {sorted(TARGETS)} (or set judge.input), got {j.target!r}")
    step, name = TARGETS[j.target]
    out = ctx.require(step)
    return items_from_rows(read_jsonl(out.path(name)), str(out.path(name))), [out], {"target": j.target}


def run(ctx: Context) -> StepOutput:
    j: JudgeConfig = OmegaConf.to_object(ctx.cfg.judge)
    backend = instantiate(ctx.cfg.judge, cache_dir=ctx.cfg.paths.cache_dir, seed=ctx.cfg.seed,
                          model_kwargs=ctx.model_kwargs(), model_identity=ctx.model_identity(), _convert_="all")
    items, inputs, source = _items(ctx, j)
    items = choose(items, j.limit, j.sample, j.seed)
    material = {**source, "judge": backend.identity(), "template": j.template, "limit": j.limit,
                "sample": j.sample, "seed": j.seed, "retry_temperature": j.retry_temperature}

    def build(d: Path) -> dict:
        rows = judge_items(backend, items, j.template, j.temperature, j.retry_temperature, d)
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

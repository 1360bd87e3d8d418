"""Step ``teacher``: the teacher's zero-shot-CoT reasoning for distillation (paper II-C1).

Each question is sent as ``prompts.teacher`` ("Question: q. Answer: Let's think step by step."); the
completion is the reasoning R. ``teacher.n`` samples per question (one request each, cached separately).
The teacher's own answer is parsed from R; ``teacher.keep=correct`` (default, the Fine-tune-CoT practice)
drops samples whose answer is missing or disagrees with the gold label, ``keep=all`` keeps every sample.
``teacher.input=PATH`` ingests an existing JSONL of ``{qid or question, completion}`` instead of calling.

Outputs: ``teacher.jsonl`` (qid, question, answer, reasoning, teacher_answer, correct, sample,
finish_reason) and ``teacher_summary.json`` (requests, cache hits, failures, tokens, estimated cost).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from sert.artifacts import COMPLETE, file_hash, read_jsonl, write_json, write_jsonl
from sert.data import Record
from sert.llm_client import LLMClient, client_from_config, estimate_cost, make_request, sampling_params
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


def teacher_rows(rec: Record, sample: int, completion: str, **extra) -> dict:
    reasoning = completion.strip()
    pred = parse_teacher_answer(reasoning, rec)
    return {"qid": rec.qid, "question": rec.question, "answer": rec.answer, "reasoning": reasoning,
            "teacher_answer": pred, "correct": pred == rec.answer, "sample": sample, **extra}


# ----------------------------------------------------------------------------- API collection
def collect(client: LLMClient, records: list[Record], prompts, t: dict, state_dir: Path) -> list[dict]:
    """Call the teacher for every (record, sample); rows for the successful calls."""
    sampling = sampling_params(t)
    if t["n"] > 1 and not t["temperature"]:
        log.warning("teacher.n=%d at temperature 0: the samples will be (nearly) identical", t["n"])
    reqs = [make_request(t["api"], t["model"], prompts.teacher_prompt(rec), sampling, index=s,
                         meta={"qid": rec.qid, "sample": s})
            for rec in records for s in range(t["n"])]
    if t["mode"] == "batch":
        results = client.run_batch(reqs, state_dir, poll_interval=t["poll_interval"], max_wait=t["batch_max_wait"])
    elif t["mode"] == "online":
        results = client.run(reqs)
    else:
        raise ValueError(f"teacher.mode must be online or batch, got {t['mode']!r}")
    by_qid = {r.qid: r for r in records}
    return [teacher_rows(by_qid[res.request.meta["qid"]], res.request.meta["sample"], res.text,
                         finish_reason=res.finish_reason) for res in results if res.ok]


# ----------------------------------------------------------------------------- file ingestion
def ingest(path: str | Path, records: list[Record]) -> tuple[list[dict], list[str]]:
    """Rows of a JSONL of ``{qid or question, completion}`` matched to records (by qid, else question text).

    Returns (teacher rows, unmatched-row descriptions)."""
    by_qid = {r.qid: r for r in records}
    by_q = {_norm(r.question): r for r in records}
    rows, unmatched, samples = [], [], {}
    for i, row in enumerate(read_jsonl(path), 1):
        rec = by_qid.get(str(row.get("qid"))) if row.get("qid") is not None else None
        rec = rec or by_q.get(_norm(str(row.get("question", ""))))
        text = row.get("completion", row.get("reasoning"))
        if rec is None or not isinstance(text, str):
            why = "no completion/reasoning field" if rec is not None else "no record with this qid or question"
            unmatched.append(f"{path}:{i}: {why}")
            continue
        samples[rec.qid] = samples.get(rec.qid, -1) + 1
        rows.append(teacher_rows(rec, samples[rec.qid], text, finish_reason=row.get("finish_reason")))
    return rows, unmatched


def _norm(q: str) -> str:
    return " ".join(q.split()).lower()


# ----------------------------------------------------------------------------- the step
def run(ctx: Context) -> StepOutput:
    t = _plain(ctx.cfg.teacher)
    if t["keep"] not in ("correct", "all"):
        raise ValueError(f"teacher.keep must be 'correct' or 'all', got {t['keep']!r}")
    ds = ctx.dataset()
    prompts = ctx.prompts
    if t["input"]:
        if not Path(t["input"]).exists():
            raise FileNotFoundError(f"teacher.input: no such file {t['input']}")
        material = {"input": file_hash(t["input"]), "keep": t["keep"]}
    else:
        material = {"api": t["api"], "model": t["model"], "sampling": sampling_params(t), "n": t["n"],
                    "prompt": prompts.teacher, "keep": t["keep"]}

    def build(d: Path) -> dict:
        if t["input"]:
            rows, unmatched = ingest(t["input"], ds.records)
            stats: dict = {"source": str(t["input"]), "rows": len(rows) + len(unmatched),
                           "unmatched": len(unmatched), "unmatched_rows": unmatched[:50]}
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
    print(f"teacher: {s['kept']} rows kept of {s['samples']} samples ({s['questions']} questions, "
          f"teacher acc {s['metrics']['teacher/acc']:.3f}, {s.get('failed', 0)} failed) -> {out.path('teacher.jsonl')}")
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

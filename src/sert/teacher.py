"""Step ``teacher``: the teacher's zero-shot-CoT reasoning for distillation (paper II-C1).

Each question is sent as ``prompts.teacher`` ("Question: q. Answer: Let's think step by step."); the
completion is the reasoning R. ``teacher.n`` samples per question (one request each, cached separately).
With ``teacher.answer_prompt`` (teacher=local: "\nTherefore, the answer is") a second, short call continues
prompt + R + answer_prompt and the teacher's answer is read from that reply (zero-shot-CoT's answer
extraction); without it the answer is parsed from R. ``teacher.keep=correct`` (default, the Fine-tune-CoT
practice) drops samples whose answer is missing or disagrees with the gold label, ``keep=all`` keeps all.

Sources: the backend named by ``teacher._target_`` (``sert.teacher_backends``: ``ApiTeacher`` for an
OpenAI-compatible endpoint, ``LocalTeacher`` for a local causal LM), or ``teacher.input=PATH``: a
reasoning-teacher completion file or a JSONL of ``{qid|question, reasoning|completion}`` rows
(``sert.teacher_data``).

Outputs: ``teacher.jsonl`` (qid, question, answer, reasoning, teacher_answer, correct, sample,
answer_completion, finish_reason) and ``teacher_summary.json`` (requests, cache hits, failures, tokens,
estimated cost; local: wall time and tok/s of this run under ``this_run``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from sert import distributed
from sert.artifacts import COMPLETE, file_hash, write_json, write_jsonl
from sert.config.api import TeacherConfig
from sert.pipeline import Context, StepOutput
from sert.teacher_backends import QWEN_GGUF, ApiTeacher, LocalTeacher, collect_local, local_model_spec  # noqa: F401
from sert.teacher_data import (ingest, parse_answer_reply, parse_teacher_answer, question_key,  # noqa: F401
                               read_teacher_input, teacher_rows)

log = logging.getLogger(__name__)


def run(ctx: Context) -> StepOutput:
    t: TeacherConfig = OmegaConf.to_object(ctx.cfg.teacher)
    if t.keep not in ("correct", "all"):
        raise ValueError(f"teacher.keep must be 'correct' or 'all', got {t.keep!r}")
    ds = ctx.dataset()
    prompts = ctx.prompts
    source = None
    if t.input:
        if not Path(t.input).exists():
            raise FileNotFoundError(f"teacher.input: no such file {t.input}")
        material = {"input": file_hash(t.input), "keep": t.keep}
    else:
        source = instantiate(ctx.cfg.teacher, cache_dir=ctx.cfg.paths.cache_dir, seed=ctx.cfg.seed, _convert_="all")
        material = source.material(prompts, ctx.cfg.seed)

    def build(d: Path) -> dict:
        start = time.perf_counter()
        if source is None:
            rows, unmatched = ingest(t.input, ds.records)
            stats: dict = {"source": str(t.input), "rows": len(rows) + len(unmatched),
                           "unmatched": len(unmatched), "unmatched_rows": unmatched[:50]}
        else:
            rows, stats = source.collect(ds.records, prompts, d, start)
        return _finish(d, rows, t, stats, len(ds.records))

    out = ctx.cached("teacher", material, [ds], build)
    if out.cached and out.summary.get("failed") and t.retry_failed and not t.input:
        log.info("[teacher] cached entry has %d failed calls: retrying only those", out.summary["failed"])
        if distributed.is_main():  # rank 0 rebuilds; the other ranks wait for it in ctx.cached
            (out.dir / COMPLETE).unlink()
        out = ctx.cached("teacher", material, [ds], build)
    s = out.summary
    speed = s.get("this_run", {}) if not out.cached else {}
    extra = f", {speed['new_tokens']} new tokens at {speed['tok_s']} tok/s" if speed.get("new_tokens") else ""
    print(f"teacher: {s['kept']} rows kept of {s['samples']} samples ({s['questions']} questions, "
          f"teacher acc {s['metrics']['teacher/acc']:.3f}, {s.get('failed', 0)} failed{extra}) -> {out.path('teacher.jsonl')}")
    return out


def _finish(d: Path, rows: list[dict], t: TeacherConfig, stats: dict, questions: int) -> dict:
    kept = [r for r in rows if r["correct"]] if t.keep == "correct" else rows
    write_jsonl(d / "teacher.jsonl", kept)
    correct = sum(r["correct"] for r in rows)
    summary = {"questions": questions, "samples": len(rows), "kept": len(kept), "keep": t.keep,
               "no_answer": sum(r["teacher_answer"] is None for r in rows),
               "questions_covered": len({r["qid"] for r in kept}), **stats,
               "metrics": {"teacher/acc": round(correct / len(rows), 4) if rows else 0.0,
                           "teacher/kept": len(kept), "teacher/failed": stats.get("failed", 0)}}
    write_json(d / "teacher_summary.json", summary)
    return summary

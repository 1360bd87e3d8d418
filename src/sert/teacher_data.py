"""Teacher rows: the answer a teacher's reasoning states (``parse_teacher_answer``), one ``teacher.jsonl``
row (``teacher_rows``), and ingestion of teacher files made elsewhere (``teacher.input``: a reasoning-teacher
completion file or JSONL of ``{qid|question, reasoning|completion}`` rows)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sert.artifacts import read_text
from sert.data import Record

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




def read_teacher_input(path: str | Path) -> list[dict]:
    """Entries ``{where, qid, question, reasoning, answer_completion, finish_reason}`` of a teacher file:

    * a reasoning-teacher (Fine-tune-CoT, Ho et al. 2023) completion file, as released:
      ``{"metadata": {...}, "data": {"<sample_index>": [{question, reasoning_completion, completion, ...}]}}``;
      R is ``reasoning_completion``, the teacher's answer the ``completion`` of "...Therefore, the answer is";
    * JSONL rows ``{qid or question, reasoning or completion}`` (the completion *is* the reasoning there).

    A file in neither format is one clear error."""
    path = Path(path)
    text = read_text(path)  # not UTF-8: ValueError naming the file
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

"""Datasets: CommonsenseQA and StrategyQA as typed records, from the Hugging Face Hub or local files.

Local formats:
  * unified JSON (reasoning-teacher's files): a list of ``{"question", "answer"}`` with CommonsenseQA's
    choices inside the question text ("... Answer choices: (A) x, (B) y."), plus a ``.split.json`` of
    row indices ``{"train": [...], "test": [...]}``;
  * JSONL: one ``{"question", "answer", "choices"?}`` per line; ``choices`` is a list of texts
    (labelled A, B, ...) or a ``{"label": [...], "text": [...]}`` mapping.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CHOICES_RE = re.compile(r"\s*Answer choices:\s*(.*)$", re.S)
_OPTION_RE = re.compile(r"\(([A-Z])\)\s*(.*?)(?=,\s*\([A-Z]\)|\.?\s*$)", re.S)
BINARY = ("Yes", "No")


@dataclass(frozen=True)
class Choice:
    label: str
    text: str


@dataclass(frozen=True)
class Record:
    """One QA instance. ``question`` is the text shown to models (choices included for multiple choice)."""

    qid: str
    question: str
    answer: str  # gold label: "A".."E" or "Yes"/"No"
    choices: tuple[Choice, ...] = field(default_factory=tuple)  # empty for yes/no questions

    @property
    def answer_text(self) -> str:
        for c in self.choices:
            if c.label == self.answer:
                return c.text
        return self.answer

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> Record:
        return cls(row["qid"], row["question"], row["answer"], tuple(Choice(**c) for c in row.get("choices") or ()))


class DataError(ValueError):
    """A malformed input row; the message names file and line (or row index)."""


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- row parsing
def parse_choices_from_text(question: str) -> tuple[Choice, ...]:
    m = _CHOICES_RE.search(question)
    if not m:
        return ()
    return tuple(Choice(lbl, txt.strip()) for lbl, txt in _OPTION_RE.findall(m.group(1)))


def _normalise_binary(answer: Any) -> str | None:
    if isinstance(answer, bool):
        return "Yes" if answer else "No"
    a = str(answer).strip().lower()
    return {"yes": "Yes", "true": "Yes", "no": "No", "false": "No"}.get(a)


def _choices_suffix(choices: tuple[Choice, ...]) -> str:
    return " Answer choices: " + ", ".join(f"({c.label}) {c.text}" for c in choices) + "."


def make_record(row: dict, qid: str) -> Record:
    """Validate one raw row into a Record or raise ``DataError`` (without location; callers add it)."""
    if not isinstance(row, dict):
        raise DataError(f"row is a {type(row).__name__}, expected an object")
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise DataError("missing or empty 'question'")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise DataError("missing or empty 'answer'")
    question = question.strip()
    raw_choices = row.get("choices")
    if raw_choices:
        if isinstance(raw_choices, dict):
            choices = tuple(Choice(str(lbl), str(t)) for lbl, t in zip(raw_choices["label"], raw_choices["text"]))
        else:
            choices = tuple(Choice(chr(ord("A") + i), str(t)) for i, t in enumerate(raw_choices))
        if not _CHOICES_RE.search(question):
            question += _choices_suffix(choices)
    else:
        choices = parse_choices_from_text(question)
    if choices:
        label = str(answer).strip().strip("()").upper()
        if label not in {c.label for c in choices}:
            raise DataError(f"answer {answer!r} is not among the choices {[c.label for c in choices]}")
    else:
        label = _normalise_binary(answer)
        if label is None:
            raise DataError(f"answer {answer!r} is neither a choice label nor yes/no")
    return Record(qid=str(row.get("qid", row.get("id", qid))), question=question, answer=label, choices=choices)


# ----------------------------------------------------------------------------- loaders
def _collect(rows: list[tuple[str, str, dict]], on_error: str, report: LoadReport) -> list[Record]:
    """rows: (location, default qid, raw row). Skips-and-counts or raises, per ``on_error``."""
    records = []
    for where, qid, row in rows:
        try:
            records.append(make_record(row, qid))
        except DataError as e:
            msg = f"{where}: {e}"
            if on_error == "fail":
                raise DataError(msg + " (set dataset.on_error=skip to skip malformed rows)") from None
            log.warning("skipping malformed row %s", msg)
            report.skipped.append(msg)
    report.loaded = len(records)
    return records


def load_local(path: str | Path, split: str, split_file: str | Path | None, on_error: str) -> tuple[list[Record], LoadReport]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset.path: no such file {path}")
    report = LoadReport(source=str(path))
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rows.append((where, f"{split}-{lineno - 1}", json.loads(line)))
            except json.JSONDecodeError as e:
                if on_error == "fail":
                    raise DataError(f"{where}: not valid JSON ({e.msg})") from None
                log.warning("skipping malformed row %s: not valid JSON", where)
                report.skipped.append(f"{where}: not valid JSON ({e.msg})")
        if split_file:
            raise DataError("dataset.split_file applies to unified JSON lists, not JSONL (one file per split)")
        return _collect(rows, on_error, report), report
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows")
    if split_file:
        if not Path(split_file).exists():
            raise FileNotFoundError(f"dataset.split_file: no such file {split_file}")
        splits = _read_json(split_file)
        if split not in splits:
            raise DataError(f"{split_file}: no split {split!r} (has {sorted(splits)})")
        indices = splits[split]
    else:
        indices = range(len(data))
    rows = [(f"{path}[{i}]", f"{path.stem}-{i}", data[i]) for i in indices]
    return _collect(rows, on_error, report), report


def _read_json(path: str | Path) -> Any:
    from sert.artifacts import read_json

    try:
        return read_json(path)
    except ValueError as e:
        raise DataError(str(e)) from None


def _read_text(path: str | Path) -> str:
    from sert.artifacts import read_text

    try:
        return read_text(path)
    except ValueError as e:  # not UTF-8: the message names the file
        raise DataError(str(e)) from None


def load_hub(hub_id: str, hub_split: str, hub_config: str | None, on_error: str) -> tuple[list[Record], LoadReport]:
    """Load from the Hugging Face Hub (needs internet). CommonsenseQA rows carry ``choices`` and
    ``answerKey``; StrategyQA rows a boolean ``answer``."""
    import datasets

    ds = datasets.load_dataset(hub_id, hub_config, split=hub_split)
    report = LoadReport(source=f"hf://{hub_id}/{hub_split}")
    rows = []
    for i, r in enumerate(ds):
        row = {"question": r["question"], "answer": r.get("answerKey", r.get("answer")), "qid": r.get("id", r.get("qid", i))}
        if r.get("choices"):
            row["choices"] = r["choices"]
        rows.append((f"{report.source}[{i}]", str(i), row))
    return _collect(rows, on_error, report), report


def load_records(
    *,
    path: str | None,
    split: str,
    split_file: str | None = None,
    limit: int | None = None,
    on_error: str = "skip",
    hub_id: str | None = None,
    hub_config: str | None = None,
    hub_splits: dict[str, str] | None = None,
) -> tuple[list[Record], LoadReport]:
    """Load ``split`` from ``path`` when given, else from the Hub; keep the first ``limit`` records."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer (the first N records) or None (all), got {limit!r}")
    if path:
        records, report = load_local(path, split, split_file, on_error)
    else:
        if not hub_id:
            raise DataError("dataset.path is null and the dataset has no hub_id: give dataset.path=FILE")
        hub_split = (hub_splits or {}).get(split, split)
        records, report = load_hub(hub_id, hub_split, hub_config, on_error)
    if limit is not None:
        records = records[:limit]
    return records, report

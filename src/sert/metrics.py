"""Evaluation metrics of the paper (III-D) and answer extraction, as pure functions on text and token ids.

Acc, Fmt, Len and Rep are each defined once here; ``sert.evaluate`` tokenises with the evaluated
model's tokenizer and calls ``compute_metrics``. A label-only model (the Finetune baseline) writes no
reasoning: it reports Acc only, Fmt/Len/Rep are ``None`` (the paper's dashes in Table II).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sert.data import Choice
from sert.textstats import rep_n

# The answer sentence of every reasoning format (II-B, II-C1): "... So the answer is a_i."
MARKER_RE = re.compile(r"\bso\s*,?\s+the\s+answer\s+is\b\s*:?", re.I)
# Looser forms some outputs use ("The answer is B", "Answer: B"); they count for Acc, not for Fmt.
LOOSE_MARKER_RE = re.compile(r"\b(?:the\s+)?(?:correct\s+|final\s+)?answer\s+is\b\s*:?|\banswer\s*:", re.I)
_LABEL_RE = re.compile(r"^\W*?\(([A-Za-z])\)")  # "(B)", "(b) fridge"
_BARE_LABEL_RE = re.compile(r"^[\s\"'*]*([A-Za-z])(?:\)|[.,;:!?\"'*]|\s*$)")  # "B", "B.", "b)", but not "a fridge"
_YES_NO_RE = re.compile(r"\b(yes|no|true|false)\b", re.I)
_SENTENCE_END_RE = re.compile(r"\n|(?<=[.!?])\s+(?=[A-Z(])")


def repetition_rate(tokens: Sequence, n: int = 1) -> float:
    """Paper III-D Rep, "text redundancy (via unigram statistics)": ``rep_n`` with ``n=1`` by default
    (the same rep-n the II-A2 filter uses with ``n=2``). ``[a, b, a, a]`` -> 1 - 2/4 = 0.5."""
    return rep_n(tokens, n)


def split_reasoning(output: str) -> tuple[str, str | None]:
    """``(reasoning, answer_tail)``: the text before the first "So the answer is" and the text after it.

    Without the marker the whole output counts as reasoning and the tail is ``None``.
    ``"Milk spoils. So the answer is (B) fridge."`` -> ``("Milk spoils.", "(B) fridge.")``."""
    m = MARKER_RE.search(output)
    if not m:
        return output.strip(), None
    return output[: m.start()].strip(), output[m.end():].strip()


def _first_sentence(text: str) -> str:
    return _SENTENCE_END_RE.split(text.strip(), maxsplit=1)[0]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def parse_answer(text: str, choices: Sequence[Choice]) -> str | None:
    """The answer stated at the start of ``text`` (the words after "So the answer is"), or ``None``.

    Multiple choice (``choices`` given), looked for in the first sentence, in this order:
      1. a parenthesised label: ``"(B) fridge."`` / ``"(b)"`` -> ``B``;
      2. an option's text, case and punctuation ignored, whole words, earliest (then longest) match:
         ``"Fridge!"`` -> ``B``; ``"the populated areas, of course"`` -> the option "populated areas";
      3. a bare label standing alone: ``"B."``, ``"b)"``, ``"E"`` -> that label (``"a fridge"`` is not ``A``).
    Yes/no (no ``choices``): the first yes/no/true/false word: ``"No, it cannot."`` -> ``No``,
    ``"yes."`` -> ``Yes``, ``"true"`` -> ``Yes``.
    A label not among the choices (``"(F)"``) gives ``None``."""
    head = _first_sentence(text)
    if not choices:
        m = _YES_NO_RE.search(head)
        return None if not m else ("Yes" if m.group(1).lower() in ("yes", "true") else "No")
    labels = {c.label.upper() for c in choices}
    m = _LABEL_RE.match(head)
    if m:
        return m.group(1).upper() if m.group(1).upper() in labels else None
    words = f" {_norm(head)} "
    hits = [(words.find(f" {_norm(c.text)} "), -len(c.text), c.label) for c in choices if _norm(c.text)]
    hits = [h for h in hits if h[0] >= 0]
    if hits:
        return min(hits)[2]
    m = _BARE_LABEL_RE.match(head)
    return m.group(1).upper() if m and m.group(1).upper() in labels else None


def extract_answer(output: str, choices: Sequence[Choice], *, label_only: bool = False) -> str | None:
    """The model's answer in a generated ``output`` (the text after the prompt), or ``None``.

    Reasoning formats: the words after the first "So the answer is" (any casing, optional comma or
    colon), else after a looser "the answer is" / "Answer:"; ``parse_answer`` reads them.
    Label-only format: the output itself is the answer (``" (B) fridge"``).
    Examples (CommonsenseQA, choices A-E with B = "fridge"):
      ``"Milk must be kept cold. So the answer is (B) fridge."`` -> ``B``
      ``"... so the answer is: fridge"`` -> ``B``;  ``"... The answer is b."`` -> ``B``
      ``"Milk is cold and cold and cold"`` -> ``None`` (no answer sentence)
    StrategyQA: ``"Fish have no legs. So the answer is no."`` -> ``No``."""
    if label_only:
        return parse_answer(output, choices)
    _, tail = split_reasoning(output)
    if tail is None:
        m = LOOSE_MARKER_RE.search(output)
        if not m:
            return None
        tail = output[m.end():]
    return parse_answer(tail, choices)


def is_well_formatted(output: str, extracted: str | None, tokens: Sequence, *, rep_order: int = 3,
                      max_rep: float = 0.3) -> bool:
    """Fmt for one output (paper III-D, Output Format Alignment: "formatting errors, hallucinations, or
    severe repetition"). True when all hold:
      * the trained answer sentence is there: "So the answer is" followed by a parsable answer;
      * no imitated new item: the output does not go on with another "Question:";
      * no degenerate repetition: ``rep_n(tokens, rep_order) <= max_rep`` (default: at most 30%
        of the output's model-token trigrams repeat; fluent text stays near 0-5%, loops near 90%)."""
    _, tail = split_reasoning(output)
    if tail is None or extracted is None or "question:" in output.lower():
        return False
    return repetition_rate(tokens, rep_order) <= max_rep


# ----------------------------------------------------------------------------- lenient Acc, prefix Fmt
_CAND_LABEL_RE = re.compile(r"\(([A-Za-z])\)")  # "(B)", "(b)"
# an upper-case label standing alone: "B", "B.", "B)", "B is right" — but not the article in "A race track"
_CAND_BARE_RE = re.compile(r"(?<![\w'(])([A-Z])(?![\w'])")
_ARTICLE_A_RE = re.compile(r"A\s+[a-z]")


def answer_candidates(text: str, choices: Sequence[Choice]) -> list[str]:
    """Every answer the text mentions, in order of position (reasoning-teacher's candidate extraction).

    Yes/no: each yes/no/true/false word. Multiple choice: each "(X)" label, each option text (whole words,
    case and punctuation ignored) and each upper-case label standing alone (not "A" followed by a lower-case
    word: the article), restricted to the choices.
    ``"Not (A) oven but the fridge."`` (A oven, B fridge) -> ``["A", "A", "B"]`` (label, its text, "fridge")."""
    if not choices:
        return ["Yes" if m.group(1).lower() in ("yes", "true") else "No" for m in _YES_NO_RE.finditer(text)]
    labels = {c.label.upper() for c in choices}
    hits = [(m.start(), m.group(1).upper()) for m in _CAND_LABEL_RE.finditer(text)]
    hits += [(m.start(), m.group(1)) for m in _CAND_BARE_RE.finditer(text) if not _ARTICLE_A_RE.match(text, m.start())]
    for c in choices:
        words = [re.escape(w) for w in _norm(c.text).split()]
        if words:
            rx = re.compile(r"(?<!\w)" + r"\W+".join(words) + r"(?!\w)", re.I)
            hits += [(m.start(), c.label.upper()) for m in rx.finditer(text)]
    return [label for _, label in sorted(hits) if label in labels]


def extract_answer_lenient(output: str, choices: Sequence[Choice], *, label_only: bool = False) -> str | None:
    """Lenient Acc's answer: ``extract_answer`` (the strict one), and when that finds none, the LAST answer
    candidate anywhere in the output (``answer_candidates``) — reasoning-teacher's ``cleanse_prediction``
    fallback when its answer prefix is missing (Ho et al. 2023, the RD baseline's evaluator).
    ``" Milk is cold, so B."`` -> ``B``; ``" Maybe yes, maybe no"`` -> ``No``; ``" the the"`` -> ``None``."""
    strict = extract_answer(output, choices, label_only=label_only)
    if strict is not None:
        return strict
    cands = answer_candidates(output, choices)
    return cands[-1] if cands else None


def is_prefix_formatted(output: str, choices: Sequence[Choice]) -> bool:
    """Prefix Fmt: the output BEGINS with the trained format, whatever follows it. True when all hold:
      * there is a "So the answer is" sentence, and the reasoning before its first occurrence has at
        least one word (the output starts with reasoning, not with the answer);
      * the words after that first marker parse to an answer (``parse_answer``: first sentence only);
      * no imitated new item before the end of that answer sentence ("Question:" in the prefix).
    Nothing after the answer sentence is checked (an imitated "Question: …" or a loop there is allowed),
    unlike the strict ``is_well_formatted``; the strict check's repetition test is not applied.
    ``" Milk spoils. So the answer is (B). Question: ..."`` -> True; ``" So the answer is (B)."`` -> False."""
    reasoning, tail = split_reasoning(output)
    if tail is None or not re.search(r"\w", reasoning) or parse_answer(tail, choices) is None:
        return False
    prefix = reasoning + " " + _first_sentence(tail)
    return "question:" not in prefix.lower()


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def compute_metrics(correct: Sequence[bool], format_ok: Sequence[bool] | None = None,
                    reasoning_tokens: Sequence[int] | None = None,
                    output_tokens: Sequence[Sequence] | None = None, *,
                    correct_lenient: Sequence[bool] | None = None, format_prefix: Sequence[bool] | None = None) -> dict:
    """Paper III-D metrics over ``n`` outputs; pass only ``correct`` for a label-only model.

    * ``acc``: fraction of outputs whose extracted answer equals the gold label (Task Accuracy).
    * ``fmt``: fraction of outputs ``is_well_formatted`` (Output Format Alignment).
    * ``len``: mean reasoning length in model tokens; reasoning = the output before "So the answer is"
      (the whole output when the sentence is missing) (Reasoning Length).
    * ``rep``: mean over outputs of the unigram ``repetition_rate`` of the whole output's model tokens
      (Repetition Rate, "via unigram statistics").
    Example: correct [T, F], fmt [T, T], reasoning lengths [10, 20], tokens [[1,2,1,2], [5,6,7,8]] ->
    acc 0.5, fmt 1.0, len 15.0, rep (0.5 + 0.0) / 2 = 0.25, n 2.
    Labelled additions (not the paper's): ``acc_lenient`` from ``correct_lenient`` (``extract_answer_lenient``)
    and ``fmt_prefix`` from ``format_prefix`` (``is_prefix_formatted``), present only when given."""
    extra = {}
    if correct_lenient is not None:
        extra["acc_lenient"] = _mean([float(c) for c in correct_lenient])
    if format_prefix is not None:
        extra["fmt_prefix"] = _mean([float(f) for f in format_prefix])
    return {
        "acc": _mean([float(c) for c in correct]),
        "fmt": _mean([float(f) for f in format_ok]) if format_ok is not None else None,
        "len": _mean(list(reasoning_tokens)) if reasoning_tokens is not None else None,
        "rep": _mean([repetition_rate(t, 1) for t in output_tokens]) if output_tokens is not None else None,
        "n": len(correct),
        **extra,
    }

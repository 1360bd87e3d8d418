"""Text statistics shared by the filters (II-A2) and evaluation: n-gram repetition (rep-n), word units."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Hashable

_WORD_RE = re.compile(r"\w+|[^\w\s]")


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
    """Consecutive n-grams of ``tokens`` (empty when there are fewer than ``n`` tokens)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def rep_n(tokens: Sequence[Hashable], n: int = 2) -> float:
    """rep-n = 1 - |unique n-grams| / |n-grams| (paper II-A2, after Welleck et al.).

    0.0 means no repeated n-gram; a sequence with no n-gram at all (fewer than ``n`` tokens) counts
    as 0.0 (nothing repeats). Example: [a, b, a, b, a] has bigrams ab, ba, ab, ba -> 1 - 2/4 = 0.5."""
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def words(text: str) -> list[str]:
    """Lower-cased word/punctuation units: the ``unit=words`` alternative to model tokens."""
    return _WORD_RE.findall(text.lower())

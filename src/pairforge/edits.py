"""How much a revision changed an answer: a token-level edit distance, and its distribution for summaries.

Tokens are words and single punctuation marks (`\\w+` runs and every other non-space character), compared
case-sensitively; whitespace is not a token, so a revision that only re-spaces or re-wraps the answer has
distance 0. The distance is the Levenshtein distance over these tokens (insert, delete, substitute: 1 each)
divided by the longer token count, so 0 = unchanged and 1 = nothing in common. A model's tokenizer is not
used on purpose: the measure must not change with the reviser, and a one-word fix should count as one edit
whatever the word's sub-word pieces are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

_TOKEN = re.compile(r"\w+|[^\w\s]")
BINS = 50  # histogram bins over [0, 1]: 0.02 wide, fine enough to show where min_edit / max_edit cut


def tokens(text: str) -> list[str]:
    """The tokens the edit distance counts: words and single punctuation marks."""
    return _TOKEN.findall(text)


def levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    """Edits (insert, delete, substitute) that turn `a` into `b`. The shared head and tail are cut first, so a
    minimal revision of a long answer costs only the changed stretch, not len(a) x len(b)."""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, token in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token != other)))
        previous = current
    return previous[-1]


def edit_distance(original: str, revision: str) -> float:
    """Token-level Levenshtein distance / the longer token count, in [0, 1] (two empty texts: 0)."""
    a, b = tokens(original), tokens(revision)
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


class EditDistances(BaseModel):
    """The distribution of edit distances (none of the statistics without a distance): `n`, min, quartiles, max
    and mean, and a `BINS`-bin histogram over [0, 1] — in a pairs summary and in what `revise` shows."""

    n: int
    min: float | None = None
    q1: float | None = None
    median: float | None = None
    q3: float | None = None
    max: float | None = None
    mean: float | None = None
    histogram: list[int]


def distribution(values: Sequence[float]) -> EditDistances:
    """n, min, quartiles, max, mean and a `BINS`-bin histogram over [0, 1] of edit distances."""
    array = np.asarray(values, dtype=np.float64)
    bins = np.minimum(np.floor(np.clip(array, 0, 1) * BINS), BINS - 1).astype(np.int64)  # 0.3 -> [0.3, 0.32)
    counts = np.bincount(bins, minlength=BINS).tolist()
    if not len(array):
        return EditDistances(n=0, histogram=counts)
    q1, median, q3 = np.quantile(array, [0.25, 0.5, 0.75])
    return EditDistances(n=len(array), min=round(float(array.min()), 4), q1=round(float(q1), 4),
                         median=round(float(median), 4), q3=round(float(q3), 4), max=round(float(array.max()), 4),
                         mean=round(float(array.mean()), 4), histogram=counts)

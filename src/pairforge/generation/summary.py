"""What `generate` did, typed: each source's requests (answered from the cache, newly, failed), the responses
file and how many answers it holds. Nothing of it is written as a file: the CLI shows it (`render.generation`)
and the pipeline stops on its failures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pairforge.requests.engine import Tally


@dataclass
class GenerationSummary:
    tallies: dict[str, Tally]  # source -> what happened to its requests
    responses: Path  # the exported answers (responses.parquet)
    exported: int  # answers in it

    @property
    def failed(self) -> int:
        """Requests with no answer: failed now, or before and not retried."""
        return sum(t.failed + t.failed_before for t in self.tallies.values())

    @property
    def reasons(self) -> Counter[str]:
        """Why requests failed now, over all sources."""
        return Counter(r for t in self.tallies.values() for r in t.reasons.elements())

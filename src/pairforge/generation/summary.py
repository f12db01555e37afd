"""What `generate` did, typed: each source's requests (answered from the cache, newly, failed), the responses
file and how many answers it holds, each asked source's tokens and cost. The CLI shows it (`render.generation`,
`render.usage`) and the pipeline stops on its failures; only the tokens and cost are written (generate.summary.json,
which the report reads)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pairforge.requests.engine import Tally
from pairforge.requests.usage import Usage


@dataclass
class GenerationSummary:
    tallies: dict[str, Tally]  # source -> what happened to its requests
    responses: Path  # the exported answers (responses.parquet)
    exported: int  # answers in it
    usage: dict[str, Usage] = field(default_factory=dict)  # each asked source's tokens and cost, cached answers too
    usage_file: Path | None = None  # generate.summary.json: `usage` as the report reads it

    @property
    def failed(self) -> int:
        """Requests with no answer: failed now, or before and not retried."""
        return sum(t.failed + t.failed_before for t in self.tallies.values())

    @property
    def reasons(self) -> Counter[str]:
        """Why requests failed now, over all sources."""
        return Counter(r for t in self.tallies.values() for r in t.reasons.elements())

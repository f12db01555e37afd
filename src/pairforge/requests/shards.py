"""Prompt shards: generation split over many processes or machines that share a folder.

`--shard K/N` asks only the prompts whose stable prompt_id falls in bucket K of N (SHA-256 of the id, never
Python's salted hash(), so every machine agrees), into a store of its own beside the run's:
`<store's folder>/shards/K-of-N.sqlite`. SQLite over a network folder is safe with one writer per file, never
with several machines writing one file. A shard starts from the run's store's answers (copied into its own, so what
an earlier run answered is not asked again). Shards filter the prompts before any request is built, so their cache
keys (and seeds) are exactly the unsharded run's; the unsharded command merges every shard store's successes
into the run's store first (`store.opened`) and then asks only what no shard answered. Keys are content, so
shards of different N mix freely: the union is merged.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pairforge import layout
from pairforge import schema as S
from pairforge.errors import InputError

_FORM = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
MOST = 1_000_000  # shards of one run at most: N names the shard's files, and a typo'd N must not become a file name


@dataclass(frozen=True)
class Shard:
    """Bucket k (1-based) of n."""

    k: int
    n: int

    @classmethod
    def parse(cls, text: str | Shard) -> Shard:
        """'2/8' -> Shard(2, 8); anything else (0/2, 3/2, 1/0, a/b, 2) is one line under --shard."""
        if isinstance(text, Shard):
            text = str(text)
        found = _FORM.fullmatch(text) if isinstance(text, str) else None
        if found is None or not 1 <= int(found[1]) <= int(found[2]) <= MOST:
            raise InputError("--shard", f"expected K/N with 1 <= K <= N (e.g. 2/8), N at most {MOST:,}, found "
                                        f"{str(text)[:40]!r}")
        return cls(int(found[1]), int(found[2]))

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    def holds(self, prompt_id: str) -> bool:
        return int(hashlib.sha256(prompt_id.encode()).hexdigest()[:16], 16) % self.n == self.k - 1

    def keep(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows of a frame (prompts, answers) whose prompt_id this shard holds, in their order."""
        mask = [self.holds(pid) for pid in frame[S.PROMPT_ID].to_list()]
        return frame.filter(pl.Series(mask, dtype=pl.Boolean))

    def store(self, main: Path) -> Path:
        """This shard's store, beside the run's store `main`."""
        return main.parent / layout.SHARDS / f"{self.k}-of-{self.n}.sqlite"

    def lock(self, main: Path) -> Path:
        return lock_of(self.store(main))


def lock_of(shard_store: Path) -> Path:
    """Held while the shard runs (`folder_lock`): two copies of one shard stop, other shards run at once, and the
    unsharded merge waits for it to end."""
    return shard_store.with_suffix(".lock")


def shard_stores(main: Path) -> list[Path]:
    """Every shard store beside the run's store `main` (of any N), in name order."""
    return sorted((main.parent / layout.SHARDS).glob("*.sqlite"))


def chosen(shard: str | Shard | None) -> Shard | None:
    """The API's and the CLI's `shard` (None: the whole run)."""
    return None if shard is None else Shard.parse(shard)


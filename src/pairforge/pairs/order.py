"""A declared strength order of sources ("gpt-4 > chatgpt > text-davinci-003") and the pair types it allows.

The order may be partial: several chains separated by ';' or ',' ("a > b > c; a > d"). Each source's
level is its longest distance from a strongest source, so the gap between two sources (the pair's
margin) counts the steps of strength between them. Errors: a source twice in one chain, a cycle, an
unknown source, a pair type the order does not support ("chatgpt>gpt-4", or two unrelated sources).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter

from pairforge.errors import InputError


@dataclass(frozen=True)
class StrengthOrder:
    """Sources, their strength levels (0 = strongest), and which source beats which."""

    levels: dict[str, int]
    beats: frozenset[tuple[str, str]]  # (stronger, weaker), transitively closed

    @property
    def span(self) -> int:
        """The largest possible gap: the number of levels minus one (at least 1)."""
        return max(max(self.levels.values()), 1)

    def gap(self, stronger: str, weaker: str) -> int:
        return self.levels[weaker] - self.levels[stronger]

    def pair_types(self, spec: str) -> list[tuple[str, str]]:
        """'all' | 'adjacent' | 'extremes' | 'a>b,c>d' -> [(chosen_source, rejected_source), ...]."""
        spec = spec.strip()
        ordered = sorted(self.beats, key=lambda p: (self.levels[p[0]], self.levels[p[1]], p))
        if spec == "all":
            return ordered
        if spec == "adjacent":
            return [p for p in ordered if self.gap(*p) == 1]
        if spec == "extremes":
            top, bottom = min(self.levels.values()), max(self.levels.values())
            return [p for p in ordered if self.levels[p[0]] == top and self.levels[p[1]] == bottom]
        types = []
        for part in filter(None, (s.strip() for s in spec.split(","))):
            names = [n.strip() for n in part.split(">")]
            if len(names) != 2 or not all(names):
                raise InputError("--pair-types",
                                 f"expected 'stronger>weaker' (or all, adjacent, extremes), found '{part}'")
            for name in names:
                if name not in self.levels:
                    raise InputError("--pair-types", f"'{part}' names source '{name}', which --rank does not list "
                                     f"(known: {', '.join(self.levels)})")
            if (names[0], names[1]) not in self.beats:
                raise InputError("--pair-types", f"'{part}' does not follow from --rank: '{names[0]}' is not ranked "
                                 f"above '{names[1]}'")
            types.append((names[0], names[1]))
        if not types:
            raise InputError("--pair-types", "expected at least one pair type")
        return list(dict.fromkeys(types))


def parse_rank(text: str) -> StrengthOrder:
    """Parse '--rank'; every problem is one `InputError` naming the option."""
    chains = [c for c in re.split(r"[;,]", text) if c.strip()]
    if not chains:
        raise InputError("--rank", "expected sources from strongest to weakest, e.g. 'gpt-4 > chatgpt > davinci'")
    graph: dict[str, set[str]] = {}
    for chain in chains:
        names = [n.strip() for n in chain.split(">")]
        if any(not n for n in names):
            raise InputError("--rank", f"empty source name in '{chain.strip()}'")
        if len(names) < 2 and names[0] not in graph:
            graph.setdefault(names[0], set())
        seen = [n for n in names if names.count(n) > 1]
        if seen:
            raise InputError("--rank", f"source '{seen[0]}' appears twice in '{chain.strip()}'")
        for stronger, weaker in zip(names, names[1:], strict=False):
            graph.setdefault(stronger, set())
            graph.setdefault(weaker, set()).add(stronger)  # predecessors of weaker
    try:
        topo = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        cycle = " > ".join(reversed(exc.args[1]))
        raise InputError("--rank", f"the order has a cycle: {cycle}") from None
    levels: dict[str, int] = {}
    stronger_than: dict[str, set[str]] = {}
    for name in topo:
        preds = graph[name]
        levels[name] = max((levels[p] + 1 for p in preds), default=0)
        stronger_than[name] = set(preds).union(*(stronger_than[p] for p in preds))
    beats = frozenset((s, w) for w, above in stronger_than.items() for s in above)
    if len(levels) < 2:
        raise InputError("--rank", "expected at least two sources, e.g. 'strong > weak'")
    return StrengthOrder(levels=levels, beats=beats)

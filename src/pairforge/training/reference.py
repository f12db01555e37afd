"""Reference-model log-probs: computed once before training, cached on disk, reused by later runs.

The training reference is computed forward by forward, in the very pieces the loop will run (the planned
micro-batches cut by `Forwards`): bf16 numbers depend on the batch's shape (the same pair scored in a 4096-token
piece and in a batch of 4 differs by ~0.1 nats over ~200 tokens), and only a reference computed in the policy's
shapes makes step 1 exactly policy == reference. A forward that recurs (a later epoch in the same order, a
resumed run) is computed once. The reference-margin difficulty needs a value per pair before any order exists:
`reference_logps` scores pairs in length-sorted pieces for it.
The cache is keyed by (model fingerprint, tokenised forward or pair): the fingerprint names the reference's config
and exact weights (`fingerprints.model_fingerprint`); a forward's key hashes the token ids of all its pairs, its
layout, the device and what else shapes the numbers, so a beta sweep on the same model, data and order costs no
reference forward pass, while a different model, tokenizer, truncation or order never reuses stale numbers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import torch

from pairforge.files import write_table
from pairforge.sequences.logprobs import Forwards, answer_logps, collate, forward_pieces, row_width
from pairforge.sequences.tokenize import TokenizedPair
from pairforge.training.objective import ReferenceTable

Values = dict[str, tuple[float, float]]  # cache key -> (ref log p(chosen), ref log p(rejected))


def pair_key(pair: TokenizedPair) -> str:
    digest = hashlib.sha256()
    for seq in (pair.chosen, pair.rejected):
        digest.update(json.dumps([seq.answer_start, seq.ids]).encode())
    return digest.hexdigest()[:24]


@torch.inference_mode()
def training_reference(model: torch.nn.Module, batches: list[list[TokenizedPair]], forwards: Forwards, pad_id: int,
                       cache: Path | None, chunk_tokens: int, context: str) -> ReferenceTable:
    """{a forward's pairs (file rows, in order): ref log-probs of each pair's (chosen, rejected)} for every forward
    of `batches` as `forwards` cuts and lays them out; `context` names what else changes the numbers (lean blocks)."""
    device = next(model.parameters()).device
    known = _read(cache)
    table: ReferenceTable = {}
    todo: dict[tuple[int, ...], tuple[list[str], list[TokenizedPair]]] = {}
    for micro_batch in batches:
        for piece in forwards.pieces(micro_batch):
            indices = tuple(p.index for p in piece)
            key = _forward_key(piece, forwards, f"{context} {device.type} {chunk_tokens}")
            names = [f"{key}:{i}" for i in range(len(piece))]
            if all(name in known for name in names):
                table[indices] = [known[name] for name in names]
            else:
                todo[indices] = (names, piece)
    was_training = model.training
    model.eval()
    for indices, (names, piece) in todo.items():
        sums, _ = answer_logps(model, forwards.batch(piece, pad_id).to(device), chunk_tokens)
        table[indices] = [(float(sums[i]), float(sums[len(piece) + i])) for i in range(len(piece))]
        known.update(zip(names, table[indices], strict=True))
    model.train(was_training)
    if todo:
        _write(cache, known)
    return table


def _forward_key(piece: list[TokenizedPair], forwards: Forwards, context: str) -> str:
    """Everything that decides a forward's numbers besides the weights: its tokens, its layout, the device."""
    sequences = [[[s.answer_start, s.ids] if s else None for s in (p.chosen, p.rejected, p.target)] for p in piece]
    layout = [forwards.share_prompt, forwards.with_targets, forwards.target_only, context]
    return hashlib.sha256(json.dumps([layout, sequences]).encode()).hexdigest()[:24]


@torch.inference_mode()
def reference_logps(
    model: torch.nn.Module, pairs: list[TokenizedPair], pad_id: int, cache: Path | None,
    chunk_tokens: int = 512, share_prompt: bool = False, forward_tokens: int = 4096,
) -> dict[int, tuple[float, float]]:
    """{pair index: (ref log p(chosen), ref log p(rejected))}, for an order to be planned from (the
    reference-margin difficulty); reads and extends the on-disk cache. Missing pairs go through the model sorted
    by length, in forwards of at most `forward_tokens` (rows x width): inference keeps no activations, so the
    budget is large, and sorting keeps padding small (6.9% on the training benchmark)."""
    keys = {p.index: pair_key(p) for p in pairs}
    known = _read(cache)
    missing = sorted((p for p in pairs if keys[p.index] not in known), key=lambda p: row_width(p, share_prompt))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for chunk in forward_pieces(missing, forward_tokens, share_prompt):
        batch = collate(chunk, pad_id, with_targets=False, share_prompt=share_prompt).to(device)
        sums, _ = answer_logps(model, batch, chunk_tokens)
        for i, pair in enumerate(chunk):
            known[keys[pair.index]] = (float(sums[i]), float(sums[len(chunk) + i]))
    model.train(was_training)
    if missing:
        _write(cache, known)
    return {index: known[key] for index, key in keys.items()}


def _read(cache: Path | None) -> Values:
    if cache is None or not cache.exists():
        return {}
    return {k: (c, r) for k, c, r in pl.read_parquet(cache).iter_rows()}


def _write(cache: Path | None, known: Values) -> None:
    if cache is not None:
        write_table(pl.DataFrame({"key": list(known), "chosen": [v[0] for v in known.values()],
                                  "rejected": [v[1] for v in known.values()]}), cache)

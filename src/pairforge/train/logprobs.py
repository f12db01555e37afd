"""Batches of sequences and their answer log-probs, in fp32 and in chunks.

A batch stacks every sequence of its pairs as rows, right-padded: all chosen answers, then all
rejected ones, then the likelihood targets when they differ from the chosen answer. The model runs
once over all rows; the vocabulary projection then runs only on answer positions, a chunk of tokens
at a time, each chunk re-computed in backward (activation checkpointing) — so a [rows, length, vocab]
logits tensor never exists, and log-softmax is always taken in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pairforge.train.tokenize import Sequence, TokenizedPair


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor  # 1 where the token is part of an answer (is predicted and scored)
    pairs: int  # rows [0, pairs) chosen, [pairs, 2 pairs) rejected, then targets if `has_targets`
    has_targets: bool
    pair_types: list[str]
    weights: torch.Tensor  # [pairs]
    indices: list[int]  # rows of the pairs file

    def to(self, device: torch.device) -> Batch:
        for name in ("input_ids", "attention_mask", "answer_mask", "weights"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(pairs: list[TokenizedPair], pad_id: int, with_targets: bool) -> Batch:
    sequences: list[Sequence] = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    has_targets = with_targets and any(p.target is not None for p in pairs)
    if has_targets:
        sequences += [p.target or p.chosen for p in pairs]
    width = max(len(s.ids) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    answer = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq.ids)] = torch.tensor(seq.ids)
        attention[row, : len(seq.ids)] = 1
        answer[row, seq.answer_start : len(seq.ids)] = 1
    return Batch(input_ids, attention, answer, len(pairs), has_targets, [p.pair_type for p in pairs],
                 torch.tensor([p.weight for p in pairs], dtype=torch.float32), [p.index for p in pairs])


def answer_logps(model: torch.nn.Module, batch: Batch, chunk_tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs per row, answer-token count per row), in fp32."""
    decoder = model.get_decoder()
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)[0]
    head = model.get_output_embeddings()
    # position t predicts token t+1: score the tokens whose answer_mask is 1 (never the first token)
    scored = batch.answer_mask[:, 1:].bool()
    rows = torch.nonzero(scored, as_tuple=True)[0]
    states = hidden[:, :-1][scored]
    targets = batch.input_ids[:, 1:][scored]
    token_logps = torch.cat([
        _chunk_logps(states[i : i + chunk_tokens], targets[i : i + chunk_tokens], head.weight, head.bias)
        for i in range(0, len(targets), chunk_tokens)
    ]) if len(targets) else hidden.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(batch.input_ids.shape[0], dtype=torch.float32, device=hidden.device).index_add(
        0, rows, token_logps)
    counts = scored.sum(dim=1).to(torch.float32)
    return sums, counts


class AnswerLogps(torch.nn.Module):
    """A causal LM whose forward returns answer log-probs, so DDP/FSDP wrap the whole computation
    (calling the decoder of a wrapped model directly would bypass gradient synchronisation)."""

    def __init__(self, lm: torch.nn.Module, chunk_tokens: int = 512) -> None:
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return answer_logps(self.lm, batch, self.chunk_tokens)


class SequenceScores(torch.nn.Module):
    """A sequence-classification model (1 output) scoring each row at its last real token: the reward
    model. Returns (scores, answer-token counts) like `AnswerLogps`, so the same loop trains it.
    The last token is found from the attention mask, not from pad ids (pad == EOS in many tokenizers)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       use_cache=False)[0]
        last = batch.attention_mask.sum(dim=1) - 1
        scores = self.model.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        return scores.squeeze(-1).float(), batch.answer_mask[:, 1:].sum(dim=1).to(torch.float32)


def _chunk_logps(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    if states.requires_grad:
        return checkpoint(_token_logps, states, targets, weight, bias, use_reentrant=False)
    return _token_logps(states, targets, weight, bias)


def _token_logps(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    logits = F.linear(states, weight, bias).float()
    return logits.log_softmax(dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)

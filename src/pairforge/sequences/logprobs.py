"""Batches of sequences and their answer log-probs, in fp32 and in chunks.

Two layouts, one scoring rule. Unshared: every sequence is its own right-padded row — all chosen
answers, then all rejected ones, then the likelihood targets when they differ from the chosen answer.
Shared prompt (`share_prompt`): one row per pair, [prompt, chosen, rejected(, target)], where each
answer sees the prompt and itself but not the other answers (a 4D attention mask, positions restarting
after the prompt) — the prompt is pushed through the model once instead of twice.
An SFT-only objective trains on the likelihood target alone (`target_only`): one branch per pair, the
rejected answer never enters the model.
Either way a batch lists the answer tokens to score as (predicting state, target token, sequence);
the model runs once over all rows, and the vocabulary projection runs only on those states, a chunk at
a time, each chunk's logits re-computed in backward and turned in place into their gradient (`_HeadLogps`)
— so a [rows, length, vocab] logits tensor never exists, one [chunk, vocab] buffer is alive at a time,
and log-softmax is always taken in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pairforge.sequences.tokenize import Sequence, TokenizedPair, common_prefix


@dataclass
class Batch:
    """What the model runs on and which of its predictions are scored. One pair, prompt [5, 6], chosen
    answer [7], rejected answer [8, 9]:

    >>> from pairforge.sequences.tokenize import Sequence, TokenizedPair
    >>> pair = TokenizedPair(0, Sequence([5, 6, 7], 2), Sequence([5, 6, 8, 9], 2), None, "a>b", 1.0)
    >>> batch = collate([pair], pad_id=0, with_targets=False)  # one row per answer
    >>> batch.input_ids.tolist(), batch.score_states.tolist(), batch.score_targets.tolist()
    ([[5, 6, 7, 0], [5, 6, 8, 9]], [1, 5, 6], [7, 8, 9])
    >>> shared = collate([pair], pad_id=0, with_targets=False, share_prompt=True)  # one row per pair
    >>> shared.input_ids.tolist(), shared.position_ids.tolist(), shared.score_states.tolist()
    ([[5, 6, 7, 8, 9]], [[0, 1, 2, 2, 3]], [1, 1, 3])
    >>> shared.score_sequences.tolist()  # chosen i -> i, rejected i -> n + i
    [0, 1, 1]
    """

    input_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor  # [rows, length] (unshared) or [rows, 1, length, length] bool (shared)
    position_ids: torch.Tensor | None
    score_states: torch.Tensor  # flat index (row * length + position) of the state predicting each token
    score_targets: torch.Tensor  # the token predicted
    score_sequences: torch.Tensor  # which sequence it belongs to: chosen i -> i, rejected i -> n+i, target 2n+i
    sequences: int
    pairs: int
    has_targets: bool
    pair_types: list[str]
    weights: torch.Tensor  # [pairs]
    indices: list[int]  # rows of the pairs file
    tokens: int  # tokens pushed through the model that are not padding
    target_only: bool = False  # one sequence per pair: the likelihood target (chosen unless a target is given)

    def to(self, device: torch.device) -> Batch:
        for name in ("input_ids", "attention_mask", "position_ids", "score_states", "score_targets",
                     "score_sequences", "weights"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self


def collate(pairs: list[TokenizedPair], pad_id: int, with_targets: bool, share_prompt: bool = False,
            target_only: bool = False) -> Batch:
    has_targets = with_targets and any(p.target is not None for p in pairs)
    if target_only:
        branches = [[p.target or p.chosen] for p in pairs]
    else:
        branches = [[p.chosen, p.rejected] + ([p.target or p.chosen] if has_targets else []) for p in pairs]
    layout = _shared_rows(branches) if share_prompt else _separate_rows(branches)
    rows, positions, allowed, scored = layout
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
    if share_prompt:
        mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
        mask[:, 0] = torch.eye(width, dtype=torch.bool)  # padding attends to itself only (no empty softmax)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (pos, allow) in enumerate(zip(positions, allowed, strict=True)):
            mask[i, 0, : len(pos), : len(pos)] = allow
            position_ids[i, : len(pos)] = torch.tensor(pos)
    else:
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            mask[i, : len(row)] = 1
        position_ids = None
    states, targets, sequences = (torch.tensor([s[k] for s in scored], dtype=torch.long) for k in range(3))
    states = states + torch.tensor([s[3] for s in scored], dtype=torch.long) * width  # row offset
    n = len(pairs)
    return Batch(input_ids, mask, position_ids, states, targets, sequences, n * len(branches[0]), n, has_targets,
                 [p.pair_type for p in pairs], torch.tensor([p.weight for p in pairs], dtype=torch.float32),
                 [p.index for p in pairs], sum(len(r) for r in rows), target_only)


def row_width(pair: TokenizedPair, share: bool, target_only: bool = False) -> int:
    """The width of the pair's row: its target alone (`target_only`), the prompt once and both answers
    (shared), else its longer sequence."""
    if target_only:
        return len((pair.target or pair.chosen).ids)
    return pair.packed_length if share else pair.length


def forward_pieces(pairs: list[TokenizedPair], forward_tokens: int | None, share: bool,
                   target_only: bool = False, with_targets: bool = False) -> list[list[TokenizedPair]]:
    """The batch cut into consecutive pieces of at most `forward_tokens` (rows x padded width, counted as
    `collate` lays them out; a single pair larger than the budget is a piece of its own)."""
    if not pairs:
        return []
    if forward_tokens is None:
        return [pairs]
    pieces: list[list[TokenizedPair]] = [[]]
    for pair in pairs:
        piece = [*pieces[-1], pair]
        targets = with_targets and any(p.target is not None for p in piece)  # a third row per pair
        rows = len(piece) if share or target_only else (3 if targets else 2) * len(piece)
        width = max(row_width(p, share, target_only) for p in piece)
        if pieces[-1] and rows * width > forward_tokens:
            pieces.append([pair])
        else:
            pieces[-1] = piece
    return pieces


@dataclass(frozen=True)
class Forwards:
    """How a micro-batch goes through the model: cut into pieces of at most `tokens` (`forward_pieces`), each laid
    out by `collate`. The training loop and the precomputed reference pass share it, so that every reference value
    is computed in the very batch shape its policy value is (in bf16 the numbers depend on the shape)."""

    tokens: int | None
    share_prompt: bool
    with_targets: bool
    target_only: bool = False

    def pieces(self, pairs: list[TokenizedPair]) -> list[list[TokenizedPair]]:
        return forward_pieces(pairs, self.tokens, self.share_prompt, self.target_only, self.with_targets)

    def batch(self, piece: list[TokenizedPair], pad_id: int) -> Batch:
        return collate(piece, pad_id, self.with_targets, self.share_prompt, self.target_only)

    def evaluation(self) -> Forwards:
        """Held-out batches: each one forward, both answers scored (the metrics compare them)."""
        return Forwards(None, self.share_prompt, self.with_targets)


Layout = tuple[list[list[int]], list[list[int]], list[torch.Tensor], list[tuple[int, int, int, int]]]


def _separate_rows(branches: list[list[Sequence]]) -> Layout:
    """Each sequence its own row, rows ordered branch by branch (all chosen, all rejected, ...)."""
    n = len(branches)
    rows, scored = [], []
    for b in range(len(branches[0])):
        for i, pair in enumerate(branches):
            seq, row = pair[b], len(rows)
            rows.append(seq.ids)
            scored += [(t - 1, seq.ids[t], b * n + i, row) for t in range(max(seq.answer_start, 1), len(seq.ids))]
    return rows, [], [], scored


def _shared_rows(branches: list[list[Sequence]]) -> Layout:
    """One row per pair: the shared prompt once, then each answer, each seeing the prompt and itself."""
    n = len(branches)
    rows, positions, allowed, scored = [], [], [], []
    for i, pair in enumerate(branches):
        shared = min(min(s.answer_start for s in pair), common_prefix([s.ids for s in pair]))
        row, pos, owner = list(pair[0].ids[:shared]), list(range(shared)), [-1] * shared
        for b, seq in enumerate(pair):
            offset = len(row)
            row += seq.ids[shared:]
            pos += list(range(shared, len(seq.ids)))
            owner += [b] * (len(seq.ids) - shared)
            for t in range(max(seq.answer_start, 1), len(seq.ids)):
                state = t - 1 if t - 1 < shared else offset + (t - 1 - shared)
                scored.append((state, seq.ids[t], b * n + i, i))
        rows.append(row)
        positions.append(pos)
        owners = torch.tensor(owner)
        causal = torch.tril(torch.ones(len(row), len(row), dtype=torch.bool))
        same_branch = (owners[:, None] == owners[None, :]) | (owners[None, :] == -1)
        allowed.append(causal & same_branch)
    return rows, positions, allowed, scored


def answer_logps(model: torch.nn.Module, batch: Batch, chunk_tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs per sequence, answer-token count per sequence), in fp32."""
    decoder = model.get_decoder()
    mask = _attention_mask(batch.attention_mask, _compute_dtype(decoder))
    hidden = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                     use_cache=False)[0]
    head = model.get_output_embeddings()
    states = hidden.reshape(-1, hidden.shape[-1])[batch.score_states]
    targets = batch.score_targets
    token_logps = torch.cat([
        _chunk_logps(states[i : i + chunk_tokens], targets[i : i + chunk_tokens], head.weight, head.bias)
        for i in range(0, len(targets), chunk_tokens)
    ]) if len(targets) else hidden.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(batch.sequences, dtype=torch.float32, device=hidden.device).index_add(
        0, batch.score_sequences, token_logps)
    counts = torch.bincount(batch.score_sequences, minlength=batch.sequences).to(torch.float32)
    return sums, counts


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean block mask as the additive float mask (0 / -inf) SDPA would make of it, made once: given the
    boolean one, every layer's SDPA call converts it again and keeps its own [rows, 1, width, width] copy for
    backward (O(width^2) per layer); a float mask of the compute dtype is used as it is, one copy for all."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def _attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The mask the decoder gets: the shared layout's block mask, or right padding (causal within each row's
    own tokens, a padding position seeing itself only), as one additive mask; rows without padding keep
    their 2D mask, so that attention may take its causal fast path."""
    if mask.dim() == 2:
        if bool(mask.all()):
            return mask
        width = mask.shape[1]
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool, device=mask.device))
        mask = (causal & mask.bool()[:, None, :]) | torch.eye(width, dtype=torch.bool, device=mask.device)
        mask = mask[:, None]
    return additive_mask(mask, dtype)


def _compute_dtype(decoder: torch.nn.Module) -> torch.dtype:
    """The dtype attention runs in: autocast's where it is on (the policy's forward), else the weights'."""
    weight = decoder.get_input_embeddings().weight
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


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
    model. Returns (scores, answer-token counts) like `AnswerLogps`, so the same loop trains it; it needs
    the unshared layout (one sequence per row). The last token is found from the attention mask, not
    from pad ids (pad == EOS in many tokenizers)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        assert batch.attention_mask.dim() == 2, "the reward model scores one sequence per row"
        counts = torch.bincount(batch.score_sequences, minlength=batch.sequences).to(torch.float32)
        return last_token_scores(self.model, batch.input_ids, batch.attention_mask), counts


def last_token_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A sequence-classification model's 1-output score at each row's last real token (right padding).
    A LoRA-wrapped model is unwrapped first: its `base_model` is the adapter layer, not the decoder."""
    classifier = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = classifier.base_model
    mask = _attention_mask(attention_mask, _compute_dtype(decoder))
    hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False)[0]
    last = attention_mask.sum(dim=1) - 1
    return classifier.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1).float()


def _chunk_logps(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    return _HeadLogps.apply(states, weight, bias, targets)


class _HeadLogps(torch.autograd.Function):
    """log softmax(states @ W^T + b)[target] in fp32 with one [chunk, vocab] buffer alive at a time.

    Forward keeps the states and one log-sum-exp per token; backward recomputes the logits and turns
    them in place into the gradient (softmax minus one-hot, times the upstream gradient). Autograd's
    log_softmax would keep logits and log-probs and add two more buffers of that size in backward.
    """

    @staticmethod
    def forward(ctx: Any, states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
        logits = F.linear(states, weight, bias)
        ctx.compute_dtype = logits.dtype  # bf16 under autocast: backward must match it
        logits = logits.to(_at_least_fp32(logits.dtype))
        picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        top = logits.amax(dim=1, keepdim=True)
        log_sum_exp = logits.sub_(top).exp_().sum(dim=1).log_().add_(top.squeeze(1))
        ctx.save_for_backward(states, weight, bias, targets, log_sum_exp)
        return picked - log_sum_exp

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        states, weight, bias, targets, log_sum_exp = ctx.saved_tensors
        dtype = ctx.compute_dtype
        w = weight.to(dtype)
        grad_logits = F.linear(states.to(dtype), w, None if bias is None else bias.to(dtype))
        grad_logits = grad_logits.to(_at_least_fp32(dtype))
        grad_logits.sub_(log_sum_exp.unsqueeze(1)).exp_().mul_(-grad.unsqueeze(1))  # -softmax * grad
        grad_logits.scatter_add_(1, targets.unsqueeze(1), grad.unsqueeze(1))  # + one-hot * grad
        grad_logits = grad_logits.to(dtype)
        grad_states = (grad_logits @ w).to(states.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_logits.t() @ states.to(dtype)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = grad_logits.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_states, grad_weight, grad_bias, None


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)

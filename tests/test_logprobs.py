"""Answer log-probs from both batch layouts (one row per answer; one row per pair with the prompt
shared) equal an independent per-sequence full-logits computation — values and gradients."""

from __future__ import annotations

import pytest
import torch

from pairforge.sequences.logprobs import SequenceScores, answer_logps, collate
from pairforge.sequences.tokenize import Sequence, TokenizedPair

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))


def random_pairs(with_target: bool) -> list[TokenizedPair]:
    torch.manual_seed(1)
    pairs = []
    for i, (prompt, chosen, rejected) in enumerate(((6, 3, 7), (11, 9, 2), (4, 15, 12))):
        head = torch.randint(3, 500, (prompt,)).tolist()
        # in pair 0 the rejected answer starts like the chosen one: sharing must stop at the prompt's end
        first = torch.randint(3, 500, (chosen,)).tolist()
        second = (first[:2] if i == 0 else []) + torch.randint(3, 500, (rejected,)).tolist()
        target = Sequence(head + torch.randint(3, 500, (5,)).tolist(), prompt) if with_target else None
        pairs.append(TokenizedPair(i, Sequence(head + first, prompt), Sequence(head + second, prompt), target,
                                   "t", 1.0))
    return pairs


def naive(model, pairs: list[TokenizedPair], with_target: bool) -> torch.Tensor:
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    sequences += [p.target for p in pairs] if with_target else []
    sums = []
    for seq in sequences:
        ids = torch.tensor([seq.ids])
        logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        sums.append(logps.gather(1, ids[0, 1:, None]).squeeze(1)[seq.answer_start - 1 :].sum())
    return torch.stack(sums)


@pytest.mark.parametrize("with_target", [False, True])
@pytest.mark.parametrize("share_prompt", [False, True])
def test_both_layouts_equal_per_sequence_log_probs(tiny, share_prompt, with_target):
    pairs = random_pairs(with_target)
    expected = naive(tiny, pairs, with_target)
    expected.sum().backward()
    expected_grad = tiny.model.embed_tokens.weight.grad.clone()
    tiny.zero_grad()
    batch = collate(pairs, pad_id=2, with_targets=with_target, share_prompt=share_prompt)
    for chunk in (1, 7, 4096):
        sums, counts = answer_logps(tiny, batch, chunk_tokens=chunk)
        torch.testing.assert_close(sums, expected, rtol=1e-6, atol=1e-5)
        answer_lengths = [len(s.ids) - s.answer_start for p in pairs for s in (p.chosen,)] + \
            [len(p.rejected.ids) - p.rejected.answer_start for p in pairs]
        assert counts.tolist()[: 2 * len(pairs)] == answer_lengths
        sums.sum().backward()
        grad = tiny.model.embed_tokens.weight.grad  # tied with the output head: both paths' gradients
        assert (grad - expected_grad).norm() / expected_grad.norm() < 1e-5  # fp32 summation order only
        tiny.zero_grad()


def kept_squares(forward, shape: tuple[int, ...], autocast: bool) -> list[int]:
    """The byte sizes of the tensors of `shape` that autograd keeps for backward while `forward()` runs."""
    kept: dict[int, tuple[tuple[int, ...], int]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept[tensor.untyped_storage().data_ptr()] = (tuple(tensor.shape), tensor.untyped_storage().nbytes())
        return tensor

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        assert torch.isfinite(forward()[0]).all()
    return [size for kept_shape, size in kept.values() if kept_shape == shape]


@pytest.mark.parametrize("share_prompt", [True, False])
def test_the_attention_mask_is_kept_once_not_once_per_layer(tiny, share_prompt):
    """A [rows, 1, width, width] mask is O(width^2): autograd keeps one copy for every layer when SDPA converts
    a boolean mask itself (the shared layout's block mask, or the one transformers makes of right padding);
    made once as an additive mask of the compute dtype (also under bf16 autocast), one copy serves all
    layers — the bytes the memory model counts for it."""
    from pairforge.training.memory import estimate

    batch = collate(random_pairs(with_target=False), pad_id=2, with_targets=False, share_prompt=share_prompt)
    rows, width = batch.input_ids.shape
    assert tiny.config.num_hidden_layers >= 2
    for dtype, autocast in (("float32", False), ("bfloat16", True)):
        expected = estimate(tiny.config, 0, 0, forward_tokens=rows * width, chunk_tokens=1, dtype=dtype,
                            row_width=width).mask
        assert kept_squares(lambda: answer_logps(tiny, batch), (rows, 1, width, width), autocast) == [expected], dtype


def test_the_reward_model_keeps_its_padding_mask_once(tiny_model_dir):
    """The reward model's rows are right-padded too: its mask is kept once, as the policy's is."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    batch = collate(random_pairs(with_target=False), pad_id=2, with_targets=False)
    rows, width = batch.input_ids.shape
    for size, autocast in ((4, False), (2, True)):
        masks = kept_squares(lambda: SequenceScores(model)(batch), (rows, 1, width, width), autocast)
        assert masks == [rows * width * width * size]


def test_shared_layout_pushes_each_prompt_once():
    pairs = random_pairs(with_target=False)
    separate = collate(pairs, pad_id=2, with_targets=False)
    shared = collate(pairs, pad_id=2, with_targets=False, share_prompt=True)
    prompts = sum(p.chosen.answer_start for p in pairs)
    assert separate.tokens - shared.tokens == prompts  # answers that start alike still get their own tokens
    assert shared.input_ids.shape[0] == len(pairs) and separate.input_ids.shape[0] == 2 * len(pairs)


def test_the_batch_contract_example_in_its_docstring_holds() -> None:
    """The documented example of `Batch` (both layouts) is what `collate` builds."""
    import doctest

    from pairforge.sequences import logprobs

    result = doctest.testmod(logprobs)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("target_only", [False, True])
def test_forward_pieces_keep_to_their_token_budget_in_every_layout(share, target_only):
    """Each piece, laid out by `collate` exactly as the trainer lays it out (a likelihood target as a third row
    per pair, or the target alone), pushes at most `forward_tokens` tokens (rows x padded width)."""
    from pairforge.sequences.logprobs import forward_pieces

    def pair(i: int) -> TokenizedPair:
        prompt = list(range(1, 4 + i % 5))
        answer = lambda start, n: Sequence(prompt + list(range(start, start + n)), len(prompt))  # noqa: E731
        return TokenizedPair(i, answer(50, 3 + i % 4), answer(70, 2 + i % 3), answer(90, 6 + i % 7), "t", 1.0)

    pairs = [pair(i) for i in range(24)]
    pieces = forward_pieces(pairs, 60, share, target_only, with_targets=True)
    assert [p for piece in pieces for p in piece] == pairs and len(pieces) > 1
    for piece in pieces:
        batch = collate(piece, 0, with_targets=True, share_prompt=share, target_only=target_only)
        assert len(piece) == 1 or batch.input_ids.numel() <= 60

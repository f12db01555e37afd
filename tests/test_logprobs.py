"""Chunked fp32 answer log-probs equal the plain full-logits computation, values and gradients."""

from __future__ import annotations

import pytest
import torch

from pairforge.train.logprobs import answer_logps, collate
from pairforge.train.tokenize import Sequence, TokenizedPair

pytestmark = pytest.mark.slow


def naive_logps(model, batch):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logps = logits[:, :-1].log_softmax(-1).gather(2, batch.input_ids[:, 1:].unsqueeze(2)).squeeze(2)
    return (logps * batch.answer_mask[:, 1:]).sum(1)


@pytest.fixture
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))


def test_chunked_equals_full_logits(tiny):
    torch.manual_seed(1)
    pairs = [TokenizedPair(i, Sequence(torch.randint(3, 500, (n,)).tolist(), 3),
                           Sequence(torch.randint(3, 500, (n + 4,)).tolist(), 2), None, "t", 1.0)
             for i, n in enumerate((6, 11, 17))]
    batch = collate(pairs, pad_id=2, with_targets=False)
    expected = naive_logps(tiny, batch)
    expected.sum().backward()
    expected_grad = tiny.model.embed_tokens.weight.grad.clone()
    tiny.zero_grad()
    for chunk in (1, 7, 4096):
        sums, counts = answer_logps(tiny, batch, chunk_tokens=chunk)
        torch.testing.assert_close(sums, expected, rtol=1e-6, atol=1e-5)
        assert counts.tolist() == [3, 8, 14, 8, 13, 19]
        sums.sum().backward()
        grad = tiny.model.embed_tokens.weight.grad  # tied with the output head: both paths' gradients
        assert (grad - expected_grad).norm() / expected_grad.norm() < 1e-5  # fp32 summation order only
        tiny.zero_grad()

"""The memory-lean blocks (training/lean.py) and the fused head (sequences/logprobs.py): the same numbers as the
plain modules, less kept for backward, and the memory model's activation figure matching what is kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn


def _tiny_llama(layers: int = 2, hidden: int = 32, intermediate: int = 64, heads: int = 4, kv_heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads)
    return LlamaForCausalLM(config).train()


def _saved_bytes(model: nn.Module, tokens: int) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one decoder forward, given a causal block
    mask as training always gives one (sequences/logprobs.py `additive_mask`)."""
    from pairforge.sequences.logprobs import additive_mask

    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    causal = additive_mask(torch.tril(torch.ones(tokens, tokens, dtype=torch.bool))[None, None], torch.float32)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.model(input_ids=torch.arange(tokens).remainder(300).unsqueeze(0), attention_mask=causal,
                    position_ids=torch.arange(tokens).unsqueeze(0), use_cache=False)
    return sum(storages.values())


def test_lean_blocks_give_the_same_outputs_and_gradients():
    from pairforge.training.lean import use_lean_blocks

    plain = _tiny_llama()
    lean = copy.deepcopy(plain)
    assert use_lean_blocks(lean) == 2 * 2 + 1 + 2  # two norms per layer, the final norm, one MLP per layer
    ids = torch.randint(0, 300, (2, 24))
    out_plain, out_lean = plain(input_ids=ids).logits, lean(input_ids=ids).logits
    assert torch.equal(out_plain, out_lean)  # the very same operations in forward
    out_plain.log_softmax(-1)[..., 7].sum().backward()
    out_lean.log_softmax(-1)[..., 7].sum().backward()
    for (name, a), b in zip(plain.named_parameters(), lean.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("shape", [dict(), dict(hidden=64), dict(intermediate=128), dict(kv_heads=4),
                                   dict(heads=8, kv_heads=4), dict(hidden=576, intermediate=1536, heads=9, kv_heads=3)])
def test_lean_blocks_keep_less_and_the_memory_model_counts_it_exactly(shape):
    """Per token and decoder layer, the activation bytes the memory model expects are the bytes autograd keeps
    (counted with saved-tensor hooks), for shapes that vary one dimension at a time (and SmolLM2-135M's):
    each coefficient of training/memory.py is pinned by one of them."""
    from pairforge.training.lean import use_lean_blocks
    from pairforge.training.memory import estimate

    def kept(lean: bool) -> int:
        """One layer x 100 tokens: two differences leave out weights, embeddings and the final norm."""
        models = {layers: _tiny_llama(layers, **shape) for layers in (1, 2)}
        if lean:
            for model in models.values():
                use_lean_blocks(model)
        return sum(sign * _saved_bytes(models[layers], tokens)
                   for layers, tokens, sign in ((2, 200, 1), (2, 100, -1), (1, 200, -1), (1, 100, 1)))

    kept_plain, kept_lean = kept(lean=False), kept(lean=True)
    assert kept_lean < 0.75 * kept_plain  # SmolLM2-135M: 0.65
    one_layer = _tiny_llama(1, **shape).config
    for measured, lean in ((kept_plain, False), (kept_lean, True)):
        assert estimate(one_layer, 0, 0, forward_tokens=100, chunk_tokens=1, lean=lean).activations == measured


def test_lean_mlp_runs_a_lora_adapter_instead_of_bypassing_it():
    from peft import LoraConfig, get_peft_model

    from pairforge.training.lean import use_lean_blocks

    def adapted(lean: bool) -> nn.Module:
        model = _tiny_llama()
        if lean:
            use_lean_blocks(model)
        torch.manual_seed(1)
        peft = get_peft_model(model, LoraConfig(r=4, target_modules=["down_proj"], init_lora_weights=False))
        return peft.eval()

    ids = torch.randint(0, 300, (1, 12))
    plain, lean = adapted(False), adapted(True)
    with torch.no_grad():
        torch.testing.assert_close(lean(input_ids=ids).logits, plain(input_ids=ids).logits)
        with lean.disable_adapter():  # the adapter matters, so the comparison above could fail
            assert not torch.allclose(lean(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_modules_with_other_maths_are_left_alone():
    from pairforge.training.lean import use_lean_blocks

    class OnePlusNorm(nn.Module):  # Gemma-style: (1 + weight), not Llama's maths
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8))
            self.variance_epsilon = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    assert use_lean_blocks(nn.Sequential(OnePlusNorm(), nn.Linear(8, 8))) == 0


def test_head_log_probs_match_log_softmax_and_their_gradients_are_exact():
    from pairforge.sequences.logprobs import _HeadLogps

    torch.manual_seed(0)
    states, weight, bias = torch.randn(7, 5), torch.randn(40, 5), torch.randn(40)
    targets = torch.randint(0, 40, (7,))
    expected = torch.nn.functional.linear(states, weight, bias).log_softmax(-1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(_HeadLogps.apply(states, weight, bias, targets), expected)
    double = [t.double().requires_grad_() for t in (states, weight, bias)]
    assert torch.autograd.gradcheck(lambda s, w, b: _HeadLogps.apply(s, w, b, targets), double)


@pytest.mark.parametrize("bias", [True, False])
def test_swiglu_and_norm_gradients_are_exact(bias):
    from pairforge.training.lean import _RMSNorm, _SwiGLUDown

    torch.manual_seed(0)
    gate, up = torch.randn(2, 3, 7, dtype=torch.double), torch.randn(2, 3, 7, dtype=torch.double)
    weight = torch.randn(5, 7, dtype=torch.double)
    inputs = [t.requires_grad_() for t in (gate, up, weight)] + ([torch.randn(5, dtype=torch.double,
                                                                              requires_grad=True)] if bias else [])
    assert torch.autograd.gradcheck(lambda g, u, w, *b: _SwiGLUDown.apply(g, u, w, b[0] if b else None), inputs)
    # RMSNorm works in fp32 like Llama's (a float64 input is rounded there), so compare with Llama's own
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(6)
    norm.weight.data = torch.randn(6)
    x1 = torch.randn(4, 6, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    out1, out2 = norm(x1), _RMSNorm.apply(x2, norm.weight, norm.variance_epsilon)
    assert torch.equal(out1, out2)
    grad = torch.randn(4, 6)
    g1 = torch.autograd.grad(out1, (x1, norm.weight), grad)
    g2 = torch.autograd.grad(out2, (x2, norm.weight), grad)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a)

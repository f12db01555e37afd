"""Lean RMSNorm and SwiGLU MLP for Llama-family decoders: the same maths, fewer tensors kept for backward.

Without gradient checkpointing, backward holds every intermediate that autograd saved, and two blocks
keep more than their gradients need: RMSNorm keeps its input and the normalised input before the
weight; the SwiGLU MLP keeps gate, silu(gate), up and their product. Here RMSNorm keeps its input and
one number per token, and the MLP (fused with its down projection) keeps gate and up and recomputes
the rest in backward — elementwise work only, no extra matrix product. On SmolLM2 that is about a
third less activation memory per token. The forward runs the very operations of the originals in the
same order (bit-identical outputs); gradients agree to float rounding (tests/test_lean.py).

Only modules whose forward is byte-for-byte Llama's (same bytecode) are swapped, so an architecture
with different maths (Gemma's 1 + weight, a GELU MLP) keeps its own; an MLP whose projections are not
plain `nn.Linear` at call time (LoRA adapters) takes the original path.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        hidden = x.to(torch.float32)
        rstd = torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (hidden * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        normed = x.to(torch.float32) * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).reshape(-1, weight.shape[0]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_normed = (grad * weight).to(torch.float32)
            grad_x = (rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None


class _SwiGLUDown(torch.autograd.Function):
    """down(silu(gate) * up), keeping gate and up only."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(gate, up, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.silu(gate) * up, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gate, up, weight = ctx.saved_tensors
        dtype = gate.dtype  # under autocast the product was taken in this dtype: mirror it
        sigmoid = torch.sigmoid(gate)
        silu = gate * sigmoid
        grad = grad.to(dtype)
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            product = (silu * up).reshape(-1, up.shape[-1])
            grad_weight = (flat_grad.t() @ product).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = flat_grad.sum(0).to(weight.dtype)
        grad_product = grad @ weight.to(dtype)
        grad_up = grad_product * silu if ctx.needs_input_grad[1] else None
        grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_gate = grad_product * up * (sigmoid * (1 + gate * (1 - sigmoid)))
        return grad_gate, grad_up, grad_weight, grad_bias


def _lean_norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def _lean_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(self.down_proj) is not nn.Linear:  # an adapter wraps it: its own forward must run
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    return _SwiGLUDown.apply(self.gate_proj(x), self.up_proj(x), self.down_proj.weight, self.down_proj.bias)


def _same_code(method: Any, reference: Any) -> bool:
    code, ref = getattr(method, "__code__", None), reference.__code__
    return code is not None and (code.co_code, code.co_consts, code.co_names) == (ref.co_code, ref.co_consts,
                                                                                  ref.co_names)


def _is_silu(activation: Any) -> bool:
    from transformers.activations import ACT2FN

    return isinstance(activation, nn.SiLU) or type(activation) is type(ACT2FN["silu"])


def use_lean_blocks(model: nn.Module) -> int:
    """Swap in the lean forward of every Llama-style RMSNorm and SiLU-gated MLP; returns how many."""
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    swapped = 0
    for module in model.modules():
        forward = type(module).forward
        if _same_code(forward, LlamaRMSNorm.forward):
            module.forward = types.MethodType(_lean_norm_forward, module)
        elif _same_code(forward, LlamaMLP.forward) and _is_silu(getattr(module, "act_fn", None)):
            module.forward = types.MethodType(_lean_mlp_forward, module)
        else:
            continue
        swapped += 1
    return swapped

"""Generation with transformers on this machine: batched, left-padded, chat template or plain text
(`prompting` says how a prompt is rendered; training renders it the same way).

Requests are sorted by prompt length and answered `batch_size` at a time (left padding, so every
row's answer starts right after its own prompt). Sampling is seeded per batch from the first
request's seed: the same requests in the same run configuration give the same answers. An answer ends
at EOS or at the first stop string (which is cut off); one that hits max_new_tokens is 'length'.
Sampling draws one uniform number per row against the cumulative distribution (`InverseCdfSampler`)
instead of transformers' multinomial, whose exponential draw over the whole vocabulary took a third of
every decoding step on a CPU (SmolLM2-135M, 64 rows, 49k tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessorList

from pairforge.config import SourceConfig
from pairforge.models import load_causal_lm
from pairforge.prompting import Endpoint, has_chat_template, templated_prompt
from pairforge.requests.backends.base import Completion, Reporter, Request
from pairforge.text import prompt_text


def prompt_ids(tokenizer: Any, endpoint: Endpoint, messages: list[dict[str, str]]) -> list[int]:
    """The token ids a local model reads for a request (the dry run's estimate counts them the same way)."""
    if endpoint == "completions":
        return tokenizer(prompt_text(messages), add_special_tokens=True)["input_ids"]
    if not has_chat_template(tokenizer):  # a base model: the instruction template training uses too
        return tokenizer(templated_prompt(messages), add_special_tokens=True)["input_ids"]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template has its own BOS


class InverseCdfSampler:
    """A logits processor that samples the next token from softmax(logits / temperature), restricted to the
    top_p nucleus, and leaves only that token for greedy decoding to pick. Exact (the same distribution as
    transformers' sampling), with one random number per row instead of one per vocabulary entry."""

    def __init__(self, temperature: float, top_p: float = 1.0) -> None:
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        order = None
        if self.top_p < 1.0:  # the smallest set of most likely tokens whose mass reaches top_p
            probs, order = probs.sort(dim=-1, descending=True)
            before = probs.cumsum(-1) - probs
            probs = probs.masked_fill(before >= self.top_p, 0.0)
        cdf = probs.cumsum(-1)
        draw = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
        picked = torch.searchsorted(cdf, draw, right=True).clamp(max=cdf.shape[1] - 1)
        if order is not None:
            picked = order.gather(1, picked)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, picked, 0.0)


class TransformersBackend:
    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.model, self.tokenizer = load_causal_lm(cfg.model, cfg.resolved_dtype)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = (set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}) - {None}

    def run(self, requests: list[Request], report: Reporter) -> None:
        encoded = {r.key: self._encode(r.messages) for r in requests}
        context = getattr(self.model.config, "max_position_embeddings", None)
        fitting = []
        for request in requests:  # a prompt the context cannot hold fails alone, before any generation
            size = len(encoded[request.key])
            if context and size + self.cfg.max_new_tokens > context:
                report.failed(request, f"prompt + max_new_tokens more than the model's context of {context} "
                              f"tokens: the prompt is {size}, max_new_tokens {self.cfg.max_new_tokens}")
            else:
                fitting.append(request)
        ordered = sorted(fitting, key=lambda r: len(encoded[r.key]))
        for start in range(0, len(ordered), self.cfg.batch_size):
            batch = ordered[start:start + self.cfg.batch_size]
            try:
                completions = self._generate(batch, [encoded[r.key] for r in batch])
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory: record, go on with the rest
                for request in batch:
                    report.failed(request, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                continue
            for request, completion in zip(batch, completions, strict=True):
                completion.prompt_tokens = len(encoded[request.key])  # the row's own ids, without the padding
                report.completed(request, completion)

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        return prompt_ids(self.tokenizer, self.cfg.endpoint, messages)

    @torch.inference_mode()
    def _generate(self, batch: list[Request], prompts: list[list[int]]) -> list[Completion]:
        cfg = self.cfg
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        top_k = max(r.top_logprobs for r in batch)
        options: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": pad, "do_sample": False,
                                   "return_dict_in_generate": True, "output_logits": top_k > 0,
                                   "temperature": None, "top_p": None, "top_k": None}
        if cfg.temperature > 0:  # sampled by the processor; decoding then takes its one remaining token
            options["logits_processor"] = LogitsProcessorList([InverseCdfSampler(cfg.temperature, cfg.top_p)])
        if cfg.stop:
            options.update(stop_strings=cfg.stop, tokenizer=self.tokenizer)
        torch.manual_seed(batch[0].seed)
        out = self.model.generate(input_ids=input_ids, attention_mask=attention, **options)
        first = torch.log_softmax(out.logits[0].float(), dim=-1) if top_k else None
        completions = []
        for row, request in enumerate(batch):
            completion = self._finish(out.sequences[row, width:].tolist())
            if first is not None and request.top_logprobs:
                values, ids = first[row].topk(request.top_logprobs)
                completion.first_token_logprobs = {self.tokenizer.decode([i]): v for i, v in
                                                   zip(ids.tolist(), values.tolist(), strict=True)}
            completions.append(completion)
        return completions

    def _finish(self, ids: list[int]) -> Completion:
        """Cut at EOS or the first stop string; 'length' when neither ended the answer."""
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        if end is not None:
            ids = ids[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cuts = [text.find(s) for s in self.cfg.stop if s in text]
        if cuts:
            return Completion(text[:min(cuts)], "stop", len(ids))
        stopped = end is not None or len(ids) < self.cfg.max_new_tokens
        return Completion(text, "stop" if stopped else "length", len(ids))

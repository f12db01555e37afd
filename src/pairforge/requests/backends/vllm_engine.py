"""Generation with vLLM's offline engine (GPU; the optional extra `pairforge[vllm]`).

All requests go to the engine in chunks, so answers are committed to the store chunk by chunk while
vLLM batches continuously inside each chunk. Per-request seeds make sampling reproducible. The engine's settings
(GPUs, memory, context length, any other vllm.LLM keyword) come from the source's `vllm:` section.
"""

from __future__ import annotations

from typing import Any

from pairforge.config import SourceConfig
from pairforge.models import model_path
from pairforge.requests.backends.base import Completion, Reporter, Request
from pairforge.text import prompt_text

_CHUNK = 512


def engine_args(cfg: SourceConfig) -> dict[str, Any]:
    """vllm.LLM's keywords for a source: its model, dtype and seed, then the `vllm:` section's settings that are set
    (an unset one keeps vLLM's default) and its engine_args as given (config.py refuses keys that repeat these)."""
    section = cfg.vllm.model_dump(exclude={"engine_args"}, exclude_none=True) if cfg.vllm else {}
    return {"model": model_path(cfg.model), "dtype": cfg.resolved_dtype, "seed": cfg.seed, **section,
            **(cfg.vllm.engine_args if cfg.vllm else {})}


class VLLMBackend:
    def __init__(self, cfg: SourceConfig) -> None:
        import vllm

        self.cfg = cfg
        self.vllm = vllm
        self.llm = vllm.LLM(**engine_args(cfg))

    def run(self, requests: list[Request], report: Reporter) -> None:
        cfg = self.cfg
        for start in range(0, len(requests), _CHUNK):
            chunk = requests[start:start + _CHUNK]
            params = [self.vllm.SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                                               max_tokens=cfg.max_new_tokens, seed=r.seed, stop=cfg.stop or None,
                                               logprobs=r.top_logprobs or None) for r in chunk]
            if cfg.endpoint == "chat":
                outputs = self.llm.chat([r.messages for r in chunk], params, use_tqdm=False)
            else:
                outputs = self.llm.generate([prompt_text(r.messages) for r in chunk], params, use_tqdm=False)
            for request, output in zip(chunk, outputs, strict=True):
                completion = self._completion(output.outputs[0])
                ids = output.prompt_token_ids  # the prompt as the engine tokenized it (chat template included)
                completion.prompt_tokens = len(ids) if ids is not None else None
                report.completed(request, completion)

    def _completion(self, output: Any) -> Completion:
        first: dict[str, float] = {}
        if output.logprobs:
            first = {item.decoded_token: item.logprob for item in output.logprobs[0].values()}
        reason = "length" if output.finish_reason == "length" else "stop"
        return Completion(output.text, reason, len(output.token_ids), first)

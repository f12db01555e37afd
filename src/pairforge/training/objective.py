"""The objective of one micro-batch: the policy's answer log-probs, the reference's (precomputed, a frozen
copy, or the LoRA base), the loss of every pair and the numbers the metrics report."""

from __future__ import annotations

from typing import Any

import torch

from pairforge.sequences.logprobs import Batch, answer_logps
from pairforge.training import losses as L

# one forward's pairs (pairs file rows, in order) -> each pair's reference log-probs of (chosen, rejected), computed
# in that forward's shape (`reference.training_reference`)
ReferenceTable = dict[tuple[int, ...], list[tuple[float, float]]]


class PairObjective:
    """Per-pair losses of a batch, computed the same way in training and in evaluation."""

    def __init__(self, policy: torch.nn.Module, model: torch.nn.Module, reference: torch.nn.Module | None,
                 weights: dict[str, float], settings: L.LossSettings, accelerator: Any, chunk_tokens: int,
                 reward_model: bool) -> None:
        self.policy, self.model, self.reference = policy, model, reference  # model: the LM inside `policy`
        self.weights, self.settings, self.accelerator = weights, settings, accelerator
        self.chunk_tokens, self.reward_model = chunk_tokens, reward_model

    @property
    def target_only(self) -> bool:
        """Training batches carry the likelihood target alone (plain SFT); evaluation still scores both answers."""
        return L.likelihood_only(self.weights)

    @property
    def with_targets(self) -> bool:
        """Whether batches carry the likelihood target rows (SFT / SLiC terms)."""
        return L.needs_target(self.weights)

    def __call__(self, batch: Batch, table: ReferenceTable) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sums, counts = self.policy(batch)
        n = batch.pairs
        if batch.target_only:  # plain SFT: the loss is the target's mean NLL; no rewards without a rejected answer
            per_pair = self.weights["sft"] * L.mean_nll(sums, counts)
            return per_pair, {"loss": per_pair.detach(), "logps/target": sums.detach()}
        x = L.SequenceLogps(chosen=sums[:n], rejected=sums[n : 2 * n], chosen_tokens=counts[:n],
                            rejected_tokens=counts[n : 2 * n])
        if self.with_targets:
            rows = slice(2 * n, 3 * n) if batch.has_targets else slice(0, n)
            x.target_nll = L.mean_nll(sums[rows], counts[rows])
            x.target_tokens = counts[rows]
        if L.needs_reference(self.weights):
            with self.accelerator.autocast():  # the policy's forward is autocast by `prepare`: the same numbers
                x.ref_chosen, x.ref_rejected = self._reference(batch, table)
        per_pair = L.combined(self.weights, x, self.settings)
        reward_c, reward_r = L.rewards(x, self.settings, scores=self.reward_model)
        return per_pair, {"loss": per_pair.detach(), "rewards/chosen": reward_c, "rewards/rejected": reward_r,
                          "logps/chosen": x.chosen.detach(), "logps/rejected": x.rejected.detach()}

    def _reference(self, batch: Batch, table: ReferenceTable) -> tuple[torch.Tensor, torch.Tensor]:
        if table:
            values = torch.tensor(table[tuple(batch.indices)], dtype=torch.float32, device=batch.input_ids.device)
            return values[:, 0], values[:, 1]
        with torch.no_grad():
            if self.reference is not None:
                sums, _ = answer_logps(self.reference, batch, self.chunk_tokens)
            else:  # LoRA: the base model is the reference
                with self.model.disable_adapter():
                    sums, _ = answer_logps(self.model, batch, self.chunk_tokens)
        return sums[: batch.pairs], sums[batch.pairs : 2 * batch.pairs]

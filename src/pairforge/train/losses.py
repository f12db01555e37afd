"""Contrastive and likelihood losses: a table of small pure functions of per-sequence log-probs.

Every loss takes a `SequenceLogps` (log-probs SUMMED over answer tokens, token counts, and, for
reference-based losses, the reference's log-probs) and `LossSettings`, and returns one loss per pair;
the trainer averages (optionally weighted per pair) and adds weighted sums of several losses
(`{"dpo": 1.0, "sft": 0.2}`). With D = logp - ref and delta = Dc - Dr:

  dpo / sigmoid  -logsig(b delta)                             (Rafailov et al.)
  robust         [-(1-e) logsig(b delta) + e logsig(-b delta)] / (1-2e)   (cDPO, label noise e)
  hinge          relu(1 - b delta)                            (reference-based, as TRL)
  ipo            (Dc/|yc| - Dr/|yr| - 1/(2b))^2                (length-normalised, as TRL)
  apo_zero       (1 - sig(b Dc)) + sig(b Dr)
  apo_down       sig(b Dc) + (1 - sig(b delta))
  simpo          -logsig(b logp_c/|yc| - b logp_r/|yr| - gamma)   (reference-free)
  r-dpo          -logsig(b delta - alpha (|yc| - |yr|))        (length-regularised)
  slic           relu(delta_m - (logp_c - logp_r)) + lambda * NLL(y_ref)   (SLiC-HF, reference-free)
  sft            NLL(target): token-mean negative log-likelihood of the target answer
  reward-model   -logsig(r(y+) - r(y-)) where `chosen`/`rejected` hold a score head's outputs, not
                 log-probs (Bradley-Terry; the paper's RLHF baseline component and a judge)

Rewards reported with them are b * (logp - ref) (b * logp / |y| for reference-free losses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SequenceLogps:
    """Per-pair quantities, each a float tensor of shape [pairs]."""

    chosen: torch.Tensor  # sum of log p(y+ token | ...) over the chosen answer
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # number of answer tokens
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None  # the same under the reference model
    ref_rejected: torch.Tensor | None = None
    target_nll: torch.Tensor | None = None  # token-mean NLL of the likelihood target (sft, slic)


@dataclass(frozen=True)
class LossSettings:
    beta: float = 0.1
    label_smoothing: float = 0.0  # robust: assumed share of flipped labels, in [0, 0.5)
    gamma: float = 0.5  # simpo: target reward margin
    alpha: float = 0.0  # r-dpo: length penalty per token of difference
    delta: float = 1.0  # slic: hinge margin on log p(y+) - log p(y-)
    lam: float = 0.1  # slic: weight of the NLL regulariser on y_ref


LossFunction = Callable[[SequenceLogps, LossSettings], torch.Tensor]


def _ratios(x: SequenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ref_chosen is None or x.ref_rejected is None:
        raise ValueError("this loss needs reference log-probs")
    return x.chosen - x.ref_chosen, x.rejected - x.ref_rejected


def dpo(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    chosen, rejected = _ratios(x)
    return -F.logsigmoid(s.beta * (chosen - rejected))


def robust(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    chosen, rejected = _ratios(x)
    z = s.beta * (chosen - rejected)
    e = s.label_smoothing
    return (-(1 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1 - 2 * e)


def hinge(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    chosen, rejected = _ratios(x)
    return torch.relu(1 - s.beta * (chosen - rejected))


def ipo(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    chosen, rejected = _ratios(x)
    delta = chosen / x.chosen_tokens.clamp(min=1) - rejected / x.rejected_tokens.clamp(min=1)
    return (delta - 1 / (2 * s.beta)) ** 2


def apo_zero(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    chosen, rejected = _ratios(x)
    return (1 - torch.sigmoid(s.beta * chosen)) + torch.sigmoid(s.beta * rejected)


def apo_down(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    chosen, rejected = _ratios(x)
    return torch.sigmoid(s.beta * chosen) + (1 - torch.sigmoid(s.beta * (chosen - rejected)))


def simpo(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    chosen = x.chosen / x.chosen_tokens.clamp(min=1)
    rejected = x.rejected / x.rejected_tokens.clamp(min=1)
    return -F.logsigmoid(s.beta * (chosen - rejected) - s.gamma)


def r_dpo(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    chosen, rejected = _ratios(x)
    return -F.logsigmoid(s.beta * (chosen - rejected) - s.alpha * (x.chosen_tokens - x.rejected_tokens))


def slic(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    return torch.relu(s.delta - (x.chosen - x.rejected)) + s.lam * _target_nll(x)


def sft(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    return _target_nll(x)


def bradley_terry(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    return -F.logsigmoid(x.chosen - x.rejected)


def _target_nll(x: SequenceLogps) -> torch.Tensor:
    if x.target_nll is None:
        raise ValueError("this loss needs the likelihood target's NLL")
    return x.target_nll


LOSSES: dict[str, LossFunction] = {
    "dpo": dpo, "sigmoid": dpo, "robust": robust, "hinge": hinge, "ipo": ipo, "apo_zero": apo_zero,
    "apo_down": apo_down, "simpo": simpo, "r-dpo": r_dpo, "slic": slic, "sft": sft, "reward-model": bradley_terry,
}
REWARD_MODEL = "reward-model"
REFERENCE_FREE = frozenset({"simpo", "slic", "sft", REWARD_MODEL})
NEEDS_TARGET = frozenset({"slic", "sft"})


def needs_reference(weights: dict[str, float]) -> bool:
    return any(name not in REFERENCE_FREE for name in weights)


def rewards(x: SequenceLogps, s: LossSettings, scores: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit rewards: b (logp - ref), or b logp / |y| when there is no reference; a reward model's
    scores as they are."""
    if scores:
        return x.chosen.detach(), x.rejected.detach()
    if x.ref_chosen is not None and x.ref_rejected is not None:
        chosen, rejected = _ratios(x)
    else:
        chosen, rejected = x.chosen / x.chosen_tokens.clamp(min=1), x.rejected / x.rejected_tokens.clamp(min=1)
    return s.beta * chosen.detach(), s.beta * rejected.detach()


def combined(weights: dict[str, float], x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    """Per-pair weighted sum of the named losses."""
    return sum((w * LOSSES[name](x, s) for name, w in weights.items()), torch.zeros_like(x.chosen))

"""Contrastive and likelihood losses: a table of small pure functions of per-sequence log-probs.

Every loss takes a `SequenceLogps` (log-probs SUMMED over answer tokens, token counts, and, for
reference-based losses, the reference's log-probs) and `LossSettings`, and returns one loss per pair;
the trainer averages (optionally weighted per pair) and adds weighted sums of several losses
(`{"dpo": 1.0, "sft": 0.2}`). With D = logp - ref, delta = Dc - Dr and e = label_smoothing:

  dpo / sigmoid  -logsig(b delta)                             (Rafailov et al. 2023)
  cdpo           -(1-e) logsig(b delta) - e logsig(-b delta)   (conservative DPO, Mitchell 2023; TRL's sigmoid
                 loss with label_smoothing): cross-entropy against the soft label 1-e, flat at sig(b delta) = 1-e
  robust         [-(1-e) logsig(b delta) + e logsig(-b delta)] / (1-2e)   (rDPO, Chowdhury et al. 2024,
                 "Provably Robust DPO"; TRL's robust): unbiased, its mean over labels flipped with probability e
                 is the clean -logsig(b delta)
  hinge          relu(1 - b delta)                            (reference-based, as TRL)
  ipo            (Dc/|yc| - Dr/|yr| - 1/(2b))^2                (length-normalised, as TRL)
  apo_zero       (1 - sig(b Dc)) + sig(b Dr)
  apo_down       sig(b Dc) + (1 - sig(b delta))
  simpo          -logsig(b logp_c/|yc| - b logp_r/|yr| - gamma)   (reference-free)
  r-dpo          -logsig(b delta + alpha (|yc| - |yr|))        (R-DPO, Park et al. 2024, arXiv 2403.19159)
  slic           relu(delta_m - (logp_c - logp_r)) - lambda log P(y_ref|x)   (SLiC-HF, Zhao et al. 2023,
                 reference-free; the NLL is a sum over y_ref's tokens, `slic_nll="mean"` divides it by |y_ref|)
  sft            NLL(target): token-mean negative log-likelihood of the target answer (TRL's SFT)
  reward-model   -logsig(r(y+) - r(y-)) where `chosen`/`rejected` hold a score head's outputs, not
                 log-probs (Bradley-Terry; the paper's RLHF baseline component and a judge)

r-dpo's sign is the paper's: it is DPO for max E[r - alpha |y|] - b KL, so r = b log(pi/ref) + alpha |y| and the
length share of a preference is credited to alpha |y| instead of being learnt by the policy. A longer chosen
answer therefore LOWERS the loss and its gradient (less push towards length) and a shorter one raises them;
`- alpha (|yc| - |yr|)` would do the opposite and reward length.

Rewards reported with them are b * (logp - ref) (b * logp / |y| for reference-free losses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F

from pairforge.train_config import LOSS_KNOBS, METHODS, REWARD_MODEL, TrainConfig


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
    target_tokens: torch.Tensor | None = None  # its answer tokens: target_nll * target_tokens = -log P(target)


def _knob(name: str) -> Any:
    """A loss knob's default: the train section's (each knob is documented and validated there, once)."""
    return TrainConfig.model_fields[name].default


@dataclass(frozen=True)
class LossSettings:
    """The train section's loss knobs (train_config.LOSS_KNOBS), grouped: what every loss function reads."""

    beta: float = _knob("beta")
    label_smoothing: float = _knob("label_smoothing")  # cdpo, robust: assumed share of flipped labels, in [0, 0.5)
    gamma: float = _knob("gamma")  # simpo: target reward margin
    alpha: float = _knob("alpha")  # r-dpo: length regulariser per token of |y+| - |y-|
    delta: float = _knob("delta")  # slic: hinge margin on log p(y+) - log p(y-)
    lam: float = _knob("lam")  # slic: weight of the NLL regulariser on y_ref
    slic_nll: Literal["sum", "mean"] = _knob("slic_nll")  # slic: -log P(y_ref|x) as in the paper, or its token mean

    def __post_init__(self) -> None:
        if self.slic_nll not in ("sum", "mean"):
            raise ValueError(f"slic_nll must be 'sum' or 'mean', not {self.slic_nll!r}")

    @classmethod
    def of(cls, cfg: TrainConfig) -> LossSettings:
        """A train section's (or run's) loss knobs, taken by name: a knob added to LOSS_KNOBS comes along."""
        return cls(**cfg.loss_knobs())  # type: ignore[arg-type]


assert tuple(f.name for f in fields(LossSettings)) == LOSS_KNOBS, "LossSettings must hold exactly LOSS_KNOBS"


LossFunction = Callable[[SequenceLogps, LossSettings], torch.Tensor]


def _ratios(x: SequenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ref_chosen is None or x.ref_rejected is None:
        raise ValueError("this loss needs reference log-probs")
    return x.chosen - x.ref_chosen, x.rejected - x.ref_rejected


def dpo(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    chosen, rejected = _ratios(x)
    return -F.logsigmoid(s.beta * (chosen - rejected))


def cdpo(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    """Conservative DPO: trusts each label with probability 1 - e, so it stops pushing at a finite margin."""
    chosen, rejected = _ratios(x)
    z = s.beta * (chosen - rejected)
    e = s.label_smoothing
    return -(1 - e) * F.logsigmoid(z) - e * F.logsigmoid(-z)


def robust(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    """rDPO: de-biases the loss for labels flipped with probability e; unbounded below, unlike cdpo."""
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
    """Length-regularised DPO: `+ alpha (|yc| - |yr|)` credits length, not the policy, with a long chosen answer."""
    chosen, rejected = _ratios(x)
    return -F.logsigmoid(s.beta * (chosen - rejected) + s.alpha * (x.chosen_tokens - x.rejected_tokens))


def slic(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    """SLiC-HF; the paper's regulariser is the sequence NLL, a token mean would scale lambda by 1/|y_ref|."""
    nll = _target_nll(x) if s.slic_nll == "mean" else _target_sequence_nll(x)
    return torch.relu(s.delta - (x.chosen - x.rejected)) + s.lam * nll


def sft(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    return _target_nll(x)


def mean_nll(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL per sequence from summed log-probs and token counts: `target_nll`, SFT's loss."""
    return -sums / counts.clamp(min=1)


def bradley_terry(x: SequenceLogps, s: LossSettings) -> torch.Tensor:
    return -F.logsigmoid(x.chosen - x.rejected)


def _target_nll(x: SequenceLogps) -> torch.Tensor:
    if x.target_nll is None:
        raise ValueError("this loss needs the likelihood target's NLL")
    return x.target_nll


def _target_sequence_nll(x: SequenceLogps) -> torch.Tensor:
    """-log P(target): the token mean times the token count (an empty target gives 0)."""
    nll = _target_nll(x)
    if x.target_tokens is None:
        raise ValueError("this loss needs the likelihood target's token count (target_tokens) for its sequence NLL")
    return nll * x.target_tokens


LOSSES: dict[str, LossFunction] = {
    "dpo": dpo, "sigmoid": dpo, "cdpo": cdpo, "robust": robust, "hinge": hinge, "ipo": ipo, "apo_zero": apo_zero,
    "apo_down": apo_down, "simpo": simpo, "r-dpo": r_dpo, "slic": slic, "sft": sft, "reward-model": bradley_terry,
}
assert set(LOSSES) == set(METHODS), "train_config.Method and LOSSES must name the same methods"
REFERENCE_FREE = frozenset({"simpo", "slic", "sft", REWARD_MODEL})
NEEDS_TARGET = frozenset({"slic", "sft"})


def likelihood_only(weights: dict[str, float]) -> bool:
    """Plain SFT: the loss reads the likelihood target alone, so the rejected answer need not be computed."""
    return set(weights) == {"sft"}


def needs_target(weights: dict[str, float]) -> bool:
    """A term reads the likelihood target (SFT, SLiC's regulariser): batches carry its rows."""
    return bool(weights.keys() & NEEDS_TARGET)


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

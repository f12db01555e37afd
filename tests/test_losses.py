"""Each loss is checked against its formula on numbers worked out by hand (FIELD_NOTES' table)."""

import math

import pytest
import torch

from pairforge.training import losses as L

B = 0.1
LOGPS = dict(chosen=-10.0, rejected=-14.0, ref_chosen=-11.0, ref_rejected=-12.0, chosen_tokens=5.0,
             rejected_tokens=8.0)
DC, DR = 1.0, -2.0  # policy - reference
DELTA = DC - DR


def x(target_nll: float | None = 2.5, target_tokens: float | None = 4.0, **overrides) -> L.SequenceLogps:
    values = {**LOGPS, "target_nll": target_nll, "target_tokens": target_tokens, **overrides}
    t = {k: None if v is None else torch.tensor(v if isinstance(v, list) else [v], dtype=torch.float64)
         for k, v in values.items()}
    return L.SequenceLogps(**t)


def logsig(z: float) -> float:
    return -math.log1p(math.exp(-z))


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


@pytest.mark.parametrize(("name", "settings", "expected"), [
    ("dpo", {}, -logsig(B * DELTA)),
    ("cdpo", {"label_smoothing": 0.2}, -0.8 * logsig(B * DELTA) - 0.2 * logsig(-B * DELTA)),
    ("robust", {"label_smoothing": 0.2}, (-(0.8) * logsig(B * DELTA) + 0.2 * logsig(-B * DELTA)) / 0.6),
    ("hinge", {}, max(0.0, 1 - B * DELTA)),
    ("ipo", {}, (DC / 5 - DR / 8 - 1 / (2 * B)) ** 2),
    ("apo_zero", {}, (1 - sig(B * DC)) + sig(B * DR)),
    ("apo_down", {}, sig(B * DC) + 1 - sig(B * DELTA)),
    ("simpo", {"gamma": 0.5}, -logsig(B * (-10 / 5) - B * (-14 / 8) - 0.5)),
    ("r-dpo", {"alpha": 0.05}, -logsig(B * DELTA + 0.05 * (5 - 8))),
    ("slic", {"delta": 5.0, "lam": 0.1}, max(0.0, 5.0 - (-10 + 14)) + 0.1 * 2.5 * 4),
    ("slic", {"delta": 5.0, "lam": 0.1, "slic_nll": "mean"}, max(0.0, 5.0 - (-10 + 14)) + 0.1 * 2.5),
    ("sft", {}, 2.5),
])
def test_loss_matches_its_formula(name, settings, expected):
    value = L.LOSSES[name](x(), L.LossSettings(beta=B, **settings))
    assert value.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_policy_equal_to_reference_gives_log2_and_zero_rewards():
    same = x(chosen=-11.0, rejected=-12.0)
    assert L.dpo(same, L.LossSettings()).item() == pytest.approx(math.log(2), abs=1e-12)
    chosen, rejected = L.rewards(same, L.LossSettings())
    assert chosen.item() == 0.0 and rejected.item() == 0.0


def test_weighted_sum_and_reference_needs():
    settings = L.LossSettings(beta=B)
    both = L.combined({"dpo": 1.0, "sft": 0.2}, x(), settings).item()
    assert both == pytest.approx(-logsig(B * DELTA) + 0.2 * 2.5)
    assert L.needs_reference({"dpo": 1.0}) and not L.needs_reference({"slic": 1.0, "sft": 0.5})
    with pytest.raises(ValueError, match="reference"):
        L.dpo(x(ref_chosen=None, ref_rejected=None), settings)


# --- each corrected loss against its paper's formula, on two pairs, arithmetic on Python floats ---------------------


def pairs(**values: list[float]) -> L.SequenceLogps:
    return L.SequenceLogps(**{k: torch.tensor(v, dtype=torch.float64, requires_grad=k == "chosen")
                              for k, v in values.items()})


def test_r_dpo_is_park_et_al_and_regularises_length():
    """R-DPO (Park et al. 2024): -log sig(b [log pi/ref (y_w) - log pi/ref (y_l)] + alpha |y_w| - alpha |y_l|).

    Pair 0 has the longer chosen answer (12 vs 4 tokens), pair 1 the shorter (4 vs 12); both have log-ratios +1, -1.
    The paper's + credits the longer chosen answer's advantage to length, so pair 0's loss and its pull on log p(y_w)
    are SMALLER than DPO's (less push towards length) and pair 1's larger; `- alpha (...)` does the opposite.
    """
    b, alpha = 0.1, 0.01
    x = pairs(chosen=[-20.0, -20.0], rejected=[-18.0, -18.0], ref_chosen=[-21.0, -21.0],
              ref_rejected=[-17.0, -17.0], chosen_tokens=[12.0, 4.0], rejected_tokens=[4.0, 12.0])
    margin = b * ((-20.0 - -21.0) - (-18.0 - -17.0))  # b * (1 - (-1)) = 0.2
    z = [margin + alpha * (12 - 4), margin + alpha * (4 - 12)]  # 0.28, 0.12
    expected = [math.log(1 + math.exp(-v)) for v in z]  # -log sig(z)
    loss = L.r_dpo(x, L.LossSettings(beta=b, alpha=alpha))
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)

    plain = math.log(1 + math.exp(-margin))
    assert loss[0].item() < plain < loss[1].item()
    loss.sum().backward()
    pull = [-b / (1 + math.exp(v)) for v in z]  # d/d log p(y_w) of -log sig(z) = -b sig(-z)
    assert x.chosen.grad.tolist() == pytest.approx(pull, rel=1e-12)
    assert abs(pull[0]) < b / (1 + math.exp(margin)) < abs(pull[1])


def test_robust_is_chowdhury_rdpo_and_unbiased_under_flips():
    """rDPO (Chowdhury et al. 2024): [(1-e) L(y_w, y_l) - e L(y_l, y_w)] / (1-2e) with L = -log sig(b h); averaged over
    a label flipped with probability e it gives back the clean DPO loss."""
    b, e = 0.5, 0.1
    logps = dict(chosen=[-3.0, -9.0], rejected=[-5.0, -4.0], ref_chosen=[-4.0, -8.0], ref_rejected=[-4.5, -6.0],
                 chosen_tokens=[3.0, 3.0], rejected_tokens=[3.0, 3.0])
    h = [(-3.0 - -4.0) - (-5.0 - -4.5), (-9.0 - -8.0) - (-4.0 - -6.0)]  # 1.5, -3.0
    nll = [math.log(1 + math.exp(-b * v)) for v in h]  # -log sig(b h)
    nll_flipped = [math.log(1 + math.exp(b * v)) for v in h]  # -log sig(-b h)
    expected = [((1 - e) * a - e * f) / (1 - 2 * e) for a, f in zip(nll, nll_flipped, strict=True)]
    settings = L.LossSettings(beta=b, label_smoothing=e)
    loss = L.robust(pairs(**logps), settings)
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)

    swapped = {**logps, "chosen": logps["rejected"], "rejected": logps["chosen"],
               "ref_chosen": logps["ref_rejected"], "ref_rejected": logps["ref_chosen"]}
    averaged = (1 - e) * loss + e * L.robust(pairs(**swapped), settings)
    assert averaged.tolist() == pytest.approx(nll, rel=1e-12)


def test_cdpo_is_mitchell_conservative_dpo():
    """cDPO (Mitchell 2023; TRL's sigmoid loss with label_smoothing): -(1-e) log sig(b h) - e log sig(-b h), the
    cross-entropy against the soft label 1-e: flat where sig(b h) = 1-e, i.e. b h = log((1-e)/e)."""
    b, e = 0.5, 0.1
    logps = dict(chosen=[-3.0, -9.0], rejected=[-5.0, -4.0], ref_chosen=[-4.0, -8.0], ref_rejected=[-4.5, -6.0],
                 chosen_tokens=[3.0, 3.0], rejected_tokens=[3.0, 3.0])
    h = [1.5, -3.0]
    expected = [(1 - e) * math.log(1 + math.exp(-b * v)) + e * math.log(1 + math.exp(b * v)) for v in h]
    settings = L.LossSettings(beta=b, label_smoothing=e)
    assert L.cdpo(pairs(**logps), settings).tolist() == pytest.approx(expected, rel=1e-12)
    assert L.LOSSES["cdpo"] is L.cdpo and L.needs_reference({"cdpo": 1.0})

    at_optimum = pairs(chosen=[math.log((1 - e) / e) / b], rejected=[0.0], ref_chosen=[0.0], ref_rejected=[0.0],
                       chosen_tokens=[1.0], rejected_tokens=[1.0])
    L.cdpo(at_optimum, settings).sum().backward()
    assert at_optimum.chosen.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_slic_regularises_with_the_sequence_nll_of_y_ref():
    """SLiC-HF (Zhao et al. 2023): max(0, delta - log P(y+|x) + log P(y-|x)) - lambda log P(y_ref|x), log P a sum over
    tokens. The trainer hands over the token mean and the token count; sft keeps the token mean (TRL's SFT)."""
    token_probs = [[0.5, 0.25, 0.8], [0.9, 0.6]]  # y_ref's tokens, one list per pair
    log_p_ref = [sum(math.log(p) for p in probs) for probs in token_probs]  # log P(y_ref|x), a sum
    tokens = [3.0, 2.0]
    mean_nll = [-log_p_ref[0] / 3, -log_p_ref[1] / 2]  # what the trainer hands over as target_nll
    x = pairs(chosen=[-6.0, -2.0], rejected=[-9.0, -8.0], chosen_tokens=[3.0, 2.0], rejected_tokens=[4.0, 4.0],
              target_nll=mean_nll, target_tokens=tokens)
    delta, lam = 5.0, 0.1
    hinge = [max(0.0, delta - (-6.0 - -9.0)), max(0.0, delta - (-2.0 - -8.0))]  # 2.0, 0.0
    expected = [hinge[0] - lam * log_p_ref[0], hinge[1] - lam * log_p_ref[1]]
    assert L.slic(x, L.LossSettings(delta=delta, lam=lam)).tolist() == pytest.approx(expected, rel=1e-12)

    mean = L.slic(x, L.LossSettings(delta=delta, lam=lam, slic_nll="mean"))
    assert mean.tolist() == pytest.approx([hinge[0] + lam * mean_nll[0], hinge[1] + lam * mean_nll[1]], rel=1e-12)
    assert L.sft(x, L.LossSettings()).tolist() == pytest.approx(mean_nll, rel=1e-12)
    with pytest.raises(ValueError, match="target_tokens"):
        L.slic(pairs(chosen=[-6.0], rejected=[-9.0], chosen_tokens=[3.0], rejected_tokens=[4.0], target_nll=[1.0]),
               L.LossSettings())
    with pytest.raises(ValueError, match="slic_nll"):
        L.LossSettings(slic_nll="token")


# --- step 1: policy == reference (or, reference-free, given log-probs), every loss at its known value ---------------

# Policy == reference, and both answers at the same mean log-prob (-2 per token) so the reference-free ones have
# closed forms too; the slic/sft target is the chosen answer (NLL 10 over 5 tokens).
STEP1 = dict(chosen=-10.0, rejected=-16.0, ref_chosen=-10.0, ref_rejected=-16.0, chosen_tokens=5.0,
             rejected_tokens=8.0, target_nll=2.0, target_tokens=5.0)
STEP1_SETTINGS = dict(beta=B, label_smoothing=0.2, alpha=0.05, gamma=0.5, delta=8.0, lam=0.1)
AT_STEP1 = {
    "dpo": (math.log(2), {}),
    "sigmoid": (math.log(2), {}),
    "cdpo": (math.log(2), {}),  # -(1-e) ln(1/2) - e ln(1/2)
    "robust": (math.log(2), {}),  # ((1-e) ln 2 - e ln 2) / (1-2e)
    "hinge": (1.0, {}),
    "ipo": ((1 / (2 * B)) ** 2, {}),
    "apo_zero": (1.0, {}),  # (1 - 1/2) + 1/2
    "apo_down": (1.0, {}),  # 1/2 + (1 - 1/2)
    "simpo": (math.log(1 + math.exp(0.5)), {}),  # -log sig(0 - gamma)
    "r-dpo": (math.log(1 + math.exp(-0.05 * (5 - 8))), {}),  # -log sig(alpha (|yc| - |yr|)): ln 2 only if equal
    "slic": (max(0.0, 8.0 - (-10.0 + 16.0)) + 0.1 * 10.0, {}),  # 2 + lam * 10
    "sft": (2.0, {}),
    "reward-model": (math.log(2), {"chosen": 0.3, "rejected": 0.3}),  # equal scores
}


def test_step1_table_covers_every_loss():
    assert set(AT_STEP1) == set(L.LOSSES)


@pytest.mark.parametrize("name", sorted(AT_STEP1))
def test_loss_at_step1(name):
    expected, overrides = AT_STEP1[name]
    value = L.LOSSES[name](x(**{**STEP1, **overrides}), L.LossSettings(**STEP1_SETTINGS))
    assert value.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_loss_settings_are_the_train_sections_loss_knobs() -> None:
    """Every loss knob a recipe sets (flat in its train section) reaches the losses, and an unset one has the
    section's default."""
    from pairforge.train_config import TrainConfig

    knobs = {"beta": 0.3, "label_smoothing": 0.2, "gamma": 1.5, "alpha": 0.01, "delta": 2.0, "lam": 0.5,
             "slic_nll": "mean"}
    assert L.LossSettings.of(TrainConfig(**knobs)) == L.LossSettings(**knobs)
    assert L.LossSettings.of(TrainConfig()) == L.LossSettings()
    assert L.LossSettings() == L.LossSettings(beta=0.1, label_smoothing=0.0, gamma=0.5, alpha=0.0, delta=1.0,
                                              lam=0.1, slic_nll="sum")

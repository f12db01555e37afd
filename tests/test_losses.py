"""Each loss is checked against its formula on numbers worked out by hand (FIELD_NOTES' table)."""

import math

import pytest
import torch

from pairforge.train import losses as L

B = 0.1
LOGPS = dict(chosen=-10.0, rejected=-14.0, ref_chosen=-11.0, ref_rejected=-12.0, chosen_tokens=5.0,
             rejected_tokens=8.0)
DC, DR = 1.0, -2.0  # policy - reference
DELTA = DC - DR


def x(target_nll: float | None = 2.5, **overrides) -> L.SequenceLogps:
    values = {**LOGPS, **overrides}
    t = {k: None if v is None else torch.tensor([v], dtype=torch.float64) for k, v in values.items()}
    return L.SequenceLogps(**t, target_nll=None if target_nll is None else torch.tensor([target_nll]))


def logsig(z: float) -> float:
    return -math.log1p(math.exp(-z))


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


@pytest.mark.parametrize(("name", "settings", "expected"), [
    ("dpo", {}, -logsig(B * DELTA)),
    ("robust", {"label_smoothing": 0.2}, (-(0.8) * logsig(B * DELTA) + 0.2 * logsig(-B * DELTA)) / 0.6),
    ("hinge", {}, max(0.0, 1 - B * DELTA)),
    ("ipo", {}, (DC / 5 - DR / 8 - 1 / (2 * B)) ** 2),
    ("apo_zero", {}, (1 - sig(B * DC)) + sig(B * DR)),
    ("apo_down", {}, sig(B * DC) + 1 - sig(B * DELTA)),
    ("simpo", {"gamma": 0.5}, -logsig(B * (-10 / 5) - B * (-14 / 8) - 0.5)),
    ("r-dpo", {"alpha": 0.05}, -logsig(B * DELTA - 0.05 * (5 - 8))),
    ("slic", {"delta": 5.0, "lam": 0.1}, max(0.0, 5.0 - (-10 + 14)) + 0.1 * 2.5),
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

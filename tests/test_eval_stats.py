"""Win-rate statistics on hand-computed and synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from pairforge.evaluation.stats import length_controlled_win_rate, paired_difference, pooled_difference, win_rate


def test_win_rate_counts_ties_half_and_its_interval_is_sane() -> None:
    verdicts = np.array([1, 1, 1, 0, 0.5, 0.5, 1, 0, 1, 1], dtype=float)  # 6 wins, 2 ties, 2 losses
    result = win_rate(verdicts, bootstrap=2000)
    assert result.value == pytest.approx(0.7)
    assert 0.4 < result.low < 0.7 < result.high <= 1.0
    assert win_rate(np.ones(20)).low == 1.0  # no variation, no width


def test_length_controlled_win_rate_falls_to_half_when_length_is_all_that_wins() -> None:
    rng = np.random.default_rng(0)
    reference = rng.integers(40, 120, 600).astype(float)
    model = reference + rng.normal(60, 40, 600)  # usually longer
    z = (model - reference) / (model - reference).std()
    verdicts = (rng.random(600) < 1 / (1 + np.exp(-2.5 * z))).astype(float)  # wins come from length only
    raw = win_rate(verdicts).value
    lc = length_controlled_win_rate(verdicts, model, reference, bootstrap=200)
    assert raw > 0.8
    assert abs(lc.value - 0.5) < 0.08 and lc.low < 0.5 < lc.high


def test_length_controlled_win_rate_keeps_a_real_advantage() -> None:
    rng = np.random.default_rng(1)
    reference = rng.integers(40, 120, 400).astype(float)
    model = reference + rng.normal(0, 30, 400)  # same length on average
    verdicts = (rng.random(400) < 0.8).astype(float)  # better regardless of length
    lc = length_controlled_win_rate(verdicts, model, reference, bootstrap=200)
    assert abs(lc.value - verdicts.mean()) < 0.03


def test_paired_difference_tells_a_real_gap_from_noise() -> None:
    rng = np.random.default_rng(2)
    better, worse = (rng.random(300) < 0.7).astype(float), (rng.random(300) < 0.4).astype(float)
    real = paired_difference(better, worse)
    assert real.value > 0.2 and real.p_value < 0.01
    assert 0 < real.low < real.value < real.high and real.significant
    same_a, same_b = (rng.random(300) < 0.5).astype(float), (rng.random(300) < 0.5).astype(float)
    noise = paired_difference(same_a, same_b)
    assert noise.p_value > 0.05 and noise.low < 0 < noise.high and not noise.significant


def test_a_handful_of_prompts_is_not_called_significant() -> None:
    """4 prompts, all won: the exact sign-flip test gives p = 2/16 = 0.125 (the bootstrap said 0 and called it
    significant); at 20 all won it is significant, with p > 0 as any finite test gives."""
    four = paired_difference(np.ones(4), np.zeros(4))
    assert four.p_value == pytest.approx(0.125) and not four.significant
    twenty = paired_difference(np.ones(20), np.zeros(20))
    assert 0 < twenty.p_value < 0.01 and twenty.significant


def test_paired_test_keeps_its_level_on_small_samples() -> None:
    """With no real difference between the models, at most ~5% of 8-prompt comparisons are called
    significant (the bootstrap test called 8.2%)."""
    rng = np.random.default_rng(3)
    calls = [paired_difference((rng.random(8) < 0.5).astype(float), (rng.random(8) < 0.5).astype(float),
                               bootstrap=200, seed=k).significant for k in range(600)]
    assert np.mean(calls) <= 0.05


def test_a_length_controlled_rate_far_from_the_raw_one_is_pointed_out() -> None:
    """A model whose answers are all much longer: its length-controlled win rate extrapolates, and the notes
    say to read both (as AlpacaEval 2 warns); a small gap gets no note."""
    from pairforge.evaluation.leaderboard import Leaderboard
    from pairforge.render import leaderboard_notes

    def model(name: str, raw: float, controlled: float) -> dict:
        rate = {"value": raw, "low": raw - 0.05, "high": raw + 0.05}
        return {"model": name, "unjudged": 0, "prompts": 100, "mean_length": 50.0, "reference_length": 20.0,
                "win_rate": rate,
                "length_controlled_win_rate": {"value": controlled, "low": controlled - 0.1, "high": controlled + 0.1}}

    board = Leaderboard(judge="reward-model", prompts=100, reference="ref.json",
                        models=[model("long", 0.61, 0.80), model("fair", 0.55, 0.52)])
    notes = leaderboard_notes(board)
    assert [n for n in notes if "length-controlled" in n] == [
        "long: the length-controlled win rate (0.800) is +0.190 from the raw one (0.610): length explains much of "
        "its verdicts, or its lengths barely overlap the reference's (then the length-controlled value is an "
        "extrapolation): read both"]


def test_pooled_difference_over_identical_seeds_is_the_single_seed_test() -> None:
    """Three seeds that answer alike add nothing: the test over prompts x seeds is the test over prompts."""
    rng = np.random.default_rng(3)
    a, b = rng.random(30), rng.random(30) * 0.9
    single = paired_difference(a, b, bootstrap=500)
    pooled = pooled_difference(np.repeat(a, 3), np.repeat(b, 3), np.repeat(np.arange(30), 3), bootstrap=500)
    assert pooled.p_value == single.p_value
    assert (pooled.value, pooled.low, pooled.high) == pytest.approx((single.value, single.low, single.high))


def test_pooled_difference_flips_prompts_not_rows_so_seed_rows_are_not_counted_as_evidence() -> None:
    """Seeds of one prompt share its difficulty: here every prompt's difference is its own (large spread over
    prompts) and the seeds only wobble around it, cancelling within the prompt. The pooled test sees 20 prompts and
    the per-prompt means; a naive test over the 60 prompt x seed rows counts each prompt three times: its p and its
    interval are smaller for the same data, and under no effect at all it rejects far more often than the 5% it
    promises."""
    rng = np.random.default_rng(7)

    def data(effect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        per_prompt = effect + rng.normal(0, 0.3, 20)
        wobble = rng.normal(0, 0.02, (20, 3))
        rows = (per_prompt[:, None] + wobble - wobble.mean(axis=1, keepdims=True)).ravel()  # cancels per prompt
        return rows, np.zeros(60), np.repeat(np.arange(20), 3)

    a, b, prompts = data(0.12)
    pooled = pooled_difference(a, b, prompts, bootstrap=2000)
    naive = paired_difference(a, b, bootstrap=2000)
    assert pooled.value == pytest.approx(naive.value)
    assert naive.p_value < pooled.p_value and (pooled.high - pooled.low) / (naive.high - naive.low) > 1.5  # ~ sqrt 3
    by_prompt = paired_difference(a.reshape(20, 3).mean(axis=1), np.zeros(20), bootstrap=2000)
    assert pooled.p_value == by_prompt.p_value and pooled.low == pytest.approx(by_prompt.low)
    rejected = {"pooled": 0, "naive": 0}
    for _ in range(300):
        a, b, prompts = data(0.0)
        rejected["pooled"] += pooled_difference(a, b, prompts, bootstrap=200).significant
        rejected["naive"] += paired_difference(a, b, bootstrap=200).significant
    assert rejected["pooled"] / 300 < 0.09 and rejected["naive"] / 300 > 0.15  # anti-conservative: not 5%


def test_pooled_difference_is_exact_for_few_prompts_however_many_seeds() -> None:
    """4 prompts won by every one of 3 seeds: all 16 sign patterns of the 4 prompt means, p = 2/16 (12 rows taken
    as independent would claim 2/4096)."""
    a, prompts = np.full(12, 0.9), np.repeat(np.arange(4), 3)
    pooled = pooled_difference(a, np.full(12, 0.4), prompts)
    assert pooled.p_value == pytest.approx(2 / 16) and pooled.value == pytest.approx(0.5)
    assert paired_difference(a, np.full(12, 0.4)).p_value < 0.001


def test_pooled_difference_averages_each_prompt_over_the_seeds_it_has() -> None:
    """A prompt a seed could not be judged on is averaged over the other seeds: each prompt weighs the same."""
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.5])
    prompts = np.array(["p", "p", "q", "r", "r"])
    assert pooled_difference(a, np.zeros(5), prompts).value == pytest.approx((0.5 + 1.0 + 0.75) / 3)

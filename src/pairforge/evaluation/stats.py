"""Win rates and what they hide: bootstrap intervals, a length-controlled win rate, paired tests.

Verdicts are probabilities that the model's answer beats the reference's (1 win, 0 loss, 0.5 tie, or a
judge's soft probability); the win rate is their mean, so ties count half.

Length-controlled win rate (after AlpacaEval 2.0's idea, in its simplest form): fit
P(win) = sigmoid(a + b * z) by maximum likelihood on the soft verdicts, where z is the length difference
(model - reference, in words) divided by its standard deviation (not centred: z = 0 means equal
length), and report sigmoid(a) — the win rate the model would have if its answers were as long as the
reference's. A model that wins only by being longer falls to about 50%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_RIDGE = 1e-3  # keeps the fit finite when every verdict is a win (separable data)


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def win_rate(verdicts: np.ndarray, bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean verdict with a percentile bootstrap interval over prompts."""
    draws = _resample_means(verdicts, bootstrap, seed)
    return _interval(float(verdicts.mean()), draws, level)


def length_controlled_win_rate(verdicts: np.ndarray, model_lengths: np.ndarray, reference_lengths: np.ndarray,
                               bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """sigmoid(intercept) of a logistic fit of the verdict on the standardised length difference."""
    difference = (model_lengths - reference_lengths).astype(float)
    scale = difference.std() or 1.0
    z = difference / scale
    value = _lc(verdicts, z)
    rng = np.random.default_rng(seed)
    draws = np.array([_lc(verdicts[i], z[i]) for i in (rng.integers(0, len(z), len(z)) for _ in range(bootstrap))])
    return _interval(value, draws, level)


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-prompt difference of two models judged on the same prompts, its percentile bootstrap interval
    (how big), and the two-sided p-value of a sign-flip test (whether): significant when p < 1 - level."""

    value: float
    low: float
    high: float
    p_value: float
    level: float = 0.95

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - self.level


def paired_difference(a: np.ndarray, b: np.ndarray, bootstrap: int = 1000, seed: int = 0,
                      level: float = 0.95) -> PairedDifference:
    """How much better a is than b on the same prompts (resampling prompts keeps the pairing)."""
    difference = a - b
    draws = _resample_means(difference, bootstrap, seed)
    spread = _interval(float(difference.mean()), draws, level)
    return PairedDifference(spread.value, spread.low, spread.high, _sign_flip_p(difference, bootstrap, seed), level)


def pooled_difference(a: np.ndarray, b: np.ndarray, prompts: np.ndarray, bootstrap: int = 1000, seed: int = 0,
                      level: float = 0.95) -> PairedDifference:
    """`paired_difference` of two arms trained with several seeds: rows are paired answers (a[i] and b[i] answer
    prompts[i]: seed s of one arm with seed s of the other, or every seed of one with the other's single answer),
    averaged per prompt first, then resampled and sign-flipped by prompt. The prompt is the unit because prompts
    are drawn independently but the seeds of one prompt are not: they answer the same question, so an easy prompt
    lifts every seed at once. Treating the prompts x seeds rows as independent counts each prompt once per seed
    and gives p-values and intervals too small. With one seed (one row per prompt) it is `paired_difference`."""
    return paired_difference(prompt_means(a, prompts), prompt_means(b, prompts), bootstrap, seed, level)


def prompt_means(values: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """The mean of `values` per prompt, prompts in the order they first appear."""
    _, first, inverse = np.unique(prompts, return_index=True, return_inverse=True)
    means = np.bincount(inverse, weights=values) / np.bincount(inverse)
    return means[np.argsort(first)]


_EXACT_UP_TO = 16  # prompts: all 2^n sign patterns (65,536) are cheap to enumerate


def _sign_flip_p(difference: np.ndarray, flips: int, seed: int) -> float:
    """Two-sided p of "the two models are exchangeable on every prompt" (Fisher's randomisation test): the share
    of sign flips of the per-prompt differences whose mean is at least as far from 0 as the one observed. Exact
    up to `_EXACT_UP_TO` prompts (4 prompts all won give 2/16 = 0.125: a bootstrap said 0); beyond, `flips`
    random patterns counted as (1 + hits) / (1 + flips), so it is never 0."""
    n = len(difference)
    observed = abs(float(difference.mean())) * (1 - 1e-9)
    if n <= _EXACT_UP_TO:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float((np.abs(signs @ difference) / n >= observed).mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(flips, n))
    hits = int((np.abs(signs @ difference) / n >= observed).sum())
    return (1 + hits) / (1 + flips)


def _lc(verdicts: np.ndarray, z: np.ndarray, iterations: int = 50) -> float:
    """Newton's method for the two-parameter logistic regression with soft labels."""
    x = np.stack([np.ones_like(z), z], axis=1)
    w = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ w)))
        gradient = x.T @ (p - verdicts) + _RIDGE * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + _RIDGE * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1 / (1 + np.exp(-w[0])))


def _resample_means(values: np.ndarray, bootstrap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, len(values), (bootstrap, len(values)))].mean(axis=1)


def _interval(value: float, draws: np.ndarray, level: float) -> Interval:
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Interval(value, float(low), float(high))

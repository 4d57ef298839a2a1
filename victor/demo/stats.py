"""Paired comparisons for the demo: mean difference between two arms, a bootstrap confidence
interval over questions and seeds, and a one-line verdict.

Both arms of a comparison are run with the same seeds (seed s of one arm shares the stage-1
checkpoint, data order and masks' seed with seed s of the other), and are scored on the same
questions, so their outcomes form two [seeds, questions] arrays whose difference is paired.
The two-way bootstrap resamples seeds and questions independently (each with replacement):
a difference is "resolved" only if it holds across both sources of noise. With few seeds the
seed resampling is coarse; the interval is then the honest width the data allow, no more.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95


@dataclass
class Comparison:
    """`diff` = mean(b - a); `low`/`high` the bootstrap interval; `verdict` in words."""

    diff: float
    low: float
    high: float
    verdict: str
    n_seeds: int
    n_units: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return asdict(self) | {"half_width": self.half_width}


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """"better" / "worse" when the interval excludes 0, else "no difference resolved"."""
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "no difference resolved"


def paired_bootstrap(a, b, n_boot: int = 4000, seed: int = 0, level: float = LEVEL,
                     higher_is_better: bool = True) -> Comparison:
    """Compare arm `b` with arm `a`: arrays [seeds, units] (row s of both = seed s, column q of
    both = question q). Each bootstrap replicate draws seeds and questions with replacement
    (multinomial weights) and takes the weighted mean of the paired differences."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.ndim == 1:
        d = d[None, :]
    n_seeds, n_units = d.shape
    rng = np.random.default_rng(seed)
    w_seed = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot).astype(np.float64)
    w_unit = rng.multinomial(n_units, np.full(n_units, 1 / n_units), size=n_boot).astype(np.float64)
    boot = np.einsum("bs,sq,bq->b", w_seed, d, w_unit, optimize=True) / (n_seeds * n_units)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Comparison(float(d.mean()), float(low), float(high), verdict(low, high, higher_is_better),
                      n_seeds, n_units)


def align(outcomes: list[dict]) -> np.ndarray:
    """Per-seed {unit id: value} dicts -> [seeds, units] on the units every seed has (sorted)."""
    common = sorted(set.intersection(*(set(o) for o in outcomes))) if outcomes else []
    return np.array([[o[u] for u in common] for o in outcomes], dtype=np.float64).reshape(len(outcomes), len(common))


def compare_outcomes(a: list[dict], b: list[dict], **kw) -> Comparison:
    """`paired_bootstrap` on per-seed outcome dicts of two arms, on the units both arms share."""
    units = sorted(set.intersection(*(set(o) for o in a + b)))
    return paired_bootstrap([[o[u] for u in units] for o in a], [[o[u] for u in units] for o in b], **kw)


# ---- over seeds: the run-to-run noise the bootstrap over questions understates ----------------------

POWER = 0.8


@dataclass
class SeedTest:
    """Paired differences per seed (mean over units of seed s), their mean, the t-interval over seeds,
    the two-sided one-sample t-test p-value, and the minimum detectable effect at 80% power."""

    per_seed: list
    mean: float
    t_low: float
    t_high: float
    p: float
    mde: float
    sd: float


def t_interval(per_seed, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval over the per-seed differences (n - 1 degrees of freedom)."""
    from scipy import stats

    x = np.asarray(per_seed, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("-inf"), float("inf")
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return mean, mean - float(half), mean + float(half)


def minimum_detectable_effect(sd: float, n: int, level: float = LEVEL, power: float = POWER) -> float:
    """Smallest true mean difference a two-sided paired t-test over `n` seeds detects with
    probability `power`, given the per-seed differences' standard deviation `sd`:
    (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)."""
    from scipy import stats

    if n < 2:
        return float("inf")
    return float((stats.t.ppf((1 + level) / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / np.sqrt(n))


def seed_test(a, b, level: float = LEVEL) -> SeedTest:
    """`b - a` for arrays [seeds, units]: one mean difference per seed, then a t-test over seeds."""
    from scipy import stats

    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    per_seed = d.reshape(d.shape[0], -1).mean(axis=1) if d.ndim > 1 else d
    mean, low, high = t_interval(per_seed, level)
    n = len(per_seed)
    sd = float(per_seed.std(ddof=1)) if n > 1 else float("nan")
    if n < 2:
        p = float("nan")
    elif sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(stats.ttest_1samp(per_seed, 0.0).pvalue)
    return SeedTest([float(x) for x in per_seed], mean, low, high, p, minimum_detectable_effect(sd, n, level), sd)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def combined_verdict(boot: str, seeds: str) -> str:
    """A difference is claimed only when the bootstrap over questions and seeds and the t-interval over
    seeds agree on it; anything else is "no difference resolved"."""
    return boot if boot == seeds else "no difference resolved"


def compare_full(a: list[dict], b: list[dict], higher_is_better: bool = True, **kw) -> dict:
    """Both intervals for `b - a` on per-seed outcome dicts (units both arms share): the question-and-seed
    bootstrap (`low`, `high`, `verdict_bootstrap`), the t-interval over seeds (`t_low`, `t_high`,
    `verdict_seeds`, `p_seeds`, `per_seed`, `mde`), and `verdict`: the two combined."""
    units = sorted(set.intersection(*(set(o) for o in a + b)))
    xa, xb = [[o[u] for u in units] for o in a], [[o[u] for u in units] for o in b]
    c = paired_bootstrap(xa, xb, higher_is_better=higher_is_better, **kw)
    s = seed_test(xa, xb)
    by_seed = verdict(s.t_low, s.t_high, higher_is_better)
    return c.as_dict() | {"verdict_bootstrap": c.verdict, "verdict_seeds": by_seed,
                          "verdict": combined_verdict(c.verdict, by_seed), "t_low": s.t_low, "t_high": s.t_high,
                          "p_seeds": s.p, "per_seed": s.per_seed, "mde": s.mde, "sd_seeds": s.sd}

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

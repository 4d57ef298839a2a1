"""The training process's tally of skipped samples, and the `max_skip_fraction` guard.

The collator attaches each batch's counts to the batch (`collate.DATA_STATS_KEY`), so the
tally is right whichever DataLoader worker process built the batch; `SkipMonitor.observe`
takes them out of the batch before the model sees it. A wrong `image_root` or a broken
shard must not train for days on nothing: above `max_skip_fraction` skipped samples over the
recent window the run stops with `TooManySkipsError`, naming the commonest reason.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping

from victor.data.collate import is_empty_batch, pop_batch_stats
from victor.data.skips import KEPT, REASONS


class TooManySkipsError(RuntimeError):
    pass


class SkipMonitor:
    """The training process's tally of skipped samples, and the `max_skip_fraction` guard.

    Feed it every batch (`observe(batch)`) or every batch's numbers (`update(samples, reasons)`).
    Over the last `window` samples, once at least `min(min_samples, window)` have been seen, more
    than `max_skip_fraction` skipped raises `TooManySkipsError` naming the commonest reason.
    Events in `KEPT` (truncated but trained) are counted and never count as skips.
    """

    def __init__(self, max_skip_fraction: float = 0.1, window: int = 1000, min_samples: int = 100):
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction={max_skip_fraction} must be in [0, 1]")
        if window < 1 or min_samples < 1:
            raise ValueError(f"window={window} and min_samples={min_samples} must be >= 1")
        self.max_skip_fraction, self.window, self.min_samples = max_skip_fraction, window, min(min_samples, window)
        self.totals: Counter = Counter()
        self.samples = 0
        self.empty_batches = 0
        self.last_images: int | None = None  # real images in the last observed batch (None: not counted)
        self._recent: deque = deque()  # one entry per sample: its skip reason, or None if trained on
        self._recent_counts: Counter = Counter()

    def observe(self, batch: dict) -> bool:
        """Take the collator's statistics out of `batch` (so the model never sees them), count them,
        and say whether the batch has any sample to train on. Raises TooManySkipsError."""
        stats = pop_batch_stats(batch)
        self.last_images = stats.get("images") if stats is not None else None
        if stats is not None:
            self.update(stats["samples"], stats["reasons"])
        empty = is_empty_batch(batch)
        self.empty_batches += empty
        return not empty

    def update(self, samples: int, reasons: Mapping[str, int]) -> None:
        self.totals.update({k: v for k, v in reasons.items() if v})
        self.samples += samples
        skipped = [r for r, n in reasons.items() if r not in KEPT for _ in range(n)]
        for reason in skipped + [None] * max(0, samples - len(skipped)):
            self._push(reason)
        self.check()

    def _push(self, reason: str | None) -> None:
        self._recent.append(reason)
        self._recent_counts[reason] += 1
        if len(self._recent) > self.window:
            self._recent_counts[self._recent.popleft()] -= 1

    def recent_fraction(self) -> float:
        n = len(self._recent)
        return (n - self._recent_counts[None]) / n if n else 0.0

    def check(self) -> None:
        n = len(self._recent)
        if n < self.min_samples or self.recent_fraction() <= self.max_skip_fraction:
            return
        reasons = Counter({r: c for r, c in self._recent_counts.items() if r is not None and c > 0})
        reason, count = reasons.most_common(1)[0]
        raise TooManySkipsError(
            f"{self.recent_fraction():.1%} of the last {n} samples were skipped (max_skip_fraction="
            f"{self.max_skip_fraction}); the commonest reason is '{reason}' ({count} samples: "
            f"{REASONS.get(reason, reason)}). All reasons in this window: {dict(reasons.most_common())}. "
            "See the warnings above for the records, run `victor data check` on the data, "
            "or raise max_skip_fraction to train anyway")

    def counts(self) -> dict[str, int]:
        """Every event so far by reason, skips and `KEPT` events: {"missing_image": 3, ...}."""
        return dict(sorted(self.totals.items()))

    def skipped(self) -> int:
        return sum(n for r, n in self.totals.items() if r not in KEPT)

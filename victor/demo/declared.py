"""What the demo's verdict rests on, declared before the reported run (issue 27).

This file holds nothing else, so the commit that last changed it is the commit that declared the
measure: the report prints that commit and its date beside the run's start, and says so when the
file has uncommitted changes (then the measure was not declared before the run).

Declared: the open questions' gold-answer mean token log-likelihood (nats per token, per
question, paired by seed), higher is better; the smallest difference that would matter is 0.03
nats/token (a 3% higher per-token likelihood of the right answer; the positive control of the
2-seed run in the previous docs/demo-results.md moved it by 0.15). Why this one: it is
continuous and per question, it is scored on every open question (colour, shape, count,
position, existence), and an arm's score can be checked against the same arm scored with the
images shuffled across questions (its floor). MMBench letters and POPE were dead in that run
(chance for every arm, controls included) and are secondary here.

Controls (pass criteria, on the primary measure; both intervals: the bootstrap over questions
and seeds, and the t-interval over per-seed differences):

* positive control, a dose ladder: the baseline's stage 1.5 followed by stage 2 at 1/4, 1/2 and 1x
  its steps. Passes when 1x vs 1/4 is resolved better by both intervals and the ladder's means
  rise with the dose (1/4 < 1/2 < 1x).
* negative control: the baseline under other seeds. Passes when neither interval resolves a
  difference from the baseline.

The arms' verdict is printed only when both controls pass.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Declaration:
    measure: str  # key of `victor.demo.evidence.MEASURES`
    higher_is_better: bool
    min_effect: float  # smallest difference of interest, in the measure's own unit (before its print scale)
    unit: str


PRIMARY = Declaration(measure="gqa_loglik", higher_is_better=True, min_effect=0.03, unit="nats/token")
DOSES = (0.25, 0.5)  # the positive control's shares of the stage-2 steps (1.0 is the baseline itself)

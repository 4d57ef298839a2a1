"""The demo's instrument (issue 27) on cases with hand-computed answers: intervals over seeds, the
minimum detectable effect, Holm, ROC AUC, POPE's de-duplication, the masking-information check, and
the report's rows keyed by comparison (two comparisons sharing a role), the controls' gate."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from victor.demo import declared
from victor.demo.evidence import outcomes, pope_canonical_ids, roc_auc
from victor.demo.recon import masking_information
from victor.demo.report import mask_info_table, resolution_lines, verdict_lines
from victor.demo.stats import compare_full, holm, minimum_detectable_effect, seed_test, t_interval


def test_t_interval_over_seeds_matches_scipy():
    per_seed = [-0.059, -0.043, -0.020, -0.071, -0.035]
    mean, low, high = t_interval(per_seed)
    want = stats.t.interval(0.95, 4, loc=np.mean(per_seed), scale=stats.sem(per_seed))
    assert mean == pytest.approx(np.mean(per_seed)) and (low, high) == pytest.approx(want)
    # by hand: t_{0.975, 4} = 2.7764, sd / sqrt(5)
    half = 2.7764451 * np.std(per_seed, ddof=1) / math.sqrt(5)
    assert high - mean == pytest.approx(half, rel=1e-6)
    # the 2-seed case: the paired t-test over seeds gives p ~ 0.09, not a resolved difference
    two = seed_test([[0.0], [0.0]], [[-0.059], [-0.043]])
    assert two.p == pytest.approx(stats.ttest_1samp([-0.059, -0.043], 0).pvalue) and 0.05 < two.p < 0.15
    assert two.t_low < 0 < two.t_high


def test_minimum_detectable_effect_has_80_percent_power():
    assert minimum_detectable_effect(1.0, 5) == pytest.approx((2.7764451 + 0.9409646) / math.sqrt(5), rel=1e-6)
    # exact power of the two-sided one-sample t-test at that effect (noncentral t): about 80%
    n, mde = 5, minimum_detectable_effect(1.0, 5)
    crit = stats.t.ppf(0.975, n - 1)
    power = 1 - stats.nct.cdf(crit, n - 1, mde * math.sqrt(n)) + stats.nct.cdf(-crit, n - 1, mde * math.sqrt(n))
    assert 0.77 < power < 0.83
    assert minimum_detectable_effect(1.0, 1) == math.inf


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.2 -> 4 x 0.01, max(., 3 x 0.03), max(., 2 x 0.04), max(., 0.2)
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])


def test_compare_full_claims_only_what_both_intervals_resolve():
    rng = np.random.default_rng(0)
    # every question moves by +0.1 in every seed, but the seeds disagree wildly in sign: the bootstrap
    # over questions alone would be fooled by the many questions; the t-interval over seeds is not
    shift = np.array([0.9, -0.7, 0.8, -0.6, -0.2])[:, None]
    a = rng.normal(size=(5, 400))
    b = a + shift + 0.01 * rng.normal(size=(5, 400))
    as_dicts = [lambda x: [{f"q{i}": v for i, v in enumerate(row)} for row in x]][0]
    row = compare_full(as_dicts(a), as_dicts(b))
    assert row["verdict_seeds"] == "no difference resolved" and row["verdict"] == "no difference resolved"
    assert row["per_seed"] == pytest.approx((b - a).mean(axis=1).tolist())
    clear = compare_full(as_dicts(a), as_dicts(a + 0.5 + 0.01 * rng.normal(size=(5, 400))))
    assert clear["verdict_bootstrap"] == clear["verdict_seeds"] == clear["verdict"] == "better"


def test_roc_auc_by_hand_and_against_mann_whitney():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5  # a constant yes-bias carries no information
    # pairs (pos, neg): (3,1) > , (3,3) tie, (2,1) >, (2,3) <  -> (1 + .5 + 1 + 0) / 4
    assert roc_auc([3, 2, 1, 3], [1, 1, 0, 0]) == pytest.approx(0.625)
    rng = np.random.default_rng(1)
    s, y = rng.normal(size=200).round(1), rng.random(200) < 0.5
    u = stats.mannwhitneyu(s[y], s[~y]).statistic
    assert roc_auc(s, y) == pytest.approx(u / (y.sum() * (~y).sum()))


def _pope_files(tmp_path):
    """Three splits sharing their positive questions, as POPE (and the tiny world) build them."""
    files = {}
    negatives = {"random": "a red star", "popular": "a blue circle", "adversarial": "a red circle"}
    for split, neg in negatives.items():
        rows = [{"question_id": 1, "image": "val_00000.png", "text": "Is there a green square in the image?",
                 "label": "yes"},
                {"question_id": 2, "image": "val_00000.png", "text": f"Is there {neg} in the image?", "label": "no"},
                {"question_id": 3, "image": "val_00001.png", "text": "Is there a blue star in the image?",
                 "label": "yes"}]
        files[split] = tmp_path / f"coco_pope_{split}.json"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def test_pope_pooled_counts_no_question_twice(tmp_path):
    files = _pope_files(tmp_path)
    canonical = pope_canonical_ids(files)
    assert len(canonical) == 9  # 3 splits x 3 items listed
    assert len(set(canonical.values())) == 2 + 3  # the 2 shared positives once, the 3 distinct negatives
    assert canonical["random/1"] == canonical["popular/1"] == canonical["adversarial/1"]
    assert len({canonical[f"{s}/2"] for s in files}) == 3
    # a run's records, scored pooled: every distinct question is one unit, counted once
    run = tmp_path / "run"
    (run / "eval" / "pope-likelihood").mkdir(parents=True)
    records = []
    for split in files:
        for qid, answer in ((1, "yes"), (2, "no"), (3, "yes")):
            records.append({"id": f"{split}/{qid}", "answer": answer, "prediction": "yes",
                            "loglik": {"yes": [-0.1, 1], "no": [-0.2, 1]}})
    (run / "eval" / "pope-likelihood" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pooled = outcomes(run, "pope", canonical)
    assert len(pooled) == 5 and sum(pooled.values()) == 2  # the two positives right, once each
    assert len(outcomes(run, "pope")) == 9  # without de-duplication the positives count three times


def test_masking_information_check():
    g = torch.Generator().manual_seed(0)
    tokens = torch.nn.functional.normalize(torch.randn(50, 9, 16, generator=g), dim=-1)
    mask = torch.rand(50, 9, generator=g) < 0.75
    copy = masking_information(tokens, tokens + 1e-3 * torch.randn(tokens.shape, generator=g), mask)
    assert copy["replacement distance"] < 0.01 and copy["replacement cosine"] > 0.99
    assert copy["removes information"] is False
    mean = tokens.reshape(-1, 16).mean(0)
    blank = masking_information(tokens, mean.expand_as(tokens).clone(), mask)
    assert blank["replacement distance"] == pytest.approx(1.0, abs=1e-6) and blank["removes information"] is True
    # a replacement drawn from other images' tokens: about twice the spread
    other = masking_information(tokens, tokens.roll(1, dims=0), mask)
    assert 1.5 < other["replacement distance"] < 2.5


def _row(comparison, role, diff, low, high, t_low, t_high, measure="open QA: gold answer log-lik", unit="nats/token"):
    verdict = "better" if low > 0 and t_low > 0 else "worse" if high < 0 and t_high < 0 else "no difference resolved"
    vb = "better" if low > 0 else "worse" if high < 0 else "no difference resolved"
    vs = "better" if t_low > 0 else "worse" if t_high < 0 else "no difference resolved"
    return {"comparison": comparison, "role": role, "measure": measure, "scale": 1, "unit": unit, "diff": diff,
            "low": low, "high": high, "half_width": (high - low) / 2, "t_low": t_low, "t_high": t_high, "mde": 0.04,
            "p_seeds": 0.5, "verdict": verdict, "verdict_bootstrap": vb, "verdict_seeds": vs}


def _evidence(negative_ok: bool = True):
    rows = [_row("victor vs baseline", "arm", -0.051, -0.097, -0.007, -0.080, -0.020),
            _row("victor[pool-init=paper] vs victor", "arm", -0.119, -0.183, -0.055, -0.170, -0.060),
            _row("baseline[seed+100] vs baseline", "negative control", -0.017, -0.079, 0.047,
                 -0.060 if negative_ok else -0.060, 0.030 if negative_ok else -0.002),
            _row("baseline vs baseline[stage 2 x0.25]", "positive control", 0.300, 0.200, 0.400, 0.220, 0.380),
            _row("baseline vs baseline[stage 2 x0.5]", "positive control", 0.150, 0.076, 0.232, 0.080, 0.220)]
    from victor.demo.evidence import control_status

    headline = {"baseline": {"gqa_loglik": [-0.9, 0.01]}, "baseline[stage 2 x0.5]": {"gqa_loglik": [-1.05, 0.01]},
                "baseline[stage 2 x0.25]": {"gqa_loglik": [-1.2, 0.01]}, "victor": {"gqa_loglik": [-0.95, 0.01]},
                "victor[pool-init=paper]": {"gqa_loglik": [-1.1, 0.01]}, "baseline[seed+100]": {"gqa_loglik": [-0.92, 0]}}
    floors = [_row(f"{arm} vs {arm} with shuffled images", "floor", 0.5, 0.4, 0.6, 0.4, 0.6) | {"floor": [-1.5, 0.01]}
              for arm in headline]

    class Res:
        arm_names = list(headline)

    ev = {"comparisons": rows, "headline": headline, "floors": floors,
          "declaration": {"measure": "open QA: gold answer log-lik", "higher_is_better": True, "min_effect": 0.03,
                          "unit": "nats/token", "commit": "8e36cd0abcdef", "date": "2026-12-06", "head": "1234567890ab",
                          "uncommitted": False, "run_started": "2026-12-06T17:00:00"}}
    ev["controls"] = control_status(ev, Res)
    return ev


def test_resolution_lines_keep_two_comparisons_that_share_a_role():
    ev = _evidence()
    lines = resolution_lines(ev).splitlines()
    assert len(lines) == 2  # one per arm comparison; the second "arm" row no longer overwrites the first
    assert "victor vs baseline" in lines[0] and "±0.045 nats/token (bootstrap)" in lines[0]
    assert "victor[pool-init=paper] vs victor" in lines[1] and "±0.064 nats/token (bootstrap)" in lines[1]
    for line in lines:  # both rungs of the ladder and the negative control, each named
        assert "baseline vs baseline[stage 2 x0.25] +0.300" in line and "baseline vs baseline[stage 2 x0.5] +0.150" in line
        assert "baseline[seed+100] vs baseline -0.017" in line


def test_verdict_only_when_the_controls_pass():
    ev = _evidence()
    assert ev["controls"]["positive"]["passed"] and ev["controls"]["negative"]["passed"]
    text = verdict_lines(ev)
    assert "**Verdict**" in text and "instrument failed" not in text
    assert "- victor vs baseline: -0.051 [-0.097, -0.007] [-0.080, -0.020] nats/token: **worse**" in text
    assert "commit `8e36cd0abc`" in text and "min" in text
    failed = _evidence(negative_ok=False)  # the seeds alone move the measure: the t-interval excludes 0
    assert not failed["controls"]["negative"]["passed"] and not failed["controls"]["passed"]
    text = verdict_lines(failed)
    assert "**The instrument failed** (negative control)" in text and "**Verdict**" not in text
    assert "**worse**" not in text.split("instrument failed")[1]


def test_dose_ladder_must_rise_with_the_dose():
    ev = _evidence()
    ev["headline"]["baseline[stage 2 x0.5]"]["gqa_loglik"] = [-1.3, 0.01]  # below the 1/4 rung
    from victor.demo.evidence import control_status

    class Res:
        arm_names = list(ev["headline"])

    status = control_status(ev, Res)
    assert not status["positive"]["monotone"] and not status["positive"]["passed"]
    assert [name for _, name, _ in status["positive"]["ladder"]] == [
        "baseline[stage 2 x0.25]", "baseline[stage 2 x0.5]", "baseline"]


def test_the_declaration_is_explicit():
    assert declared.PRIMARY.measure == "gqa_loglik" and declared.PRIMARY.higher_is_better
    assert declared.PRIMARY.min_effect > 0 and sorted(declared.DOSES) == [0.25, 0.5]


def test_fine_detail_accuracy_is_a_secondary_measure(tmp_path):
    """The fine-detail questions (the world's val/fine.jsonl, scored by likelihood over two choices) are a
    secondary measure: in MEASURES (so in every comparison and in Holm's family), never the primary."""
    from victor.demo.evidence import MEASURES, PRIMARY
    from victor.demo.run import LIKELIHOOD
    from victor.eval.likelihood import candidates, decide
    from victor.eval.registry import get_benchmark
    from victor.eval.spec import EvalItem

    assert PRIMARY == declared.PRIMARY.measure == "gqa_loglik" and "fine" in MEASURES
    _, directory, _, scale, unit = MEASURES["fine"]
    assert directory == "gqa_fine-likelihood" and "gqa_fine" in LIKELIHOOD and (scale, unit) == (100, "points")
    # an item with choices: every choice scored, the higher mean token log-likelihood is the prediction
    item = EvalItem("q1", "Is the red circle small or large?", None, "large",
                    {"category": "size", "choices": ["small", "large"]})
    assert candidates(get_benchmark("gqa"), item) == {"choice:small": "small", "choice:large": "large"}
    assert decide(item, {"choice:small": [-0.4, 1], "choice:large": [-0.6, 2]}) == \
        {"prediction": "large", "gold_loglik": -0.3}
    assert candidates(get_benchmark("gqa"), EvalItem("q2", "q", None, "red", {})) == {"gold": "red"}  # as before
    run = tmp_path / "run"
    (run / "eval" / directory).mkdir(parents=True)
    records = [{"id": "q1", "answer": "large", "prediction": "large"}, {"id": "q2", "answer": "small", "prediction": "large"}]
    (run / "eval" / directory / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert outcomes(run, "fine") == {"q1": 1.0, "q2": 0.0}


def test_the_masking_table_shows_a_column_only_some_arms_have():
    """Victor's own reconstruction head exists for the victor arms only: its column is in the table
    even when the first arm (the baseline) has none, with a dash for arms without it."""
    ev = {"mask_info": {
        "baseline": {"replacement distance": [0.77, 0.2], "fitted head / mean predictor (masked)": [0.54, 0.03],
                     "removes information": True},
        "victor": {"replacement distance": [1.05, 0.22], "fitted head / mean predictor (masked)": [0.46, 0.06],
                   "own head / mean predictor (masked)": [0.41, 0.05], "removes information": False}}}
    lines = mask_info_table(ev).splitlines()
    assert lines[0] == ("| arm | replacement distance | fitted head / mean predictor (masked) | "
                        "own head / mean predictor (masked) | removes information |")
    assert lines[2].endswith("| — | yes |") and lines[3].endswith("| 0.410 ± 0.050 | no |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)

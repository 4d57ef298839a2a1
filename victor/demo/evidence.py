"""From finished runs to the demo's evidence: per-question outcomes of every run, paired
comparisons between arms (`stats.paired_bootstrap`), and the plain numbers the report prints.

Everything `collect` returns is JSON: the report formats it and `results.json` stores it, so
the two always hold the same values.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from victor.demo.probe import ATTRIBUTES
from victor.demo.stats import compare_outcomes
from victor.eval.metrics import gqa_exact_match
from victor.eval.prompts import CIRCULAR_OFFSET

# measure -> (label, eval directory, record -> (unit, value) or None, scale for printing, unit)
MEASURES = {
    "mmbench": ("MMBench acc (likelihood, letter)", "mmbench-likelihood",
                lambda r: (int(r["meta"]["index"]) % CIRCULAR_OFFSET, float(r["prediction"] == r["answer"])),
                100, "points"),
    "mmbench_text": ("MMBench acc (likelihood, option text)", "mmbench-likelihood",
                     lambda r: (int(r["meta"]["index"]) % CIRCULAR_OFFSET,
                                float(r.get("prediction_text") == r["answer"])), 100, "points"),
    "pope": ("POPE acc (likelihood)", "pope-likelihood", lambda r: (r["id"], float(r["prediction"] == r["answer"])),
             100, "points"),
    "pope_margin": ("POPE label-signed margin", "pope-likelihood", lambda r: (r["id"], signed_margin(r)), 1, "nats"),
    "gqa_loglik": ("open QA: gold answer log-lik", "gqa-likelihood",
                   lambda r: (r["id"], r["gold_loglik"]) if "gold_loglik" in r else None, 1, "nats/token"),
    "gqa": ("open QA exact match (generation)", "gqa",
            lambda r: (r["id"], float(gqa_exact_match(r["prediction"], r["answer"]))), 100, "points"),
}


# The measure the demo's verdict rests on. In the default run every arm sits at chance on
# MMBench letters and at 50% on POPE (the 2-layer LLM answers "no" or "yes" to every POPE
# question alike), so those measures cannot move; the gold answer's mean token log-likelihood on
# the open questions is continuous, per question, above the floor for every arm, and is the one
# on which the positive control is resolved. The other measures are reported beside it.
PRIMARY = "gqa_loglik"
EFFICIENCY_MEASURES = ("mmbench", "mmbench_text", "pope", "gqa_loglik")


def signed_margin(record: dict) -> float:
    """log p(yes) - log p(no), signed by the label (+ for "yes" questions, - for "no" ones): how
    far the model leans towards the right answer. POPE's labels are balanced, so a constant
    leaning towards one answer cancels in the mean, unlike in accuracy."""
    margin = record["loglik"]["yes"][0] - record["loglik"]["no"][0]
    return margin if record["answer"] == "yes" else -margin


def outcomes(stage2: Path, measure: str) -> dict:
    """Per-question value of one run (MMBench: mean over a question's circular copies)."""
    _, directory, extract, _, _ = MEASURES[measure]
    values: dict = {}
    with open(Path(stage2) / "eval" / directory / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            got = extract(json.loads(line)) if line.strip() else None
            if got is not None:
                values.setdefault(got[0], []).append(got[1])
    return {unit: sum(v) / len(v) for unit, v in values.items()}


def mean_std(values: list[float]) -> list[float]:
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def comparison_row(pair: list, measure: str, a: list[dict], b: list[dict], scale: float, unit: str,
                   higher_is_better: bool = True) -> dict:
    """One paired comparison: `b` (the pair's first arm) minus `a` (its reference)."""
    arm, reference, role = pair
    c = compare_outcomes(a, b, higher_is_better=higher_is_better)
    return {"comparison": f"{arm} vs {reference}", "role": role, "measure": measure, "scale": scale, "unit": unit,
            **c.as_dict()}


def collect(res) -> dict:
    """Headline means, paired comparisons, probe and reconstruction tables of a finished demo."""
    seeds = range(res.seeds)
    arms = res.arm_names
    out: dict = {"headline": {}, "comparisons": [], "probe": {}, "probe_comparisons": [], "recon": {},
                 "recon_comparisons": []}
    per_run = {(arm, s, m): outcomes(res.runs[arm, s]["stage2"], m) for arm in arms for s in seeds for m in MEASURES}
    for arm in arms:
        out["headline"][arm] = {m: mean_std([statistics.mean(per_run[arm, s, m].values()) for s in seeds])
                                for m in MEASURES}
        for key, bench, metric in (("mmbench_circular", "mmbench", "circular_accuracy"),
                                   ("pope_f1", "pope", "f1_category_mean"), ("pope_yes", "pope", "yes_ratio")):
            out["headline"][arm][key] = mean_std([res.runs[arm, s]["eval"][bench]["metrics"][metric] for s in seeds])
    for pair in res.comparisons:
        arm, reference, _ = pair
        for m, (label, _, _, scale, unit) in MEASURES.items():
            out["comparisons"].append(comparison_row(pair, label,
                                                     [per_run[reference, s, m] for s in seeds],
                                                     [per_run[arm, s, m] for s in seeds], scale, unit))
    # linear probes: accuracy per arm, checkpoint and layer; victor-like arms vs baseline
    for arm in arms:
        for checkpoint in res.runs[arm, 0]["probe"]:
            for layer, per in res.runs[arm, 0]["probe"][checkpoint].items():
                out["probe"][f"{arm} | {checkpoint} | {layer}"] = {
                    a: mean_std([res.runs[arm, s]["probe"][checkpoint][layer][a]["accuracy"] for s in seeds])
                    for a in ATTRIBUTES} | {"majority": {a: per[a]["majority"] for a in ATTRIBUTES}}
    for pair in res.comparisons:
        arm, reference, role = pair
        if role != "arm":
            continue
        for checkpoint, layers in res.runs[arm, 0]["probe"].items():
            for layer in layers:
                for a in ATTRIBUTES:
                    runs = [[res.runs[x, s]["probe"][checkpoint][layer][a]["correct"] for s in seeds]
                            for x in (reference, arm)]
                    out["probe_comparisons"].append(comparison_row(
                        pair, f"{a}, {checkpoint}, {layer}", *runs, 100, "points"))
    # reconstruction of masked tokens on held-out images (lower is better)
    recon_arms = [a for a in arms if res.runs[a, 0].get("recon")]
    for arm in recon_arms:
        out["recon"][arm] = {f"{head} {where}": mean_std([res.runs[arm, s]["recon"][head][where] for s in seeds])
                             for head in ("fitted", "own", "constant", "relative") if head in res.runs[arm, 0]["recon"]
                             for where in ("masked", "visible")}
    for pair in res.comparisons:
        arm, reference, role = pair
        if arm in recon_arms and reference in recon_arms and role == "arm":
            for head, label, unit in (("fitted", "masked-token error, fitted head", "SmoothL1"),
                                      ("relative", "masked-token error / constant predictor", "ratio")):
                runs = [[res.runs[x, s]["recon"][head]["per_image"] for s in seeds] for x in (reference, arm)]
                out["recon_comparisons"].append(comparison_row(pair, label, *runs, 1, unit, higher_is_better=False))
    out["sample_efficiency"] = {
        f"{arm} | {fraction}": {m: mean_std([statistics.mean(outcomes(d, m).values()) for d in dirs])
                                for m in EFFICIENCY_MEASURES}
        for (arm, fraction), dirs in sorted(res.sample_efficiency.items())}
    return out

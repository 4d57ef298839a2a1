"""From finished runs to the demo's evidence: per-question outcomes of every run, paired
comparisons between arms (`stats.paired_bootstrap`), and the plain numbers the report prints.

Everything `collect` returns is JSON: the report formats it and `results.json` stores it, so
the two always hold the same values.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from victor.demo import declared
from victor.demo.probe import ATTRIBUTES
from victor.demo.stats import compare_full, holm, t_interval
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
    "pope": ("POPE acc (likelihood, splits pooled, de-duplicated)", "pope-likelihood",
             lambda r: (r["id"], float(r["prediction"] == r["answer"])), 100, "points"),
    "pope_margin": ("POPE label-signed margin", "pope-likelihood", lambda r: (r["id"], signed_margin(r)), 1, "nats"),
    "gqa_loglik": ("open QA: gold answer log-lik", "gqa-likelihood",
                   lambda r: (r["id"], r["gold_loglik"]) if "gold_loglik" in r else None, 1, "nats/token"),
    "gqa": ("open QA exact match (generation)", "gqa",
            lambda r: (r["id"], float(gqa_exact_match(r["prediction"], r["answer"]))), 100, "points"),
    # an object's size (small/large), a detail stage-1 captions never state; chance 50%
    "fine": ("fine-detail acc (likelihood, 2 choices)", "gqa_fine-likelihood",
             lambda r: (r["id"], float(r["prediction"] == r["answer"])), 100, "points"),
}


# The measure the demo's verdict rests on, its direction and minimum effect of interest: declared in
# `victor.demo.declared` (its own file, so the report can print the commit that declared it).
PRIMARY = declared.PRIMARY.measure
SHUFFLED = "gqa_shuffled-likelihood"  # the primary measure's floor: the same questions, other images
POPE_DEDUP = {"pope", "pope_margin"}  # pooled over POPE's splits: each distinct question counted once
EFFICIENCY_MEASURES = ("mmbench", "mmbench_text", "pope", "gqa_loglik")


def pope_canonical_ids(pope_files: dict) -> dict[str, str]:
    """POPE's splits share their positive questions (same image, text, label); pooled, each distinct
    question must count once. Maps every item id (`<split>/<question_id>`, as `PopeSpec` names it)
    to the id of the first item with the same (image, text, label)."""
    first: dict[tuple, str] = {}
    out: dict[str, str] = {}
    for split, path in sorted(pope_files.items()):
        for line in Path(path).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                key = (r["image"], r["text"].strip().lower(), str(r["label"]).strip().lower())
                out[f"{split}/{r['question_id']}"] = first.setdefault(key, f"{split}/{r['question_id']}")
    return out


def roc_auc(scores, labels) -> float:
    """ROC AUC of `scores` for binary `labels` (1 = positive): the probability that a random positive
    scores above a random negative, ties counting one half (the Mann-Whitney U statistic / (n+ n-))."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def pope_table(stage2: Path, canonical: dict[str, str]) -> dict:
    """Per POPE split and pooled (de-duplicated): accuracy, ROC AUC of log p(yes) - log p(no), yes ratio, n."""
    rows: dict[str, dict] = {}
    with open(Path(stage2) / "eval" / "pope-likelihood" / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[r["id"]] = r
    groups = {split: [i for i in rows if i.split("/")[0] == split] for split in sorted({i.split("/")[0] for i in rows})}
    groups["pooled, de-duplicated"] = sorted({canonical.get(i, i) for i in rows})
    out = {}
    for name, ids in groups.items():
        recs = [rows[i] for i in ids]
        margin = [r["loglik"]["yes"][0] - r["loglik"]["no"][0] for r in recs]
        labels = [r["answer"] == "yes" for r in recs]
        out[name] = {"accuracy": float(np.mean([r["prediction"] == r["answer"] for r in recs])),
                     "auc": roc_auc(margin, labels), "yes": float(np.mean([r["prediction"] == "yes" for r in recs])),
                     "n": len(recs)}
    return out


def signed_margin(record: dict) -> float:
    """log p(yes) - log p(no), signed by the label (+ for "yes" questions, - for "no" ones): how
    far the model leans towards the right answer. POPE's labels are balanced, so a constant
    leaning towards one answer cancels in the mean, unlike in accuracy."""
    margin = record["loglik"]["yes"][0] - record["loglik"]["no"][0]
    return margin if record["answer"] == "yes" else -margin


def outcomes(stage2: Path, measure: str, units: dict | None = None, directory: str | None = None) -> dict:
    """Per-question value of one run (MMBench: mean over a question's circular copies). `units` maps
    item ids to the unit they count for (POPE pooled: duplicates across splits to one unit, so no
    question is counted twice); `directory` reads another evaluation with the same records."""
    _, default, extract, _, _ = MEASURES[measure]
    values: dict = {}
    with open(Path(stage2) / "eval" / (directory or default) / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            got = extract(json.loads(line)) if line.strip() else None
            if got is not None:
                # repeats of one question (POPE's shared positives: same image, text, label, hence the same
                # score) fold into one unit, which counts once
                values.setdefault(units.get(got[0], got[0]) if units else got[0], []).append(got[1])
    return {unit: sum(v) / len(v) for unit, v in values.items()}


def mean_std(values: list[float]) -> list[float]:
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def comparison_row(pair: list, measure: str, a: list[dict], b: list[dict], scale: float, unit: str,
                   higher_is_better: bool = True) -> dict:
    """One paired comparison: `b` (the pair's first arm) minus `a` (its reference)."""
    arm, reference, role = pair
    return {"comparison": f"{arm} vs {reference}", "role": role, "measure": measure, "scale": scale, "unit": unit,
            **compare_full(a, b, higher_is_better=higher_is_better)}


def mean_interval(values: list[float]) -> list[float]:
    """[mean, low, high]: the 95% t-interval over seeds (infinite with one seed)."""
    return list(t_interval(values))


def collect(res) -> dict:
    """Headline means, paired comparisons (both intervals), floors, controls and the verdict, POPE per
    split, probe, reconstruction and sample-efficiency tables of a finished demo."""
    seeds = range(res.seeds)
    arms = res.arm_names
    out: dict = {"headline": {}, "comparisons": [], "probe": {}, "probe_comparisons": [], "recon": {},
                 "recon_comparisons": [], "floors": [], "pope": {}, "mask_info": {}}
    canonical = pope_canonical_ids(res.world.pope)
    out["pope_items"] = {"listed": len(canonical), "distinct": len(set(canonical.values()))}
    per_run = {(arm, s, m): outcomes(res.runs[arm, s]["stage2"], m, canonical if m in POPE_DEDUP else None)
               for arm in arms for s in seeds for m in MEASURES}
    for arm in arms:
        out["headline"][arm] = {m: mean_std([statistics.mean(per_run[arm, s, m].values()) for s in seeds])
                                for m in MEASURES}
        for key, bench, metric in (("mmbench_circular", "mmbench", "circular_accuracy"),
                                   ("pope_f1", "pope", "f1_category_mean"), ("pope_yes", "pope", "yes_ratio")):
            out["headline"][arm][key] = mean_std([res.runs[arm, s]["eval"][bench]["metrics"][metric] for s in seeds])
        tables = [pope_table(res.runs[arm, s]["stage2"], canonical) for s in seeds]
        out["pope"][arm] = {split: {k: mean_std([t[split][k] for t in tables]) for k in ("accuracy", "auc", "yes")}
                            | {"n": tables[0][split]["n"]} for split in tables[0]}
        out["headline"][arm]["pope_auc"] = out["pope"][arm]["pooled, de-duplicated"]["auc"]
    for pair in res.comparisons:
        arm, reference, _ = pair
        for m, (label, _, _, scale, unit) in MEASURES.items():
            higher = declared.PRIMARY.higher_is_better if m == PRIMARY else True
            out["comparisons"].append(comparison_row(pair, label, [per_run[reference, s, m] for s in seeds],
                                                     [per_run[arm, s, m] for s in seeds], scale, unit, higher))
    # Holm over the secondary measures of each arm comparison (p-values of the t-test over seeds)
    label_primary = MEASURES[PRIMARY][0]
    for pair in res.comparisons:
        if pair[2] != "arm":
            continue
        name = f"{pair[0]} vs {pair[1]}"
        rows = [r for r in out["comparisons"] if r["comparison"] == name and r["measure"] != label_primary]
        for r, adjusted in zip(rows, holm([1.0 if np.isnan(r["p_seeds"]) else r["p_seeds"] for r in rows])):
            r["p_holm"] = adjusted
    # floors: every arm with its own images vs the same arm with the images shuffled across questions
    _, _, _, scale, unit = MEASURES[PRIMARY]
    for arm in arms:
        shuffled = [outcomes(res.runs[arm, s]["stage2"], PRIMARY, directory=SHUFFLED) for s in seeds]
        row = comparison_row([arm, f"{arm} with shuffled images", "floor"], MEASURES[PRIMARY][0], shuffled,
                             [per_run[arm, s, PRIMARY] for s in seeds], scale, unit,
                             declared.PRIMARY.higher_is_better)
        row["floor"] = mean_std([statistics.mean(o.values()) for o in shuffled])
        out["floors"].append(row)
    out["controls"] = control_status(out, res)
    out["declaration"] = {"measure": label_primary, "higher_is_better": declared.PRIMARY.higher_is_better,
                          "min_effect": declared.PRIMARY.min_effect, "unit": declared.PRIMARY.unit,
                          "doses": list(declared.DOSES), **(res.declaration or {}), "run_started": res.started}
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
        if "masking" in res.runs[arm, 0]["recon"]:
            keys = res.runs[arm, 0]["recon"]["masking"]
            out["mask_info"][arm] = {k: mean_std([res.runs[arm, s]["recon"]["masking"][k] for s in seeds])
                                     for k in keys if isinstance(keys[k], (int, float)) and not isinstance(keys[k], bool)}
            out["mask_info"][arm]["removes information"] = all(res.runs[arm, s]["recon"]["masking"]["removes information"]
                                                               for s in seeds)
    for pair in res.comparisons:
        arm, reference, role = pair
        if arm in recon_arms and reference in recon_arms and role == "arm":
            for head, label, unit in (("fitted", "masked-token error, fitted head", "SmoothL1"),
                                      ("relative", "masked-token error / constant predictor", "ratio")):
                runs = [[res.runs[x, s]["recon"][head]["per_image"] for s in seeds] for x in (reference, arm)]
                out["recon_comparisons"].append(comparison_row(pair, label, *runs, 1, unit, higher_is_better=False))
    out["sample_efficiency"] = {
        f"{arm} | {fraction}": {m: mean_interval([statistics.mean(outcomes(d, m, canonical if m in POPE_DEDUP else None)
                                                                  .values()) for d in dirs])
                                for m in EFFICIENCY_MEASURES}
        for (arm, fraction), dirs in sorted(res.sample_efficiency.items())}
    out["efficiency_comparisons"] = []
    shares = sorted({f for (_, f) in res.sample_efficiency})
    for f in shares:
        dirs = {a: res.sample_efficiency.get((a, f)) for a in ("baseline", "victor")}
        if all(dirs.values()):
            out["efficiency_comparisons"].append(comparison_row(
                ["victor", "baseline", f"{100 * f:.0f}% of stage-2 data"], MEASURES[PRIMARY][0],
                [outcomes(d, PRIMARY) for d in dirs["baseline"]], [outcomes(d, PRIMARY) for d in dirs["victor"]],
                scale, unit, declared.PRIMARY.higher_is_better))
    return out


def control_status(ev: dict, res) -> dict:
    """Did the controls pass (criteria in `victor.demo.declared`), and what follows for the arms."""
    label = MEASURES[PRIMARY][0]
    rows = {r["comparison"]: r for r in ev["comparisons"] if r["measure"] == label}
    doses = [float(a[len("baseline[stage 2 x"):-1]) for a in res.arm_names if a.startswith("baseline[stage 2 x")]
    ladder = sorted((d, f"baseline[stage 2 x{d:g}]") for d in doses) + [(1.0, "baseline")]
    means = [(dose, name, ev["headline"][name][PRIMARY][0]) for dose, name in ladder if name in ev["headline"]]
    sign = 1 if declared.PRIMARY.higher_is_better else -1
    monotone = all(sign * (b[2] - a[2]) > 0 for a, b in zip(means, means[1:]))
    lowest = rows.get(f"baseline vs {ladder[0][1]}") if len(ladder) > 1 else None
    positive = {"ladder": [[dose, name, m] for dose, name, m in means], "monotone": monotone,
                "full vs lowest": lowest and lowest["comparison"],
                "passed": bool(lowest and lowest["verdict"] == "better" and monotone)}
    null = next((r for r in rows.values() if r["role"] == "negative control"), None)
    negative = {"comparison": null and null["comparison"],
                "passed": bool(null and null["verdict_bootstrap"] == null["verdict_seeds"] == "no difference resolved")}
    floors = {r["comparison"].split(" vs ")[0]: r["verdict"] == "better" for r in ev["floors"]}
    verdicts = []
    for r in rows.values():
        if r["role"] != "arm":
            continue
        m = declared.PRIMARY.min_effect
        lows, highs = (r["low"], r["t_low"]), (r["high"], r["t_high"])
        if max(highs) < m and min(lows) > -m:
            size = f"both intervals lie within ±{m} {declared.PRIMARY.unit}: any effect is smaller than the minimum of interest"
        elif r["verdict"] != "no difference resolved" and min(abs(x) for x in (*lows, *highs)) >= m and \
                (min(lows) > 0 or max(highs) < 0):
            size = f"both intervals exclude differences smaller than {m} {declared.PRIMARY.unit}"
        else:
            size = (f"the intervals include differences of {m} {declared.PRIMARY.unit} (the minimum of interest): "
                    "an effect that matters is not ruled out")
        verdicts.append({"comparison": r["comparison"], "verdict": r["verdict"], "size": size,
                         "above floor": all(floors.get(x, False) for x in r["comparison"].split(" vs "))})
    return {"positive": positive, "negative": negative, "floors": floors,
            "passed": positive["passed"] and negative["passed"], "arms": verdicts}
